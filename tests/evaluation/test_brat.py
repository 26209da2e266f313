"""evaluation/brat.py: COS, Social History, DEID and CoNLL on small fixtures, malformed input, real data."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import shared_data
from task_helpers import _by_id, _tags, _write

from bcmb_jax.errors import TaskDataError
from bcmb_jax.evaluation import brat
from bcmb_jax.evaluation.tasks import build_task

# ------------------------------------------------------------------------------------------------- COS
COS_A = """T1\tSnippet 0 41\tMild increase in left lower lobe opacity.
T2\tCos 0 13\tMild increase
T3\tLoc 17 32\tleft lower lobe
T4\tLoc 22 32\tlower lobe
T5\tAttr 33 40\topacity
T6\tDiagnosis 0 41\tMild increase in left lower lobe opacity.
T7\tSnippet 42 64\tNo change in effusion.
T8\tCos 42 51\tNo change
T9\tAttr 55 60\teffus
R1\tOVERLAP Arg1:T2 Arg2:T3
#1\tAnnotatorNotes T1\tchecked
"""
COS_B = """T1\tSnippet 0 7\tStable.
T2\tCos 0 6\tStable
T3\tSnippet 8 26\tHeart size normal.
T4\tLoc 8 13\tHeart
T5\tAttr 14 18\tsize
T6\tVal 19 25\tnormal
"""


def test_cos_snippets_and_overlaps(tmp_path):
    _write(tmp_path / "b.ann", COS_B)
    _write(tmp_path / "a.ann", COS_A)
    task = build_task("cos", tmp_path)
    assert task.labels[0] == "B-Attr" and task.labels[5] == "I-Attr" and task.labels[10] == "O"
    assert task.counts() == {"train": 2, "val": 1, "test": 1}
    ex = _by_id(task)
    assert ex["a:T1"]["tokens"] == ["Mild", "increase", "in", "left", "lower", "lobe", "opacity", "."]
    # the later Loc span overwrites "lower lobe"; Diagnosis is not a COS type
    assert _tags(task, ex["a:T1"]) == ["B-Cos", "I-Cos", "O", "B-Loc", "B-Loc", "I-Loc", "B-Attr", "O"]
    assert _tags(task, ex["a:T7"]) == ["B-Cos", "I-Cos", "O", "O", "O"]  # "effus" does not contain "effusion"
    assert _tags(task, ex["b:T1"]) == ["B-Cos", "O"]
    assert _tags(task, ex["b:T3"]) == ["B-Loc", "B-Attr", "B-Val", "O"]


@pytest.mark.parametrize("bad", ["T2\tCos 0 x\tMild", "T2 Cos 0 13 Mild", "X1\tCos 0 13\tMild", "T2\tCos 13 0\tMild"])
def test_brat_malformed_line_names_file_and_line(tmp_path, bad):
    _write(tmp_path / "a.ann", COS_A.replace("T2\tCos 0 13\tMild increase", bad))
    with pytest.raises(TaskDataError, match=r"a\.ann:2: expected .*brat annotation|a\.ann:2: expected 'T<id>"):
        brat.read_brat_ann(tmp_path / "a.ann")


# ------------------------------------------------------------------------------------------ Social History
SH_DOCS = {
    "d1": (
        "Smokes 1 pack daily. Lives with wife.",
        "T1\tTobacco 0 6\tSmokes\nT2\tAmount 7 13\t1 pack\nT3\tFrequency 14 19\tdaily\n"
        "T4\tLivingSituation 21 37\tLives with wife.\nT5\tStatus 21 26\tLives\n"
        "E1\tTobacco:T1 Amount:T2\nA1\tValue T5 current\n",
    ),
    "d2": ("Denies alcohol.", "T2\tAlcohol 7 15\talcohol.\nT1\tStatus 0 6\tDenies\n"),
    "d3": ("Walks daily.", "T1\tPhysicalActivity 0 5\tWalks\n"),
    "d4": ("Married.", "T1\tMaritalStatus 0 8\tMarried.\n"),
}


def _sh(folder: Path, docs: dict) -> None:
    for name, (txt, ann) in docs.items():
        _write(folder / f"{name}.txt", txt)
        _write(folder / f"{name}.ann", ann)


def test_social_history_tags(tmp_path):
    _sh(tmp_path, SH_DOCS)
    task = build_task("SocialHistory", tmp_path)
    assert len(task.labels) == 51 and task.labels[35] == "I-LivingSituation" and task.labels[50] == "O"
    assert "B-LivingSituation" not in task.labels and "I-PhysicalActivity" not in task.labels
    ex = _by_id(task)
    assert ex["d1"]["tokens"] == ["Smokes", "1", "pack", "daily.", "Lives", "with", "wife."]
    # "daily" does not contain the token "daily."; Status (same start, later in the file) overwrites "Lives"
    assert _tags(task, ex["d1"]) == [
        "B-Tobacco",
        "B-Amount",
        "I-Amount",
        "O",
        "B-Status",
        "I-LivingSituation",
        "I-LivingSituation",
    ]
    assert _tags(task, ex["d2"]) == ["B-Status", "B-Alcohol"]
    assert _tags(task, ex["d3"]) == ["B-PhysicalActivity", "O"]
    assert task.counts() == {"train": 2, "val": 1, "test": 1}


def test_social_history_label_outside_list_is_an_error(tmp_path):
    _sh(tmp_path, {**SH_DOCS, "d5": ("Lives alone.", "T1\tLivingSituation 0 12\tLives alone.\n")})
    with pytest.raises(TaskDataError, match=r"d5\.ann.*'B-LivingSituation' is not in the task's label list"):
        build_task("social_history", tmp_path)
    _sh(tmp_path / "b", {**SH_DOCS, "d5": ("Runs daily.", "T1\tPhysicalActivity 0 11\tRuns daily.\n")})
    with pytest.raises(TaskDataError, match=r"'I-PhysicalActivity' is not in"):
        build_task("social_history", tmp_path / "b")


def test_social_history_subfolders(tmp_path):
    for sub, names in (("train", ("d1", "d2")), ("dev", ("d3",)), ("test", ("d4",))):
        _sh(tmp_path / sub, {n: SH_DOCS[n] for n in names})
    folders = build_task("social_history", tmp_path, split="folders")
    assert [[e["id"] for e in s] for s in folders.splits().values()] == [["d1", "d2"], ["d3"], ["d4"]]
    pooled = build_task("social_history", tmp_path)  # the paper's random split over all documents
    assert sorted(_by_id(pooled)) == ["d1", "d2", "d3", "d4"] and pooled.counts() == {"train": 2, "val": 1, "test": 1}


# ------------------------------------------------------------------------------------------------ CoNLL
CONLL_TRAIN = """-DOCSTART- -X- O O

