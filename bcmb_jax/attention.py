"""Bidirectional attention over packed rows: segment masks, a local window, three backends.

Every backend computes the same function. For query i and key j of one row:

    allowed(i, j) = seg[i] == seg[j]  and  (global layer  or  |i - j| <= window)

Segment 0 is padding; its tokens attend only to each other, so every query has at least
itself to attend to and no row is ever fully masked (no NaN). Documents in a row must be
contiguous, so index distance equals position distance inside a document.

Backends (chosen by `ModelConfig.attention_backend`):
  reference  dense T x T masks; the oracle the tests compare against.
  blocked    local layers as banded chunks, O(T * window) time and memory; global layers as an
             online softmax over key blocks with a hand-written backward pass, so no T x T buffer
             exists in the forward or the backward pass. The default, on every platform.
  gpu        global layers through the Pallas GPU flash-attention kernel, which takes segment ids
             natively; local layers stay banded (no fused GPU kernel supports a bidirectional
             window with segment ids). Falls back to `blocked` when no GPU is present.

Shapes: q/k/v_BTNK (batch, tokens, heads, head dim), seg_BT int32.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

NEG = -1e30  # finite "minus infinity": exp(NEG - m) == 0 and never NaN
log = logging.getLogger(__name__)


def attention(q_BTNK: jax.Array, k_BTNK: jax.Array, v_BTNK: jax.Array, seg_BT: jax.Array, *,
              window: int | None, backend: str = "blocked", local_chunk: int = 64,
              global_chunk: int = 1024) -> jax.Array:
    """Scaled dot-product attention; `window` is the half-width of a local layer, None for global."""
    scale = q_BTNK.shape[-1] ** -0.5
    if backend == "reference":
        return reference_attention(q_BTNK, k_BTNK, v_BTNK, seg_BT, window=window, scale=scale)
    if window is not None:
        return banded_attention(q_BTNK, k_BTNK, v_BTNK, seg_BT, window=window, chunk=local_chunk, scale=scale)
    if backend == "gpu" and gpu_available():
        return pallas_global_attention(q_BTNK, k_BTNK, v_BTNK, seg_BT, scale=scale)
    if backend not in ("blocked", "gpu"):
        raise ValueError(f"unknown attention backend {backend!r}")
    return flash_attention(q_BTNK * jnp.asarray(scale, q_BTNK.dtype), k_BTNK, v_BTNK, seg_BT,
                           min(global_chunk, _round_up(q_BTNK.shape[1], 8)))


def allowed_mask(seg_BT: jax.Array, window: int | None) -> jax.Array:
    """Dense boolean mask [B, T, T] of the pairs that may attend (the definition above)."""
    T = seg_BT.shape[1]
    ok_BTT = seg_BT[:, :, None] == seg_BT[:, None, :]
    if window is not None:
        i = jnp.arange(T)
        ok_BTT &= (jnp.abs(i[:, None] - i[None, :]) <= window)[None]
    return ok_BTT


def reference_attention(q_BTNK, k_BTNK, v_BTNK, seg_BT, *, window, scale):
    """Dense attention with explicit masks (fp32 softmax); O(T^2) memory."""
    s_BNTS = jnp.einsum("btnk,bsnk->bnts", q_BTNK, k_BTNK, preferred_element_type=jnp.float32) * scale
    s_BNTS = jnp.where(allowed_mask(seg_BT, window)[:, None], s_BNTS, NEG)
    p_BNTS = jax.nn.softmax(s_BNTS, axis=-1).astype(v_BTNK.dtype)
    return jnp.einsum("bnts,bsnk->btnk", p_BNTS, v_BTNK, preferred_element_type=jnp.float32
                      ).astype(q_BTNK.dtype)


# ---------------------------------------------------------------------------------------------
# Local layers: banded chunks.


def banded_attention(q_BTNK, k_BTNK, v_BTNK, seg_BT, *, window: int, chunk: int, scale: float):
    """Local attention in O(T * (chunk + 2 * window)).

    Queries are cut into chunks of C tokens; chunk c sees the keys [c*C - w, c*C + C + w), i.e.
    its own chunk plus w keys on each side, which contains every key within the window. The
    band |i - j| <= w inside that block is the same static mask for every chunk.
    """
    B, T, N, K = q_BTNK.shape
    C, w = chunk, window
    if C < w:
        raise ValueError(f"local chunk {C} must be >= the half window {w}")
    nC = -(-T // C)
    Tp = nC * C

    def padT(x, fill):
        return jnp.pad(x, ((0, 0), (0, Tp - T)) + ((0, 0),) * (x.ndim - 2), constant_values=fill)

    def windows(x, fill):
        # [B, Tp, ...] -> [B, nC, C + 2w, ...]; xp[p] is token p - w, chunk c needs xp[cC : cC + C + 2w].
        xp = jnp.pad(x, ((0, 0), (w, w)) + ((0, 0),) * (x.ndim - 2), constant_values=fill)
        rest = x.shape[2:]
        left = xp[:, :Tp].reshape(B, nC, C, *rest)[:, :, :w]
        mid = xp[:, w:w + Tp].reshape(B, nC, C, *rest)
        right = xp[:, 2 * w:2 * w + Tp].reshape(B, nC, C, *rest)[:, :, C - w:]
        return jnp.concatenate([left, mid, right], axis=2)

    # -1 marks padding added here; it matches only itself, so it never leaks into real rows.
    seg_BT = padT(seg_BT, -1)
    q_BcCNK = padT(q_BTNK, 0).reshape(B, nC, C, N, K)
    k_BcSNK = windows(padT(k_BTNK, 0), 0)
    v_BcSNK = windows(padT(v_BTNK, 0), 0)
    segk_BcS = windows(seg_BT, -2)  # -2: outside the row; matches nothing
    segq_BcC = seg_BT.reshape(B, nC, C)

    a = jnp.arange(C)[:, None]
    b = jnp.arange(C + 2 * w)[None, :]
    band_CS = jnp.abs(b - w - a) <= w  # key b of the block is token (c*C - w + b); query a is c*C + a
    ok_BcCS = band_CS[None, None] & (segq_BcC[..., :, None] == segk_BcS[..., None, :])

    s_BcNCS = jnp.einsum("bcqnk,bcsnk->bcnqs", q_BcCNK, k_BcSNK, preferred_element_type=jnp.float32) * scale
    s_BcNCS = jnp.where(ok_BcCS[:, :, None], s_BcNCS, NEG)
    p_BcNCS = jax.nn.softmax(s_BcNCS, axis=-1).astype(v_BTNK.dtype)
    o_BcCNK = jnp.einsum("bcnqs,bcsnk->bcqnk", p_BcNCS, v_BcSNK, preferred_element_type=jnp.float32)
    return o_BcCNK.reshape(B, Tp, N, K)[:, :T].astype(q_BTNK.dtype)


# ---------------------------------------------------------------------------------------------
# Global layers: online softmax over key blocks, with a recomputing backward pass.


def _key_blocks(x, chunk, fill):
    """[B, T, ...] -> [nK, B, chunk, ...] (padded with `fill`), the scan axis first."""
    B, T = x.shape[:2]
    nK = -(-T // chunk)
    x = jnp.pad(x, ((0, 0), (0, nK * chunk - T)) + ((0, 0),) * (x.ndim - 2), constant_values=fill)
    return jnp.moveaxis(x.reshape(B, nK, chunk, *x.shape[2:]), 1, 0)


def _block_scores(q_BTNK, k_BSNK, segq_BT, segk_BS):
    s_BNTS = jnp.einsum("btnk,bsnk->bnts", q_BTNK, k_BSNK, preferred_element_type=jnp.float32)
    return jnp.where((segq_BT[:, :, None] == segk_BS[:, None, :])[:, None], s_BNTS, NEG)


def _flash_forward(q_BTNK, k_BTNK, v_BTNK, seg_BT, chunk):
    B, T, N, K = q_BTNK.shape
    blocks = (_key_blocks(k_BTNK, chunk, 0), _key_blocks(v_BTNK, chunk, 0), _key_blocks(seg_BT, chunk, -2))

    def step(carry, blk):
        m_BNT, l_BNT, acc_BTNK = carry
        k_BSNK, v_BSNK, segk_BS = blk
        s_BNTS = _block_scores(q_BTNK, k_BSNK, seg_BT, segk_BS)
        m_new = jnp.maximum(m_BNT, s_BNTS.max(-1))
        p_BNTS = jnp.exp(s_BNTS - m_new[..., None])
        corr_BNT = jnp.exp(m_BNT - m_new)
        l_BNT = l_BNT * corr_BNT + p_BNTS.sum(-1)
        pv_BTNK = jnp.einsum("bnts,bsnk->btnk", p_BNTS.astype(v_BSNK.dtype), v_BSNK,
                             preferred_element_type=jnp.float32)
        acc_BTNK = acc_BTNK * jnp.moveaxis(corr_BNT, 1, 2)[..., None] + pv_BTNK
        return (m_new, l_BNT, acc_BTNK), None

    init = (jnp.full((B, N, T), NEG, jnp.float32), jnp.zeros((B, N, T), jnp.float32),
            jnp.zeros((B, T, N, K), jnp.float32))
    (m_BNT, l_BNT, acc_BTNK), _ = jax.lax.scan(step, init, blocks)
    o_BTNK = (acc_BTNK / jnp.moveaxis(l_BNT, 1, 2)[..., None]).astype(q_BTNK.dtype)
    lse_BNT = m_BNT + jnp.log(l_BNT)
    return o_BTNK, lse_BNT


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def flash_attention(q_BTNK, k_BTNK, v_BTNK, seg_BT, chunk: int):
    """Global attention (q pre-scaled); memory O(T * chunk) per head in both passes."""
    return _flash_forward(q_BTNK, k_BTNK, v_BTNK, seg_BT, chunk)[0]


def _flash_fwd_rule(q_BTNK, k_BTNK, v_BTNK, seg_BT, chunk):
    o_BTNK, lse_BNT = _flash_forward(q_BTNK, k_BTNK, v_BTNK, seg_BT, chunk)
    return o_BTNK, (q_BTNK, k_BTNK, v_BTNK, seg_BT, o_BTNK, lse_BNT)


def _flash_bwd_rule(chunk, res, do_BTNK):
    q_BTNK, k_BTNK, v_BTNK, seg_BT, o_BTNK, lse_BNT = res
    T = q_BTNK.shape[1]
    delta_BNT = jnp.einsum("btnk,btnk->bnt", do_BTNK.astype(jnp.float32), o_BTNK.astype(jnp.float32))
    blocks = (_key_blocks(k_BTNK, chunk, 0), _key_blocks(v_BTNK, chunk, 0), _key_blocks(seg_BT, chunk, -2))
    do_c = do_BTNK.astype(v_BTNK.dtype)

    def step(dq_BTNK, blk):
        k_BSNK, v_BSNK, segk_BS = blk
        p_BNTS = jnp.exp(_block_scores(q_BTNK, k_BSNK, seg_BT, segk_BS) - lse_BNT[..., None])
        dv_BSNK = jnp.einsum("bnts,btnk->bsnk", p_BNTS.astype(do_c.dtype), do_c,
                             preferred_element_type=jnp.float32)
        dp_BNTS = jnp.einsum("btnk,bsnk->bnts", do_c, v_BSNK, preferred_element_type=jnp.float32)
        ds_BNTS = (p_BNTS * (dp_BNTS - delta_BNT[..., None])).astype(q_BTNK.dtype)
        dq_BTNK = dq_BTNK + jnp.einsum("bnts,bsnk->btnk", ds_BNTS, k_BSNK, preferred_element_type=jnp.float32)
        dk_BSNK = jnp.einsum("bnts,btnk->bsnk", ds_BNTS, q_BTNK, preferred_element_type=jnp.float32)
        return dq_BTNK, (dk_BSNK, dv_BSNK)

    dq_BTNK, (dk, dv) = jax.lax.scan(step, jnp.zeros(q_BTNK.shape, jnp.float32), blocks)

    def unblock(x_nBSNK):
        nK, B, S = x_nBSNK.shape[:3]
        return jnp.moveaxis(x_nBSNK, 0, 1).reshape(B, nK * S, *x_nBSNK.shape[3:])[:, :T]

    return (dq_BTNK.astype(q_BTNK.dtype), unblock(dk).astype(k_BTNK.dtype),
            unblock(dv).astype(v_BTNK.dtype), None)


flash_attention.defvjp(_flash_fwd_rule, _flash_bwd_rule)


# ---------------------------------------------------------------------------------------------
# GPU: the Pallas flash-attention kernel (segment ids, no window) for the global layers.


@functools.cache
def gpu_available() -> bool:
    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        return False


def pallas_global_attention(q_BTNK, k_BTNK, v_BTNK, seg_BT, *, scale: float, block: int = 128,
                            interpret: bool = False):
    """Global attention through `jax.experimental.pallas.ops.gpu.attention.mha` (Triton).

    The kernel needs T to be a multiple of its block size, so rows are padded with a segment id
    (-1) that matches no real token. `interpret=True` runs the same kernel on CPU (tests).
    """
    from jax.experimental.pallas.ops.gpu import attention as pallas_attention

    T = q_BTNK.shape[1]
    pad = _round_up(T, block) - T
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    q, k, v = (jnp.pad(x, widths) for x in (q_BTNK, k_BTNK, v_BTNK))
    seg = jnp.pad(seg_BT, ((0, 0), (0, pad)), constant_values=-1)
    sizes = pallas_attention.BlockSizes(block_q=block, block_k=block, block_q_dkv=32, block_kv_dkv=32,
                                        block_q_dq=32, block_kv_dq=32)
    out = pallas_attention.mha(q, k, v, seg, sm_scale=scale, causal=False, block_sizes=sizes,
                               interpret=interpret)
    return out[:, :T]


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m
