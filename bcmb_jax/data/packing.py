"""Stage 2 of the input pipeline: epoch order, per-process split, packing, batching and MLM masking.

The chain is a grain pipeline, so the final iterator is a `grain.DatasetIterator` whose state
(`get_state`/`set_state`, or `grain.checkpoint.CheckpointSave/Restore` in an orbax checkpoint)
resumes it exactly:

    chunk order (MapDataset, one shuffled permutation per epoch, split across processes)
      -> grain best-fit packing into rows of seq_len (segment ids, positions)
      -> batch of batch_size // process_count rows -> [optional worker processes]
      -> MLM masking keyed by (seed, step, global row)
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grain
import numpy as np

from bcmb_jax.errors import ConfigError, DataError
from bcmb_jax.modeling.heads import IGNORE

_INFINITE = 2**62  # length of an endlessly repeating chunk stream


@dataclass(frozen=True)
class MaskSpec:
    rate: float  # fraction of non-pad tokens selected
    seed: int  # masks are a function of (seed, step, row): resumable and the same on any host count
    mask_id: int  # the [MASK] token id (80% of the selected tokens)
    low: int  # random replacement ids (10% of the selected tokens) are uniform in [low, high)
    high: int  # exclusive upper bound of the random ids
    special_ids: tuple[int, ...] = ()  # never selected (empty = everything may be masked)


def mask_tokens(input_ids_BT: np.ndarray, segment_ids_BT: np.ndarray, *, rate: float, seed: int, step: int,
                row_offset: int, mask_id: int, low: int, high: int,
                special_ids: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking of a batch; returns (input_ids, labels) as int32.

    Each non-pad token (segment > 0, not in `special_ids`) draws u ~ U[0, 1): u < 0.8 rate -> [MASK],
    0.8 rate <= u < 0.9 rate -> a random id in [low, high), 0.9 rate <= u < rate -> unchanged; labels
    hold the original id where u < rate and -100 elsewhere (padding included). Row r uses its own
    Philox stream keyed by (seed, step) with counter row_offset + r, so masking depends only on
    (seed, step, global row index) and a resumed run masks identically.
    """
    ids_BT = np.array(input_ids_BT, np.int32)
    labels_BT = np.full_like(ids_BT, IGNORE)
    eligible_BT = segment_ids_BT > 0
    if len(special_ids):
        eligible_BT &= ~np.isin(input_ids_BT, np.asarray(special_ids))
    key = np.array([seed % 2**64, step % 2**64], np.uint64)
    for r in range(ids_BT.shape[0]):
        rng = np.random.Generator(np.random.Philox(key=key, counter=[0, row_offset + r, 0, 0]))
        u = rng.random(ids_BT.shape[1])
        sel = eligible_BT[r] & (u < rate)
        labels_BT[r, sel] = ids_BT[r, sel]
        rand = sel & (u >= 0.8 * rate) & (u < 0.9 * rate)
        ids_BT[r, sel & (u < 0.8 * rate)] = mask_id
        ids_BT[r, rand] = rng.integers(low, high, size=int(rand.sum()), dtype=np.int64)
    return ids_BT, labels_BT


