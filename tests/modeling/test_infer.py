"""Packed batched inference returns, per document, what running it alone returns."""

from __future__ import annotations

import types

import numpy as np
import pytest
from conftest import TINY, rng_ids

import bcmb_jax
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.infer import (
    PACKING_TARGET,
    ROW_MULTIPLE,
    best_fit,
    encode,
    long_rows_pay_off,
    make_rows,
    pack_calls,
    plan_rows,
)


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


def normal_lengths(L: int, n: int, seed: int = 0) -> list[int]:
    """The benchmark's variable sets: lengths ~ Normal(L/2, L/8), clamped to [16, L]."""
    return np.clip(np.random.default_rng(seed).normal(L / 2, L / 8, n).astype(int), 16, L).tolist()


class _Model:  # what plan_rows reads of a model: its config and its run-time attention backend
    def __init__(self, backend: str = "blocked"):
        self.cfg = ModelConfig.from_hf_dict({**TINY, "max_position_embeddings": 8192})
        self.runtime = types.SimpleNamespace(attention_backend=backend)


def check_plan(plan, lengths, batch_tokens):
    placed = sorted(i for c in plan.calls for b in c.bins for i in b)
    assert placed == list(range(len(lengths)))  # every document once
    for c in plan.calls:
        assert all(sum(lengths[i] for i in b) <= c.row_len for b in c.bins)
        assert len(c.bins) == 1 or len(c.bins) * c.row_len <= batch_tokens
    assert plan.tokens == sum(lengths) and plan.slots == sum(c.row_len * len(c.bins) for c in plan.calls)


@pytest.mark.parametrize("L,n", [(512, 32), (2048, 16), (512, 8), (2048, 8), (8192, 2), (1024, 300)])
def test_long_rows_pack_variable_sets_tightly(L, n):
    """Rows grow past L until >= 97% of their tokens are real; without long rows only the last call shrinks."""
    lengths = normal_lengths(L, n)
    tight = plan_rows(_Model(), lengths, batch_tokens=max(16384, L), long_rows=True)
    check_plan(tight, lengths, max(16384, L))
    assert tight.efficiency >= PACKING_TARGET
    short = plan_rows(_Model(), lengths, batch_tokens=max(16384, L), long_rows=False)
    check_plan(short, lengths, max(16384, L))
    assert max(c.row_len for c in short.calls) <= L and short.efficiency <= tight.efficiency
    assert all(c.row_len % ROW_MULTIPLE == 0 for c in tight.calls)


def test_fixed_sets_keep_rows_of_their_length():
    for L in (512, 2048, 8192):
        plan = plan_rows(_Model(), [L] * 16, batch_tokens=16384, long_rows=True)
        assert plan.efficiency == 1.0 and plan.shapes == [(min(16, 16384 // L), L)]


def test_long_rows_only_where_they_cost_nothing():
    """Kernels that give each query its own key range (the Pallas kernel on a GPU, the blocked kernels on CPU)
    pack longer rows, to 97% real tokens; the dense reference keeps rows at the set's length."""
    import jax

    lengths = normal_lengths(512, 32)
    platform = jax.default_backend()
    assert long_rows_pay_off(_Model("gpu")) == (platform == "gpu")
    assert long_rows_pay_off(_Model("blocked")) == (platform == "cpu") and not long_rows_pay_off(_Model("reference"))
    assert max(c.row_len for c in plan_rows(_Model("reference"), lengths).calls) == 512
    fast = _Model("blocked" if platform == "cpu" else "gpu")
    plan = plan_rows(fast, lengths)
    assert max(c.row_len for c in plan.calls) > 512 and plan.efficiency >= 0.97
    assert plan_rows(_Model("reference"), lengths).efficiency < 0.97


def test_last_call_is_repacked_into_the_fewest_shortest_rows():
    plan = pack_calls([100] * 10 + [30], row_len=512, batch_tokens=1024)  # 1030 tokens; 2 rows a call
    check_plan(plan, [100] * 10 + [30], 1024)
    assert [(len(c.bins), c.row_len) for c in plan.calls] == [(2, 512), (1, 64)]
    assert plan.efficiency == pytest.approx(1030 / 1088)
    with pytest.raises(ValueError, match="empty"):
        plan_rows(_Model(), [3, 0])


def test_encode_in_long_rows_equals_one_by_one():
    """Many short documents packed into rows longer than any of them: each still gets what it gets alone."""
    model = bcmb_jax.build(ModelConfig.from_hf_dict(TINY), "mlm", seed=3)
    lengths = [40, 7, 64, 33, 12, 50, 61, 25, 3, 44, 58, 19]
    docs = [rng_ids((1, n), seed=10 + i)[0].tolist() for i, n in enumerate(lengths)]
    plan = plan_rows(model, lengths, batch_tokens=256, long_rows=True)
    assert plan.calls[0].row_len > max(lengths) and max(len(b) for c in plan.calls for b in c.bins) > 2
    outs = encode(model, docs, batch_tokens=256, long_rows=True)
    for d, got in zip(docs, outs):
        ids = np.zeros((1, 64), np.int64)
        ids[0, :len(d)] = d
        ref = np.asarray(model(ids, attention_mask=(np.arange(64) < len(d))[None]).logits)[0, :len(d)]
        assert float(np.abs(got - ref).max()) <= 1e-5
