"""The attention backends agree with the dense reference, in values and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bcmb_jax.modeling.attention import attention
from bcmb_jax.modeling.masks import allowed_mask, reference_attention
from bcmb_jax.modeling.pallas_attention import key_ranges, pallas_attention


def qkv(B=2, T=300, N=3, K=16, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(B, T, N, K)), jnp.float32) for _ in range(3))


def segments(T=300):
    seg = np.zeros((2, T), np.int32)
    seg[0, :100], seg[0, 100:250] = 1, 2  # two documents and a padded tail
    seg[1, :T - 10] = 1
    return jnp.asarray(seg)


def test_mask_definition():
    seg = jnp.asarray([[1, 1, 1, 2, 2, 0]])
    m = np.asarray(allowed_mask(seg, window=1))[0]
    assert m[0].tolist() == [True, True, False, False, False, False]
    assert m[2].tolist() == [False, True, True, False, False, False]  # |i-j|<=1, same document
    assert m[3].tolist() == [False, False, False, True, True, False]
    assert m[5].tolist() == [False] * 5 + [True]  # padding sees only padding


@pytest.mark.parametrize("window", [None, 8, 64])
@pytest.mark.parametrize("chunk", [64, 100, 128])
def test_blocked_equals_reference(window, chunk):
    q, k, v = qkv()
    seg = segments()
    ref = reference_attention(q, k, v, seg, window=window, scale=16 ** -0.5)
    out = attention(q, k, v, seg, window=window, backend="blocked", local_chunk=max(chunk, window or 0),
                    global_chunk=chunk)
    assert float(jnp.abs(out - ref).max()) <= 2e-6


@pytest.mark.parametrize("window", [None, 8])
def test_blocked_gradients_equal_reference(window):
    q, k, v = qkv()
    seg = segments()
    w = jnp.cos(jnp.arange(16.0))

    def loss(fn):
        return lambda q, k, v: (fn(q, k, v) * w).sum()

    g_ref = jax.jit(jax.grad(loss(lambda q, k, v: reference_attention(q, k, v, seg, window=window, scale=0.25)),
                             argnums=(0, 1, 2)))(q, k, v)
    g_blk = jax.jit(jax.grad(loss(lambda q, k, v: attention(q, k, v, seg, window=window, local_chunk=16,
                                                            global_chunk=64)), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g_ref, g_blk):
        assert float(jnp.abs(a - b).max()) <= 1e-5


@pytest.mark.parametrize(("T", "step_tokens"), [(300, 32), (300, 64), (40, 96)])
def test_banded_steps_equal_reference(monkeypatch, T, step_tokens):
    """The local kernel's CPU loop: several steps per row (the halo chunk two steps share; a row padded to
    whole steps) or two rows per step (T=40 with 96-token steps); values and gradients equal the reference."""
    from bcmb_jax.modeling import banded

    monkeypatch.setattr(banded, "LOCAL_STEP_TOKENS", step_tokens)
    q, k, v = (x[:, :T] for x in qkv())
    seg = segments()[:, :T] if T == 300 else jnp.asarray([[1] * 25 + [2] * 15, [3] * 40], jnp.int32)
    w = jnp.cos(jnp.arange(16.0))

    def loss(fn):
        return lambda q, k, v: (fn(q, k, v) * w).sum()

    ref = lambda q, k, v: reference_attention(q, k, v, seg, window=8, scale=0.25)  # noqa: E731
    blk = lambda q, k, v: attention(q, k, v, seg, window=8, local_chunk=16)  # noqa: E731
    assert float(jnp.abs(jax.jit(blk)(q, k, v) - ref(q, k, v)).max()) <= 2e-6
    g_ref = jax.jit(jax.grad(loss(ref), argnums=(0, 1, 2)))(q, k, v)
    g_blk = jax.jit(jax.grad(loss(blk), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g_ref, g_blk):
        assert float(jnp.abs(a - b).max()) <= 1e-5


@pytest.mark.parametrize("window", [None, 8, 64])
def test_pallas_kernel_equals_reference_in_interpret_mode(window):
    """The `gpu` backend's kernel, run by the Pallas interpreter on CPU: values and gradients (float32)."""
    q, k, v = qkv()
    seg = segments()
    w = jnp.cos(jnp.arange(16.0))
    ref = lambda q, k, v: reference_attention(q, k, v, seg, window=window, scale=0.25)  # noqa: E731
    pal = lambda q, k, v: attention(q, k, v, seg, window=window, backend="gpu", interpret=True)  # noqa: E731
    diff = float(jnp.abs(jax.jit(pal)(q, k, v) - ref(q, k, v)).max())

    def loss(fn):
        return lambda q, k, v: (fn(q, k, v) * w).sum()

    g_ref = jax.jit(jax.grad(loss(ref), argnums=(0, 1, 2)))(q, k, v)
    g_pal = jax.jit(jax.grad(loss(pal), argnums=(0, 1, 2)))(q, k, v)
    gdiff = max(float(jnp.abs(a - b).max()) for a, b in zip(g_ref, g_pal))
    print(f"pallas (interpret) vs reference, window {window}: values {diff:.1e}, gradients {gdiff:.1e}")
    assert diff <= 2e-6 and gdiff <= 1e-5


