"""The workloads: the inference sets of the ModernBERT benchmark and a masked-language-model batch."""

from __future__ import annotations

import numpy as np

from bcmb_jax.modeling.heads import IGNORE

MASK_RATE = 0.30
SEED = 42


def id_range(vocab: int) -> tuple[int, int]:
    """The paper's randint[100, 16000), shrunk to fit small vocabularies."""
    return min(100, vocab // 10), min(16000, vocab)


def make_set(kind: str, L: int, samples: int, vocab: int) -> list[np.ndarray]:
    """`samples` documents of token ids: all of length L ("fixed") or ~Normal(L/2, L/8) ("variable")."""
    rng = np.random.default_rng(SEED + L)
    if kind == "fixed":
        lengths = np.full(samples, L)
    else:
        lengths = np.clip(rng.normal(L / 2, L / 8, samples).astype(int), 16, L)
    lo, hi = id_range(vocab)
    return [rng.integers(lo, hi, int(n)).astype(np.int32) for n in lengths]


def mlm_batch(L: int, rows: int, vocab: int, mask_id: int) -> dict[str, np.ndarray]:
    """A fixed-length MLM batch: 30% of tokens are targets; of those 80% -> [MASK], 10% random, 10% kept."""
    rng = np.random.default_rng(SEED)
    lo, hi = id_range(vocab)
    ids = rng.integers(lo, hi, (rows, L)).astype(np.int32)
    target = rng.random((rows, L)) < MASK_RATE
    u = rng.random((rows, L))
    inputs = np.where(target & (u < 0.8), mask_id, ids)
    inputs = np.where(target & (u >= 0.8) & (u < 0.9), rng.integers(lo, hi, (rows, L)), inputs).astype(np.int32)
    return {"input_ids": inputs, "labels": np.where(target, ids, IGNORE).astype(np.int32)}
