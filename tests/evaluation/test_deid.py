"""evaluation/deid.py: silver mask categories, gold spans, malformed records."""

from __future__ import annotations

from pathlib import Path

import pytest
from task_helpers import _by_id, _tags, _write

from bcmb_jax.errors import TaskDataError
from bcmb_jax.evaluation.tasks import build_task

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
