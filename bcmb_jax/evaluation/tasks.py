"""The registry of every evaluation task, and the Phenotype and generic CSV/JSONL builders.

`build_task(name, data_dir, **options)` returns a `TaskData` (`task_data.py`). Splits, label orders
and tokenization follow the dataloader of the paper's code (arXiv 2506.10896).
ChemProt lives in `chemprot.py`; the NER corpora in `brat.py` (COS, Social History, CoNLL)
and `deid.py`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from bcmb_jax.errors import ConfigError, TaskDataError
from bcmb_jax.evaluation import brat, deid
from bcmb_jax.evaluation.chemprot import build_chemprot
from bcmb_jax.evaluation.task_data import (
    SPLIT_STEMS,
    TaskData,
    encode_labels,
    err,
    find_split_file,
    hf_three_way,
    read_lines,
    take,
    utf8_lines,
)

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
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(BUILDERS)}")
    return key


def task_options(name: str) -> list[str]:
    """The keyword options a task's builder takes besides data_dir (e.g. ["labels"] for deid)."""
    import inspect

    return [p for p in inspect.signature(BUILDERS[canonical(name)]).parameters if p != "data_dir"]


def build_task(name: str, data_dir: str | Path, **options) -> TaskData:
    """Build a task by name (chemprot, phenotype, cos, social_history, deid, conll, csv, jsonl). Options go
    to the builder; one it does not take is an error naming those it does."""
    key = canonical(name)
    accepted = task_options(key)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}: not a protocol key and not an option of task {name!r} "
                          f"(its options: {accepted or 'none'}; see --help for protocol keys)")
    if not Path(data_dir).exists():
        raise TaskDataError(f"{data_dir}: data directory does not exist")
    return BUILDERS[key](data_dir, **options)
