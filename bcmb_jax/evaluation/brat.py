"""NER tasks: brat standoff corpora (COS, Social History) and generic CoNLL files (DEID: `deid.py`).

Tokenization, BIO tagging, label orders and splits follow the dataloader of the paper's code (arXiv 2506.10896).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bcmb_jax.errors import ConfigError
from bcmb_jax.evaluation.task_data import (
    SPLIT_STEMS,
    TaskData,
    encode_labels,
    err,
    find_split_file,
    hf_three_way,
    read_lines,
    read_text,
    take,
)

COS_TYPES = ("Cos", "Ref", "Loc", "Attr", "Val")
COS_LABELS = ["B-Attr", "B-Cos", "B-Loc", "B-Ref", "B-Val", "I-Attr", "I-Cos", "I-Loc", "I-Ref", "I-Val", "O"]
# Copied verbatim from the paper: I-LivingSituation has no B-, B-PhysicalActivity has no I-. The list is the
# set of tags the paper's tagging yields on its corpus (it is exactly the set observed on the staged copy).
# A tag outside it (e.g. a LivingSituation span whose first word is not overwritten) is an error, as in the
# paper's code, where casting such a tag to the ClassLabel raises.
SOCIAL_HISTORY_LABELS = [
    "B-Alcohol",
    "B-Amount",
    "B-Drug",
    "B-EnvironmentalExposure",
    "B-ExposureHistory",
    "B-Extent",
    "B-Family",
    "B-Frequency",
    "B-History",
    "B-InfectiousDiseases",
    "B-LivingStatus",
    "B-Location",
    "B-MaritalStatus",
    "B-MedicalCondition",
    "B-Method",
    "B-Occupation",
    "B-Other",
    "B-PhysicalActivity",
    "B-QuitHistory",
    "B-Residence",
    "B-SexualHistory",
    "B-Status",
    "B-Temporal",
    "B-Tobacco",
    "B-Type",
    "I-Alcohol",
    "I-Amount",
    "I-Drug",
    "I-EnvironmentalExposure",
    "I-ExposureHistory",
    "I-Extent",
    "I-Family",
    "I-Frequency",
    "I-History",
    "I-InfectiousDiseases",
    "I-LivingSituation",
    "I-LivingStatus",
    "I-Location",
    "I-MaritalStatus",
    "I-MedicalCondition",
    "I-Method",
    "I-Occupation",
    "I-Other",
    "I-QuitHistory",
    "I-Residence",
    "I-SexualHistory",
    "I-Status",
    "I-Temporal",
    "I-Tobacco",
    "I-Type",
    "O",
]
# ------------------------------------------------------------------------------------------------ brat
@dataclass(frozen=True)
class BratSpan:
    tid: str
    type: str
    start: int
    end: int
    text: str
    line: int
    discontinuous: bool  # "s e;s e" fragments; start/end then cover all fragments


_OFFSETS = re.compile(r"(\d+) (\d+)")


def read_brat_ann(path: Path) -> list[BratSpan]:
    """Text-bound (T) annotations of a brat .ann file, in file order; other annotation lines are skipped."""
    spans = []
    for ln, line in read_lines(path):
        line = line.rstrip("\r\n")
        if not line.strip() or line[0] in "REAMN#*":
            continue
        expected = "'T<id><TAB><type> <start> <end>[;<start> <end>]<TAB><text>'"
        cols = line.split("\t", 2)
        if line[0] != "T" or len(cols) < 2 or " " not in cols[1]:
            raise err(path, ln, f"expected a brat annotation line {expected}, got {line!r}")
        typ, offsets = cols[1].split(" ", 1)
        frags = [_OFFSETS.fullmatch(x.strip()) for x in offsets.split(";")]
        if not typ or not all(frags) or any(int(m[1]) > int(m[2]) for m in frags):
            raise err(path, ln, f"expected {expected} with integer offsets start <= end, got {line!r}")
        text = cols[2] if len(cols) > 2 else ""
        spans.append(BratSpan(cols[0], typ, int(frags[0][1]), int(frags[-1][2]), text, ln, len(frags) > 1))
    return spans


def check_spans(ann: Path, spans: Sequence[BratSpan], text: str, txt_name: str) -> None:
    """Every span must end inside its document's text (brat offsets are character offsets)."""
    for s in spans:
        if s.end > len(text):
            raise err(ann, s.line, f"span {s.start}-{s.end} runs past the end of {txt_name} ({len(text)} "
                                   "characters); expected offsets inside the text")


