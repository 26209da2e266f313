"""Unpadded batched inference: pack documents of any lengths into rows, run, split per document.

    outs = encode(model, [[50281, 1012, ..., 50282], [50281, ..., 50282], ...])
    outs[i]   # [len_i, V] mlm / [len_i, C] token / [C] sequence / [len_i, D] base

Documents are placed best-fit-decreasing into rows, so compute is spent on real tokens rather
than padding; attention stays inside each document (segment ids) and rotary positions restart per
document, which gives the same numbers as running each document alone. As ModernBERT concatenates
a batch's documents, rows grow past the longest document (up to `MAX_LONG_ROW` tokens or four times
the longest document, within the batch) until `PACKING_TARGET` of their tokens are real, where the
attention backend skips the key blocks of other documents; elsewhere rows stay at the longest
document's length. The last call's rows are
repacked as few and as short (multiples of `ROW_MULTIPLE`) as they can be, so that few shapes are
ever compiled and little is padded. `plan_rows` gives the layout, and its packing efficiency,
without running the model.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bcmb_jax.errors import InputError

PACKING_TARGET = 0.97  # share of real tokens that lengthening the rows aims at
ROW_MULTIPLE = 64  # lengths of the last call's rows are multiples of this (a block of the local kernel)
MIN_ROW = 512  # shortest row length chosen automatically
MAX_LONG_ROW = 4096  # rows grow to this (or 4x the longest document) at most


def best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of item indices: longest first, each into the fullest row that still has room."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise InputError(f"sequence {i} has {n} tokens, more than the row length {capacity}")
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


@dataclass(frozen=True)
class Call:
    """One forward call: `len(bins)` rows of `row_len` tokens; bins hold document indices."""

    row_len: int
    bins: list[list[int]]


@dataclass(frozen=True)
class Plan:
    """The packed layout of a set of documents: forward calls in order."""

    calls: list[Call]
    tokens: int  # real tokens

    @property
    def slots(self) -> int:
        """Tokens computed (rows x row length, over all calls)."""
        return sum(c.row_len * len(c.bins) for c in self.calls)

    @property
    def efficiency(self) -> float:
        """Real tokens / tokens computed."""
        return self.tokens / max(self.slots, 1)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """The distinct (rows, row length) shapes of the calls."""
        return sorted({(len(c.bins), c.row_len) for c in self.calls})


def pack_calls(lengths: Sequence[int], row_len: int, batch_tokens: int, multiple: int = ROW_MULTIPLE) -> Plan:
    """Best-fit into rows of `row_len`, `batch_tokens // row_len` rows per call; the least full rows
    form the last call, whose documents are repacked into the fewest, shortest rows that hold them."""
    fill = [sum(lengths[i] for i in b) for b in best_fit(lengths, row_len)]
    bins = [b for _, b in sorted(zip(fill, best_fit(lengths, row_len)), key=lambda x: -x[0])]
    per_call = max(1, batch_tokens // row_len)
    n_full = (len(bins) - 1) // per_call * per_call
    calls = [Call(row_len, bins[s:s + per_call]) for s in range(0, n_full, per_call)]
    calls.append(_tightest(lengths, bins[n_full:], row_len, multiple, max(batch_tokens, row_len)))
    return Plan(calls, int(sum(lengths)))


def balanced(lengths: Sequence[int], rows: int) -> list[list[int]]:
    """`rows` bins of item indices with loads as even as can be: longest first, each into the lightest bin."""
    heap = [(0, r) for r in range(rows)]
    bins: list[list[int]] = [[] for _ in range(rows)]
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        load, r = heapq.heappop(heap)
        bins[r].append(i)
        heapq.heappush(heap, (load + lengths[i], r))
    return [b for b in bins if b]


def _tightest(lengths: Sequence[int], bins: list[list[int]], row_len: int, multiple: int, budget: int) -> Call:
    """The documents of `bins` in as few token slots as possible (rows x length <= `budget`): for each
    number of rows, loads balanced across them and the row length rounded up to a multiple of `multiple`."""
    items = [i for b in bins for i in b]
    sub = [lengths[i] for i in items]
    best, best_slots = Call(row_len, bins), row_len * len(bins)
    for rows in range(-(-sum(sub) // row_len), min(len(items), 2 * len(bins) + 2) + 1):
        packed = balanced(sub, rows)
        T = _round_up(max(sum(sub[j] for j in b) for b in packed), multiple)
        if T <= row_len and T * len(packed) < best_slots and T * len(packed) <= budget:
            best, best_slots = Call(T, [[items[j] for j in b] for b in packed]), T * len(packed)
    return best


def long_rows_pay_off(model) -> bool:
    """Whether rows longer than the set's documents cost only what their documents cost: kernels that give
    each query (block) its own key range, so a row's other documents are skipped. The Pallas kernel of the
    `gpu` backend on a GPU does; so do the `blocked` kernels on CPU, whose global layers walk per-query-block
    key ranges in rows of several documents (`blocked.walks_ranges`). The dense `reference` backend does not."""
    import jax

    backend, platform = attention_backend_of(model), jax.default_backend()
    return (backend == "gpu" and platform == "gpu") or (backend == "blocked" and platform == "cpu")


def attention_backend_of(model) -> str:
    """The attention backend a model runs with (its run-time option)."""
    return model.runtime.attention_backend


def plan_rows(model, lengths: Sequence[int], *, row_len: int | None = None, batch_tokens: int = 16384,
              long_rows: bool | None = None) -> Plan:
    """The layout `encode` uses for documents of these lengths (see `encode` for the arguments)."""
    cfg = model.cfg
    if not lengths:
        return Plan([], 0)
    if min(lengths) < 1:
        raise InputError(f"sequence {list(lengths).index(min(lengths))} is empty")
    longest = max(lengths)
    if longest > cfg.max_position_embeddings:
        raise InputError(f"a sequence has {longest} tokens; the model's context is {cfg.max_position_embeddings}")
    if row_len:
        return pack_calls(lengths, row_len, batch_tokens)
    short = min(_bucket(longest, MIN_ROW), max(cfg.max_position_embeddings, longest))
    plan = pack_calls(lengths, short, batch_tokens)
    cap = max(short, min(batch_tokens, max(MAX_LONG_ROW, 4 * short)))
    if long_rows_pay_off(model) if long_rows is None else long_rows:
        row = 2 * short
        while plan.efficiency < PACKING_TARGET and row <= cap:  # longer rows until the target is met
            longer = pack_calls(lengths, row, batch_tokens)
            plan = longer if longer.efficiency > plan.efficiency else plan
            row *= 2
    return plan


def encode(model, sequences: Sequence[Sequence[int]], *, row_len: int | None = None,
           batch_tokens: int = 16384, output: str | None = None, long_rows: bool | None = None) -> list[np.ndarray]:
    """Runs `model` on token-id sequences of any lengths, packed; returns one array per sequence.

    row_len: tokens per packed row (default: chosen by `plan_rows`: at least the longest sequence
    rounded up to a power of two, at least 512, longer where that packs tighter and costs nothing).
    batch_tokens: tokens per forward call. output: "logits" (default when the model has a head) or "hidden".
    long_rows: whether rows may grow past the longest sequence to pack tighter (default: where that
    costs nothing, `long_rows_pay_off`: the `gpu` backend on a GPU, `blocked` on CPU).
    """
    if not sequences:
        return []
    lengths = [len(s) for s in sequences]
    plan = plan_rows(model, lengths, row_len=row_len, batch_tokens=batch_tokens, long_rows=long_rows)
    output = output or ("hidden" if model.task == "base" else "logits")
    max_docs = _bucket(max(len(b) for c in plan.calls for b in c.bins), 1)
    per_doc = model.task == "sequence" and output == "logits"
    results: list[np.ndarray | None] = [None] * len(sequences)
    for call in plan.calls:
        batch = make_rows(sequences, call.bins, call.row_len, model.cfg.pad_token_id)
        out = model(batch["input_ids"], segment_ids=batch["segment_ids"], position_ids=batch["position_ids"],
                    **({"num_segments": max_docs} if model.task == "sequence" else {}))
        arr = np.asarray(out.last_hidden_state if output == "hidden" else out.logits)
        for r, b in enumerate(call.bins):
            t = 0
            for s, i in enumerate(b):
                n = lengths[i]
                results[i] = arr[r, s] if per_doc else arr[r, t:t + n]
                t += n
    return results  # type: ignore[return-value]


def _bucket(n: int, lo: int) -> int:
    return max(lo, 1 << (max(n, 1) - 1).bit_length())


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m
