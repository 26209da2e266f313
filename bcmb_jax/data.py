"""Input pipeline for continued MLM pretraining: sources -> tokenize -> chunk -> pack -> mask.

Stage 1 (`prepare`) reads every source file (`bcmb_jax.sources`), tokenizes its documents with the HF fast tokenizer and
cuts each document independently into `[CLS] ... [SEP]` chunks of at most `seq_len` tokens (the
original recipe's rule). The chunks of a file are kept as flat token arrays, optionally cached on
disk (`cache_dir`) keyed by file content + tokenizer + settings, so later runs skip tokenization.
Stage 2 (`bcmb_jax.packing`) is a grain pipeline: per-epoch shuffled chunk order over the weighted
sources, split across processes, best-fit packed into rows, batched and masked deterministically.

    python -m bcmb_jax.data stats --config run.yaml [data.seq_len=1024 max_batches=50 ...]
    python -m bcmb_jax.data prepare --config run.yaml      # fill the token cache only
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bcmb_jax import cli
from bcmb_jax import config as cfglib
from bcmb_jax.config import opt
from bcmb_jax.sources import (  # noqa: F401 - re-exported: the pipeline's readers
    DataError,
    ReadStats,
    SourceConfig,
    expand_paths,
    file_format,
    iter_documents,
    iter_file_documents,
)

log = logging.getLogger(__name__)

_PIECE_CHARS = 100_000  # long documents are tokenized in pieces of about this many characters
_BATCH_CHARS = 4_000_000  # characters per batched tokenizer call
_CACHE_VERSION = 1


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
# Tokenizer


@dataclass
class TokenizerInfo:
    """A `tokenizers.Tokenizer` plus the ids the pipeline needs."""

    tokenizer: Any
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    special_ids: tuple[int, ...]
    vocab_size: int  # including added tokens
    base_vocab_size: int
    byte_level: bool  # a ByteLevel pre-tokenizer (prefix-space handling applies)
    prefix_space: bool
    fingerprint: str

    @property
    def dtype(self):
        return np.uint16 if self.vocab_size <= 2**16 else np.uint32


def _special_names(tok_dir: Path) -> dict[str, str]:
    names = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]"}
    path = tok_dir / "special_tokens_map.json"
    if path.is_file():
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        for k in names:
            v = d.get(k)
            names[k] = v.get("content", names[k]) if isinstance(v, dict) else v or names[k]
    return names


def _set_prefix_space(node: Any, on: bool = True) -> bool:
    """Sets add_prefix_space on every ByteLevel pre-tokenizer in a JSON tree (and, when `on` is False,
    turns off a Metaspace that prepends a space to the text); True if a ByteLevel was found."""
    found = False
    if isinstance(node, dict):
        if node.get("type") == "ByteLevel":
            node["add_prefix_space"] = on
            found = True
        elif node.get("type") == "Metaspace" and node.get("replacement") == " " and not on:
            node["prepend_scheme"] = "never"
        for v in node.values():
            found |= _set_prefix_space(v, on)
    elif isinstance(node, list):
        for v in node:
            found |= _set_prefix_space(v, on)
    return found


def load_tokenizer(path: str | Path, prefix_space: bool = True, *, mask_token_id: int | None = None,
                   pad_token_id: int | None = None) -> TokenizerInfo:
    """Loads `path`/tokenizer.json. With `prefix_space`, ByteLevel pre-tokenizers get add_prefix_space=True,
    which is what `AutoTokenizer.from_pretrained(..., add_prefix_space=True)` did in the original run;
    without it, no leading space is added."""
    from tokenizers import Tokenizer

    if not str(path):
        raise DataError("data.tokenizer is not set (expected a directory holding tokenizer.json)")
    from bcmb_jax import demo_data

    demo_data.ensure_default(path)  # configs/demo.yaml's runs/demo_data is written on first use
    path = Path(path).expanduser()
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"tokenizer not found: {file} (expected a tokenizer.json or a directory holding one)")
    try:
        spec = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{file}: invalid JSON at line {e.lineno}: {e.msg}") from None
    byte_level = '"ByteLevel"' in json.dumps(spec.get("pre_tokenizer"))
    if byte_level:
        _set_prefix_space(spec["pre_tokenizer"], prefix_space)
    text = json.dumps(spec, sort_keys=True)
    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for a malformed spec
        raise DataError(f"{file}: not a valid tokenizers file ({' '.join(str(e).split())[:200]})") from None
    names = _special_names(file.parent)

    def tid(key: str, override: int | None) -> int:
        if override is not None:
            return int(override)
        i = tok.token_to_id(names[key])
        if i is None:
            raise DataError(f"{file}: the tokenizer has no {key} {names[key]!r}")
        return i

    ids = [tid("cls_token", None), tid("sep_token", None), tid("pad_token", pad_token_id),
           tid("mask_token", mask_token_id)]
    special = sorted({i for i, t in tok.get_added_tokens_decoder().items() if t.special} | set(ids))
    return TokenizerInfo(tok, *ids, special_ids=tuple(special), vocab_size=tok.get_vocab_size(True),
                         base_vocab_size=tok.get_vocab_size(False), byte_level=byte_level,
                         prefix_space=prefix_space and byte_level,
                         fingerprint=hashlib.sha256(text.encode()).hexdigest())


# ---------------------------------------------------------------------------------------------
# Tokenization and chunking


def _split_text(text: str, max_chars: int = _PIECE_CHARS) -> list[str]:
    """Cuts a long text before single spaces between words, so piecewise tokenization equals whole-text
    tokenization for byte-level BPE (the space stays with the next word)."""
    pieces, pos = [], 0
    while len(text) - pos > max_chars:
        cut, lo, hi = -1, pos + max_chars // 2, pos + max_chars
        while hi > lo:
            i = text.rfind(" ", lo, hi)
            if i <= 0:
                break
            if not text[i - 1].isspace() and i + 1 < len(text) and not text[i + 1].isspace():
                cut = i
                break
            hi = i
        cut = cut if cut > pos else pos + max_chars
        pieces.append(text[pos:cut])
        pos = cut
    pieces.append(text[pos:])
    return pieces


class Chunker:
    """Splits one document's token stream into `[CLS] content [SEP]` chunks of at most `seq_len` tokens.

    Every chunk holds up to `seq_len - 2` content tokens; the tail chunk keeps whatever is left. With a
    byte-level tokenizer and `prefix_space`, the first token of each continuation chunk is re-tokenized
    with a leading space (" " + its text), as the original conversion did, so chunks start like
    documents do; the chunk then takes fewer tokens so that it never exceeds `seq_len`. (The original
    also re-tokenized the first chunk's head, which already carries its space under add_prefix_space;
    that added a stray whitespace token and could make chunks longer than `seq_len`; we do neither.)
    """

    def __init__(self, tok: TokenizerInfo, seq_len: int):
        if seq_len < 4:
            raise DataError(f"seq_len must be >= 4, got {seq_len}")
        self.tok, self.budget = tok, seq_len - 2
        self._heads: dict[int, tuple[int, ...]] = {}
        self._buf = np.empty(0, np.int32)
        self._first = True

    def head(self, t: int) -> tuple[int, ...]:
        if not self.tok.prefix_space:
            return (t,)
        if t not in self._heads:
            s = self.tok.tokenizer.decode([t], skip_special_tokens=False)
            ids: tuple[int, ...] = (t,)
            if s and not s[0].isspace() and "\ufffd" not in s and t not in self.tok.special_ids:
                ids = tuple(self.tok.tokenizer.encode(" " + s, add_special_tokens=False).ids) or (t,)
            self._heads[t] = ids if len(ids) <= 8 else (t,)
        return self._heads[t]

    def _chunk(self, head: tuple[int, ...], body: np.ndarray) -> np.ndarray:
        out = np.empty(len(head) + len(body) + 2, np.int32)
        out[0], out[-1] = self.tok.cls_id, self.tok.sep_id
        out[1:1 + len(head)] = head
        out[1 + len(head):-1] = body
        return out

    def feed(self, ids: np.ndarray) -> list[np.ndarray]:
        """Adds tokens of the current document; returns the chunks completed so far."""
        buf = np.concatenate([self._buf, ids]) if len(self._buf) else np.asarray(ids, np.int32)
        out = []
        while len(buf):
            head = (int(buf[0]),) if self._first else self.head(int(buf[0]))
            take = self.budget - len(head) + 1
            if len(buf) < take:
                break
            out.append(self._chunk(head, buf[1:take]))
            buf, self._first = buf[take:], False
        self._buf = buf
        return out

    def finish(self) -> list[np.ndarray]:
        """Ends the document: returns its last (short) chunk, if any, and resets."""
        out = []
        if len(self._buf):
            head = (int(self._buf[0]),) if self._first else self.head(int(self._buf[0]))
            out.append(self._chunk(head, self._buf[1:]))
        self._buf, self._first = np.empty(0, np.int32), True
        return out


def tokenize_documents(docs: Iterable[str], tok: TokenizerInfo, seq_len: int) -> Iterator[list[np.ndarray]]:
    """Yields, per document, its list of chunks. Documents are tokenized in batches; long ones are
    streamed in pieces, so memory stays bounded for any document length."""
    chunker = Chunker(tok, seq_len)
    encode = getattr(tok.tokenizer, "encode_batch_fast", tok.tokenizer.encode_batch)
    pending: list[tuple[str, bool]] = []  # (piece, last piece of its document)
    size, current = 0, []

    def flush():
        nonlocal current
        results = []
        for (_, last), enc in zip(pending, encode([p for p, _ in pending], add_special_tokens=False)):
            current += chunker.feed(np.asarray(enc.ids, np.int32))
            if last:
                results.append(current + chunker.finish())
                current = []
        pending.clear()
        return results

    for doc in docs:
        pieces = _split_text(doc)
        for i, piece in enumerate(pieces):
            pending.append((piece, i == len(pieces) - 1))
            size += len(piece)
            if size >= _BATCH_CHARS or len(pending) >= 4096:
                yield from flush()
                size = 0
    if pending:
        yield from flush()


# ---------------------------------------------------------------------------------------------
# Token store (per source file, optionally cached on disk)


@dataclass
class FileTokens:
    """The chunks of one file: chunk i = tokens[offsets[i]:offsets[i+1]], from document doc_ids[i]."""

    tokens: np.ndarray
    offsets: np.ndarray
    doc_ids: np.ndarray
    stats: dict
    path: str | None = None  # cache directory when memory-mapped

    def __getstate__(self):
        if self.path is not None:  # ship the cache path to worker processes, not the arrays
            return {"path": self.path, "stats": self.stats}
        return self.__dict__

    def __setstate__(self, state):
        if "tokens" not in state:
            state = dataclasses.asdict(_load_cached(Path(state["path"])))
        self.__dict__.update(state)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _cache_key(path: Path, src: SourceConfig, tok: TokenizerInfo, seq_len: int) -> str:
    key = {"v": _CACHE_VERSION, "file": _file_sha256(path), "tokenizer": tok.fingerprint, "seq_len": seq_len,
           "prefix_space": tok.prefix_space, "format": file_format(path, src.format), "fields": src.fields(),
           "csv_header": src.csv_header, "delimiter": src.delimiter, "encoding": src.encoding}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _load_cached(d: Path) -> FileTokens:
    meta = json.loads((d / "meta.json").read_text())
    arrays = [np.load(d / f"{n}.npy", mmap_mode="r") for n in ("tokens", "offsets", "doc_ids")]
    return FileTokens(*arrays, stats=meta["stats"], path=str(d))


def _write_cached(d: Path, ft: FileTokens, source_path: Path) -> None:
    """Writes into a temporary sibling directory, then renames it into place (atomic)."""
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{d.name}-", dir=d.parent))
    try:
        for name in ("tokens", "offsets", "doc_ids"):
            np.save(tmp / f"{name}.npy", getattr(ft, name))
        (tmp / "meta.json").write_text(json.dumps({"source": str(source_path), "stats": ft.stats}, indent=1))
        os.rename(tmp, d)
    except OSError:
        if not (d / "meta.json").is_file():  # a concurrent writer did not win the race either
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tokenize_file(path: Path, src: SourceConfig, tok: TokenizerInfo, seq_len: int,
                  max_docs: int | None = None) -> FileTokens:
    """Reads, tokenizes and chunks one file into flat arrays."""
    stats = ReadStats()
    docs = iter_file_documents(path, src, stats)
    if max_docs is not None:
        docs = (d for _, d in zip(range(max_docs), docs))
    chunks, doc_ids = [], []
    for i, doc_chunks in enumerate(tokenize_documents(docs, tok, seq_len)):
        chunks += doc_chunks
        doc_ids += [i] * len(doc_chunks)
    lengths = np.array([len(c) for c in chunks], np.int64)
    offsets = np.zeros(len(chunks) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(chunks).astype(tok.dtype) if chunks else np.empty(0, tok.dtype)
    stats.chunks, stats.tokens = len(chunks), int(offsets[-1])
    return FileTokens(tokens, offsets, np.asarray(doc_ids, np.int64), dataclasses.asdict(stats))


class ChunkStore:
    """Random access to the chunks of one source (the concatenation of its files)."""

    def __init__(self, name: str, parts: list[FileTokens]):
        self.name, self.parts = name, parts
        self._starts = np.cumsum([0] + [len(p.offsets) - 1 for p in parts])
        self.stats = ReadStats()
        for p in parts:
            self.stats.add(p.stats)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        f = int(np.searchsorted(self._starts, i, side="right")) - 1
        p, j = self.parts[f], i - int(self._starts[f])
        return np.asarray(p.tokens[p.offsets[j]:p.offsets[j + 1]], np.int32)

    def lengths(self) -> np.ndarray:
        return np.concatenate([np.diff(p.offsets) for p in self.parts]) if self.parts else np.empty(0, np.int64)

    def doc_ids(self) -> np.ndarray:
        """A source-wide document id per chunk."""
        out, base = [], 0
        for p in self.parts:
            out.append(np.asarray(p.doc_ids) + base)
            base += int(p.stats["docs"])
        return np.concatenate(out) if out else np.empty(0, np.int64)


def prepare_source(src: SourceConfig, tok: TokenizerInfo, seq_len: int, cache_dir: str | None = None,
                   max_docs: int | None = None) -> ChunkStore:
    """Tokenizes every file of `src` (or loads its cache entry)."""
    parts, left = [], max_docs
    for path in expand_paths(src):
        if left is not None and left <= 0:
            break
        if cache_dir and max_docs is None:
            d = Path(cache_dir).expanduser() / f"{path.stem[:40]}-{_cache_key(path, src, tok, seq_len)}"
            if (d / "meta.json").is_file():
                parts.append(_load_cached(d))
                continue
            _write_cached(d, tokenize_file(path, src, tok, seq_len), path)
            parts.append(_load_cached(d))
        else:
            parts.append(tokenize_file(path, src, tok, seq_len, left))
            if left is not None:
                left -= parts[-1].stats["docs"]
    return ChunkStore(src.name, parts)


@dataclass
class Corpus:
    stores: list[ChunkStore]
    weights: list[float]
    seconds: float  # time spent preparing

    def stats(self) -> ReadStats:
        total = ReadStats()
        for s in self.stores:
            total.add(s.stats)
        return total


def prepare(cfg: DataConfig, tok: TokenizerInfo) -> Corpus:
    """Stage 1 for all sources."""
    if not cfg.sources:
        raise DataError("data.sources is empty (expected at least one source with `paths`)")
    names = [s.name for s in cfg.sources]
    if len(set(names)) != len(names):
        raise DataError(f"data.sources: names must be unique, got {names}")
    t0 = time.perf_counter()
    stores = []
    for src in cfg.sources:
        if src.weight < 0:
            raise DataError(f"source {src.name!r}: weight must be >= 0, got {src.weight}")
        stores.append(prepare_source(src, tok, cfg.seq_len, cfg.cache_dir, cfg.max_docs))
        st = stores[-1].stats
        log.info("source %s: %d files, %d docs, %d chunks, %d tokens", src.name, st.files, st.docs, st.chunks,
                 st.tokens)
    if not any(len(s) * src.weight > 0 for s, src in zip(stores, cfg.sources)):
        files = ", ".join(str(p) for src in cfg.sources for p in src.paths)
        raise DataError(f"{files}: no documents to train on in data.sources {names} (every file empty or blank, "
                        "or weight 0); expected at least one non-empty document")
    return Corpus(stores, [s.weight for s in cfg.sources], time.perf_counter() - t0)


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
