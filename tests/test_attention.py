"""The attention backends agree with the dense reference, in values and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bcmb_jax.attention import allowed_mask, attention, pallas_global_attention, reference_attention


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

    g_ref = jax.grad(loss(lambda q, k, v: reference_attention(q, k, v, seg, window=window, scale=0.25)),
                     argnums=(0, 1, 2))(q, k, v)
    g_blk = jax.grad(loss(lambda q, k, v: attention(q, k, v, seg, window=window, local_chunk=16,
                                                    global_chunk=64)), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_ref, g_blk):
        assert float(jnp.abs(a - b).max()) <= 1e-5


def test_pallas_gpu_kernel_matches_in_interpret_mode():
    """The GPU backend's kernel, run by the Pallas interpreter on CPU, computes the same attention."""
    q, k, v = qkv(T=200)
    seg = segments(200)
    ref = reference_attention(q, k, v, seg, window=None, scale=0.25)
    out = pallas_global_attention(q, k, v, seg, scale=0.25, interpret=True)
    assert float(jnp.abs(out - ref)[np.asarray(seg) > 0].max()) <= 2e-6


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
