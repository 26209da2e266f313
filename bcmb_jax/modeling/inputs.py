"""The model's inputs: padded rows `(input_ids, attention_mask)` or packed rows `(input_ids, segment_ids)`.

Both forms become (ids_BT, seg_BT, pos_BT): segment ids (0 = padding, 1..M = documents of a row) and
positions that restart at 0 in every document. Padded rows are the special case of one document per row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bcmb_jax.errors import InputError


def positions_from_segments(seg_BT: jax.Array) -> jax.Array:
    """Positions restarting at 0 at every segment change (documents must be contiguous)."""
    T = seg_BT.shape[1]
    idx_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), seg_BT.shape)
    starts_BT = jnp.concatenate([jnp.ones_like(seg_BT[:, :1], bool), seg_BT[:, 1:] != seg_BT[:, :-1]], axis=1)
    return idx_BT - jax.lax.cummax(jnp.where(starts_BT, idx_BT, 0), axis=1)


def normalize_inputs(input_ids, attention_mask=None, segment_ids=None, position_ids=None):
    """Both input forms -> (ids_BT, seg_BT, pos_BT, packed)."""
    ids_BT = jnp.asarray(input_ids, jnp.int32)
    if ids_BT.ndim != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got shape {ids_BT.shape}")
    if segment_ids is not None:
        if attention_mask is not None:
            raise ValueError("pass either attention_mask (padded rows) or segment_ids (packed rows), not both")
        seg_BT = jnp.asarray(segment_ids, jnp.int32)
        pos_BT = positions_from_segments(seg_BT) if position_ids is None else jnp.asarray(position_ids, jnp.int32)
        return ids_BT, seg_BT, pos_BT, True
    if attention_mask is None:
        seg_BT = jnp.ones_like(ids_BT)
    else:
        seg_BT = (jnp.asarray(attention_mask) != 0).astype(jnp.int32)
    pos_BT = jnp.broadcast_to(jnp.arange(ids_BT.shape[1], dtype=jnp.int32), ids_BT.shape)
    if position_ids is not None:
        pos_BT = jnp.asarray(position_ids, jnp.int32)
    return ids_BT, seg_BT, pos_BT, False


def check_ids(input_ids, vocab_size: int) -> None:
    """Token ids outside [0, vocab_size) are an `InputError` (in a jitted call they would read garbage)."""
    ids = np.asarray(input_ids)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = int(ids.max()) if int(ids.max()) >= vocab_size else int(ids.min())
        raise InputError(f"input_ids: token id {bad} is outside the model's vocabulary [0, {vocab_size}); "
                         "expected ids from the model's own tokenizer")
