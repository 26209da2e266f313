"""The tokenized corpus: every source file as flat chunk arrays, cached on disk, with random access.

A file's chunks are three flat arrays (`FileTokens`: tokens, offsets, document ids). With a `cache_dir`,
each file's arrays are written once (temporary sibling directory, then rename) as a cache entry and
memory-mapped afterwards, so later runs, other hosts and grain's worker processes skip tokenization.

An entry's key is the tokenizer, the chunking settings and the file's signature: its size, modification
time and a hash of three 4 KiB samples (start, middle, end). A warm start reads those 12 KiB per file,
never a whole corpus; a file that changes gets a new key (a changed size or time, or changed sampled
bytes), and its old entry is simply not used. Entries do not depend on the file's path, so hosts that
mount a shared corpus at different paths share one cache.

`tokenize_file` is one unit of stage-1 work (a whole file, or a byte range of a large line-based file);
`combine` joins a file's ranges into exactly the arrays one pass over the file gives. `stage1.py` runs
the units over processes and hosts. `ChunkStore` gives random access to one source's chunks; `Corpus`
holds all sources with their weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bcmb_jax.atomic import atomic
from bcmb_jax.data.chunking import tokenize_documents
from bcmb_jax.data.config import SourceConfig
from bcmb_jax.data.sources import ReadStats, expand_paths, file_format, iter_file_documents
from bcmb_jax.data.tokenizer import TokenizerInfo

log = logging.getLogger(__name__)

_CACHE_VERSION = 2
_SAMPLE_BYTES = 4096  # bytes hashed at each of a file's start, middle and end for its cache key


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
            state = dataclasses.asdict(load_entry(Path(state["path"])))
        self.__dict__.update(state)


# ---------------------------------------------------------------------------------------------
# Cache entries


def file_signature(path: Path) -> dict:
    """What identifies a file's content for the cache without reading it: size, mtime, three sampled blocks."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for offset in sorted({0, max(0, st.st_size // 2 - _SAMPLE_BYTES // 2), max(0, st.st_size - _SAMPLE_BYTES)}):
            f.seek(offset)
            h.update(f.read(_SAMPLE_BYTES))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sampled": h.hexdigest()}


def cache_key(path: Path, src: SourceConfig, tok: TokenizerInfo, seq_len: int) -> str:
    key = {"v": _CACHE_VERSION, "file": file_signature(path), "tokenizer": tok.fingerprint, "seq_len": seq_len,
           "prefix_space": tok.prefix_space, "format": file_format(path, src.format), "fields": src.fields(),
           "csv_header": src.csv_header, "delimiter": src.delimiter, "encoding": src.encoding}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def entry_dir(cache_dir: str | Path, path: Path, src: SourceConfig, tok: TokenizerInfo, seq_len: int) -> Path:
    return Path(cache_dir).expanduser() / f"{path.stem[:40]}-{cache_key(path, src, tok, seq_len)}"


def entry_ready(d: Path) -> bool:
    return (d / "meta.json").is_file()


def load_entry(d: Path) -> FileTokens:
    meta = json.loads((d / "meta.json").read_text())
    arrays = [np.load(d / f"{n}.npy", mmap_mode="r") for n in ("tokens", "offsets", "doc_ids")]
    return FileTokens(*arrays, stats=meta["stats"], path=str(d))


def write_entry(d: Path, ft: FileTokens, source_path: Path) -> None:
    """Writes the arrays atomically; a concurrent writer that finished first is kept."""
    with atomic(d, first_wins=True) as tmp:
        tmp.mkdir()
        for name in ("tokens", "offsets", "doc_ids"):
            np.save(tmp / f"{name}.npy", getattr(ft, name))
        meta = {"source": str(source_path), "stats": ft.stats, "prepared_by": f"{socket.gethostname()}:{os.getpid()}"}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


# ---------------------------------------------------------------------------------------------
# Tokenizing


def tokenize_file(path: Path, src: SourceConfig, tok: TokenizerInfo, seq_len: int, max_docs: int | None = None,
                  byte_range: tuple[int, int] | None = None) -> FileTokens:
    """Reads, tokenizes and chunks one file (or one byte range of a line-based file) into flat arrays."""
    stats = ReadStats()
    if file_format(path, src.format) == "mds":
        from bcmb_jax.data import mds

        shard = mds.shard_of(path)
        name, kind = mds.column(shard, str(src.fields()[0]))
        if kind == "tokens":  # pre-tokenized chunks: used as they are
            chunks, cut = mds.token_chunks(shard, name, seq_len, tok.vocab_size)
            if cut:
                log.warning("%s: %d token samples longer than seq_len %d were cut to it", path, cut, seq_len)
            stats.files, stats.docs = 1, len(chunks)
            return _arrays([[c] for c in chunks[:max_docs]], stats, tok)
    docs = iter_file_documents(path, src, stats, byte_range)
    if max_docs is not None:
        docs = (d for _, d in zip(range(max_docs), docs))
    return _arrays(tokenize_documents(docs, tok, seq_len), stats, tok)


def _arrays(per_doc, stats: ReadStats, tok: TokenizerInfo) -> FileTokens:
    chunks, doc_ids = [], []
    for i, doc_chunks in enumerate(per_doc):
        chunks += doc_chunks
        doc_ids += [i] * len(doc_chunks)
    lengths = np.array([len(c) for c in chunks], np.int64)
    offsets = np.zeros(len(chunks) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(chunks).astype(tok.dtype) if chunks else np.empty(0, tok.dtype)
    stats.chunks, stats.tokens = len(chunks), int(offsets[-1])
    return FileTokens(tokens, offsets, np.asarray(doc_ids, np.int64), dataclasses.asdict(stats))


def combine(parts: list[FileTokens]) -> FileTokens:
    """One file's arrays from the arrays of its consecutive byte ranges (documents renumbered, one file)."""
    if len(parts) == 1:
        return parts[0]
    stats = ReadStats()
    tokens, offsets, doc_ids, base_tok, base_doc = [], [np.zeros(1, np.int64)], [], 0, 0
    for p in parts:
        stats.add(p.stats)
        tokens.append(np.asarray(p.tokens))
        offsets.append(np.asarray(p.offsets[1:]) + base_tok)
        doc_ids.append(np.asarray(p.doc_ids) + base_doc)
        base_tok += int(p.offsets[-1])
        base_doc += int(p.stats["docs"])
    stats.files = 1
    return FileTokens(np.concatenate(tokens), np.concatenate(offsets), np.concatenate(doc_ids),
                      dataclasses.asdict(stats))


# ---------------------------------------------------------------------------------------------
# Random access


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


def prepare_source(src: SourceConfig, tok: TokenizerInfo, seq_len: int, max_docs: int | None = None) -> ChunkStore:
    """One source in this process, file after file, in memory (the first `max_docs` documents when given);
    the cached, parallel path is `stage1.prepare`."""
    parts, left = [], max_docs
    for path in expand_paths(src):
        if left is not None and left <= 0:
            break
        parts.append(tokenize_file(path, src, tok, seq_len, left))
        if left is not None:
            left -= parts[-1].stats["docs"]
    return ChunkStore(src.name, parts)
