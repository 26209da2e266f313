"""Task builders and metrics: exact tags/labels on small fixtures, malformed input, real-data counts."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bcmb_jax import brat, metrics, paper
from bcmb_jax.task_data import TaskDataError, hf_three_way
from bcmb_jax.tasks import (
    CHEMPROT_LABELS,
    PHENOTYPE_LABELS,
    blue_ascii,
    build_task,
    chemprot_from_original,
    sentence_spans,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _data(*parts: str) -> Path:
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _by_id(task) -> dict[str, dict]:
    return {ex["id"]: ex for rows in task.splits().values() for ex in rows}


def _tags(task, ex) -> list[str]:
    return [task.labels[t] for t in ex["tags"]]


# ------------------------------------------------------------------------------------------------ splits
def test_hf_split_matches_datasets_reference():
    # Printed by datasets 2.21.0 (the paper's version): Dataset.from_dict({"i": range(n)}).train_test_split(...).
    tr, va, te = hf_three_way(10, 0.2, 0.125, 42, val_first=False)  # Phenotype: 0.2 then 0.125 of the rest
    assert (tr.tolist(), va.tolist(), te.tolist()) == ([4, 3, 8, 1, 7, 9, 0], [2], [5, 6])
    tr, va, te = hf_three_way(23, 0.3, 0.5, 42, val_first=True)  # COS / Social History: 0.3 then 0.5
    assert tr.tolist() == [6, 9, 3, 0, 19, 12, 5, 11, 14, 21, 2, 4, 20, 1, 13, 8]
    assert (va.tolist(), te.tolist()) == ([10, 15, 18], [22, 17, 7, 16])


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


# ------------------------------------------------------------------------------------------------- DEID
DEID_RECORDS = [
    (
        "1",
        "1",
        "Pt John Smith seen by Dr. Jones.\nCall 555-1234 or pager 8812.\n",
        "Pt [**Known patient firstname 12**] [**Known patient lastname 5**] seen by Dr. [**Last Name (STitle) 7**].\n"
        "Call [**Telephone/Fax (1) 22**] or pager [**Pager number 33**].\n",
    ),
    (
        "1",
        "2",
        "Aged 91 at Mercy Hospital on 3/14 and 2010-2011. Mail a@b.org re Acme Corp via X.\n",
        "Aged [**Age over 90 **] at [**Hospital 3**] on [**03-14**] and [**Date range (1) 9**]. Mail "
        "[**E-mail address 4**] re [**Company 2**] via [**  **].\n",
    ),
    ("2", "1", "No PHI here.\n", "No PHI here.\n"),
    ("2", "2", "Seen at Boston today.\n", "Seen at [**Location (un) 1**] today.\n"),
]


def _deid(root: Path, records=DEID_RECORDS) -> None:
    def fmt(i: int) -> str:
        return "".join(f"START_OF_RECORD={p}||||{r}||||\n{r_[i]}||||END_OF_RECORD\n" for p, r, *r_ in records)

    _write(root / "id.text", fmt(0))
    _write(root / "GSoutput" / "id.res", fmt(1))
    body = records[0][2]
    spans = [
        ("PTName", "John"),
        ("PTName", "Smith"),
        ("HCPName", "Dr. Jones"),
        ("HCPName", "Jones"),
        ("Phone", "555-1234"),
    ]
    _write(
        root / "id-phi.phrase", "".join(f"1 1 {body.index(t)} {body.index(t) + len(t)} {typ} {t}\n" for typ, t in spans)
    )


def test_deid_silver_categories(tmp_path):
    _deid(tmp_path)
    task = build_task("DEID", tmp_path)
    assert task.labels == [
        "O",
        "B-age",
        "B-date",
        "B-location",
        "B-name",
        "B-other",
        "B-phone_nb",
        "I-age",
        "I-date",
        "I-location",
        "I-name",
        "I-other",
        "I-phone_nb",
    ]
    assert task.counts() == {"train": 2, "val": 1, "test": 1}
    ex = _by_id(task)
    assert list(zip(ex["1-1"]["tokens"], _tags(task, ex["1-1"]))) == [
        ("Pt", "O"),
        ("John", "B-name"),
        ("Smith", "B-name"),
        ("seen", "O"),
        ("by", "O"),
        ("Dr.", "O"),
        ("Jones", "B-name"),
        (".", "O"),
        ("Call", "O"),
        ("555-1234", "B-phone_nb"),
        ("or", "O"),
        ("pager", "O"),
        ("8812", "B-phone_nb"),
        (".", "O"),
    ]
    assert list(zip(ex["1-2"]["tokens"], _tags(task, ex["1-2"]))) == [
        ("Aged", "O"),
        ("91", "B-age"),
        ("at", "O"),
        ("Mercy", "B-location"),
        ("Hospital", "I-location"),
        ("on", "O"),
        ("3/14", "B-date"),
        ("and", "O"),
        ("2010-2011", "B-date"),
        (".", "O"),
        ("Mail", "O"),
        ("a@b.org", "B-other"),
        ("re", "O"),
        ("Acme", "B-other"),
        ("Corp", "I-other"),
        ("via", "O"),
        ("X", "B-other"),
        (".", "O"),
    ]
    assert _tags(task, ex["2-2"]) == ["O", "O", "B-location", "O"]


def test_deid_gold_spans(tmp_path):
    _deid(tmp_path)
    gold = build_task("deid", tmp_path, labels="gold")
    silver = build_task("deid", tmp_path)
    assert [[e["id"] for e in s] for s in gold.splits().values()] == [
        [e["id"] for e in s] for s in silver.splits().values()
    ]
    ex = _by_id(gold)["1-1"]
    assert list(zip(ex["tokens"], _tags(gold, ex))) == [
        ("Pt", "O"),
        ("John", "B-name"),
        ("Smith", "B-name"),
        ("seen", "O"),
        ("by", "O"),
        ("Dr.", "B-name"),
        ("Jones", "I-name"),
        (".", "O"),
        ("Call", "O"),
        ("555-1234", "B-phone_nb"),
        ("or", "O"),
        ("pager", "O"),
        ("8812.", "O"),
    ]  # overlapping HCPName spans merge; text outside spans is whitespace-split
    assert all(t == 0 for t in _by_id(gold)["2-2"]["tags"])


def test_deid_errors(tmp_path):
    recs = [list(r) for r in DEID_RECORDS]
    recs[3][3] = "Seen at [**Weird thing 1**] today.\n"
    _deid(tmp_path, recs)
    with pytest.raises(TaskDataError, match=r"id\.res:\d+: mask '\[\*\*Weird thing 1\*\*\]' matches no DEID"):
        build_task("deid", tmp_path)
    _deid(tmp_path)
    with open(tmp_path / "id-phi.phrase", "a") as f:
        f.write("2 2 8 14 Planet Boston\n")
    with pytest.raises(TaskDataError, match=r"id-phi\.phrase:6: PHI type 'Planet'"):
        build_task("deid", tmp_path, labels="gold")


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


# ---------------------------------------------------------------------------------------------- metrics
def test_ner_metrics_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "I-ORG", "I-ORG"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "B-ORG", "I-ORG"]]
    # gold entities PER, LOC, ORG (an I- start opens a chunk in the default non-strict mode); predicted PER,
    # ORG, ORG: PER and the second ORG match -> P = R = 2/3; 5 of 7 tags equal
    m = metrics.ner_metrics(gold, pred)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(5 / 7)
    assert metrics.ner_metrics([["O"]], [["O"]])["f1"] == 0.0
    with pytest.raises(ValueError):
        metrics.ner_metrics([["O", "O"]], [["O"]])


def test_classification_metrics_by_hand():
    # per class F1: 0 -> P 1, R 1/2 = 2/3; 1 -> P 1/3, R 1 = 1/2; 2 -> no prediction = 0; supports 2, 1, 1
    m = metrics.classification_metrics([0, 0, 1, 2], [0, 1, 1, 1], ["a", "b", "c"])
    assert m["weighted_f1"] == pytest.approx((2 * 2 / 3 + 1 / 2) / 4)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 3)
    assert m["micro_f1"] == pytest.approx(0.5) and m["accuracy"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"label ids \[3\]"):
        metrics.classification_metrics([0, 3], [0, 0], ["a", "b"])


def test_multilabel_metrics_by_hand():
    gold = np.array([[1, 0], [1, 1], [0, 0]])
    pred = metrics.logits_to_multihot(np.array([[2.0, 0.5], [-1.0, -0.1], [0.0, -3.0]]))
    assert pred.tolist() == [[1, 1], [0, 0], [0, 0]]
    m = metrics.multilabel_metrics(gold, pred)
    # label 0: P 1, R 1/2 -> 2/3 (support 2); label 1: TP 0 -> 0 (support 1); micro TP 1, FP 1, FN 2
    assert m["weighted_f1"] == pytest.approx(4 / 9) and m["macro_f1"] == pytest.approx(1 / 3)
    assert m["micro_f1"] == pytest.approx(0.4) and m["subset_accuracy"] == pytest.approx(1 / 3)


def test_summarize():
    s = metrics.summarize(
        {"42": {"f1": 0.1, "note": "x"}, "43": {"f1": 0.4}, "44": {"f1": 0.2, "acc": 1.0}, "45": {"f1": 0.3}}
    )
    assert s["f1"] == pytest.approx({"median": 0.25, "mean": 0.25, "min": 0.1, "max": 0.4})
    assert s["acc"] == {"median": 1.0, "mean": 1.0, "min": 1.0, "max": 1.0} and "note" not in s


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
    task = build_task(name, _data(name))
    print(f"\n{name}: {task.counts()}")
    got = {s: (len(rows), _digest(task, rows)) for s, rows in task.splits().items()}
    assert got == PAPER_DIGESTS[name]


def test_real_deid_gold_and_social_history_folders():
    gold = build_task("deid", _data("deid"), labels="gold")
    print(f"\ndeid gold: {gold.counts()}")
    assert sum(gold.counts().values()) == 2434
    b = Counter(t for rows in gold.splits().values() for ex in rows for t in _tags(gold, ex) if t[0] == "B")
    # 1,779 gold spans, two overlapping Location spans merged
    assert b == {"B-name": 824, "B-date": 528, "B-location": 366, "B-phone_nb": 53, "B-age": 4, "B-other": 3}
    folders = build_task("social_history", _data("social_history"), split="folders")
    print(f"social_history folders: {folders.counts()}")
    assert folders.counts() == {"train": 254, "val": 73, "test": 37}


def test_real_conll_ncbi_disease():
    task = build_task("conll", _data("ner_biomed", "NCBI-disease"))
    print(f"\nNCBI-disease: {task.counts()}")
    assert task.counts() == {"train": 5424, "val": 923, "test": 940} and task.labels == ["B-Disease", "I-Disease", "O"]
    # every chunk already starts with B- (6,881 B-Disease lines in the files): the BIO conversion adds none
    assert sum(t == 0 for rows in task.splits().values() for ex in rows for t in ex["tags"]) == 6881


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
