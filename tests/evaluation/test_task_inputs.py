"""Malformed evaluation inputs: every builder names `file:line` and what it expected, the same way."""

from __future__ import annotations

from pathlib import Path

import pytest
from task_helpers import _write

from bcmb_jax.errors import TaskDataError
from bcmb_jax.evaluation.tasks import build_task

COS_ANN = "T1\tSnippet 0 20\tMild increase noted.\nT2\tCos 0 13\tMild increase\n"
COS_TXT = "Mild increase noted."
BAD_BYTE = b"\xff"


def _cos(d: Path, ann: str = COS_ANN) -> None:
    _write(d / "a.ann", ann)
    _write(d / "a.txt", COS_TXT)


def _sh(d: Path, ann: str = "T1\tTobacco 0 6\tSmokes\n", txt: str = "Smokes daily.") -> None:
    for i in range(4):
        _write(d / f"d{i}.txt", txt if i == 2 else "Smokes daily.")
        _write(d / f"d{i}.ann", ann if i == 2 else "T1\tTobacco 0 6\tSmokes\n")


def _deid(d: Path, text: str = "Pt John seen.\n", phrase: str = "1 1 3 7 PTName John\n") -> None:
    _write(d / "id.text", f"START_OF_RECORD=1||||1||||\n{text}||||END_OF_RECORD\n")
    _write(d / "id-phi.phrase", phrase)


def _splits(d: Path, ext: str, train: str, other: str) -> None:
    _write(d / f"train{ext}", train)
    _write(d / f"dev{ext}", other)
    _write(d / f"test{ext}", other)


def _bytes(path: Path, before: str, after: str = "\n") -> None:
    path.write_bytes(before.encode() + BAD_BYTE + after.encode())


def case_cos_span_past_text(d):
    _cos(d, COS_ANN + "T3\tAttr 14 25\tnoted.xxxxx\n")
    return "cos", {}, r"a\.ann:3: span 14-25 runs past the end of a\.txt \(20 characters\); expected offsets inside"


def case_cos_bad_utf8(d):
    _cos(d)
    _bytes(d / "a.ann", COS_ANN + "T3\tAttr 14 19\tnoted")
    return "cos", {}, r"a\.ann:3: byte 0xff at column 20 is not valid UTF-8 \(expected a UTF-8 text file\)"


def case_cos_bad_line(d):
    _cos(d, COS_ANN + "T3\tAttr 19 14\tnoted\n")
    return "cos", {}, r"a\.ann:3: expected 'T<id><TAB><type> <start> <end>.* start <= end"


def case_sh_span_past_text(d):
    _sh(d, ann="T1\tTobacco 0 60\tSmokes\n")
    return "social_history", {}, r"d2\.ann:1: span 0-60 runs past the end of d2\.txt \(13 characters\)"


def case_sh_bad_utf8(d):
    _sh(d)
    _bytes(d / "d2.txt", "Smokes daily.\nDrinks ")
    return "social_history", {}, r"d2\.txt:2: byte 0xff at column 8 is not valid UTF-8"


def case_sh_label(d):
    _sh(d, ann="T1\tTobacco 0 6\tSmokes\nT2\tHobby 7 13\tdaily.\n")
    return "social_history", {}, r"d2\.ann:2: label 'B-Hobby' is not in the task's label list"


def case_deid_gold_span_past_record(d):
    _deid(d, phrase="1 1 3 7 PTName John\n1 1 3 70 PTName John\n")
    return "deid", {"labels": "gold"}, r"id-phi\.phrase:2: span 3-70 runs past the end of record 1/1"


def case_deid_gold_bad_line(d):
    _deid(d, phrase="1 1 3 7 PTName John\n1 1 three 7 PTName John\n")
    return "deid", {"labels": "gold"}, r"id-phi\.phrase:2: expected '<pid> <record> <start> <end> <type> <text>'"


def case_deid_gold_unknown_record(d):
    _deid(d, phrase="1 1 3 7 PTName John\n9 9 3 7 PTName John\n")
    return "deid", {"labels": "gold"}, r"id-phi\.phrase:2: record 9/9 is not in id\.text"


def case_deid_bad_utf8(d):
    _deid(d)
    (d / "id.text").write_bytes(b"START_OF_RECORD=1||||1||||\nPt " + BAD_BYTE + b" seen.\n||||END_OF_RECORD\n")
    return "deid", {"labels": "gold"}, r"id\.text:2: byte 0xff at column 4 is not valid UTF-8"


def case_conll_bad_utf8(d):
    _splits(d, ".txt", "aspirin B-DRUG\n", "a O\n")
    _bytes(d / "dev.txt", "a O\n\nb")
    return "conll", {}, r"dev\.txt:3: byte 0xff at column 2 is not valid UTF-8"


def case_conll_bad_tag(d):
    _splits(d, ".txt", "aspirin B-DRUG\nx DRUG\n", "a O\n")
    return "conll", {}, r"train\.txt:2: expected '<word> \.\.\. <tag>' with tag O, B-<type> or I-<type>"


def case_csv_short_row(d):
    _splits(d, ".csv", "text,label\nfine,a\nshort\n", "text,label\nx,a\n")
    return "csv", {}, r"train\.csv:3: expected 2 columns as in the header, got a row with fewer"


def case_csv_bad_utf8(d):
    _splits(d, ".csv", "text,label\nfine,a\n", "text,label\nx,a\n")
    _bytes(d / "test.csv", "text,label\nx,a\ny")
    return "csv", {}, r"test\.csv:3: byte 0xff at column 2 is not valid UTF-8"


def case_csv_label(d):
    _splits(d, ".csv", "text,label\nfine,a\nalso,b\n", "text,label\nx,a\n")
    return "csv", {"labels": ["a"]}, r"train\.csv:3: label 'b' is not in the task's label list \['a'\]"


def case_jsonl_not_object(d):
    _splits(d, ".jsonl", '{"text": "x", "label": "a"}\n[1, 2]\n', '{"text": "x", "label": "a"}\n')
    return "jsonl", {}, r"train\.jsonl:2: expected a JSON object, got list"


def case_jsonl_bad_utf8(d):
    _splits(d, ".jsonl", '{"text": "x", "label": "a"}\n', '{"text": "x", "label": "a"}\n')
    _bytes(d / "dev.jsonl", '{"text": "x", "label": "a"}\n{"text": "', '"}\n')
    return "jsonl", {}, r"dev\.jsonl:2: byte 0xff at column 11 is not valid UTF-8"


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_input_names_file_line_and_expectation(case, tmp_path):
    task, options, pattern = CASES[case](tmp_path)
    with pytest.raises(TaskDataError, match=pattern) as info:
        build_task(task, tmp_path, **options)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    assert str(info.value).startswith(str(tmp_path))  # the full path of the culprit file
