"""Unpadded batched inference: pack documents of any lengths into rows, run, split per document.

    outs = encode(model, [[50281, 1012, ..., 50282], [50281, ..., 50282], ...])
    outs[i]   # [len_i, V] mlm / [len_i, C] token / [C] sequence / [len_i, D] base

Documents are placed best-fit-decreasing into rows of `row_len` tokens, so compute is spent on
real tokens rather than padding; attention stays inside each document (segment ids) and rotary
positions restart per document, which gives the same numbers as running each document alone.
Row lengths and rows per batch are bucketed so that only a few shapes are ever compiled.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np


def best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of item indices: longest first, each into the fullest row that still has room."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sequence {i} has {n} tokens, more than the row length {capacity}")
        j = bisect.bisect_left(free, (n, -1))
        if j == len(free):
            bins.append([i])
            room, b = capacity - n, len(bins) - 1
        else:
            room, b = free.pop(j)
            bins[b].append(i)
            room -= n
        bisect.insort(free, (room, b))
    return bins


def make_rows(seqs: Sequence[Sequence[int]], bins: list[list[int]], row_len: int, pad_id: int,
              n_rows: int | None = None) -> dict[str, np.ndarray]:
    """Packed arrays input_ids / segment_ids (1.. per document, 0 = pad) / position_ids."""
    n_rows = n_rows or len(bins)
    ids = np.full((n_rows, row_len), pad_id, np.int32)
    seg = np.zeros((n_rows, row_len), np.int32)
    pos = np.zeros((n_rows, row_len), np.int32)
    for r, b in enumerate(bins):
        t = 0
        for s, i in enumerate(b, start=1):
            n = len(seqs[i])
            ids[r, t:t + n] = seqs[i]
            seg[r, t:t + n] = s
            pos[r, t:t + n] = np.arange(n)
            t += n
    return {"input_ids": ids, "segment_ids": seg, "position_ids": pos}


def _bucket(n: int, lo: int) -> int:
    return max(lo, 1 << (max(n, 1) - 1).bit_length())


def encode(model, sequences: Sequence[Sequence[int]], *, row_len: int | None = None,
           batch_tokens: int = 16384, output: str | None = None) -> list[np.ndarray]:
    """Runs `model` on token-id sequences of any lengths, packed; returns one array per sequence.

    row_len: tokens per packed row (default: the longest sequence rounded up to a power of two,
    at least 512, at most the model's context). batch_tokens: tokens per forward call.
    output: "logits" (default when the model has a head) or "hidden".
    """
    cfg = model.cfg
    if not sequences:
        return []
    lengths = [len(s) for s in sequences]
    if min(lengths) < 1:
        raise ValueError(f"sequence {lengths.index(0)} is empty")
    longest = max(lengths)
    if longest > cfg.max_position_embeddings:
        raise ValueError(f"a sequence has {longest} tokens; the model's context is {cfg.max_position_embeddings}")
    row_len = row_len or min(_bucket(longest, 512), max(cfg.max_position_embeddings, longest))
    output = output or ("hidden" if model.task == "base" else "logits")
    bins = best_fit(lengths, row_len)
    rows_per_call = max(1, batch_tokens // row_len)
    max_docs = _bucket(max(len(b) for b in bins), 1)
    results: list[np.ndarray | None] = [None] * len(sequences)
    for start in range(0, len(bins), rows_per_call):
        chunk = bins[start:start + rows_per_call]
        n_rows = min(rows_per_call, _bucket(len(chunk), 1))  # a short last call is not padded to full size
        batch = make_rows(sequences, chunk, row_len, cfg.pad_token_id, n_rows)
        out = model(batch["input_ids"], segment_ids=batch["segment_ids"], position_ids=batch["position_ids"],
                    **({"num_segments": max_docs} if model.task == "sequence" else {}))
        arr = np.asarray(out.last_hidden_state if output == "hidden" else out.logits)
        for r, b in enumerate(chunk):
            t = 0
            for s, i in enumerate(b):
                n = lengths[i]
                per_doc = model.task == "sequence" and output == "logits"
                results[i] = arr[r, s] if per_doc else arr[r, t:t + n]
                t += n
    return results  # type: ignore[return-value]
