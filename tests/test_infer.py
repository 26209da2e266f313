"""Packed batched inference returns, per document, what running it alone returns."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY, rng_ids

import bcmb_jax
from bcmb_jax.config import ModelConfig
from bcmb_jax.infer import best_fit, encode, make_rows


def test_best_fit_packs_tightly_and_keeps_every_item_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=500).tolist()
    bins = best_fit(lengths, 512)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    assert sum(lengths) / (512 * len(bins)) > 0.95
    with pytest.raises(ValueError, match="more than the row length"):
        best_fit([10, 600], 512)


def test_make_rows_layout():
    rows = make_rows([[5, 6, 7], [8, 9]], [[0, 1]], row_len=6, pad_id=0)
    assert rows["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0]]
    assert rows["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 0]]
    assert rows["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0]]


@pytest.mark.parametrize("task", ["mlm", "base"])
def test_encode_equals_one_by_one(task):
    model = bcmb_jax.build(ModelConfig.from_hf_dict(TINY), task, seed=2)
    lengths = [3, 130, 57, 1, 200, 64, 90]
    docs = [rng_ids((1, n), seed=i)[0].tolist() for i, n in enumerate(lengths)]
    outs = encode(model, docs, row_len=256, batch_tokens=512)
    for d, got in zip(docs, outs):
        ids = np.zeros((1, 256), np.int64)
        ids[0, :len(d)] = d
        alone = model(ids, attention_mask=(np.arange(256) < len(d))[None])  # one shape, one compile
        ref = np.asarray(alone.last_hidden_state if task == "base" else alone.logits)[0, :len(d)]
        assert got.shape == ref.shape
        assert float(np.abs(got - ref).max()) <= 1e-5
