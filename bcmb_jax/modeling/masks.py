"""Which key each query may attend to, stated once: the segment + window mask and the dense reference.

For query i and key j of one packed row:

    allowed(i, j) = seg[i] == seg[j]  and  (global layer  or  |i - j| <= window)

Segment 0 is padding; its tokens attend only to each other, so every query has at least itself to
attend to and no row is ever fully masked (no NaN). Documents in a row must be contiguous, so index
distance equals position distance inside a document. The kernels (`banded.py`, `blocked.py`,
`pallas_attention.py`) compute the same function without the dense mask; `segment_spans` gives them each
token's document span.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG = -1e30  # finite "minus infinity": exp(NEG - m) == 0 and never NaN


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
