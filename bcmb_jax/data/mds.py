"""MosaicML Streaming (MDS) shards as a corpus source: `format: mds`.

ModernBERT's and BioClinical ModernBERT's own pipelines wrote their corpora as MDS shards: a directory
with an `index.json` listing shard files (`shard.00000.mds`, optionally compressed `.mds.zstd` ...), each
sample a dict of typed columns. Two kinds are read:

    text shards     a `str` column (`field`, default "text"): documents, tokenized and chunked like JSONL
    token shards    an integer `ndarray` column ("input_ids", as BioClinical ModernBERT stored its chunks,
                    or "tokens"): samples that are already `[CLS] ... [SEP]` chunks, used as they are
                    (cut to `seq_len` if longer), their ids checked against the tokenizer's vocabulary

Shards are decoded with the `mosaicml-streaming` package's own readers and encodings. Its top-level
`streaming` package imports its PyTorch data loaders, vision datasets and transformers 4, none of which
reading needs (and which clash with this project's versions); `_streaming()` therefore loads only its
`streaming.base.format` modules. Pickled columns (`pkl`) are refused: they would run code.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bcmb_jax.errors import DataError

INDEX = "index.json"
TOKEN_COLUMNS = ("input_ids", "tokens")  # token shards, in order of preference when `field` names no column


def _streaming():
    """`streaming.base.format` of the mosaicml-streaming package, without the package's heavy __init__."""
    if "streaming.base.format" in sys.modules:
        return sys.modules["streaming.base.format"]
    spec = importlib.util.find_spec("streaming")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("format: mds needs the mosaicml-streaming package: pip install -e '.[mds]' and then "
                        "pip install --no-deps 'mosaicml-streaming>=0.13' (see the README)")
    root = Path(spec.submodule_search_locations[0])
    for name, sub in (("streaming", root), ("streaming.base", root / "base")):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(sub)]
            sys.modules[name] = module
    import streaming.base.format as fmt

    return fmt


@dataclass(frozen=True)
class Shard:
    """One shard of an MDS dataset: its index entry and where its data file is."""

    index: Path  # the index.json listing it
    entry: dict[str, Any]

    @property
    def directory(self) -> Path:
        return self.index.parent

    @property
    def data_file(self) -> Path:
        """The file on disk: the raw shard, or its compressed form when only that is there."""
        raw = self.directory / self.entry["raw_data"]["basename"]
        zipped = self.entry.get("zip_data")
        if not raw.is_file() and zipped:
            return self.directory / zipped["basename"]
        return raw


def find_indexes(path: Path) -> list[Path]:
    """The index.json files of an MDS dataset directory (a split per subdirectory is allowed), sorted."""
    if path.is_file() and path.name == INDEX:
        return [path]
    found = sorted(path.rglob(INDEX)) if path.is_dir() else []
    if not found:
        raise DataError(f"{path}: no {INDEX} (expected an MDS dataset directory, as MDSWriter writes it)")
    return found


