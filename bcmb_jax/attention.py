"""Bidirectional attention over packed rows: the function, its dense reference, and the backends.

Every backend computes the same function. For query i and key j of one row:

    allowed(i, j) = seg[i] == seg[j]  and  (global layer  or  |i - j| <= window)

Segment 0 is padding; its tokens attend only to each other, so every query has at least
itself to attend to and no row is ever fully masked (no NaN). Documents in a row must be
contiguous, so index distance equals position distance inside a document.

Backends (the run-time option `Runtime.attention_backend`, see `runtime.py`):
  reference  `jax.nn.dot_product_attention` with the dense T x T mask; the oracle of the tests.
  blocked    the XLA:CPU kernels of `blocked.py`: banded local layers, block-skipping online
             softmax for global layers, O(T * block) memory in both passes. The default.
  gpu        the Pallas kernel of `pallas_attention.py` for both layer kinds (per-query key
             ranges: document span, and the window on local layers). Falls back to `blocked`
             when no GPU is present, unless `interpret=True` (the Pallas interpreter, for tests).

Layouts: `attention` takes q/k/v_BTNK (batch, tokens, heads, head dim); the model calls
`attention_heads_first` with q/k/v_BNTK, the layout the kernels work in, so each layer transposes
once. seg_BT is int32. Softmax statistics are float32 in every backend.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

NEG = -1e30  # finite "minus infinity": exp(NEG - m) == 0 and never NaN
BACKENDS = ("blocked", "reference", "gpu")


def attention(q_BTNK: jax.Array, k_BTNK: jax.Array, v_BTNK: jax.Array, seg_BT: jax.Array, *,
              window: int | None, backend: str = "blocked", local_chunk: int = 64, global_chunk: int = 1024,
              interpret: bool = False) -> jax.Array:
    """Scaled dot-product attention; `window` is the half-width of a local layer, None for global."""
    if backend == "reference":
        return reference_attention(q_BTNK, k_BTNK, v_BTNK, seg_BT, window=window, scale=q_BTNK.shape[-1] ** -0.5)
    o_BNTK = attention_heads_first(*(jnp.swapaxes(x, 1, 2) for x in (q_BTNK, k_BTNK, v_BTNK)), seg_BT,
                                   window=window, backend=backend, local_chunk=local_chunk,
                                   global_chunk=global_chunk, interpret=interpret)
    return jnp.swapaxes(o_BNTK, 1, 2)


def attention_heads_first(q_BNTK: jax.Array, k_BNTK: jax.Array, v_BNTK: jax.Array, seg_BT: jax.Array, *,
                          window: int | None, backend: str = "blocked", local_chunk: int = 64,
                          global_chunk: int = 1024, interpret: bool = False) -> jax.Array:
    """`attention` in the heads-first layout: q/k/v_BNTK -> o_BNTK (q unscaled)."""
    scale = q_BNTK.shape[-1] ** -0.5
    if backend == "reference":
        o_BTNK = reference_attention(*(jnp.swapaxes(x, 1, 2) for x in (q_BNTK, k_BNTK, v_BNTK)), seg_BT,
                                     window=window, scale=scale)
        return jnp.swapaxes(o_BTNK, 1, 2)
    if backend == "gpu" and (interpret or gpu_available()):
        from bcmb_jax.pallas_attention import pallas_attention

        return pallas_attention(q_BNTK, k_BNTK, v_BNTK, seg_BT, window=window, scale=scale, interpret=interpret)
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    from bcmb_jax.blocked import blocked_attention

    return blocked_attention(q_BNTK, k_BNTK, v_BNTK, seg_BT, window=window, scale=scale,
                             local_chunk=local_chunk, global_chunk=global_chunk)


def allowed_mask(seg_BT: jax.Array, window: int | None) -> jax.Array:
    """Dense boolean mask [B, T, T] of the pairs that may attend (the definition above)."""
    T = seg_BT.shape[1]
    ok_BTT = seg_BT[:, :, None] == seg_BT[:, None, :]
    if window is not None:
        i = jnp.arange(T)
        ok_BTT &= (jnp.abs(i[:, None] - i[None, :]) <= window)[None]
    return ok_BTT


def reference_attention(q_BTNK, k_BTNK, v_BTNK, seg_BT, *, window, scale):
    """Dense attention with the explicit mask (float32 scores and softmax); O(T^2) memory."""
    return jax.nn.dot_product_attention(q_BTNK, k_BTNK, v_BTNK, mask=allowed_mask(seg_BT, window)[:, None],
                                        scale=scale, implementation="xla")


def segment_spans(seg_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(first, last) [B, T]: the first and last index in the row of the segment id of each token."""
    B, T = seg_BT.shape
    order = jnp.argsort(seg_BT, axis=1, stable=True)  # by id, then by position
    sorted_seg = jnp.take_along_axis(seg_BT, order, axis=1)
    change = sorted_seg[:, 1:] != sorted_seg[:, :-1]
    idx = jnp.broadcast_to(jnp.arange(T), (B, T))
    edge = jnp.ones((B, 1), bool)
    first = jax.lax.cummax(jnp.where(jnp.concatenate([edge, change], 1), idx, 0), axis=1)
    last = jax.lax.cummin(jnp.where(jnp.concatenate([change, edge], 1), idx, T - 1), axis=1, reverse=True)
    rows = jnp.arange(B)[:, None]

    def unsort(sorted_idx):  # back to token order, as positions in the row
        pos = jnp.take_along_axis(order, sorted_idx, axis=1).astype(jnp.int32)
        return jnp.zeros((B, T), jnp.int32).at[rows, order].set(pos)

    return unsort(first), unsort(last)


@functools.cache
def gpu_available() -> bool:
    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        return False
