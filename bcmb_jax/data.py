"""The MLM input pipeline the trainer uses: the `data:` config, the grain iterator, and its CLI.

`make_iterator` turns a `DataConfig` into a checkpointable grain iterator of masked MLM batches: stage 1
(`bcmb_jax.corpus.prepare`) reads every source (`bcmb_jax.sources`), cuts each document into `[CLS] ... [SEP]`
chunks of at most `seq_len` tokens (`bcmb_jax.chunking`) and caches them on disk; stage 2 (`bcmb_jax.packing`)
shuffles the chunks per epoch over the weighted sources, splits them across processes, best-fit packs
them into rows, batches and masks them deterministically. The CLI measures the pipeline or fills the cache:

    python -m bcmb_jax.data stats --config run.yaml [data.seq_len=1024 max_batches=50 ...]
    python -m bcmb_jax.data prepare --config run.yaml      # fill the token cache only
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass

import numpy as np

from bcmb_jax import cli
from bcmb_jax import config as cfglib
from bcmb_jax.config import opt
from bcmb_jax.corpus import Corpus, prepare
from bcmb_jax.sources import DataError, SourceConfig
from bcmb_jax.tokenizer import TokenizerInfo, load_tokenizer

# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass
class DataConfig:
    """The `data:` section of a run config."""

    tokenizer: str = opt("", "directory holding tokenizer.json (or the file itself)")
    seq_len: int = opt(8192, "tokens per packed row; also the longest chunk ([CLS] + seq_len-2 + [SEP])")
    sources: list[SourceConfig] = opt([], "named sources: name, paths, format, field, weight, ...")
    prefix_space: bool = opt(True, "byte-level tokenizers: add a leading space to each document and to the "
                                   "first word of every continuation chunk (the original add_prefix_space)")
    mlm_probability: float = opt(0.30, "fraction of non-pad tokens selected for MLM (0.30 phase 1, 0.15 phase 2)")
    mask_special_tokens: bool = opt(True, "[CLS]/[SEP] may be selected for masking (true in the original run)")
    random_token_low: int = opt(0, "random replacement ids are drawn uniformly from [low, high)")
    random_token_high: int | None = opt(None, "None = 1 + max(last base-vocab id, [MASK] id); 50285 for "
                                              "ModernBERT, i.e. [0, 50284] like the original collator")
    mask_token_id: int | None = opt(None, "None = read [MASK] from the tokenizer")
    pad_token_id: int | None = opt(None, "None = read [PAD] from the tokenizer")
    cache_dir: str | None = opt(None, "directory for token caches (.npy per source file); None = no cache")
    shuffle: bool = opt(True, "shuffle chunks (a new order every epoch) and packed rows")
    shuffle_seed: int = opt(2998, "seed of the chunk order and of the packer")
    packing: str = opt("best_fit", "best_fit | first_fit (grain packers)")
    packing_bins: int = opt(0, "rows filled together by the packer; 0 = max(256, 2 x per-process batch)")
    num_threads: int = opt(1, "grain threads reading chunks")
    worker_count: int = opt(0, "grain worker processes for packing (0 = in the main process); with cache_dir "
                               "they memory-map the token cache instead of receiving a copy")
    prefetch: int = opt(8, "elements prefetched by grain's reader")
    max_docs: int | None = opt(None, "read at most this many documents per source (quick runs; no cache)")


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


def build_dataset(cfg: DataConfig, *, seed: int, batch_size: int, process_index: int | None = None,
                  process_count: int | None = None, epochs: int | None = None, tok: TokenizerInfo | None = None,
                  corpus: Corpus | None = None):
    """The grain IterDataset behind `make_iterator` (also returns the corpus and tokenizer)."""
    from bcmb_jax import packing

    pi, pc = _process_info(process_index, process_count)
    if batch_size <= 0 or batch_size % pc:
        raise DataError(f"batch_size {batch_size} must be a positive multiple of process_count {pc}")
    if not 0.0 <= cfg.mlm_probability <= 1.0:
        raise DataError(f"data.mlm_probability must be in [0, 1], got {cfg.mlm_probability}")
    tok = tok or load_tokenizer(cfg.tokenizer, cfg.prefix_space, mask_token_id=cfg.mask_token_id,
                                pad_token_id=cfg.pad_token_id)
    corpus = corpus or prepare(cfg, tok)
    high = cfg.random_token_high
    high = 1 + max(tok.base_vocab_size - 1, tok.mask_id) if high is None else high
    if not 0 <= cfg.random_token_low < high:
        raise DataError(f"random token range [{cfg.random_token_low}, {high}) is empty")
    local = batch_size // pc
    ds = packing.build(
        corpus.stores, corpus.weights, seq_len=cfg.seq_len, local_batch=local, process_index=pi,
        process_count=pc, epochs=epochs, shuffle=cfg.shuffle, shuffle_seed=cfg.shuffle_seed,
        packing=cfg.packing, bins=cfg.packing_bins or max(256, 2 * local), pad_id=tok.pad_id,
        num_threads=cfg.num_threads, prefetch=cfg.prefetch, worker_count=cfg.worker_count,
        mask=packing.MaskSpec(rate=cfg.mlm_probability, seed=seed, mask_id=tok.mask_id,
                              low=cfg.random_token_low, high=high,
                              special_ids=() if cfg.mask_special_tokens else tok.special_ids))
    return ds, corpus, tok


def make_iterator(cfg: DataConfig, *, seed: int, batch_size: int, process_index: int | None = None,
                  process_count: int | None = None, epochs: int | None = None):
    """A checkpointable grain DatasetIterator of MLM batches for this process.

    `batch_size` is the global number of rows per step; each element is a dict of int32 arrays
    [batch_size // process_count, seq_len]: input_ids, segment_ids (1, 2, ... per document, 0 = pad),
    position_ids (restarting at 0 per document) and labels (-100 where not predicted).
    `epochs=None` repeats forever; with a finite count the last batch is filled with empty rows.
    """
    ds, _, _ = build_dataset(cfg, seed=seed, batch_size=batch_size, process_index=process_index,
                             process_count=process_count, epochs=epochs)
    return iter(ds)


# ---------------------------------------------------------------------------------------------
# CLI

_CLI_KEYS = {"batch_size": 8, "max_batches": None, "epochs": 1, "seed": 0, "process_index": 0, "process_count": 1}


def _parse_cli(argv: list[str]) -> tuple[str, str | None, dict, list[str]]:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("stats", "prepare"):
        print(__doc__.strip() + "\n\nkeys (data.KEY=VALUE or KEY=VALUE):\n" + cfglib.help_text(DataConfig)
              + "\n\nkeys of each entry of `sources`:\n" + cfglib.help_text(SourceConfig)
              + "\n\nstats also takes: " + ", ".join(f"{k}= [default {v}]" for k, v in _CLI_KEYS.items()))
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    cmd, rest, path, extra, over = argv[0], argv[1:], None, dict(_CLI_KEYS), []
    while rest:
        a = rest.pop(0)
        if a == "--config" and rest:
            path = rest.pop(0)
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        elif "=" in a:
            key, value = a.split("=", 1)
            key = key.removeprefix("data.")
            if key in extra:
                extra[key] = cfglib.parse_overrides([f"x={value}"])["x"]
            else:
                over.append(f"{key}={value}")
        else:
            raise cfglib.ConfigError(f"unexpected argument {a!r} (expected --config FILE or key=value)")
    return cmd, path, extra, over


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
        sel = lab != -100
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


@cli.command
def main(argv: list[str] | None = None) -> int:
    from absl import flags  # grain's worker processes read absl flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cmd, path, extra, over = _parse_cli(list(sys.argv[1:] if argv is None else argv))
    cfg = cfglib.load(DataConfig, path, over, section="data")
    if cmd == "prepare":
        if not cfg.cache_dir:
            raise DataError("prepare needs data.cache_dir")
        tok = load_tokenizer(cfg.tokenizer, cfg.prefix_space)
        corpus = prepare(cfg, tok)
        print(json.dumps(dataclasses.asdict(corpus.stats()) | {"prepare_s": round(corpus.seconds, 3)}))
        return 0
    s = run_stats(cfg, **extra)
    print("sources: " + ", ".join(f"{k} ({v['docs']} docs, {v['chunks']} chunks, {v['tokens']} tokens, "
                                   f"weight {v['weight']})" for k, v in s["sources"].items()))
    print(f"read: {s['files']} files, {s['docs']} documents, {s['skipped_empty']} empty skipped, "
          f"{s['replaced_utf8']} invalid bytes replaced, {s['chunks']} chunks in {s['prepare_s']} s")
    print(f"packed: {s['rows']} rows x {s['seq_len']} = {s['batches']} batches of {s['batch_size']}, "
          f"{s['tokens']} tokens, non-pad {s['non_pad_fraction']:.4f}, packing efficiency "
          f"{s['packing_efficiency']:.4f}")
    print(f"masking: {s['mask_fraction']:.4f} of tokens selected ({s['mask_token_share']:.3f} [MASK], "
          f"{s['random_token_share']:.3f} random)")
    print(f"speed: {s['tokens_per_s']:.0f} tokens/s overall, {s['iterate_tokens_per_s']:.0f} tokens/s "
          "after preparation")
    print(json.dumps(s))
    return 0


if __name__ == "__main__":
    cli.run(main)
