"""Evaluation metrics of the paper's fine-tuning runs (pure functions over labels, no model code).

Classification: sklearn F1 (zero_division=0) over argmax predictions; multi-label: predictions are
logit > 0 multi-hot vectors; NER: seqeval default (non-strict, conlleval-like) entity-level micro scores over
the words that carry a label. `summarize` aggregates seeds like the paper's aggregate_results.py; `score`
turns a model's per-example logits into these metrics, the loss and one prediction record per example.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from seqeval.metrics import accuracy_score as seq_accuracy
from seqeval.metrics import f1_score as seq_f1
from seqeval.metrics import precision_score as seq_precision
from seqeval.metrics import recall_score as seq_recall
from sklearn.metrics import accuracy_score, f1_score

from bcmb_jax.modeling.heads import IGNORE

MAIN_METRIC = {"ner": "f1", "classification": "weighted_f1", "multilabel": "weighted_f1"}


def ner_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level micro precision / recall / f1 and token accuracy (seqeval default mode), as the paper's
    `evaluate.load("seqeval")` overall_* numbers. gold and pred are tag strings per word."""
    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("ner_metrics: gold and pred must have the same number of sequences and tags")
    gold, pred = [list(g) for g in gold], [list(p) for p in pred]
    return {
        "f1": float(seq_f1(gold, pred, zero_division=0)),
        "precision": float(seq_precision(gold, pred, zero_division=0)),
        "recall": float(seq_recall(gold, pred, zero_division=0)),
        "accuracy": float(seq_accuracy(gold, pred)),
    }


def classification_metrics(gold: Sequence[int], pred: Sequence[int], labels: Sequence[str]) -> dict[str, float]:
    """Single-label scores over label ids: weighted / micro / macro F1 (sklearn, zero_division=0, averaged
    over the labels present in gold or pred, as the paper calls f1_score) and accuracy. `labels` names the
    ids; an id outside range(len(labels)) is an error."""
    g, p = np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if g.shape != p.shape or g.ndim != 1:
        raise ValueError(f"classification_metrics: gold {g.shape} and pred {p.shape} must be equal 1-D shapes")
    bad = [int(x) for x in np.concatenate([g, p]) if not 0 <= x < len(labels)]
    if bad:
        raise ValueError(f"classification_metrics: label ids {sorted(set(bad))} outside 0..{len(labels) - 1}")
    return {
        "weighted_f1": float(f1_score(g, p, average="weighted", zero_division=0)),
        "micro_f1": float(f1_score(g, p, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(g, p, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(g, p)),
    }


def logits_to_multihot(logits) -> np.ndarray:
    """The paper's multi-label decision: logit > 0 (probability > 0.5)."""
    return (np.asarray(logits) > 0).astype(np.int64)


def multilabel_metrics(gold, pred) -> dict[str, float]:
    """Multi-label scores over [N, L] multi-hot arrays: weighted / micro / macro F1 (zero_division=0) and
    subset accuracy (every label of a row right)."""
    g, p = np.asarray(gold).astype(np.int64), np.asarray(pred).astype(np.int64)
    if g.shape != p.shape or g.ndim != 2:
        raise ValueError(f"multilabel_metrics: gold {g.shape} and pred {p.shape} must be equal [N, L] shapes")
    if not (np.isin(g, (0, 1)).all() and np.isin(p, (0, 1)).all()):
        raise ValueError("multilabel_metrics: gold and pred must be 0/1 multi-hot arrays")
    return {
        "weighted_f1": float(f1_score(g, p, average="weighted", zero_division=0)),
        "micro_f1": float(f1_score(g, p, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(g, p, average="macro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(g, p)),
    }


def summarize(per_seed: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """{metric: {"median", "mean", "min", "max"}} over seeds ({seed: {metric: value}}); a metric missing from
    some seed is summarized over the seeds that have it, non-numeric values are ignored."""
    values: dict[str, list[float]] = {}
    for metrics in per_seed.values():
        for k, v in metrics.items():
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                values.setdefault(k, []).append(float(v))
    return {
        k: {"median": float(np.median(v)), "mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
        for k, v in values.items()
    }


def _sigmoid_bce(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


def _cross_entropy(logits_PC: np.ndarray, y_P: np.ndarray) -> np.ndarray:
    z = logits_PC.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return np.log(np.exp(z).sum(-1)) - z[np.arange(len(y_P)), y_P]


def score(data: Any, examples: Sequence[Any], outputs: list[np.ndarray]) -> tuple[dict, list[dict]]:
    """(metrics incl. the loss, one prediction record per example) of an `encoding.EncodedTask`'s examples from
    their logits ([C] for sequence tasks, [n, C] for NER)."""
    names = data.labels
    if data.kind == "ner":
        gold = [[names[t] for t in e.tags] for e in examples]
        pred = [[names[int(i)] for i in out[e.first].argmax(-1)] if len(e.first) else []
                for e, out in zip(examples, outputs)]
        logits = np.concatenate([o[e.token_labels != IGNORE] for e, o in zip(examples, outputs)])
        y = np.concatenate([e.token_labels[e.token_labels != IGNORE] for e in examples])
        result = ner_metrics(gold, pred)
        result["loss"] = float(_cross_entropy(logits, y).mean()) if len(y) else 0.0
        records = [{"id": e.id, "tokens": e.words, "gold": g, "pred": p} for e, g, p in zip(examples, gold, pred)]
        return result, records
    logits = np.stack(outputs).astype(np.float64)
    if data.kind == "classification":
        gold = np.asarray([e.label for e in examples])
        pred = logits.argmax(-1)
        result = classification_metrics(gold, pred, names)
        result["loss"] = float(_cross_entropy(logits, gold).mean())
        records = [{"id": e.id, "gold": names[g], "pred": names[p]} for e, g, p in zip(examples, gold, pred)]
        return result, records
    gold = np.stack([e.label for e in examples]).astype(np.int64)
    pred = logits_to_multihot(logits)
    result = multilabel_metrics(gold, pred)
    result["loss"] = float(_sigmoid_bce(logits, gold).mean())
    records = [{"id": e.id, "gold": [names[i] for i in np.flatnonzero(g)],
                "pred": [names[i] for i in np.flatnonzero(p)]} for e, g, p in zip(examples, gold, pred)]
    return result, records
