"""This process's rows of every global batch: one data shard per process, or several to replay a
multi-host run's batches on fewer processes, split into gradient-accumulation micro-batches."""

from __future__ import annotations

import json

import numpy as np

from bcmb_jax.errors import ConfigError
from bcmb_jax.training.config import TrainConfig


class ShardedBatches:
    """This process's rows of every global batch, read as `k` consecutive data shards and concatenated.

    With k = 1 (one shard per process) this is the pipeline's own iterator. A process that reads
    shards [p*k, (p+1)*k) of `n` gets exactly the rows that processes p*k..(p+1)*k-1 of an `n`-process
    run would read, masks included (they are keyed by the global row), so one process can replay a
    multi-host run. The checkpointable state is the list of the shards' states.
    """

    def __init__(self, iterators: list):
        self.iterators = iterators

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(it) for it in self.iterators]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self) -> bytes:
        """JSON bytes (grain's checkpoint handler stores non-grain iterators' states as bytes)."""
        return json.dumps({"shards": [it.get_state() for it in self.iterators]}).encode()

    def set_state(self, state: bytes) -> None:
        shards = json.loads(state)["shards"]
        if len(shards) != len(self.iterators):
            raise ConfigError(f"the checkpoint's data iterator has {len(shards)} shards, this run "
                              f"{len(self.iterators)}: resume with the same data_shards / process count")
        for it, st in zip(self.iterators, shards):
            it.set_state(st)

    def start_prefetch(self) -> None:
        """Called by grain's checkpoint handler after a restore."""
        for it in self.iterators:
            getattr(it, "start_prefetch", lambda: None)()


def make_batches(cfg: TrainConfig, process_index: int, process_count: int) -> ShardedBatches:
    from bcmb_jax.data import pipeline
    from bcmb_jax.data.stage1 import prepare

    shards = cfg.data_shards or process_count
    if shards % process_count or cfg.global_batch % shards:
        raise ConfigError(f"data_shards ({shards}) must be a multiple of the process count ({process_count}) "
                          f"and divide global_batch ({cfg.global_batch})")
    k = shards // process_count
    # Stage 1 once for all shards of this process; the processes of the job share the token cache's work.
    tok = pipeline.load_data_tokenizer(cfg.data)
    corpus = prepare(cfg.data, tok, share=(process_index, process_count))
    return ShardedBatches([pipeline.make_iterator(cfg.data, seed=cfg.seed, batch_size=cfg.global_batch,
                                                  process_index=process_index * k + i, process_count=shards,
                                                  tok=tok, corpus=corpus)
                           for i in range(k)])


def stack_micro(batch: dict[str, np.ndarray], accumulation: int) -> dict[str, np.ndarray]:
    """[rows, T] -> [accumulation, rows / accumulation, T] (each process's share of every micro-batch)."""
    return {k: v.reshape(accumulation, v.shape[0] // accumulation, *v.shape[1:]) for k, v in batch.items()}