def test_key_ranges_are_the_mask():
    """[k_start, k_end) per query, intersected with the query's segment, is `allowed_mask`."""
    seg = segments()
    j = jnp.arange(300)
    for window in (None, 8):
        ks, ke = key_ranges(seg, window)
        in_range = (j[None, None] >= ks[..., None]) & (j[None, None] < ke[..., None])
        same = seg[:, :, None] == seg[:, None, :]
        assert bool(jnp.all((in_range & same) == allowed_mask(seg, window)))
        assert bool(jnp.all(in_range <= same))  # contiguous segments: the range alone is exact


def test_pallas_kernel_skips_key_blocks_out_of_range():
    """Keys outside every query's range are never read: NaN there leaves the other outputs finite.

    (A visited block would contribute 0 * NaN = NaN even under the mask.)
    """
    B, T, N, K = 1, 512, 2, 16
    q, k, v = (x[:, :, :T] for x in qkv(B=B, T=T, N=N, K=K))
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # heads first
    seg = jnp.asarray(np.repeat([[1, 2]], 256, axis=1))
    poison = jnp.arange(T)[None, None, :, None] >= 256
    v_nan = jnp.where(poison, jnp.nan, v)
    out = pallas_attention(q, k, v_nan, seg, window=None, scale=0.25, interpret=True)
    assert bool(jnp.isfinite(out[:, :, :256]).all()) and not bool(jnp.isfinite(out[:, :, 256:]).any())
    # local layer, one document: queries 0..127 see keys up to 191, so key blocks from 256 on are skipped
    one = jnp.ones((B, T), jnp.int32)
    out = pallas_attention(q, k, v_nan, one, window=64, scale=0.25, interpret=True)
    assert bool(jnp.isfinite(out[:, :, :128]).all())


def test_gpu_backend_falls_back_on_cpu():
    q, k, v = qkv(T=64)
    seg = segments(64)
    out = attention(q, k, v, seg, window=None, backend="gpu")
    ref = reference_attention(q, k, v, seg, window=None, scale=0.25)
    assert float(jnp.abs(out - ref).max()) <= 2e-6


def test_banded_memory_is_linear_in_length():
    """The local path never builds a T x T buffer: its largest intermediate grows linearly with T."""

    def peak(T):
        q = jax.ShapeDtypeStruct((1, T, 2, 16), jnp.float32)
        seg = jax.ShapeDtypeStruct((1, T), jnp.int32)
        f = jax.jit(lambda q, s: attention(q, q, q, s, window=64, local_chunk=64))
        return f.lower(q, seg).compile().memory_analysis().temp_size_in_bytes

    small, big = peak(2048), peak(8192)
    assert big < 5 * small  # 4x the tokens -> about 4x the memory (dense would be 16x)


def test_rows_of_many_documents_walk_their_own_key_ranges():
    """A row of many short documents takes the per-query-block key ranges (cheaper than its block pairs), a
    row of one document the block pairs; in one batch, both equal the reference in values and gradients."""
    from bcmb_jax.modeling import blocked

    T, rng = 1536, np.random.default_rng(4)
    seg = np.ones((2, T), np.int32)
    cuts = np.cumsum(rng.integers(40, 160, 40))
    seg[1] = 1 + np.searchsorted(cuts[cuts < T - 50], np.arange(T), side="right")
    seg[1, -50:] = 0  # a padding tail
    lo, hi = blocked._query_block_ranges(jnp.asarray(seg), 256, T // 256)
    assert int((hi - lo)[1].max()) < 512 <= int((hi - lo)[0].min())  # row 1: short ranges; row 0: the whole row
    case = blocked._global_setup(*(jnp.zeros((2, 1, T, 1)),) * 3, jnp.asarray(seg), 256, 1024)[-1]
    assert blocked.walks_ranges(lo, hi, case, 1024).tolist()[1]
    one = jnp.ones((1, 2048), jnp.int32)  # a row of one document keeps the block pairs
    lo1, hi1 = blocked._query_block_ranges(one, 256, 8)
    case1 = blocked._global_setup(*(jnp.zeros((1, 1, 2048, 1)),) * 3, one, 256, 1024)[-1]
    assert not blocked.walks_ranges(lo1, hi1, case1, 1024).tolist()[0]
    q, k, v = (jnp.asarray(rng.standard_normal((2, T, 4, 16)), jnp.float32) for _ in range(3))
    seg = jnp.asarray(seg)

    def loss(fn, q, k, v):
        return (fn(q, k, v) * jnp.cos(jnp.arange(16.0))).sum()

    blocked_fn = lambda q, k, v: attention(q, k, v, seg, window=None, backend="blocked")  # noqa: E731
    ref_fn = lambda q, k, v: reference_attention(q, k, v, seg, window=None, scale=0.25)  # noqa: E731
    np.testing.assert_allclose(jax.jit(blocked_fn)(q, k, v), ref_fn(q, k, v), atol=2e-6)
    g1 = jax.jit(jax.grad(lambda *a: loss(blocked_fn, *a), argnums=(0, 1, 2)))(q, k, v)
    g2 = jax.jit(jax.grad(lambda *a: loss(ref_fn, *a), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, atol=1e-5)
