"""The packing stage: MLM masking statistics and determinism, the per-epoch weighted chunk order."""

import collections

import numpy as np

from bcmb_jax.data import packing


def test_mask_statistics_and_determinism():
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 50_000, (64, 512)).astype(np.int32)
    seg = np.ones_like(ids)
    seg[:, 400:] = 0  # padding
    kw = dict(rate=0.3, seed=5, step=7, row_offset=0, mask_id=4, low=0, high=50_285)
    out, labels = packing.mask_tokens(ids, seg, **kw)
    sel = labels != -100
    assert abs(sel[:, :400].mean() - 0.3) < 0.01 and not sel[:, 400:].any()
    assert np.array_equal(labels[sel], ids[sel])
    assert np.array_equal(out[~sel], ids[~sel])
    n = sel.sum()
    assert abs((out[sel] == 4).sum() / n - 0.8) < 0.015
    assert abs((out[sel] != ids[sel]).sum() / n - 0.9) < 0.015  # [MASK] + random (almost never the same id)
    rand = sel & (out != 4) & (out != ids)
    assert abs(rand.sum() / n - 0.1) < 0.01 and out[rand].min() >= 0 and out[rand].max() < 50_285
    again = packing.mask_tokens(ids, seg, **kw)
    assert np.array_equal(again[0], out) and np.array_equal(again[1], labels)
    other = packing.mask_tokens(ids, seg, **{**kw, "step": 8})
    assert not np.array_equal(other[1], labels)
    # rows depend only on (seed, step, global row): the last 3 rows alone, offset by 61, mask the same way
    tail = packing.mask_tokens(ids[61:], seg[61:], **{**kw, "row_offset": 61})
    assert np.array_equal(tail[0], out[61:]) and np.array_equal(tail[1], labels[61:])
    # special tokens can be protected
    ids[:, 0], ids[:, 399] = 1, 2
    _, lab = packing.mask_tokens(ids, seg, **kw, special_ids=(1, 2, 3, 4))
    assert (lab[:, [0, 399]] == -100).all()
    _, lab = packing.mask_tokens(ids, seg, **kw)
    assert (lab[:, [0, 399]] != -100).any()


def test_epochs_and_weights():
    order = packing.EpochOrder([10, 4], [2.0, 0.5], seed=9, shuffle=True)
    assert order.length == 22
    e0, e1 = order(0), order(1)
    assert not np.array_equal(e0, e1)  # a different shuffle every epoch
    c0 = collections.Counter(e0.tolist())
    assert all(c0[i] == 2 for i in range(10)) and sum(c0[i] for i in range(10, 14)) == 2
    assert all(c0[i] <= 1 for i in range(10, 14))
    assert np.array_equal(order(0), e0)  # recomputed identically
    stream = packing.ChunkStream([list(range(10)), list(range(4))], order, 1, 3, epochs=None)
    assert stream.per_epoch == 7 and len(stream) > 10**12
    assert [stream.chunk_id(i) for i in range(7)] == e0[1::3].tolist()
    assert [stream.chunk_id(7 + i) for i in range(7)] == e1[1::3].tolist()
    flat = packing.EpochOrder([5], [1.0], seed=0, shuffle=False)
    assert flat(0).tolist() == flat(3).tolist() == [0, 1, 2, 3, 4]
