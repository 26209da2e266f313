"""evaluation/task_data.py: HF splits, label encoding, UTF-8 reading with file:line errors."""

from __future__ import annotations

import pytest

from bcmb_jax.errors import TaskDataError
from bcmb_jax.evaluation.task_data import encode_labels, hf_three_way, read_lines, read_text


# ------------------------------------------------------------------------------------------------ splits
def test_hf_split_matches_datasets_reference():
    # Printed by datasets 2.21.0 (the paper's version): Dataset.from_dict({"i": range(n)}).train_test_split(...).
    tr, va, te = hf_three_way(10, 0.2, 0.125, 42, val_first=False)  # Phenotype: 0.2 then 0.125 of the rest
    assert (tr.tolist(), va.tolist(), te.tolist()) == ([4, 3, 8, 1, 7, 9, 0], [2], [5, 6])
    tr, va, te = hf_three_way(23, 0.3, 0.5, 42, val_first=True)  # COS / Social History: 0.3 then 0.5
    assert tr.tolist() == [6, 9, 3, 0, 19, 12, 5, 11, 14, 21, 2, 4, 20, 1, 13, 8]
    assert (va.tolist(), te.tolist()) == ([10, 15, 18], [22, 17, 7, 16])


def test_undecodable_bytes_name_file_and_line(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("first line\nsecond caf\u00e9\n".encode() + b"third \xff line\n")
    lines = read_lines(p)
    assert [next(lines)[0], next(lines)[0]] == [1, 2]  # the lines before the bad byte stream as usual
    with pytest.raises(TaskDataError, match=r"a\.txt:3: byte 0xff at column 7 is not valid UTF-8 \(expected a UTF-8"):
        list(read_lines(p))
    with pytest.raises(TaskDataError, match=r"a\.txt:3: byte 0xff at column 7 is not valid UTF-8"):
        read_text(p)
    with pytest.raises(TaskDataError, match=r"missing\.txt: cannot read"):
        read_text(tmp_path / "missing.txt")


def test_encode_labels_names_the_label_and_the_list():
    assert encode_labels(["O", "B-X"], ["B-X", "O"], "f.txt", 3) == [1, 0]
    with pytest.raises(TaskDataError, match=r"^f\.txt:3: label 'I-Y' is not in the task's label list"):
        encode_labels(["I-Y"], ["B-X", "O"], "f.txt", 3)


def test_a_label_only_in_the_test_split_is_warned_about(caplog):
    from bcmb_jax.evaluation.encoding import TextEncoder, encode_task
    from bcmb_jax.evaluation.task_data import TaskData

    def rows(*labels):
        return [{"id": str(i), "text": "a b", "label": y} for i, y in enumerate(labels)]

    task = TaskData("t", "classification", ["no", "yes", "rare"], rows(0, 1), rows(0, 1), rows(0, 2))
    assert task.test_only_labels() == ["rare"]

    class Tok:
        def encode_batch(self, texts, add_special_tokens=False):
            return [type("E", (), {"ids": [7, 8]})() for _ in texts]

    encode_task(task, TextEncoder(Tok(), 1, 2, 0, None), 16)
    assert "label(s) ['rare'] occur in the test split but in no training example" in caplog.text
    ner = TaskData("n", "ner", ["O", "B-X", "I-X", "B-Y"], [{"id": "0", "tokens": ["a"], "tags": [1]}], [],
                   [{"id": "1", "tokens": ["a"], "tags": [3]}])
    assert ner.test_only_labels() == ["Y"]