EU NNP B-NP I-ORG
rejects VBZ B-VP O
German JJ B-NP I-MISC
call NN I-NP O
. . O O

Peter NNP B-NP I-PER
Blackburn NNP I-NP I-PER
Paul NNP I-NP B-PER
"""


def test_conll_iob1_to_bio(tmp_path):
    _write(tmp_path / "train.txt", CONLL_TRAIN)
    _write(tmp_path / "valid.txt", "-DOCSTART- -X- O O\n\nBonn\tB-LOC\n")
    _write(tmp_path / "test.txt", "Rome I-LOC\nis O\n\n")
    task = build_task("conll", tmp_path)
    assert task.labels == ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER", "O"]
    assert [_tags(task, ex) for ex in task.train] == [["B-ORG", "O", "B-MISC", "O", "O"], ["B-PER", "I-PER", "B-PER"]]
    assert task.train[1]["tokens"] == ["Peter", "Blackburn", "Paul"] and task.train[1]["id"] == "train.txt:9"
    assert _tags(task, task.test[0]) == ["B-LOC", "O"] and task.counts() == {"train": 2, "val": 1, "test": 1}
    assert brat.iob1_to_bio(["B-A", "I-A", "I-B", "O", "I-B"]) == ["B-A", "I-A", "B-B", "O", "B-B"]
    with pytest.raises(TaskDataError, match=r"train\.txt:3: tag I-ORG opens a chunk"):
        build_task("conll", tmp_path, scheme="bio")


@pytest.mark.parametrize("line", ["lonely", "word NN X-FOO"])
def test_conll_malformed_line(tmp_path, line):
    _write(tmp_path / "train.txt", CONLL_TRAIN.replace("call NN I-NP O", line))
    _write(tmp_path / "dev.txt", "a O\n")
    _write(tmp_path / "test.txt", "a O\n")
    with pytest.raises(TaskDataError, match=r"train\.txt:6: expected '<word> \.\.\. <tag>'"):
        build_task("conll", tmp_path)


# -------------------------------------------------------------------------------------------- real data
# sha256 over json([words, tag names]) of each example in split order, computed by running the paper's
# dataloader (datasets 2.21.0, sklearn) on the same files: equal digests = identical examples and splits.
PAPER_DIGESTS = {
    "cos": {
        "train": (705, "533f3834f73526f60de57a5bb99b3aeab5aaeb1f703c3185b9d6a1eda5cd95fe"),
        "val": (151, "643c010b480889886b227496781080575248258cb5eb4c255331b0baf4a8b57f"),
        "test": (152, "82288d456d9d7a1bb88b59423560abf99a3c98bfade836922c1e0c0d58fa381d"),
    },
    "social_history": {
        "train": (254, "5280a5d536d086bf2566056385e87023c82351338256f7aebfa9a02f6add2426"),
        "val": (55, "97bc750da9326925ee98697a764bb142bf5fa9d71cdd93a9e668f9da4aec2dd0"),
        "test": (55, "dc6d7a090c101878e983b56f335afd5e943b78736f09a0ba522c5c01644f4ff5"),
    },
    "deid": {
        "train": (1703, "bf0b4f77721e91404e50696109469034bc27fc7b89c3edef481400ee890b5e39"),
        "val": (365, "78c84cca276274485a19618602de0fd3b9f20b86b2ab91e261b5cecaabb68083"),
        "test": (366, "8cf80a0a60b0e208ba036ab6f9705991168ec1ceef65211463bbf525762e320a"),
    },
}


def _digest(task, rows) -> str:
    h = hashlib.sha256()
    for ex in rows:
        h.update(json.dumps([ex["tokens"], _tags(task, ex)]).encode())
    return h.hexdigest()


@pytest.mark.parametrize("name", ["cos", "social_history", "deid"])
def test_real_ner_tasks_match_paper_dataloader(name):
    task = build_task(name, shared_data(name))
    print(f"\n{name}: {task.counts()}")
    got = {s: (len(rows), _digest(task, rows)) for s, rows in task.splits().items()}
    assert got == PAPER_DIGESTS[name]


def test_real_deid_gold_and_social_history_folders():
    gold = build_task("deid", shared_data("deid"), labels="gold")
    print(f"\ndeid gold: {gold.counts()}")
    assert sum(gold.counts().values()) == 2434
    b = Counter(t for rows in gold.splits().values() for ex in rows for t in _tags(gold, ex) if t[0] == "B")
    # 1,779 gold spans, two overlapping Location spans merged
    assert b == {"B-name": 824, "B-date": 528, "B-location": 366, "B-phone_nb": 53, "B-age": 4, "B-other": 3}
    folders = build_task("social_history", shared_data("social_history"), split="folders")
    print(f"social_history folders: {folders.counts()}")
    assert folders.counts() == {"train": 254, "val": 73, "test": 37}


def test_real_conll_ncbi_disease():
    task = build_task("conll", shared_data("ner_biomed", "NCBI-disease"))
    print(f"\nNCBI-disease: {task.counts()}")
    assert task.counts() == {"train": 5424, "val": 923, "test": 940} and task.labels == ["B-Disease", "I-Disease", "O"]
    # every chunk already starts with B- (6,881 B-Disease lines in the files): the BIO conversion adds none
    assert sum(t == 0 for rows in task.splits().values() for ex in rows for t in ex["tags"]) == 6881