@functools.lru_cache(maxsize=16)
def _index_entries(index: Path, stamp: tuple[int, int]) -> tuple[dict, ...]:
    """The shard entries of an index.json, parsed once per process and file version (`stamp`: mtime, size)."""
    try:
        obj = json.loads(index.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{index}: not a readable MDS index ({e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("shards"), list):
        raise DataError(f"{index}: not an MDS index (expected an object with a `shards` list)")
    return tuple(obj["shards"])


def _entries(index: Path) -> tuple[dict, ...]:
    try:
        st = index.stat()
    except OSError as e:
        raise DataError(f"{index}: not a readable MDS index ({e.strerror})") from None
    return _index_entries(index, (st.st_mtime_ns, st.st_size))


def _checked(s: Shard) -> Shard:
    if s.entry.get("format") != "mds":
        raise DataError(f"{s.index}: shard {s.entry.get('raw_data', {}).get('basename')} is in format "
                        f"{s.entry.get('format')!r}; only MDS shards are read")
    if not s.data_file.is_file():
        raise DataError(f"{s.index}: shard file {s.data_file.name} is missing")
    return s


def list_shards(index: Path) -> list[Shard]:
    return [_checked(Shard(index, entry)) for entry in _entries(index)]


def shard_of(data_file: Path) -> Shard:
    """The shard whose data file this is (looked up in the index.json beside it)."""
    index = data_file.parent / INDEX
    for entry in _entries(index):
        names = (entry.get("raw_data", {}).get("basename"), (entry.get("zip_data") or {}).get("basename"))
        if data_file.name in names and Shard(index, entry).data_file == data_file:
            return _checked(Shard(index, entry))
    raise DataError(f"{data_file}: not listed in {index}")


def _reader(shard: Shard, raw_dir: Path):
    fmt = _streaming()
    reader = fmt.reader_from_json(str(raw_dir), None, shard.entry)
    try:
        reader.validate(allow_unsafe_types=False)
    except ValueError as e:
        raise DataError(f"{shard.data_file}: {e}; pickled columns are never read (they would run code)") from None
    return reader


def _raw_bytes(shard: Shard) -> bytes:
    data = shard.data_file.read_bytes()
    if shard.data_file.name != shard.entry["raw_data"]["basename"]:  # compressed: decompress in memory
        from streaming.base.compression import decompress

        data = decompress(shard.entry["compression"], data)
    return data


def column(shard: Shard, field: str) -> tuple[str, str]:
    """(column name, kind "text" | "tokens") to read from the shard for the source's `field`."""
    names, encodings = shard.entry["column_names"], shard.entry["column_encodings"]
    name = field if field in names else next((c for c in TOKEN_COLUMNS if c in names), None)
    if name is None:
        raise DataError(f"{shard.index}: no column {field!r} (columns: {names}); set the source's `field`")
    encoding = encodings[names.index(name)]
    if encoding == "pkl":
        raise DataError(f"{shard.index}: column {name!r} is pickled (unsafe type: pkl); pickles are never read "
                        "(they would run code)")
    if encoding == "str":
        return name, "text"
    if encoding.split(":")[0] in ("ndarray", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32",
                                  "int64"):
        return name, "tokens"
    raise DataError(f"{shard.index}: column {name!r} is encoded as {encoding!r}; expected str (text) or an "
                    "integer ndarray (token ids)")


def samples(shard: Shard, name: str) -> Iterator[Any]:
    """The values of one column, sample by sample, decoded by the package's own MDS reader."""
    data = _raw_bytes(shard)
    reader = _reader(shard, shard.directory)
    n = int(np.frombuffer(data[:4], np.uint32)[0])
    if n != shard.entry["samples"]:
        raise DataError(f"{shard.data_file}: holds {n} samples, its index says {shard.entry['samples']}")
    ends = np.frombuffer(data[4:8 + 4 * n], np.uint32)
    for i in range(n):
        yield reader.decode_sample(data[ends[i]:ends[i + 1]])[name]


def token_chunks(shard: Shard, name: str, seq_len: int, vocab_size: int) -> tuple[list[np.ndarray], int]:
    """The token samples of a shard as chunks (each cut to `seq_len`); (chunks, how many were cut)."""
    chunks, cut = [], 0
    for i, ids in enumerate(samples(shard, name)):
        ids = np.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise DataError(f"{shard.data_file}: sample {i} column {name!r} is not a 1-D integer array")
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            bad = int(ids.max()) if int(ids.max()) >= vocab_size else int(ids.min())
            raise DataError(f"{shard.data_file}: sample {i} holds token id {bad}, outside the tokenizer's "
                            f"vocabulary of {vocab_size}; expected shards tokenized with data.tokenizer")
        if len(ids) > seq_len:
            ids, cut = ids[:seq_len], cut + 1
        if len(ids):
            chunks.append(ids.astype(np.int32))
    return chunks, cut
