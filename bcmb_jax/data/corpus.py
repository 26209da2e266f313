"""The tokenized corpus: every source file as flat chunk arrays, cached on disk, with random access.

`prepare` reads each source's files (`sources.py`), chunks their documents (`chunking.py`)
and keeps a file's chunks as three flat arrays (`FileTokens`: tokens, offsets, document ids). With a
`cache_dir`, each file's arrays are written once (temporary sibling directory, then rename) under a key
of file content + tokenizer + settings and memory-mapped afterwards, so later runs and grain's worker
processes skip tokenization. `ChunkStore` gives random access to one source's chunks; `Corpus` holds
all sources with their weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bcmb_jax.atomic import atomic
from bcmb_jax.data.chunking import tokenize_documents
from bcmb_jax.data.config import SourceConfig
from bcmb_jax.data.sources import ReadStats, expand_paths, file_format, iter_file_documents
from bcmb_jax.data.tokenizer import TokenizerInfo
from bcmb_jax.errors import DataError

if TYPE_CHECKING:
    from bcmb_jax.data.config import DataConfig

log = logging.getLogger(__name__)

_CACHE_VERSION = 1


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
    """Writes the arrays atomically; a concurrent writer that finished first is kept."""
    with atomic(d, first_wins=True) as tmp:
        tmp.mkdir()
        for name in ("tokens", "offsets", "doc_ids"):
            np.save(tmp / f"{name}.npy", getattr(ft, name))
        (tmp / "meta.json").write_text(json.dumps({"source": str(source_path), "stats": ft.stats}, indent=1))


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
    """Every source's chunk store with its sampling weight."""

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
