"""atomic.py: the atomic writer and the strict JSON reader."""

from __future__ import annotations

import pytest

from bcmb_jax import atomic


def test_atomic_write_text_and_refusals(tmp_path):
    f = tmp_path / "a.txt"
    atomic.write_text(f, "one\n")
    atomic.write_text(f, "two\n")
    assert f.read_text() == "two\n" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    with pytest.raises(RuntimeError), atomic.atomic(f, overwrite=True) as tmp:
        tmp.write_text("three\n")
        raise RuntimeError("interrupted")
    assert f.read_text() == "two\n" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    with pytest.raises(FileExistsError, match="already exists"), atomic.atomic(f) as tmp:
        pass


class Bad(ValueError):
    pass


@pytest.mark.parametrize("content, message", [
    (None, "no such file (expected an HF config.json)"),
    ('{\n  "a": 1,\n  oops\n}', ":3: invalid JSON (Expecting property name enclosed in double quotes at column 3); "
                                   "expected an HF config.json"),
    (b'{"a": "caf\xe9"}', "not UTF-8 text (byte at offset 10); expected an HF config.json"),
    ("[1, 2]", "holds a JSON list; expected an HF config.json"),
])
def test_read_json_names_the_file_and_what_was_expected(tmp_path, content, message):
    f = tmp_path / "config.json"
    if isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content)
    with pytest.raises(Bad) as e:
        atomic.read_json(f, Bad, "an HF config.json")
    assert str(e.value) == f"{f}{'' if message.startswith(':') else ': '}{message}"


def test_read_json_returns_the_object(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"hidden_size": 64, "layers": [1, 2]}')
    assert atomic.read_json(f, Bad) == {"hidden_size": 64, "layers": [1, 2]}
