"""Flash attention on packed rows for GPUs: one Pallas (Triton) kernel for global and local layers.

Each query i attends to the keys of a contiguous range [k_start[i], k_end[i]) of its row, and of
those only to the keys of its own segment:

    global layer:  [first(i), last(i) + 1)                         (first/last index of i's document)
    local layer:   [max(first(i), i - w), min(last(i), i + w) + 1)

which is `attention.allowed_mask` exactly. A query block loops only over the key blocks its
ranges touch, so cross-document blocks of a packed row and the keys outside a local window cost
nothing: a local layer does O(T * (block + 2w)) work, a global layer O(sum of squared document
lengths). The relation is symmetric (j sees i iff i sees j), so the backward pass uses the same
ranges from the key side to bound the query blocks that reach a key block.

Why a kernel of our own: `jax.experimental.pallas.ops.gpu.attention` takes segment ids but no
window, and `jax.nn.dot_product_attention(implementation="cudnn")` refuses a right window.
tokamax (0.0.12, a pre-1.0 API pinning typeguard 2.13 and pulling qwix and pydantic) has per-query
`k_start`/`k_end` ranges with block skipping in its Triton forward kernel, but its Triton backward
pass takes them as a dense [T, T] mask, visiting every block. flash-attn-jax and TransformerEngine
are CUDA builds tied to specific CUDA/jaxlib versions, cannot run without a GPU, and (TE) report
sliding windows as causal-only in some releases. This kernel is ~200 lines, needs nothing beyond
`jax[cuda12]`, and runs on CPU through the Pallas interpreter (`interpret=True`), which is how the
tests compare it with the dense reference in values and gradients.

Layout q/k/v_BNTK (heads first, the model's layout); the softmax and all accumulations are
float32 whatever the input dtype. Rows are padded to a multiple of the blocks with segment id -1
(matches no real token) and head dims to a power of two >= 16 (Triton's tile sizes).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from bcmb_jax.modeling.masks import NEG, segment_spans

BLOCK_Q, BLOCK_K = 128, 64  # forward pass: queries per program, keys per loop step
BLOCK_BWD = 64  # backward pass: queries and keys per block
f32 = jnp.float32


def key_ranges(seg_BT: jax.Array, window: int | None) -> tuple[jax.Array, jax.Array]:
    """(k_start, k_end) [B, T] int32: the contiguous key range each query may attend to (see above)."""
    first, last = segment_spans(seg_BT)
    if window is None:
        return first, last + 1
    i = jnp.arange(seg_BT.shape[1], dtype=jnp.int32)
    return jnp.maximum(first, i - window), jnp.minimum(last, i + window) + 1


def pallas_attention(q_BNTK: jax.Array, k_BNTK: jax.Array, v_BNTK: jax.Array, seg_BT: jax.Array, *,
                     window: int | None, scale: float, interpret: bool = False) -> jax.Array:
    """softmax(scale * q k^T, masked as `attention.allowed_mask`) v, through the Pallas kernels."""
    B, N, T, K = q_BNTK.shape
    Tp = -(-T // BLOCK_Q) * BLOCK_Q
    Kp = max(16, 1 << (K - 1).bit_length())
    q, k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, Tp - T), (0, Kp - K))) for x in (q_BNTK, k_BNTK, v_BNTK))
    seg = jnp.pad(seg_BT.astype(jnp.int32), ((0, 0), (0, Tp - T)), constant_values=-1)
    o = _flash(q, k, v, seg, window, float(scale), interpret)
    return o[:, :, :T, :K]


def _specs(interpret: bool):
    return {} if interpret else {"compiler_params": plgpu.CompilerParams(num_warps=4, num_stages=2)}


def _dot(a, b, trans_a=False, trans_b=False):
    precision = jax.lax.Precision.HIGHEST if a.dtype == f32 else None  # float32 in, float32 math (no TF32)
    return plgpu.dot(a, b, trans_a=trans_a, trans_b=trans_b, precision=precision)


def _mask(seg_q, ks_q, ke_q, seg_k, start_k, size_k):
    col = start_k + jnp.arange(size_k)
    return (seg_q[:, None] == seg_k[None, :]) & (col[None, :] >= ks_q[:, None]) & (col[None, :] < ke_q[:, None])


def _block_range(start_ref, end_ref, block: int):
    """First and one-past-last block of `block` tokens the ranges in the refs touch."""
    return jnp.min(start_ref[...]) // block, (jnp.max(end_ref[...]) + block - 1) // block


# ---------------------------------------------------------------------------------------------
# Forward: one program per (row, head, query block), looping over the key blocks in range.


def _fwd_kernel(q_ref, k_ref, v_ref, segq_ref, ks_ref, ke_ref, segk_ref, o_ref, lse_ref, *, scale, bk):
    q = q_ref[...]
    seg_q, ks, ke = segq_ref[...], ks_ref[...], ke_ref[...]
    bq, K = q.shape

    def body(j, carry):
        acc, m, l_ = carry
        keys = pl.ds(j * bk, bk)
        s = _dot(q, k_ref[keys, :], trans_b=True) * scale
        s = jnp.where(_mask(seg_q, ks, ke, segk_ref[keys], j * bk, bk), s, NEG)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.exp(s - m_new[:, None])
        corr = jnp.exp(m - m_new)
        v = v_ref[keys, :]
        return acc * corr[:, None] + _dot(p.astype(v.dtype), v), m_new, l_ * corr + p.sum(-1)

    lo, hi = _block_range(ks_ref, ke_ref, bk)
    init = (jnp.zeros((bq, K), f32), jnp.full((bq,), NEG, f32), jnp.zeros((bq,), f32))
    acc, m, l_ = jax.lax.fori_loop(lo, hi, body, init)
    o_ref[...] = (acc / l_[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l_)


def _forward(q, k, v, seg, window, scale, interpret):
    B, N, T, K = q.shape
    ks, ke = key_ranges(seg, window)
    row = pl.BlockSpec((None, None, T, K), lambda b, n, i: (b, n, 0, 0))
    qblock = pl.BlockSpec((None, None, BLOCK_Q, K), lambda b, n, i: (b, n, i, 0))
    qtok = pl.BlockSpec((None, BLOCK_Q), lambda b, n, i: (b, i))
    return pl.pallas_call(
        functools.partial(_fwd_kernel, scale=scale, bk=BLOCK_K),
        grid=(B, N, T // BLOCK_Q),
        in_specs=[qblock, row, row, qtok, qtok, qtok, pl.BlockSpec((None, T), lambda b, n, i: (b, 0))],
        out_specs=[qblock, pl.BlockSpec((None, None, BLOCK_Q), lambda b, n, i: (b, n, i))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((B, N, T), f32)],
        interpret=interpret, name="packed_attention_fwd", **_specs(interpret),
    )(q, k, v, seg, ks, ke, seg)


# ---------------------------------------------------------------------------------------------
# Backward: dK, dV per key block (looping over the query blocks that reach it), dQ per query block.


def _dkv_kernel(q_ref, do_ref, lse_ref, delta_ref, seg_ref, ks_ref, ke_ref, k_ref, v_ref, segk_ref, ksk_ref,
                kek_ref, dk_ref, dv_ref, *, scale, bq):
    k, v, seg_k = k_ref[...], v_ref[...], segk_ref[...]
    bk, K = k.shape
    start_k = pl.program_id(2) * bk

    def body(i, carry):
        dk, dv = carry
        qs = pl.ds(i * bq, bq)
        q, do = q_ref[qs, :], do_ref[qs, :]
        s = _dot(q, k, trans_b=True) * scale
        s = jnp.where(_mask(seg_ref[qs], ks_ref[qs], ke_ref[qs], seg_k, start_k, bk), s, NEG)
        p = jnp.exp(s - lse_ref[qs][:, None])
        ds = p * (_dot(do, v, trans_b=True) - delta_ref[qs][:, None])
        dv = dv + _dot(p.astype(do.dtype), do, trans_a=True)
        return dk + _dot(ds.astype(q.dtype), q, trans_a=True), dv

    lo, hi = _block_range(ksk_ref, kek_ref, bq)  # symmetric: the queries that see these keys
    dk, dv = jax.lax.fori_loop(lo, hi, body, (jnp.zeros((bk, K), f32), jnp.zeros((bk, K), f32)))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, do_ref, lse_ref, delta_ref, segq_ref, ks_ref, ke_ref, k_ref, v_ref, segk_ref, dq_ref, *,
               scale, bk):
    q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
    seg_q, ks, ke = segq_ref[...], ks_ref[...], ke_ref[...]

    def body(j, dq):
        keys = pl.ds(j * bk, bk)
        k, v = k_ref[keys, :], v_ref[keys, :]
        s = _dot(q, k, trans_b=True) * scale
        s = jnp.where(_mask(seg_q, ks, ke, segk_ref[keys], j * bk, bk), s, NEG)
        p = jnp.exp(s - lse[:, None])
        ds = p * (_dot(do, v, trans_b=True) - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k)

    lo, hi = _block_range(ks_ref, ke_ref, bk)
    dq = jax.lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, f32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _backward(q, k, v, seg, o, lse, do, window, scale, interpret):
    B, N, T, K = q.shape
    C = BLOCK_BWD
    ks, ke = key_ranges(seg, window)
    delta = jnp.einsum("bntk,bntk->bnt", o.astype(f32), do.astype(f32))
    do = do.astype(q.dtype)
    row = pl.BlockSpec((None, None, T, K), lambda b, n, i: (b, n, 0, 0))
    row_t = pl.BlockSpec((None, None, T), lambda b, n, i: (b, n, 0))
    tok = pl.BlockSpec((None, T), lambda b, n, i: (b, 0))
    blk = pl.BlockSpec((None, None, C, K), lambda b, n, i: (b, n, i, 0))
    blk_t = pl.BlockSpec((None, None, C), lambda b, n, i: (b, n, i))
    blk_tok = pl.BlockSpec((None, C), lambda b, n, i: (b, i))
    common = dict(grid=(B, N, T // C), interpret=interpret, **_specs(interpret))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, scale=scale, bq=C),
        in_specs=[row, row, row_t, row_t, tok, tok, tok, blk, blk, blk_tok, blk_tok, blk_tok],
        out_specs=[blk, blk], out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype)] * 2,
        name="packed_attention_dkv", **common,
    )(q, do, lse, delta, seg, ks, ke, k, v, seg, ks, ke)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, scale=scale, bk=C),
        in_specs=[blk, blk, blk_t, blk_t, blk_tok, blk_tok, blk_tok, row, row, tok],
        out_specs=blk, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        name="packed_attention_dq", **common,
    )(q, do, lse, delta, seg, ks, ke, k, v, seg)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _flash(q, k, v, seg, window, scale, interpret):
    return _forward(q, k, v, seg, window, scale, interpret)[0]


def _flash_fwd(q, k, v, seg, window, scale, interpret):
    o, lse = _forward(q, k, v, seg, window, scale, interpret)
    return o, (q, k, v, seg, o, lse)


def _flash_bwd(window, scale, interpret, res, do):
    q, k, v, seg, o, lse = res
    return (*_backward(q, k, v, seg, o, lse, do, window, scale, interpret), None)


_flash.defvjp(_flash_fwd, _flash_bwd)