class EpochOrder:
    """The global chunk order of each epoch.

    Source s contributes round(len_s * weight_s) chunks per epoch: its chunks floor(weight) times plus a
    random subset (fresh each epoch) for the fraction. With `shuffle` the epoch is permuted by a
    generator seeded with (seed, epoch), so every epoch has its own order.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int, shuffle: bool):
        self.sizes, self.weights, self.seed, self.shuffle = list(sizes), list(weights), seed, shuffle
        self.bases = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.counts = [int(round(n * w)) if n else 0 for n, w in zip(self.sizes, self.weights)]
        self.length = sum(self.counts)
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state, _cache={}, _lock=threading.Lock())

    def __call__(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._cache:
                rng = np.random.default_rng([self.seed, epoch])
                parts = []
                for base, n, c in zip(self.bases, self.sizes, self.counts):
                    full, rest = divmod(c, n) if n else (0, 0)
                    parts.append(np.tile(np.arange(n, dtype=np.int64), full) + base)
                    if rest:
                        parts.append(np.sort(rng.choice(n, rest, replace=False)) + base)
                order = np.concatenate(parts) if parts else np.empty(0, np.int64)
                self._cache = {epoch - 1: self._cache[epoch - 1]} if epoch - 1 in self._cache else {}
                self._cache[epoch] = rng.permutation(order) if self.shuffle else order
            return self._cache[epoch]


class ChunkStream(Sequence):
    """The chunks one process reads, as a random-access sequence for `grain.MapDataset.source`.

    Process p takes positions p, p + P, p + 2P, ... of every epoch's order, so the processes together
    read every chunk of an epoch exactly once.
    """

    def __init__(self, stores: Sequence[Any], order: EpochOrder, process_index: int, process_count: int,
                 epochs: int | None):
        self.stores, self.order, self.p, self.P = list(stores), order, process_index, process_count
        self.per_epoch = max(0, (order.length - process_index + process_count - 1) // process_count)
        self.length = _INFINITE if epochs is None else self.per_epoch * epochs
        if self.per_epoch == 0 and self.length:
            raise DataError(f"process {process_index} of {process_count} gets no chunks: the corpus has only "
                             f"{order.length} per epoch")

    def __len__(self) -> int:
        return self.length

    def chunk_id(self, i: int) -> int:
        epoch, k = divmod(int(i), self.per_epoch)
        return int(self.order(epoch)[self.p + k * self.P])

    def __getitem__(self, i):
        if not 0 <= i < self.length:
            raise IndexError(i)
        g = self.chunk_id(i)
        s = int(np.searchsorted(self.order.bases, g, side="right")) - 1
        return {"input_ids": self.stores[s][g - int(self.order.bases[s])]}


def _rename(row: dict) -> dict:
    return {"input_ids": row["input_ids"].astype(np.int32), "segment_ids": row["input_ids_segment_ids"],
            "position_ids": row["input_ids_positions"]}


class _MaskIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, spec: MaskSpec, rows: int, row_offset: int, pad_id: int):
        super().__init__(parent)
        self._spec, self._rows, self._offset, self._pad = spec, rows, row_offset, pad_id
        self._step = 0

    def __next__(self) -> dict[str, np.ndarray]:
        b = next(self._parent)
        n = b["input_ids"].shape[0]
        if n < self._rows:  # the last batch of a finite run: fill with empty rows
            fill = self._rows - n
            b = {k: np.concatenate([v, np.full((fill, v.shape[1]), self._pad if k == "input_ids" else 0,
                                               v.dtype)]) for k, v in b.items()}
        s = self._spec
        ids, labels = mask_tokens(b["input_ids"], b["segment_ids"], rate=s.rate, seed=s.seed, step=self._step,
                                  row_offset=self._offset, mask_id=s.mask_id, low=s.low, high=s.high,
                                  special_ids=s.special_ids)
        self._step += 1
        return {"input_ids": ids, "segment_ids": b["segment_ids"].astype(np.int32),
                "position_ids": b["position_ids"].astype(np.int32), "labels": labels}

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "step": self._step}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._step = int(state["step"])


class MaskedBatches(grain.IterDataset):
    """Masks each batch with `mask_tokens`; the step counter is part of the iterator state."""

    def __init__(self, parent: grain.IterDataset, spec: MaskSpec, rows: int, row_offset: int, pad_id: int):
        super().__init__(parent)
        self._args = (spec, rows, row_offset, pad_id)

    def __iter__(self) -> grain.DatasetIterator:
        return _MaskIterator(self._parent.__iter__(), *self._args)

    def __str__(self) -> str:
        return "MaskedBatches"


def build_masked_batches(stores: Sequence[Any], weights: Sequence[float], *, seq_len: int, local_batch: int,
                         process_index: int, process_count: int, epochs: int | None, shuffle: bool, shuffle_seed: int,
                         packing: str, bins: int, pad_id: int, num_threads: int, prefetch: int, worker_count: int,
                         mask: MaskSpec) -> grain.IterDataset:
    """The grain pipeline from chunk stores to masked batches for one process."""
    packers = {"best_fit": grain.experimental.BestFitPackIterDataset,
               "first_fit": grain.experimental.FirstFitPackIterDataset}
    if packing not in packers:
        raise ConfigError(f"data.packing must be one of {sorted(packers)}, got {packing!r}")
    order = EpochOrder([len(s) for s in stores], weights, shuffle_seed, shuffle)
    stream = ChunkStream(stores, order, process_index, process_count, epochs)
    ds = grain.MapDataset.source(stream).to_iter_dataset(
        grain.ReadOptions(num_threads=max(num_threads, 0), prefetch_buffer_size=max(prefetch, 0)))
    ds = packers[packing](ds, length_struct={"input_ids": seq_len}, num_packing_bins=bins, seed=shuffle_seed,
                          shuffle_bins=shuffle, padding_struct={"input_ids": pad_id})
    ds = ds.map(_rename).batch(local_batch, drop_remainder=False)
    if worker_count > 0:
        from absl import flags  # grain's workers read absl flags; a plain script has not parsed them

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return MaskedBatches(ds, mask, local_batch, process_index * local_batch, pad_id)
