"""evaluation/metrics.py: seqeval / sklearn scores by hand, seed summaries."""

from __future__ import annotations

import numpy as np
import pytest

from bcmb_jax.evaluation import metrics


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
