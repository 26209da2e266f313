"""Evaluation task builders: ChemProt, Phenotype, generic CSV/JSONL, and the registry of every task.

`build_task(name, data_dir, **options)` returns a `TaskData` (`bcmb_jax.task_data`). Splits, label orders
and tokenization follow the paper's dataloader (arXiv 2506.10896, see modernbert-facts.md §9).
The NER corpora live in `bcmb_jax.brat` (COS, Social History, CoNLL) and `bcmb_jax.deid`.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from bcmb_jax import brat, deid
from bcmb_jax.task_data import (
    SPLIT_STEMS,
    TaskData,
    TaskDataError,
    encode_labels,
    err,
    find_split_file,
    hf_three_way,
    read_lines,
    take,
    utf8_lines,
)

# ---------------------------------------------------------------------------------------------- ChemProt
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
        raise ValueError(f"chemprot text must be 'ascii' or 'unicode', got {text!r}")
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
        raise ValueError(f"chemprot source must be 'auto', 'blue' or 'original', got {source!r}")
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


# --------------------------------------------------------------------------------------------- Phenotype
PHENOTYPE_LABELS = [
    "ADVANCED.CANCER",
    "ADVANCED.HEART.DISEASE",
    "ADVANCED.LUNG.DISEASE",
    "ALCOHOL.ABUSE",
    "CHRONIC.NEUROLOGICAL.DYSTROPHIES",
    "CHRONIC.PAIN.FIBROMYALGIA",
    "DEMENTIA",
    "DEPRESSION",
    "DEVELOPMENTAL.DELAY.RETARDATION",
    "NON.ADHERENCE",
    "OBESITY",
    "OTHER.SUBSTANCE.ABUSE",
    "SCHIZOPHRENIA.AND.OTHER.PSYCHIATRIC.DISORDERS",
    "UNSURE",
]


def _number(value: str | None, path: Path, line: int, col: str) -> float:
    if value is None:
        raise err(path, line, f"column {col!r}: expected a number, the row is too short")
    try:
        return float(value)
    except ValueError:
        raise err(path, line, f"column {col!r}: expected a number, got {value!r}") from None


def build_phenotype(
    data_dir: str | Path, annotations: str = "ACTdb102003.csv", notes: str = "NOTEEVENTS.csv"
) -> TaskData:
    """MIMIC-III phenotype annotations joined on ROW_ID with NOTEEVENTS TEXT, 14 labels, multi-label.

    Rows with NONE=1 and any phenotype=1 are dropped; NONE=1 gives the all-zero vector. Rows keep the
    annotation file's order (pandas 2.2 inner merge, one row per annotation row with a note) and are split
    70/10/20 as HF train_test_split(0.2, seed 42) then (0.125, seed 42) on the rest.
    """
    d = Path(data_dir)
    ann_path, notes_path = d / annotations, d / notes
    csv.field_size_limit(2**31 - 1)
    rows = []
    reader = csv.DictReader(utf8_lines(ann_path))
    missing = [c for c in ["ROW_ID", "NONE", *PHENOTYPE_LABELS] if c not in (reader.fieldnames or [])]
    if missing:
        raise err(ann_path, 1, f"missing columns {missing}")
    for r in reader:
        ln = reader.line_num
        flags = [_number(r[c], ann_path, ln, c) for c in PHENOTYPE_LABELS]
        none = _number(r["NONE"], ann_path, ln, "NONE") == 1
        if none and sum(flags) > 0:
            continue
        rows.append((int(_number(r["ROW_ID"], ann_path, ln, "ROW_ID")), [0.0] * 14 if none else flags))
    wanted = {rid for rid, _ in rows}
    texts: dict[int, str] = {}
    reader = csv.DictReader(utf8_lines(notes_path))
    if not {"ROW_ID", "TEXT"} <= set(reader.fieldnames or []):
        raise err(notes_path, 1, "expected columns ROW_ID and TEXT")
    for r in reader:
        rid = int(_number(r["ROW_ID"], notes_path, reader.line_num, "ROW_ID"))
        if rid in wanted:
            texts[rid] = r["TEXT"]
    examples = [{"id": str(rid), "text": texts[rid], "labels": lab} for rid, lab in rows if rid in texts]
    tr, va, te = hf_three_way(len(examples), 0.2, 0.125, 42, val_first=False)
    return TaskData(
        "phenotype", "multilabel", list(PHENOTYPE_LABELS), take(examples, tr), take(examples, va), take(examples, te)
    )


# ------------------------------------------------------------------------------ CSV / JSONL classification
def _label_names(values: Iterable[str]) -> list[str]:
    vals = set(values)
    if vals and all(re.fullmatch(r"-?\d+", v) for v in vals):
        return sorted(vals, key=int)
    return sorted(vals)


def _build_table(
    name: str,
    data_dir: str | Path,
    read: Callable[[Path], list[tuple[int, dict]]],
    exts: Sequence[str],
    text_field: str,
    label_field: str,
    multilabel: bool | None,
    label_sep: str | None,
    labels: Sequence[str] | None,
) -> TaskData:
    d = Path(data_dir)
    raw = {}
    for s in ("train", "val", "test"):
        p = find_split_file(d, s, exts)
        if p is None:
            raise err(d, None, f"no {'/'.join(SPLIT_STEMS[s])} file ({', '.join(exts)})")
        rows = []
        for ln, rec in read(p):
            for key in (text_field, label_field):
                if key not in rec or rec[key] is None:
                    raise err(p, ln, f"missing field {key!r}")
            value = rec[label_field]
            if isinstance(value, list):
                names, is_list = [str(v) for v in value], True
            elif label_sep is not None:
                names, is_list = [v.strip() for v in str(value).split(label_sep) if v.strip()], True
            else:
                names, is_list = [str(value).strip()], False
            rows.append((ln, p, str(rec.get("id", f"{p.name}:{ln}")), str(rec[text_field]), names, is_list))
        raw[s] = rows
    all_rows = [r for rows in raw.values() for r in rows]
    multi = multilabel if multilabel is not None else any(r[5] for r in all_rows)
    if labels is None:
        labels = _label_names(n for r in all_rows for n in r[4])
    splits = {}
    for s, rows in raw.items():
        out = []
        for ln, p, rid, text, names, _ in rows:
            ids = encode_labels(names, labels, p, ln)
            if multi:
                hot = [0.0] * len(labels)
                for i in ids:
                    hot[i] = 1.0
                out.append({"id": rid, "text": text, "labels": hot})
            else:
                if len(ids) != 1:
                    raise err(p, ln, f"single-label task: expected one label, got {names}")
                out.append({"id": rid, "text": text, "label": ids[0]})
        splits[s] = out
    return TaskData(name, "multilabel" if multi else "classification", list(labels), **splits)


def build_csv(
    data_dir: str | Path,
    text_field: str = "text",
    label_field: str = "label",
    multilabel: bool | None = None,
    label_sep: str | None = None,
    labels: Sequence[str] | None = None,
    delimiter: str | None = None,
) -> TaskData:
    """Classification from train/dev/test .csv or .tsv files with a header. Multi-label when label_sep
    splits the label cell (or multilabel=True). Default labels: sorted unique label strings (numeric order
    when all are integers), as `class_encode_column`."""

    def read(p: Path) -> list[tuple[int, dict]]:
        reader = csv.DictReader(utf8_lines(p), delimiter=delimiter or ("\t" if p.suffix == ".tsv" else ","))
        rows = []
        for row in reader:
            if None in row or None in row.values():
                n = len(reader.fieldnames or [])
                raise err(p, reader.line_num, f"expected {n} columns as in the header, got a row with "
                                              f"{'more' if None in row else 'fewer'}")
            rows.append((reader.line_num, row))
        return rows

    return _build_table("csv", data_dir, read, (".csv", ".tsv"), text_field, label_field, multilabel, label_sep, labels)


def build_jsonl(
    data_dir: str | Path,
    text_field: str = "text",
    label_field: str = "label",
    multilabel: bool | None = None,
    label_sep: str | None = None,
    labels: Sequence[str] | None = None,
) -> TaskData:
    """Classification from train/dev/test .jsonl files, one object a line; a list-valued label field
    (or label_sep) makes the task multi-label."""

    def read(p: Path) -> list[tuple[int, dict]]:
        out = []
        for ln, line in read_lines(p):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise err(p, ln, f"expected one JSON object per line ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise err(p, ln, f"expected a JSON object, got {type(rec).__name__}")
            out.append((ln, rec))
        return out

    return _build_table(
        "jsonl", data_dir, read, (".jsonl", ".json"), text_field, label_field, multilabel, label_sep, labels
    )


# -------------------------------------------------------------------------------------------- registry
_ALIASES = {"socialhistory": "social_history", "social-history": "social_history"}
BUILDERS: dict[str, Callable[..., TaskData]] = {
    "chemprot": build_chemprot,
    "phenotype": build_phenotype,
    "cos": brat.build_cos,
    "social_history": brat.build_social_history,
    "deid": deid.build_deid,
    "conll": brat.build_conll,
    "csv": build_csv,
    "jsonl": build_jsonl,
}


def canonical(name: str) -> str:
    """The registry name of a task (the paper's spellings ChemProt, SocialHistory, ... also work)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in BUILDERS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(BUILDERS)}")
    return key


def task_options(name: str) -> list[str]:
    """The keyword options a task's builder takes besides data_dir (e.g. ["labels"] for deid)."""
    import inspect

    return [p for p in inspect.signature(BUILDERS[canonical(name)]).parameters if p != "data_dir"]


def build_task(name: str, data_dir: str | Path, **options) -> TaskData:
    """Build a task by name (chemprot, phenotype, cos, social_history, deid, conll, csv, jsonl). Options go
    to the builder."""
    key = canonical(name)
    if not Path(data_dir).exists():
        raise TaskDataError(f"{data_dir}: data directory does not exist")
    return BUILDERS[key](data_dir, **options)
