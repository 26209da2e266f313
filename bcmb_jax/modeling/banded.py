"""Banded attention of the local layers for XLA:CPU (the `blocked` backend): |i - j| <= w inside a document.

Each row is cut into chunks of C >= w tokens, with one chunk of padding on each side; the keys a
chunk's queries may see lie in the chunk and its two neighbours, a window of W = 3C keys. A step
takes R rows x G chunks and builds the windows as three shifted slices of its G + 2 chunks (no
gather), so every product is one batched GEMM over (rows, heads, chunks). On CPU a loop runs steps
of LOCAL_STEP_TOKENS queries, small enough that a step's scores stay in cache; elsewhere one step
covers the batch. Time and memory are O(T * 3C).

The backward pass recomputes the scores keys first ([W, C] per chunk), so dk and dv are plain GEMMs;
their windows are folded back onto the step's G + 2 chunks and added into the row buffers (steps that
meet share a chunk of halo).

Shapes: R rows of a step, N heads, G chunks of a step, C tokens of a chunk, W = 3C keys of a window,
K head dim; `Cp` marks a chunked axis with its two padding chunks.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bcmb_jax.modeling.blocked import f32, pad_axis, softmax_delta, tied_zeros
from bcmb_jax.modeling.masks import NEG

LOCAL_STEP_TOKENS = 512  # CPU: queries per loop step (rows x chunks); 256 and 1024 were slower at 512 to 8192 tokens


def _plan(B: int, nC: int, C: int) -> tuple[int, int, int]:
    """(R rows, G chunks) of a step and the chunks per row padded to a multiple of G."""
    if jax.default_backend() != "cpu":
        return B, nC, nC
    per = max(1, LOCAL_STEP_TOKENS // C)
    if nC <= per:  # whole rows, as many as fit (a divisor of B, so every step is full)
        return max(r for r in range(1, B + 1) if B % r == 0 and r * nC <= per), nC, nC
    steps = -(-nC // per)
    G = -(-nC // steps)
    return 1, G, steps * G


def _chunked(x, C: int, nCp: int, fill=0):
    """[B, N, T, ...] (or seg [B, T]) -> [B, N, nCp + 2, C, ...]: one chunk of `fill` before the row, the rest after."""
    ax = 2 if x.ndim >= 3 else 1
    x = pad_axis(x, ax, C, (nCp + 1) * C - x.shape[ax], fill)
    return x.reshape(*x.shape[:ax], nCp + 2, C, *x.shape[ax + 1:])


def _take(x, r0, g0, R: int, n: int, ax: int = 2):
    """Rows [r0, r0 + R) and chunks [g0, g0 + n) of a chunked array (chunk axis `ax`)."""
    starts, sizes = [0] * x.ndim, list(x.shape)
    starts[0], starts[ax], sizes[0], sizes[ax] = r0, g0, R, n
    return jax.lax.dynamic_slice(x, starts, sizes)


def _windows(x, G: int, ax: int = 2):
    """[R, N, G + 2, C, K] -> [R, N, G, 3C, K] (or seg [R, G + 2, C] -> [R, G, 3C] with ax=1): chunk g
    sees chunks g - 1, g, g + 1 (of the unpadded count)."""
    return jnp.concatenate([jax.lax.slice_in_dim(x, j, j + G, axis=ax) for j in range(3)], axis=ax + 1)


def _allowed(seg_BCpC, band_CW, r0, g0, R: int, G: int):
    """[R, G, C, W]: inside the band and the same segment."""
    s = _take(seg_BCpC, r0, g0, R, G + 2, ax=1)
    return band_CW & (s[:, 1:G + 1, :, None] == _windows(s, G, ax=1)[:, :, None, :])


def _setup(q, seg, w: int, C: int):
    B, N, T, K = q.shape
    nC = -(-T // C)
    R, G, nCp = _plan(B, nC, C)
    # Query a of a chunk is token a; window key s is token s - C: the band is |a + C - s| <= w.
    band_CW = jnp.abs(jnp.arange(C)[:, None] + C - jnp.arange(3 * C)[None, :]) <= w
    # Padding (added here) is segment -1: it matches only itself, and those outputs are dropped.
    return nC, R, G, nCp, _chunked(seg, C, nCp, -1), band_CW


def _loop(step, n: int, init):
    return step(0, init) if n == 1 else jax.lax.fori_loop(0, n, step, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def local_attention(q_BNTK, k_BNTK, v_BNTK, seg_BT, window: int, chunk: int):
    """Banded attention (q pre-scaled): |i - j| <= window inside a segment, `chunk` >= window tokens a chunk."""
    return _local_fwd(q_BNTK, k_BNTK, v_BNTK, seg_BT, window, chunk)[0]


def _local_fwd(q, k, v, seg, w: int, C: int):
    B, N, T, K = q.shape
    nC, R, G, nCp, seg_c, band_CW = _setup(q, seg, w, C)
    q_c, k_c, v_c = (_chunked(x, C, nCp) for x in (q, k, v))
    nG = nCp // G

    def step(i, out):
        r0, g0 = (i // nG) * R, (i % nG) * G
        q_RNGCK = _take(q_c, r0, g0 + 1, R, G)
        k_RNGWK, v_RNGWK = (_windows(_take(x, r0, g0, R, G + 2), G) for x in (k_c, v_c))
        s = jnp.einsum("rngck,rngwk->rngcw", q_RNGCK, k_RNGWK, preferred_element_type=f32)
        s = jnp.where(_allowed(seg_c, band_CW, r0, g0, R, G)[:, None], s, NEG)
        m = s.max(-1)
        p = jnp.exp(s - m[..., None])
        l_RNGC = p.sum(-1)
        o = jnp.einsum("rngcw,rngwk->rngck", p.astype(v.dtype), v_RNGWK, preferred_element_type=f32)
        o_buf, lse_buf = out
        return (jax.lax.dynamic_update_slice(o_buf, (o / l_RNGC[..., None]).astype(q.dtype), (r0, 0, g0, 0, 0)),
                jax.lax.dynamic_update_slice(lse_buf, m + jnp.log(l_RNGC), (r0, 0, g0, 0)))

    tie = q.reshape(-1)[0]
    o, lse = _loop(step, (B // R) * nG, (tied_zeros((B, N, nCp, C, K), tie).astype(q.dtype),
                                         tied_zeros((B, N, nCp, C), tie)))
    return o.reshape(B, N, nCp * C, K)[:, :, :T], lse.reshape(B, N, nCp * C)[:, :, :T]


def _local_fwd_rule(q, k, v, seg, w, C):
    o, lse = _local_fwd(q, k, v, seg, w, C)
    return o, (q, k, v, seg, o, lse)


def _fold(x_RNGWK):
    """Window gradients [R, N, G, 3C, K] -> per chunk [R, N, G + 2, C, K] (window g covers chunks g .. g + 2)."""
    R, N, G, W, K = x_RNGWK.shape
    x = x_RNGWK.reshape(R, N, G, 3, W // 3, K)
    return sum(jnp.pad(x[:, :, :, j], ((0, 0), (0, 0), (j, 2 - j), (0, 0), (0, 0))) for j in range(3))


def _local_bwd_rule(w, C, res, do):
    q, k, v, seg, o, lse = res
    B, N, T, K = q.shape
    nC, R, G, nCp, seg_c, band_CW = _setup(q, seg, w, C)
    q_c, k_c, v_c, do_c = (_chunked(x, C, nCp) for x in (q, k, v, do.astype(v.dtype)))
    lse_c, delta_c = (_chunked(x, C, nCp) for x in (lse, softmax_delta(do, o)))
    nG = nCp // G

    def step(i, out):
        r0, g0 = (i // nG) * R, (i % nG) * G
        q_RNGCK, do_RNGCK = (_take(x, r0, g0 + 1, R, G) for x in (q_c, do_c))
        lse_RNGC, delta_RNGC = (_take(x, r0, g0 + 1, R, G) for x in (lse_c, delta_c))
        k_RNGWK, v_RNGWK = (_windows(_take(x, r0, g0, R, G + 2), G) for x in (k_c, v_c))
        ok_RGWC = jnp.swapaxes(_allowed(seg_c, band_CW, r0, g0, R, G), -1, -2)
        s = jnp.einsum("rngwk,rngck->rngwc", k_RNGWK, q_RNGCK, preferred_element_type=f32)
        p = jnp.exp(jnp.where(ok_RGWC[:, None], s, NEG) - lse_RNGC[..., None, :])
        dp = jnp.einsum("rngwk,rngck->rngwc", v_RNGWK, do_RNGCK, preferred_element_type=f32)
        ds = (p * (dp - delta_RNGC[..., None, :])).astype(q.dtype)
        dq = jnp.einsum("rngwc,rngwk->rngck", ds, k_RNGWK, preferred_element_type=f32)
        dk = _fold(jnp.einsum("rngwc,rngck->rngwk", ds, q_RNGCK, preferred_element_type=f32))
        dv = _fold(jnp.einsum("rngwc,rngck->rngwk", p.astype(do_RNGCK.dtype), do_RNGCK, preferred_element_type=f32))
        dq_buf, dk_buf, dv_buf = out
        at = (r0, 0, g0, 0, 0)
        return (jax.lax.dynamic_update_slice(dq_buf, dq, at),
                jax.lax.dynamic_update_slice(dk_buf, _take(dk_buf, r0, g0, R, G + 2) + dk, at),
                jax.lax.dynamic_update_slice(dv_buf, _take(dv_buf, r0, g0, R, G + 2) + dv, at))

    tie = do.reshape(-1)[0]
    dq, dk, dv = _loop(step, (B // R) * nG, (tied_zeros((B, N, nCp, C, K), tie),
                                             tied_zeros((B, N, nCp + 2, C, K), tie),
                                             tied_zeros((B, N, nCp + 2, C, K), tie)))

    def rows(x, first: int):
        return x[:, :, first:first + nC].reshape(B, N, nC * C, K)[:, :, :T]

    return rows(dq, 0).astype(q.dtype), rows(dk, 1).astype(k.dtype), rows(dv, 1).astype(v.dtype), None


local_attention.defvjp(_local_fwd_rule, _local_bwd_rule)
