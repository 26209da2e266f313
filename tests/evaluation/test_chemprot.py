"""evaluation/chemprot.py: BLUE TSV and BioCreative VI corpus builders, BLUE's sentence and ASCII rules, bad input."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from conftest import shared_data
from task_helpers import _write

from bcmb_jax.errors import TaskDataError
from bcmb_jax.evaluation.chemprot import CHEMPROT_LABELS, blue_ascii, chemprot_from_original, sentence_spans
from bcmb_jax.evaluation.tasks import build_task


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


def test_real_chemprot_dev_split_from_original_corpus():
    # The whole corpus takes ~30 s of sentence splitting (pysbd); the development split (612 abstracts) is
    # checked here. Whole-corpus counts of the same builder: train 19,219 / dev 12,102 / test 16,836
    # (BLUE's TSV: 19,460 / 11,820 / 16,943).
    rows = chemprot_from_original(shared_data("chemprot", "original"), "val")
    counts = Counter(r["label"] for r in rows)
    print(f"\nchemprot dev: {len(rows)} (BLUE TSV: 11820) {dict(counts)}")
    assert len(rows) == 12102
    assert counts == {"false": 9686, "CPR:4": 1094, "CPR:3": 550, "CPR:9": 457, "CPR:6": 199, "CPR:5": 116}
    # every gold relation of the split is either inside one sentence (a row) or crosses sentences (dropped)
    gold = shared_data("chemprot", "original") / "chemprot_development" / "chemprot_development_gold_standard.tsv"
    assert sum(v for k, v in counts.items() if k != "false") <= len(gold.read_text().splitlines()) == 2416
    assert all(("@CHEMICAL$" in r["text"] and "@GENE$" in r["text"]) or "@CHEM-GENE$" in r["text"] for r in rows)
    assert all(r["text"].isascii() for r in rows)
