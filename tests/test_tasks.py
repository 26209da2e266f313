"""bcmb_jax.tasks: ChemProt, Phenotype, CSV/JSONL builders and the registry; exact labels, malformed input."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from task_helpers import _by_id, _data, _write

from bcmb_jax import paper
from bcmb_jax.task_data import TaskDataError
from bcmb_jax.tasks import (
    CHEMPROT_LABELS,
    PHENOTYPE_LABELS,
    blue_ascii,
    build_task,
    chemprot_from_original,
    sentence_spans,
)


# ---------------------------------------------------------------------------------------------- ChemProt
def _blue_tsv(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["index", "sentence", "label"])
        w.writerows(rows)


def test_chemprot_blue_tsv(tmp_path):
    _blue_tsv(
        tmp_path / "train.tsv",
        [["1.T1.T2", 'The "@CHEMICAL$" binds @GENE$.', "CPR:3"], ["1.T1.T3", "@CHEMICAL$ and @GENE$.", "false"]],
    )
    _blue_tsv(tmp_path / "dev.tsv", [["2.T1.T2", "@GENE$ by @CHEMICAL$.", "CPR:9"]])
    _blue_tsv(tmp_path / "test.tsv", [["3.T1.T2", "x @GENE$ @CHEMICAL$", "CPR:5"]])
    task = build_task("ChemProt", tmp_path)
    assert task.kind == "classification" and task.labels == sorted(CHEMPROT_LABELS) == CHEMPROT_LABELS
    assert task.train == [
        {"id": "1.T1.T2", "text": 'The "@CHEMICAL$" binds @GENE$.', "label": 0},
        {"id": "1.T1.T3", "text": "@CHEMICAL$ and @GENE$.", "label": 5},
    ]
    assert task.val[0]["label"] == 4 and task.test[0]["label"] == 2
    _blue_tsv(tmp_path / "test.tsv", [["3.T1.T2", "a", "CPR:5"], ["3.T1.T3", "b", "CPR:10"]])
    with pytest.raises(TaskDataError, match=r"test\.tsv:3: label 'CPR:10'"):
        build_task("chemprot", tmp_path)


def _chemprot_corpus(root: Path) -> None:
    title, abstract = (
        "Aspirin blocks COX-2.",
        (
            "Aspirin inhibits COX-1 and COX-2 in vitro. Ibuprofen binds PTGS2, not COX-1. "
            "TNF-α rises with celecoxib (5 µM)."
        ),
    )
    doc = title + " " + abstract
    mentions = [
        ("T1", "CHEMICAL", "Aspirin", 0),
        ("T2", "GENE-Y", "COX-2", 0),
        ("T3", "CHEMICAL", "Aspirin", 10),
        ("T4", "GENE-N", "COX-1", 0),
        ("T5", "GENE-Y", "COX-2", 30),
        ("T6", "CHEMICAL", "Ibuprofen", 0),
        ("T7", "GENE-Y", "PTGS2", 0),
        ("T8", "GENE-N", "COX-1", 80),
        ("T9", "GENE-N", "TNF-α", 0),
        ("T10", "CHEMICAL", "celecoxib", 0),
        ("T11", "CHEMICAL", "α", 0),
    ]
    ents = []
    for tid, typ, text, after in mentions:
        s = doc.index(text, after)
        ents.append(f"100\t{tid}\t{typ}\t{s}\t{s + len(text)}\t{text}")
    gold = [
        "100\tCPR:3\tArg1:T3\tArg2:T4",
        "100\tCPR:4\tArg1:T3\tArg2:T4",
        "100\tCPR:4\tArg1:T3\tArg2:T5",
        "100\tCPR:4\tArg1:T1\tArg2:T5",
        "100\tCPR:5\tArg1:T6\tArg2:T7",
    ]
    for sub, a, e, g in (
        (
            "chemprot_training",
            "chemprot_training_abstracts.tsv",
            "chemprot_training_entities.tsv",
            "chemprot_training_gold_standard.tsv",
        ),
        (
            "chemprot_development",
            "chemprot_development_abstracts.tsv",
            "chemprot_development_entities.tsv",
            "chemprot_development_gold_standard.tsv",
        ),
        (
            "chemprot_test_gs",
            "chemprot_test_abstracts_gs.tsv",
            "chemprot_test_entities_gs.tsv",
            "chemprot_test_gold_standard.tsv",
        ),
    ):
        _write(root / sub / a, f"100\t{title}\t{abstract}\n")
        _write(root / sub / e, "\n".join(ents) + "\n")
        _write(root / sub / g, "\n".join(gold) + "\n")


def test_chemprot_from_original_corpus(tmp_path):
    _chemprot_corpus(tmp_path / "original")
    task = build_task("chemprot", tmp_path)  # no BLUE TSV -> built from the corpus in original/
    rows = [(r["id"], r["text"], task.labels[r["label"]]) for r in task.train]
    assert rows == [
        ("100.T1.T2", "@CHEMICAL$ blocks @GENE$.", "false"),
        ("100.T3.T4", "@CHEMICAL$ inhibits @GENE$ and COX-2 in vitro.", "CPR:4"),  # most recent gold line first
        ("100.T3.T4", "@CHEMICAL$ inhibits @GENE$ and COX-2 in vitro.", "CPR:3"),
        ("100.T3.T5", "@CHEMICAL$ inhibits COX-1 and @GENE$ in vitro.", "CPR:4"),
        ("100.T6.T8", "@CHEMICAL$ binds PTGS2, not @GENE$.", "false"),  # GENE-N genes before GENE-Y
        ("100.T6.T7", "@CHEMICAL$ binds @GENE$, not COX-1.", "CPR:5"),
        ("100.T10.T9", "@GENE$ rises with @CHEMICAL$ (5 mM).", "false"),  # BLUE-style ASCII: µ -> m
        ("100.T11.T9", "@CHEM-GENE$ rises with celecoxib (5 mM).", "false"),  # overlapping mentions
    ]  # T1-T5 (CPR:4) crosses a sentence boundary and is dropped, as in BLUE
    assert task.counts() == {"train": 8, "val": 8, "test": 8}
    uni = build_task("chemprot", tmp_path, text="unicode", source="original")
    assert uni.train[6]["text"] == "@GENE$ rises with @CHEMICAL$ (5 µM)."


def test_sentence_merge_and_ascii_rules():
    t = "It rose (p<0.05). in all rats. Results were clear. 3 of 5 rats died. The end!"
    assert [t[a:b] for a, b in sentence_spans(t)] == [
        "It rose (p<0.05). in all rats.",
        "Results were clear. 3 of 5 rats died.",
        "The end!",
    ]
    assert blue_ascii("TNF-α/β ≥ 5 µM ± 2 °C\u2009x θ Ω é") == "TNF-a/b > 5 mM + 2 *C x th W e"


def test_chemprot_malformed_entity_line(tmp_path):
    _chemprot_corpus(tmp_path)
    ent = tmp_path / "chemprot_training" / "chemprot_training_entities.tsv"
    lines = ent.read_text().splitlines()
    lines[2] = "100\tT3\tCHEMICAL\tten\t17\tAspirin"
    ent.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskDataError, match=r"chemprot_training_entities\.tsv:3: expected integer offsets"):
        build_task("chemprot", tmp_path)


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


def test_real_chemprot_dev_split_from_original_corpus():
    # The whole corpus takes ~30 s of sentence splitting (pysbd); the development split (612 abstracts) is
    # checked here. Whole-corpus counts of the same builder: train 19,219 / dev 12,102 / test 16,836
    # (BLUE's TSV: 19,460 / 11,820 / 16,943).
    rows = chemprot_from_original(_data("chemprot", "original"), "val")
    counts = Counter(r["label"] for r in rows)
    print(f"\nchemprot dev: {len(rows)} (BLUE TSV: 11820) {dict(counts)}")
    assert len(rows) == 12102
    assert counts == {"false": 9686, "CPR:4": 1094, "CPR:3": 550, "CPR:9": 457, "CPR:6": 199, "CPR:5": 116}
    # every gold relation of the split is either inside one sentence (a row) or crosses sentences (dropped)
    gold = _data("chemprot", "original") / "chemprot_development" / "chemprot_development_gold_standard.tsv"
    assert sum(v for k, v in counts.items() if k != "false") <= len(gold.read_text().splitlines()) == 2416
    assert all(("@CHEMICAL$" in r["text"] and "@GENE$" in r["text"]) or "@CHEM-GENE$" in r["text"] for r in rows)
    assert all(r["text"].isascii() for r in rows)
