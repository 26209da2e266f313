"""Task examples as token ids: the paper's framing `[CLS] text [SEP]`, NER word alignment, subsets, Table 6.

Sequence tasks: the text tokenized with a byte-level prefix space, truncated to `max_length`. NER: every word
tokenized on its own (each with its leading space, HF `is_split_into_words`); only a word's first sub-token
carries its label, the others -100 (`IGNORE`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bcmb_jax.data.tokenizer import TokenizerInfo, load_any_tokenizer
from bcmb_jax.errors import TaskDataError
from bcmb_jax.evaluation.task_data import TaskData
from bcmb_jax.modeling.heads import IGNORE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextEncoder:
    """A tokenizer with the ids that frame an example."""

    tokenizer: Any  # tokenizers.Tokenizer
    cls_id: int
    sep_id: int
    pad_id: int
    model_max_length: int | None  # tokenizer_config.json's, when below 10,000

    @classmethod
    def from_info(cls, info: TokenizerInfo) -> TextEncoder:
        return cls(info.tokenizer, info.cls_id, info.sep_id, info.pad_id, info.model_max_length)

    def text(self, texts: Sequence[str]) -> list[list[int]]:
        """Content token ids of each text (no special tokens)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def words(self, docs: Sequence[Sequence[str]]) -> list[tuple[list[int], list[int | None]]]:
        """(content ids, word index of each id) of each word list, every word tokenized on its own."""
        encs = self.tokenizer.encode_batch([list(w) for w in docs], is_pretokenized=True, add_special_tokens=False)
        return [(e.ids, e.word_ids) for e in encs]


def load_encoder(directory: str | Path, prefix_space: bool = True) -> TextEncoder:
    """The tokenizer of a model (or tokenizer) directory, with a byte-level prefix space by default."""
    return TextEncoder.from_info(load_any_tokenizer(directory, prefix_space))


@dataclass
class Example:
    """One tokenized example. `ids` holds [CLS] ... [SEP]."""

    id: str
    ids: np.ndarray  # int32 [n]
    label: Any = None  # classification: class id; multilabel: float32 multi-hot [C]
    token_labels: np.ndarray | None = None  # NER: int32 [n], the word's tag at its first sub-token, else -100
    words: list[str] | None = None  # NER: the words that kept a token (truncation drops the rest)
    tags: list[int] | None = None  # NER: their gold tag ids
    first: np.ndarray | None = None  # NER: token index of each kept word's first sub-token


@dataclass
class EncodedTask:
    name: str
    kind: str
    labels: list[str]
    train: list[Example]
    val: list[Example]
    test: list[Example]
    max_length: int
    stats: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[Example]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def check_vocabulary(self, vocab_size: int | None, tokenizer: str | Path, model: str | Path) -> None:
        """Every token id fits the model's embedding table (else the model would read garbage, or NaN)."""
        if vocab_size is None:
            return
        top = max((int(e.ids.max()) for s in (self.train, self.val, self.test) for e in s if len(e.ids)), default=-1)
        if top >= vocab_size:
            raise TaskDataError(f"{tokenizer}: the tokenizer gives token id {top}, but {model} has vocab_size "
                                f"{vocab_size}; expected the model's own tokenizer (pass tokenizer=DIR)")


def subsample(rows: list, n: int | None) -> list:
    """A fixed random subset of n rows (the same for every seed and backend), in the original order."""
    if n is None or n >= len(rows):
        return rows
    keep = np.sort(np.random.default_rng(0).permutation(len(rows))[:n])
    return [rows[i] for i in keep]


def _frame(enc: TextEncoder, content: Sequence[int], max_length: int) -> np.ndarray:
    return np.asarray([enc.cls_id, *content[: max_length - 2], enc.sep_id], np.int32)


def encode_examples(rows: list[dict], kind: str, enc: TextEncoder, max_length: int) -> tuple[list[Example], dict]:
    """Tokenizes one split; returns the examples and counts of what truncation cut."""
    stats = {"examples": len(rows), "truncated_examples": 0, "dropped_words": 0}
    out = []
    if kind != "ner":
        for row, content in zip(rows, enc.text([r["text"] for r in rows])):
            stats["truncated_examples"] += len(content) > max_length - 2
            label = row["label"] if kind == "classification" else np.asarray(row["labels"], np.float32)
            out.append(Example(row["id"], _frame(enc, content, max_length), label=label))
        return out, stats
    for row, (content, word_ids) in zip(rows, enc.words([r["tokens"] for r in rows])):
        n = min(len(content), max_length - 2)
        stats["truncated_examples"] += len(content) > n
        token_labels = np.full(n + 2, IGNORE, np.int32)
        first, kept, prev = [], [], None
        for t, w in enumerate(word_ids[:n]):
            if w is not None and w != prev:
                token_labels[t + 1] = row["tags"][w]
                first.append(t + 1)
                kept.append(w)
            prev = w
        stats["dropped_words"] += len(row["tokens"]) - len(kept)
        out.append(Example(row["id"], _frame(enc, content, max_length), token_labels=token_labels,
                           words=[row["tokens"][w] for w in kept], tags=[row["tags"][w] for w in kept],
                           first=np.asarray(first, np.int64)))
    return out, stats


def encode_task(task: TaskData, enc: TextEncoder, max_length: int,
                limits: dict[str, int | None] | None = None) -> EncodedTask:
    """Tokenizes the splits of a task, each optionally cut to a fixed random subset (`limits[split]`)."""
    unseen = task.test_only_labels()
    if unseen:
        log.warning("task %s: label(s) %s occur in the test split but in no training example; the model cannot "
                    "learn them, and they count against it in the test score", task.name, unseen)
    splits, stats = {}, {}
    for split in ("train", "val", "test"):
        rows = subsample(task.splits()[split], (limits or {}).get(split))
        if not rows:
            raise TaskDataError(f"task {task.name}: the {split} split is empty")
        splits[split], stats[split] = encode_examples(rows, task.kind, enc, max_length)
    return EncodedTask(task.name, task.kind, list(task.labels), max_length=max_length, stats=stats, **splits)


def paper_token_counts(task: TaskData, enc: TextEncoder) -> dict[str, float]:
    """Average tokens per example of each split as the paper's Table 6 counts them: every word (NER) or
    whitespace word (sequence tasks) tokenized on its own, `enc` loaded without a prefix space, plus
    [CLS] and [SEP]; no truncation."""
    out = {}
    for split, rows in task.splits().items():
        docs = [r["tokens"] if task.kind == "ner" else r["text"].split() for r in rows]
        counts = [len(ids) + 2 for ids, _ in enc.words(docs)] if docs else []
        out[split] = float(np.mean(counts)) if counts else 0.0
    return out
