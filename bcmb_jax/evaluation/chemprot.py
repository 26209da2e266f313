"""ChemProt: the paper's 6-class chemical-protein relation task, from BLUE's TSV or the BioCreative VI corpus.

`build_chemprot(data_dir, text, source)` returns a `TaskData` (`task_data.py`). Built from the original
release, rows follow BLUE's create_chemprot_bert.py: sentence segmentation (`sentence_spans`), entity masking
(`_mask_pair`) and ASCII folding (`blue_ascii`). The task registry is `tasks.py`.
"""

from __future__ import annotations

import csv
import itertools
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from bcmb_jax.errors import ConfigError
from bcmb_jax.evaluation.task_data import (
    SPLIT_STEMS,
    TaskData,
    encode_labels,
    err,
    find_split_file,
    read_lines,
    utf8_lines,
)

# The paper's ids are `class_encode_column` ids: the sorted unique label strings of each split, encoded per
# split. One fixed sorted list is used here for every split: identical to the paper's ids whenever each split
# holds all six labels (true for BLUE's ChemProt), and it never shifts ids when a split lacks a label.
CHEMPROT_LABELS = ["CPR:3", "CPR:4", "CPR:5", "CPR:6", "CPR:9", "false"]
_CHEMPROT_FILES = {  # split -> (folder, abstracts, entities, gold standard) of the BioCreative VI release
    "train": (
        "chemprot_training",
        "chemprot_training_abstracts.tsv",
        "chemprot_training_entities.tsv",
        "chemprot_training_gold_standard.tsv",
    ),
    "val": (
        "chemprot_development",
        "chemprot_development_abstracts.tsv",
        "chemprot_development_entities.tsv",
        "chemprot_development_gold_standard.tsv",
    ),
    "test": (
        "chemprot_test_gs",
        "chemprot_test_abstracts_gs.tsv",
        "chemprot_test_entities_gs.tsv",
        "chemprot_test_gold_standard.tsv",
    ),
}

# BLUE writes ASCII text (its `printable(..., greeklish=True)`): Greek letters become Latin letters, the symbols
# below become the ASCII characters BLUE uses, other characters are decomposed to ASCII or dropped.
_GREEK = dict(zip("αβγδεζηθικλμνξοπρσςτυφχψω", "a b g d e z h th i k l m n x o p r s s t y f x ps w".split()))
_GREEK.update({k.upper(): v.upper() for k, v in _GREEK.items() if k != "ς"})
_SYMBOLS = dict(zip("±·⋅∗•×°∼∞©®™≥⩾≫→≤⩽≪↔↓≈≃═⁻₋−⁺…″‴´〈〉ßøɛк", '+******~~crT>>>><<<<<===---+.""\'()boek'))


def blue_ascii(text: str) -> str:
    """ASCII text in the style of BLUE's ChemProt TSV (see `_GREEK`, `_SYMBOLS`)."""
    out = []
    for c in text:
        if c.isascii():
            out.append(c)
        elif c in _SYMBOLS:
            out.append(_SYMBOLS[c])
        elif unicodedata.category(c) == "Zs":
            out.append(" ")
        else:
            d = unicodedata.normalize("NFKD", c)
            out.append("".join(_GREEK.get(x, x if x.isascii() else "") for x in d))
    return "".join(out)


def _read_tsv_rows(path: Path, ncols: int, what: str) -> Iterable[tuple[int, list[str]]]:
    for ln, line in read_lines(path):
        if not line.strip():
            continue
        cols = line.rstrip("\r\n").split("\t")
        if len(cols) < ncols:
            raise err(path, ln, f"expected {ncols} tab-separated columns ({what}), got {len(cols)}")
        yield ln, cols


_SEGMENTER = None


def sentence_spans(text: str) -> list[list[int]]:
    """Sentence [start, end) spans (pysbd), merged with BLUE's rule: a sentence continues the previous one
    unless the previous ends in . ? or ! (but not "i.v.") and the next starts with an upper-case letter."""
    global _SEGMENTER
    if _SEGMENTER is None:
        import pysbd

        _SEGMENTER = pysbd.Segmenter(language="en", clean=False, char_span=True)
    spans: list[list[int]] = []
    for s in _SEGMENTER.segment(text):
        start, end = s.start, s.end
        while end > start and text[end - 1].isspace():
            end -= 1
        while start < end and text[start].isspace():
            start += 1
        if end <= start:
            continue
        if spans:
            prev = text[spans[-1][0] : spans[-1][1]]
            if not (prev[-1] in ".?!" and prev[-4:] != "i.v." and text[start].isupper()):
                spans[-1][1] = end
                continue
        spans.append([start, end])
    return spans


def _mask_pair(sent: str, chem: dict, gene: dict) -> str:
    """BLUE's entity masking: overlapping (or touching) mentions become one @CHEM-GENE$."""
    (a0, a1, at), (b0, b1, bt) = sorted(
        [(chem["start"], chem["end"], "@CHEMICAL$"), (gene["start"], gene["end"], "@GENE$")]
    )
    if b0 <= a1:
        return sent[:a0] + "@CHEM-GENE$" + sent[max(a1, b1) :]
    return sent[:a0] + at + sent[a1:b0] + bt + sent[b1:]


