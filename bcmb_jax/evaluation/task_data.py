"""Task data types and the helpers every task builder shares: splits, label encoding, input errors.

A `TaskData` holds train/val/test example lists:
  classification {"text", "label": int}; multilabel {"text", "labels": multi-hot floats};
  ner {"tokens": words, "tags": one label id per word}; every example also has an "id".
Every malformed input raises `TaskDataError` with `file:line: what was wrong, what was expected`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bcmb_jax.errors import TaskDataError

KINDS = ("classification", "multilabel", "ner")
# File stems that name each split in a data directory.
SPLIT_STEMS = {"train": ("train",), "val": ("dev", "valid", "validation", "devel"), "test": ("test",)}


@dataclass
class TaskData:
    name: str
    kind: str  # "classification" | "multilabel" | "ner"
    labels: list[str]  # label names by id (NER: the BIO tag list)
    train: list[dict]
    val: list[dict]
    test: list[dict]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"TaskData.kind must be one of {KINDS}, got {self.kind!r}")

    def splits(self) -> dict[str, list[dict]]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits().items()}

    def labels_seen(self, split: str) -> set[str]:
        """The label names the examples of a split carry (NER: entity types, without B-/I-)."""
        seen: set[str] = set()
        for ex in self.splits()[split]:
            if self.kind == "classification":
                seen.add(self.labels[ex["label"]])
            elif self.kind == "multilabel":
                seen |= {self.labels[i] for i, v in enumerate(ex["labels"]) if v}
            else:
                seen |= {self.labels[i].split("-", 1)[-1] for i in ex["tags"] if self.labels[i] != "O"}
        return seen

    def test_only_labels(self) -> list[str]:
        """Labels of the test split that no training example carries (the model can never learn them)."""
        return sorted(self.labels_seen("test") - self.labels_seen("train"))


def err(path: Path | str, line: int | None, msg: str) -> TaskDataError:
    """`path:line: msg` (or `path: msg` when no line applies)."""
    where = f"{path}:{line}" if line is not None else str(path)
    return TaskDataError(f"{where}: {msg}")


def _bad_utf8(path: Path, data: bytes, e: UnicodeDecodeError) -> TaskDataError:
    line = data.count(b"\n", 0, e.start) + 1
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    return err(path, line, f"byte 0x{data[e.start]:02x} at column {column} is not valid UTF-8 "
                           "(expected a UTF-8 text file)")


def read_text(path: Path) -> str:
    """A UTF-8 file's text; an undecodable byte is an error naming its line."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise err(path, None, f"cannot read ({e.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad_utf8(Path(path), data, e) from None


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line with its newline) of a UTF-8 file, streamed; an undecodable byte names its line."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise err(path, None, f"cannot read ({e.strerror})") from None
    with f:
        for ln, raw in enumerate(f, 1):
            try:
                yield ln, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise err(path, ln, f"byte 0x{raw[e.start]:02x} at column {e.start + 1} is not valid UTF-8 "
                                    "(expected a UTF-8 text file)") from None


def utf8_lines(path: Path) -> Iterator[str]:
    """The lines of `read_lines` alone (for `csv.reader`, whose line_num then counts file lines)."""
    return (line for _, line in read_lines(path))


def encode_labels(names: Iterable[str], labels: Sequence[str], path: Path | str, line: int | None = None) -> list[int]:
    """Map label names to ids; a name outside `labels` is an error (never silently another label)."""
    index = {name: i for i, name in enumerate(labels)}
    out = []
    for name in names:
        if name not in index:
            raise err(path, line, f"label {name!r} is not in the task's label list {list(labels)}")
        out.append(index[name])
    return out


def find_split_file(folder: Path, split: str, exts: Sequence[str]) -> Path | None:
    """The first `<stem><ext>` of the split that exists in folder (stems: `SPLIT_STEMS`)."""
    for stem in SPLIT_STEMS[split]:
        for ext in exts:
            p = folder / f"{stem}{ext}"
            if p.is_file():
                return p
    return None


def hf_train_test_split(n: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of HF `datasets` `Dataset.train_test_split(test_size=float, seed=seed)` (shuffle=True).

    datasets (2.x, the paper's 2.21) takes n_test = ceil(test_size * n), n_train = n - n_test and one
    permutation from `np.random.default_rng(seed)`: test = perm[:n_test], train = perm[n_test:], both kept in
    permutation order.
    """
    n_test = math.ceil(test_size * n)
    if not 0 < test_size < 1 or n_test >= n:
        raise TaskDataError(f"test_size={test_size} leaves no training rows out of {n}")
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_test:], perm[:n_test]


def hf_three_way(n: int, test_size: float, second: float, seed: int = 42, *, val_first: bool = True):
    """(train, val, test) indices of two chained HF splits.

    val_first=False: test = first split's test part, val = `second` of the rest (Phenotype: 0.2 then 0.125).
    val_first=True: the first split's test part is split again, val = its train part, test = its test part
    (COS and Social History: 0.3 then 0.5).
    """
    rest, held = hf_train_test_split(n, test_size, seed)
    if val_first:
        a, b = hf_train_test_split(len(held), second, seed)
        return rest, held[a], held[b]
    a, b = hf_train_test_split(len(rest), second, seed)
    return rest[a], rest[b], held


def take(rows: Sequence[dict], idx: Iterable[int]) -> list[dict]:
    return [rows[int(i)] for i in idx]
