"""The `data:` section of a run config and its `sources` entries (one named corpus each)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bcmb_jax.errors import ConfigError, DataError
from bcmb_jax.runconfig import opt


@dataclass
class SourceConfig:
    """One named corpus (a list of files/directories/globs) with its mixture weight."""

    name: str = opt("data", "name shown in stats")
    paths: list[str] = opt([], "files, directories (searched recursively) or glob patterns")
    format: str = opt("auto", "auto | text (one document per file) | lines (one per line) | jsonl | json | "
                              "csv | parquet | textgrid | mds (MosaicML shards); auto picks by extension, "
                              "unknown ones read as text")
    field: Any = opt("text", "JSON/JSONL/Parquet field or CSV column: a name (dotted path into nested JSON) "
                             "or a 0-based column index; a list (or 'a,b') makes each field its own document")
    weight: float = opt(1.0, "times each chunk of this source is seen per epoch (0.5 = a fresh random half "
                             "every epoch, 2 = twice)")
    pattern: str = opt("*", "file-name pattern applied inside directories, e.g. '*.json'")
    csv_header: bool = opt(True, "the first CSV row is a header (false: columns are indices only)")
    delimiter: str = opt("auto", "CSV delimiter; auto = tab for .tsv, comma otherwise")
    encoding: str = opt("auto", "text encoding; auto = byte-order mark (UTF-8/16/32) if present, else UTF-8")

    def fields(self) -> list[str | int]:
        """`field` as a list; digit strings become column indices."""
        raw = self.field
        items = raw if isinstance(raw, list | tuple) else str(raw).split(",") if isinstance(raw, str) else [raw]
        out: list[str | int] = []
        for f in items:
            if isinstance(f, bool) or not isinstance(f, int | str) or (isinstance(f, str) and not f.strip()):
                raise DataError(f"source {self.name!r}: `field` entry {f!r} must be a name or column index")
            f = f.strip() if isinstance(f, str) else f
            out.append(int(f) if isinstance(f, str) and f.isdigit() else f)
        if not out:
            raise DataError(f"source {self.name!r}: `field` is empty; expected a field name, a column index or a "
                            "list of them")
        return out


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
    cache_dir: str | None = opt(None, "directory for token caches (.npy per source file); None = no cache. On a "
                                      "shared file system, the processes of a job tokenize each file once")
    prepare_workers: int = opt(0, "processes tokenizing files (and byte ranges of large JSONL / line files) on a "
                                  "cold cache; 0 = every core of this host")
    shuffle: bool = opt(True, "shuffle chunks (a new order every epoch) and packed rows")
    shuffle_seed: int = opt(2998, "seed of the chunk order and of the packer")
    packing: str = opt("best_fit", "best_fit | first_fit (grain packers)")
    packing_bins: int = opt(0, "rows filled together by the packer; 0 = max(256, 2 x per-process batch)")
    num_threads: int = opt(1, "grain threads reading chunks")
    worker_count: int = opt(0, "grain worker processes for packing (0 = in the main process); with cache_dir "
                               "they memory-map the token cache instead of receiving a copy")
    prefetch: int = opt(8, "elements prefetched by grain's reader")
    max_docs: int | None = opt(None, "read at most this many documents per source (quick runs; no cache)")

    def __post_init__(self):
        if not 0.0 < self.mlm_probability <= 1.0:
            raise ConfigError(f"`data.mlm_probability` must be in (0, 1], got {self.mlm_probability} (with nothing "
                              "masked there is nothing to learn)")
        for key, low in (("prepare_workers", 0), ("num_threads", 1), ("prefetch", 1), ("worker_count", 0),
                         ("packing_bins", 0), ("random_token_low", 0), ("max_docs", 1), ("shuffle_seed", 0)):
            value = getattr(self, key)
            if value is not None and value < low:
                raise ConfigError(f"`data.{key}` must be >= {low}, got {value}")
        if self.random_token_high is not None and self.random_token_high <= self.random_token_low:
            raise ConfigError(f"`data.random_token_high` ({self.random_token_high}) must be above "
                              f"`data.random_token_low` ({self.random_token_low})")
        if self.packing not in ("best_fit", "first_fit"):
            raise ConfigError(f"`data.packing` must be best_fit or first_fit, got {self.packing!r}")
        for src in self.sources:
            if not src.weight >= 0:
                raise ConfigError(f"`data.sources` {src.name!r}: weight must be >= 0, got {src.weight}")
