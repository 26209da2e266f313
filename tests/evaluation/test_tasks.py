"""evaluation/tasks.py: Phenotype, CSV/JSONL builders and the registry; exact labels, malformed input."""

from __future__ import annotations

import csv

import pytest
from task_helpers import _by_id, _write

from bcmb_jax.errors import TaskDataError
from bcmb_jax.evaluation import paper
from bcmb_jax.evaluation.tasks import PHENOTYPE_LABELS, build_task


# --------------------------------------------------------------------------------------------- Phenotype
def test_phenotype_filter_join_and_split(tmp_path):
    cols = ["Hospital.Admission.ID", "subject.id", *PHENOTYPE_LABELS[:7], "NONE", *PHENOTYPE_LABELS[7:], "ROW_ID"]
    rows = []
    for i in range(12):
        flags = {c: 0 for c in PHENOTYPE_LABELS}
        flags[PHENOTYPE_LABELS[i % 14]] = 1
        none = 0
        if i == 3:  # NONE=1 with a phenotype: dropped
            none = 1
        if i == 5:  # NONE=1 alone: all-zero vector
            none, flags = 1, {c: 0 for c in PHENOTYPE_LABELS}
        rows.append({"Hospital.Admission.ID": 9, "subject.id": 8, **flags, "NONE": none, "ROW_ID": 100 + i})
    with open(tmp_path / "ACTdb102003.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    with open(tmp_path / "NOTEEVENTS.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ROW_ID", "SUBJECT_ID", "CATEGORY", "TEXT"])
        for i in range(12):
            if i != 8:  # row 108 has no note: dropped by the inner join
                w.writerow([100 + i, 8, "Nursing", f'Note {i},\n"quoted" line'])
        w.writerow([999, 8, "Nursing", "unreferenced"])
    task = build_task("phenotype", tmp_path)
    kept = [100 + i for i in range(12) if i not in (3, 8)]  # 10 examples in annotation order
    ids = {s: [int(ex["id"]) for ex in rows] for s, rows in task.splits().items()}
    assert ids == {"train": [kept[i] for i in (4, 3, 8, 1, 7, 9, 0)], "val": [kept[2]], "test": [kept[5], kept[6]]}
    ex = _by_id(task)
    assert ex["105"]["labels"] == [0.0] * 14 and ex["102"]["text"] == 'Note 2,\n"quoted" line'
    assert ex["110"]["labels"] == [0.0] * 10 + [1.0] + [0.0] * 3 and task.kind == "multilabel"


# ------------------------------------------------------------------------------------------- CSV / JSONL
def test_csv_single_and_multilabel(tmp_path):
    _write(tmp_path / "train.csv", 'text,label\n"a, b",pos\nc,neg\n')
    _write(tmp_path / "dev.csv", "text,label\nd,pos\n")
    _write(tmp_path / "test.csv", "text,label\ne,mid\n")
    task = build_task("csv", tmp_path)
    assert task.kind == "classification" and task.labels == ["mid", "neg", "pos"]
    assert task.train == [
        {"id": "train.csv:2", "text": "a, b", "label": 2},
        {"id": "train.csv:3", "text": "c", "label": 1},
    ]
    for name in ("train", "dev", "test"):
        _write(tmp_path / f"{name}.csv", "text,tags\nx,b;a\ny,\n")
    multi = build_task("csv", tmp_path, label_field="tags", label_sep=";")
    assert multi.kind == "multilabel" and multi.labels == ["a", "b"]
    assert [r["labels"] for r in multi.train] == [[1.0, 1.0], [0.0, 0.0]]
    with pytest.raises(TaskDataError, match=r"train\.csv:2: label 'b' is not in"):
        build_task("csv", tmp_path, label_field="tags", label_sep=";", labels=["a"])


def test_jsonl_lists_and_errors(tmp_path):
    _write(tmp_path / "train.jsonl", '{"text": "x", "label": ["b", "a"]}\n\n{"text": "y", "label": []}\n')
    _write(tmp_path / "dev.jsonl", '{"text": "z", "label": ["c"], "id": "z1"}\n')
    _write(tmp_path / "test.jsonl", '{"text": "w", "label": ["a"]}\n')
    task = build_task("jsonl", tmp_path)
    assert task.kind == "multilabel" and task.labels == ["a", "b", "c"]
    assert task.train[0]["labels"] == [1.0, 1.0, 0.0] and task.val[0] == {
        "id": "z1",
        "text": "z",
        "labels": [0, 0, 1.0],
    }
    _write(tmp_path / "test.jsonl", '{"text": "w", "label": ["a"]}\n{"body": "v", "label": ["a"]}\n')
    with pytest.raises(TaskDataError, match=r"test\.jsonl:2: missing field 'text'"):
        build_task("jsonl", tmp_path)
    _write(tmp_path / "test.jsonl", "{not json\n")
    with pytest.raises(TaskDataError, match=r"test\.jsonl:1: expected one JSON object per line"):
        build_task("jsonl", tmp_path)


def test_registry_and_learning_rates(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'mednli'"):
        build_task("mednli", tmp_path)
    with pytest.raises(TaskDataError, match="does not exist"):
        build_task("cos", tmp_path / "missing")
    assert paper.default_lr("chemprot", "base") == (5e-5, "paper Table 5 (chemprot, base)")
    assert paper.default_lr("social_history", "large")[0] == 2e-4
    assert paper.default_lr("cos", None)[1].startswith("fallback 2e-05")
    assert paper.default_lr("csv", "base")[1].startswith("fallback 2e-05 (no Table 5 entry")