def bio_by_containment(token_spans: list[tuple[int, int]], spans: list[tuple[int, int, str]]) -> list[str]:
    """BIO tags: a token belongs to a span iff it lies fully inside it; later spans overwrite earlier ones."""
    tags = ["O"] * len(token_spans)
    for start, end, typ in spans:
        idx = [i for i, (a, b) in enumerate(token_spans) if a >= start and b <= end]
        for k, i in enumerate(idx):
            tags[i] = ("B-" if k == 0 else "I-") + typ
    return tags


def _split_70_15_15(examples: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """HF train_test_split(0.3, seed 42), then the 30% split 50/50 (seed 42): its train part is val."""
    tr, va, te = hf_three_way(len(examples), 0.3, 0.5, 42, val_first=True)
    return take(examples, tr), take(examples, va), take(examples, te)


def build_cos(data_dir: str | Path) -> TaskData:
    """UW chest x-ray Change-of-State corpus. Each Snippet annotation of the *.ann files (sorted by name) is
    one example; its text (from the .ann line) is cut into `\\w+|[^\\w\\s]` tokens; Cos/Ref/Loc/Attr/Val spans
    inside the snippet are tagged in file order. Discontinuous spans are skipped (the paper's parser cannot
    read them). On the staged corpus: 1,008 snippets, 705 / 151 / 152."""
    d = Path(data_dir)
    files = sorted(d.glob("*.ann"))
    if not files:
        raise err(d, None, "expected brat .ann files")
    examples = []
    for path in files:
        every = read_brat_ann(path)
        txt = path.with_suffix(".txt")
        if txt.is_file():
            check_spans(path, every, read_text(txt), txt.name)
        spans = [s for s in every if s.text.strip() and not s.discontinuous]
        for snip in (s for s in spans if s.type == "Snippet"):
            text = snip.text.strip()
            feats = [
                (s.start - snip.start, s.end - snip.start, s.type)
                for s in spans
                if s.type in COS_TYPES and s.start >= snip.start and s.end <= snip.end
            ]
            toks = list(re.finditer(r"\w+|[^\w\s]", text))
            tags = bio_by_containment([m.span() for m in toks], feats)
            examples.append(
                {
                    "id": f"{path.stem}:{snip.tid}",
                    "tokens": [m.group() for m in toks],
                    "tags": encode_labels(tags, COS_LABELS, path, snip.line),
                }
            )
    return TaskData("cos", "ner", list(COS_LABELS), *_split_70_15_15(examples))


def _social_history_doc(txt: Path) -> dict:
    ann = txt.with_suffix(".ann")
    if not ann.is_file():
        raise err(txt, None, f"no matching annotation file {ann.name}")
    text = read_text(txt)
    every = read_brat_ann(ann)
    check_spans(ann, every, text, txt.name)
    spans = sorted((s for s in every if not s.discontinuous), key=lambda s: s.start)
    toks = list(re.finditer(r"\S+", text))
    tags = bio_by_containment([m.span() for m in toks], [(s.start, s.end, s.type) for s in spans])
    for tag in tags:
        if tag not in SOCIAL_HISTORY_LABELS:
            line = next((s.line for s in spans if s.type == tag[2:]), None)
            raise err(ann, line, f"label {tag!r} is not in the task's label list (the tags of this {tag[2:]} "
                                 f"span must be among the paper's Social History tags {SOCIAL_HISTORY_LABELS})")
    tag_ids = encode_labels(tags, SOCIAL_HISTORY_LABELS, ann)
    return {"id": txt.stem, "tokens": [m.group() for m in toks], "tags": tag_ids}


def build_social_history(data_dir: str | Path, split: str = "random") -> TaskData:
    """MTSamples Social History sections (brat .txt + .ann), whitespace tokens, every T type tagged by
    containment (spans sorted by start, later ones overwrite; discontinuous spans skipped as in the paper).

    split="random" (the paper): all documents, sorted by file name (from data_dir or, when it has none,
    its subfolders), split 70/15/15 like COS; 364 documents -> 254 / 55 / 55 on the staged copy.
    split="folders": use data_dir's train/ dev/ test/ subfolders as they are.
    """
    d = Path(data_dir)
    if split == "folders":
        parts = []
        for names in (("train",), ("dev", "valid", "validation"), ("test",)):
            sub = next((d / n for n in names if (d / n).is_dir()), None)
            if sub is None:
                raise err(d, None, f"split='folders' needs a {'/'.join(names)} subfolder")
            parts.append([_social_history_doc(p) for p in sorted(sub.glob("*.txt"))])
        return TaskData("social_history", "ner", list(SOCIAL_HISTORY_LABELS), *parts)
    if split != "random":
        raise ConfigError(f"social_history split must be 'random' or 'folders', got {split!r}")
    txts = sorted(d.glob("*.txt")) or sorted(d.glob("*/*.txt"), key=lambda p: p.name)
    if not txts:
        raise err(d, None, "expected brat .txt/.ann pairs (here or in subfolders)")
    names = [p.name for p in txts]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise err(d, None, f"the same document appears in several subfolders: {dup[:5]}")
    docs = [_social_history_doc(p) for p in txts]
    return TaskData("social_history", "ner", list(SOCIAL_HISTORY_LABELS), *_split_70_15_15(docs))


# ------------------------------------------------------------------------------------------ CoNLL (NER)
_TAG = re.compile(r"^(O|[BI]-.+)$")


def read_conll(path: Path) -> list[tuple[list[str], list[str], int]]:
    """Sentences (words, tags, first line) of a CoNLL file: word in the first column, tag in the last
    (tab-separated when the line has a tab, else whitespace); blank lines and -DOCSTART- end sentences."""
    sents, words, tags, first = [], [], [], 0
    for ln, line in read_lines(path):
        line = line.rstrip("\r\n")
        if not line.strip() or line.startswith("-DOCSTART-"):
            if words:
                sents.append((words, tags, first))
            words, tags = [], []
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        if len(cols) < 2 or not _TAG.match(cols[-1].strip()):
            raise err(path, ln, f"expected '<word> ... <tag>' with tag O, B-<type> or I-<type>, got {line!r}")
        if not words:
            first = ln
        words.append(cols[0].strip())
        tags.append(cols[-1].strip())
    if words:
        sents.append((words, tags, first))
    return sents


def iob1_to_bio(tags: Sequence[str]) -> list[str]:
    """I-X that starts a chunk (after O or another type) becomes B-X; valid BIO is unchanged."""
    out = []
    for i, t in enumerate(tags):
        if t.startswith("I-") and (i == 0 or tags[i - 1] == "O" or tags[i - 1][2:] != t[2:]):
            t = "B-" + t[2:]
        out.append(t)
    return out


def build_conll(data_dir: str | Path, scheme: str = "auto", labels: Sequence[str] | None = None) -> TaskData:
    """Generic CoNLL NER: train / dev|valid|validation|devel / test files (.txt, .tsv, .conll, .iob, .bio or
    no extension). scheme "auto" or "iob1": chunks opened by I- become B- (IOB1 -> BIO); "bio": such a
    chunk is an error. Default label list: B-<type> for the sorted types, then I-<type>, then O."""
    if scheme not in ("auto", "iob1", "bio"):
        raise ConfigError(f"conll scheme must be 'auto', 'iob1' or 'bio', got {scheme!r}")
    d = Path(data_dir)
    exts = (".txt", ".tsv", ".conll", ".iob", ".iob2", ".bio", "")
    raw = {}
    for s in ("train", "val", "test"):
        p = find_split_file(d, s, exts)
        if p is None:
            raise err(d, None, f"no {'/'.join(SPLIT_STEMS[s])} file ({', '.join(e or 'no ext' for e in exts)})")
        sents = []
        for words, tags, ln in read_conll(p):
            bio = iob1_to_bio(tags)
            if scheme == "bio" and bio != tags:
                k = next(i for i, (a, b) in enumerate(zip(tags, bio)) if a != b)
                raise err(p, ln + k, f"tag {tags[k]} opens a chunk; BIO expects B-{tags[k][2:]}")
            sents.append((words, bio, ln, p))
        raw[s] = sents
    if labels is None:
        types = sorted({t[2:] for sents in raw.values() for _, tags, _, _ in sents for t in tags if t != "O"})
        labels = [f"B-{t}" for t in types] + [f"I-{t}" for t in types] + ["O"]
    splits = {
        s: [{"id": f"{p.name}:{ln}", "tokens": w, "tags": encode_labels(t, labels, p, ln)} for w, t, ln, p in sents]
        for s, sents in raw.items()
    }
    return TaskData("conll", "ner", list(labels), **splits)