def chemprot_from_original(folder: Path, split: str, text: str = "ascii") -> list[dict]:
    """BLUE-style rows {"id", "text", "label"} of one split of the BioCreative VI ChemProt release.

    Follows BLUE's create_chemprot_bert.py: document = title + " " + abstract; sentences merged as in
    `sentence_spans` (BLUE split with spaCy en_core_web_sm, here pysbd); for each sentence every
    (CHEMICAL, GENE-N then GENE-Y) pair of mentions lying inside it gives one row per gold relation of that
    ordered pair (most recent gold line first), or one "false" row; the two mentions are replaced by
    @CHEMICAL$ / @GENE$. Only the *_gold_standard.tsv relations (CPR:3/4/5/6/9) are used, so relations across
    sentences are dropped as in BLUE. Unlike BLUE, the ASCII folding (text="ascii") is applied after masking,
    so no mention offset drifts; text="unicode" keeps the original characters.

    Counts on the staged corpus (train/dev/test): 19,219 / 12,102 / 16,836; BLUE's TSV has
    19,460 / 11,820 / 16,943 (the sentence splitter differs).
    """
    sub, abstracts, entities, gold = _CHEMPROT_FILES[split]
    base = folder / sub
    docs = {}
    for _, c in _read_tsv_rows(base / abstracts, 3, "pmid, title, abstract"):
        docs[c[0]] = c[1] + " " + c[2]
    ents: dict[str, list[dict]] = defaultdict(list)
    for ln, c in _read_tsv_rows(base / entities, 6, "pmid, Tn, type, start, end, text"):
        if not (c[3].isdigit() and c[4].isdigit()) or c[2] not in ("CHEMICAL", "GENE-N", "GENE-Y"):
            raise err(base / entities, ln, "expected integer offsets and type CHEMICAL, GENE-N or GENE-Y")
        ents[c[0]].append({"id": c[1], "type": c[2], "start": int(c[3]), "end": int(c[4])})
    rels: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for ln, c in _read_tsv_rows(base / gold, 4, "pmid, CPR group, Arg1:Tn, Arg2:Tn"):
        if not (c[2].startswith("Arg1:") and c[3].startswith("Arg2:")):
            raise err(base / gold, ln, "expected Arg1:<id> and Arg2:<id> in columns 3 and 4")
        if c[1] not in CHEMPROT_LABELS:
            raise err(base / gold, ln, f"label {c[1]!r} is not in {CHEMPROT_LABELS}")
        rels[(c[0], c[2][5:], c[3][5:])].insert(0, c[1])
    fold = blue_ascii if text == "ascii" else (lambda s: s)
    rows = []
    for pmid, doc in docs.items():
        for s0, s1 in sentence_spans(doc):
            inside = [e for e in ents[pmid] if s0 <= e["start"] and e["end"] <= s1]
            chems = [e for e in inside if e["type"] == "CHEMICAL"]
            genes = [e for e in inside if e["type"] == "GENE-N"] + [e for e in inside if e["type"] == "GENE-Y"]
            for chem, gene in itertools.product(chems, genes):
                c = {**chem, "start": chem["start"] - s0, "end": chem["end"] - s0}
                g = {**gene, "start": gene["start"] - s0, "end": gene["end"] - s0}
                sent = fold(_mask_pair(doc[s0:s1], c, g))
                for label in rels.pop((pmid, chem["id"], gene["id"]), None) or ["false"]:
                    rows.append({"id": f"{pmid}.{chem['id']}.{gene['id']}", "text": sent, "label": label})
    return rows


def read_blue_tsv(path: Path) -> list[dict]:
    """Rows of a BLUE TSV (header `index<TAB>sentence<TAB>label`, csv quoting as BLUE/pandas)."""
    reader = csv.reader(utf8_lines(path), delimiter="\t")
    header = next(reader, None)
    if header is None or "sentence" not in header or "label" not in header:
        raise err(path, 1, f"expected a header with 'sentence' and 'label' columns, got {header}")
    si, li = header.index("sentence"), header.index("label")
    ii = header.index("index") if "index" in header else None
    rows = []
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise err(path, reader.line_num, f"expected {len(header)} tab-separated columns, got {len(row)}")
        rid = row[ii] if ii is not None else str(len(rows))
        rows.append({"id": rid, "text": row[si], "label": row[li], "_line": reader.line_num})
    return rows


def build_chemprot(data_dir: str | Path, text: str = "ascii", source: str = "auto") -> TaskData:
    """ChemProt, 6-class sentence task. source: "blue" (train/dev/test.tsv), "original" (BioCreative VI
    corpus, in data_dir or data_dir/original), "auto" (BLUE TSV when present)."""
    d = Path(data_dir)
    if text not in ("ascii", "unicode"):
        raise ConfigError(f"chemprot text must be 'ascii' or 'unicode', got {text!r}")
    tsvs = {s: find_split_file(d, s, (".tsv",)) for s in ("train", "val", "test")}
    if source == "blue" or (source == "auto" and all(tsvs.values())):
        splits = {}
        for s, p in tsvs.items():
            if p is None:
                raise err(d, None, f"no BLUE {'/'.join(SPLIT_STEMS[s])}.tsv file for the {s} split")
            rows = read_blue_tsv(p)
            for r in rows:
                r["label"] = encode_labels([r["label"]], CHEMPROT_LABELS, p, r.pop("_line"))[0]
            splits[s] = rows
        return TaskData("chemprot", "classification", list(CHEMPROT_LABELS), **splits)
    if source not in ("auto", "original"):
        raise ConfigError(f"chemprot source must be 'auto', 'blue' or 'original', got {source!r}")
    folder = next((f for f in (d, d / "original") if (f / _CHEMPROT_FILES["train"][0]).is_dir()), None)
    if folder is None:
        raise err(
            d,
            None,
            "expected BLUE train/dev/test.tsv or the BioCreative VI folders "
            "chemprot_training/, chemprot_development/, chemprot_test_gs/ (here or in original/)",
        )
    splits = {}
    for s in ("train", "val", "test"):
        rows = chemprot_from_original(folder, s, text)
        for r in rows:
            r["label"] = CHEMPROT_LABELS.index(r["label"])
        splits[s] = rows
    return TaskData("chemprot", "classification", list(CHEMPROT_LABELS), **splits)
