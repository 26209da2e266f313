"""The MLM input pipeline the trainer uses: a `DataConfig` in, a checkpointable grain iterator out.

`make_iterator` gives masked MLM batches: stage 1 (`stage1.prepare`) reads every source (`sources.py`),
cuts each document into `[CLS] ... [SEP]` chunks of at most `seq_len` tokens (`chunking.py`) and caches
them on disk; stage 2 (`packing.py`) shuffles the chunks per epoch over the weighted sources, splits them
across processes, best-fit packs them into rows, batches and masks them deterministically. `run_stats`
measures it (`python -m bcmb_jax.data stats`).
"""

from __future__ import annotations

import time

import numpy as np

from bcmb_jax.data.config import DataConfig
from bcmb_jax.data.corpus import Corpus
from bcmb_jax.data.stage1 import prepare
from bcmb_jax.data.tokenizer import TokenizerInfo, load_tokenizer
from bcmb_jax.errors import DataError
from bcmb_jax.modeling.heads import IGNORE

# ---------------------------------------------------------------------------------------------
# The iterator the trainer uses


def _process_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index {process_index} must be in [0, process_count={process_count})")
    return process_index, process_count


def load_data_tokenizer(cfg: DataConfig) -> TokenizerInfo:
    """The tokenizer of `data:` with its mask and pad ids as configured."""
    return load_tokenizer(cfg.tokenizer, cfg.prefix_space, mask_token_id=cfg.mask_token_id,
                          pad_token_id=cfg.pad_token_id)


def build_dataset(cfg: DataConfig, *, seed: int, batch_size: int, process_index: int | None = None,
                  process_count: int | None = None, epochs: int | None = None, tok: TokenizerInfo | None = None,
                  corpus: Corpus | None = None):
    """The grain IterDataset behind `make_iterator` (also returns the corpus and tokenizer)."""
    from bcmb_jax.data import packing

    pi, pc = _process_info(process_index, process_count)
    if batch_size <= 0 or batch_size % pc:
        raise DataError(f"batch_size {batch_size} must be a positive multiple of process_count {pc}")
    tok = tok or load_data_tokenizer(cfg)
    high = cfg.random_token_high
    high = 1 + max(tok.base_vocab_size - 1, tok.mask_id) if high is None else high
    if not 0 <= cfg.random_token_low < high:
        raise DataError(f"`data.random_token_low` ({cfg.random_token_low}) must be below the tokenizer's "
                        f"random-token bound {high} (`data.random_token_high` unset)")
    corpus = corpus or prepare(cfg, tok)
    local = batch_size // pc
    ds = packing.build_masked_batches(
        corpus.stores, corpus.weights, seq_len=cfg.seq_len, local_batch=local, process_index=pi,
        process_count=pc, epochs=epochs, shuffle=cfg.shuffle, shuffle_seed=cfg.shuffle_seed,
        packing=cfg.packing, bins=cfg.packing_bins or max(256, 2 * local), pad_id=tok.pad_id,
        num_threads=cfg.num_threads, prefetch=cfg.prefetch, worker_count=cfg.worker_count,
        mask=packing.MaskSpec(rate=cfg.mlm_probability, seed=seed, mask_id=tok.mask_id,
                              low=cfg.random_token_low, high=high,
                              special_ids=() if cfg.mask_special_tokens else tok.special_ids))
    return ds, corpus, tok


def make_iterator(cfg: DataConfig, *, seed: int, batch_size: int, process_index: int | None = None,
                  process_count: int | None = None, epochs: int | None = None, tok: TokenizerInfo | None = None,
                  corpus: Corpus | None = None):
    """A checkpointable grain DatasetIterator of MLM batches for this process.

    `batch_size` is the global number of rows per step; each element is a dict of int32 arrays
    [batch_size // process_count, seq_len]: input_ids, segment_ids (1, 2, ... per document, 0 = pad),
    position_ids (restarting at 0 per document) and labels (-100 where not predicted).
    `epochs=None` repeats forever; with a finite count the last batch is filled with empty rows.
    """
    ds, _, _ = build_dataset(cfg, seed=seed, batch_size=batch_size, process_index=process_index,
                             process_count=process_count, epochs=epochs, tok=tok, corpus=corpus)
    return iter(ds)


def run_stats(cfg: DataConfig, *, batch_size: int = 8, max_batches: int | None = None, epochs: int | None = 1,
              seed: int = 0, process_index: int = 0, process_count: int = 1) -> dict:
    """Runs the pipeline and measures it; returns the stats dict the CLI prints last."""
    if epochs is None and max_batches is None:
        raise DataError("stats with epochs=None (endless) needs max_batches")
    t0 = time.perf_counter()
    ds, corpus, tok = build_dataset(cfg, seed=seed, batch_size=batch_size, process_index=process_index,
                                    process_count=process_count, epochs=epochs)
    t1 = time.perf_counter()
    rows = real_rows = tokens = selected = masked = rand = segs = batches = 0
    for batch in iter(ds):
        seg, lab, ids = batch["segment_ids"], batch["labels"], batch["input_ids"]
        nonpad = seg > 0
        rows += len(seg)
        real_rows += int(nonpad.any(axis=1).sum())
        tokens += int(nonpad.sum())
        sel = lab != IGNORE
        selected += int(sel.sum())
        masked += int((sel & (ids == tok.mask_id)).sum())
        rand += int((sel & (ids != tok.mask_id) & (ids != lab)).sum())
        segs += int(sum(len(np.unique(s[s > 0])) for s in seg))
        batches += 1
        if max_batches is not None and batches >= max_batches:
            break
    t2 = time.perf_counter()
    st = corpus.stats()
    cap = max(rows * cfg.seq_len, 1)
    return {
        "rows": rows, "tokens": tokens, "non_pad_fraction": tokens / cap,
        "packing_efficiency": tokens / max(real_rows * cfg.seq_len, 1),
        "mask_fraction": selected / max(tokens, 1), "mask_token_share": masked / max(selected, 1),
        "random_token_share": rand / max(selected, 1), "docs": st.docs, "files": st.files,
        "skipped_empty": st.skipped_empty, "replaced_utf8": st.replaced_utf8, "chunks": st.chunks,
        "chunk_tokens": st.tokens, "segments": segs, "batches": batches, "seq_len": cfg.seq_len,
        "batch_size": batch_size, "prepare_s": round(corpus.seconds, 3), "iterate_s": round(t2 - t1, 3),
        "total_s": round(t2 - t0, 3), "tokens_per_s": tokens / max(t2 - t0, 1e-9),
        "iterate_tokens_per_s": tokens / max(t2 - t1, 1e-9),
        "sources": {s.name: {"docs": s.stats.docs, "chunks": len(s), "tokens": s.stats.tokens, "weight": w}
                    for s, w in zip(corpus.stores, corpus.weights)},
    }
