"""Reading corpora: files, directories and globs of text, JSON(L), CSV/TSV, Parquet and TextGrid.

`iter_documents(SourceConfig)` yields every non-empty document of a source in a fixed order,
counting what it skips (empty documents) and repairs (undecodable bytes) in `ReadStats`.
Compressed files (.gz, .bz2, .xz) are read transparently; a byte-order mark picks UTF-8/16/32.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import dataclasses
import fnmatch
import glob
import gzip
import io
import json
import logging
import lzma
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcmb_jax.data.config import SourceConfig
from bcmb_jax.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("auto", "text", "lines", "jsonl", "json", "csv", "parquet", "textgrid", "mds")
SPLITTABLE = ("jsonl", "lines")  # formats whose large files are read in byte ranges by several workers
_EXT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv",
                ".parquet": "parquet", ".textgrid": "textgrid"}
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_SNIFF_BYTES = 8192  # bytes read to tell text from binary or BOM-less UTF-16



# ---------------------------------------------------------------------------------------------
# Reading documents


@dataclass
class ReadStats:
    files: int = 0
    docs: int = 0
    skipped_empty: int = 0
    replaced_utf8: int = 0  # undecodable bytes replaced by U+FFFD
    chunks: int = 0
    tokens: int = 0  # chunk tokens including [CLS]/[SEP]

    def add(self, other: ReadStats | dict) -> None:
        items = other.items() if isinstance(other, dict) else dataclasses.asdict(other).items()
        for k, v in items:
            if hasattr(self, k):
                setattr(self, k, getattr(self, k) + int(v))


_replaced = threading.local()


def _count_replace(err: UnicodeError):
    _replaced.n = getattr(_replaced, "n", 0) + 1
    return "\ufffd", err.end


codecs.register_error("bcmb_count_replace", _count_replace)


def expand_paths(src: SourceConfig) -> list[Path]:
    """The files of a source, in a fixed order; a missing path or an empty match is a DataError.

    For `format: mds` these are the shard files of every index.json under the paths, in index order."""
    if not src.paths:
        raise DataError(f"source {src.name!r}: `paths` is empty")
    out: list[Path] = []
    for raw in src.paths:
        p = os.path.expanduser(str(raw))
        if src.format == "mds":
            from bcmb_jax.data import mds

            if not os.path.exists(p):
                raise DataError(f"source {src.name!r}: path not found: {p}")
            out += [s.data_file for index in mds.find_indexes(Path(p)) for s in mds.list_shards(index)]
            continue
        if glob.has_magic(p):
            found = sorted(Path(f) for f in glob.glob(p, recursive=True) if os.path.isfile(f))
            if not found:
                raise DataError(f"source {src.name!r}: pattern {p!r} matches no files")
        elif os.path.isdir(p):
            found = []
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(root, f) for f in sorted(files)
                          if not f.startswith(".") and fnmatch.fnmatch(f, src.pattern)]
            if not found:
                raise DataError(f"source {src.name!r}: directory {p} has no files matching {src.pattern!r}")
            if src.format == "auto" and os.path.isfile(os.path.join(p, "index.json")) and any(
                    f.suffix == ".mds" or ".mds." in f.name for f in found):
                raise DataError(f"source {src.name!r}: {p} is an MDS dataset (index.json and shards); set "
                                "`format: mds`")
        elif os.path.isfile(p):
            found = [Path(p)]
        else:
            raise DataError(f"source {src.name!r}: path not found: {p}")
        out += found
    return list(dict.fromkeys(out))


def _suffix(path: Path) -> tuple[str, Any]:
    """(lower-case extension ignoring a compression suffix, opener)."""
    sfx = [s.lower() for s in path.suffixes]
    if sfx and sfx[-1] in _OPENERS:
        return (sfx[-2] if len(sfx) > 1 else ""), _OPENERS[sfx[-1]]
    return (sfx[-1] if sfx else ""), open


def file_format(path: Path, fmt: str) -> str:
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r} for {path}; expected one of {FORMATS}")
    return _EXT_FORMATS.get(_suffix(path)[0], "text") if fmt == "auto" else fmt


def splittable(path: Path, src: SourceConfig) -> bool:
    """Whether a file can be read in byte ranges: one document (or record) per line, uncompressed UTF-8."""
    if file_format(path, src.format) not in SPLITTABLE or _suffix(path)[1] is not open:
        return False
    if src.encoding not in ("auto", "utf-8", "utf8"):
        return False
    with open(path, "rb") as f:
        head = f.read(4)
    return not head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))  # UTF-32 LE starts like UTF-16 LE


def _sniff_utf8(path: Path, head: bytes) -> None:
    if b"\x00" in head:
        what = ("UTF-16 without a byte-order mark" if head[1::2].count(0) > len(head) // 4 or
                head[0::2].count(0) > len(head) // 4 else "a binary file")
        raise DataError(f"{path}: not UTF-8 text (NUL bytes in its first {len(head):,} bytes: {what}?); expected "
                        "text files, or set the source's `encoding` (e.g. utf-16-le)")


def _byte_lines(path: Path, start: int, end: int) -> Iterator[str]:
    """The lines that begin in bytes [start, end) of a UTF-8 file, decoded (a line that begins before `start`
    belongs to the previous range, one that begins before `end` to this one, wherever it ends)."""
    with open(path, "rb") as f:
        if start == 0:
            head = f.read(_SNIFF_BYTES)
            _sniff_utf8(path, head)
            f.seek(len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0)
        else:
            f.seek(_line_start(f, start))
        pos = f.tell()
        while pos < end:
            line = f.readline()
            if not line:
                break
            pos += len(line)
            yield line.decode("utf-8", errors="bcmb_count_replace")


def _first_line_number(path: Path, start: int) -> int:
    """The 1-based number of the first line of the byte range that begins at `start`."""
    if start == 0:
        return 1
    with open(path, "rb") as f:
        return _line_of(path, _line_start(f, start))


def _line_start(f, start: int) -> int:
    """The offset of the first line that begins at or after `start` in a binary file."""
    if start == 0:
        return 0
    f.seek(start - 1)
    if f.read(1) != b"\n":
        f.readline()  # the rest of a line that began before `start`
    return f.tell()


def _line_of(path: Path, offset: int) -> int:
    """The 1-based number of the line holding byte `offset` (counted only for an error message)."""
    count = 0
    with open(path, "rb") as f:
        while offset > 0:
            block = f.read(min(offset, 1 << 24))
            if not block:
                break
            count += block.count(b"\n")
            offset -= len(block)
    return count + 1


def _open_text(path: Path, encoding: str, newline: str | None = None) -> io.TextIOWrapper:
    ext, opener = _suffix(path)
    if encoding in ("auto", "utf-8", "utf8"):
        with opener(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
        boms = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
        if encoding == "auto":
            encoding = next((enc for bom, enc in boms if head.startswith(bom)), "utf-8")
        if encoding.startswith("utf-8"):
            _sniff_utf8(path, head)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"{path}: unknown encoding {encoding!r}") from None
    return io.TextIOWrapper(opener(path, "rb"), encoding=encoding, errors="bcmb_count_replace", newline=newline)


def _as_text(value: Any, where) -> str:
    """`value` as a document; `where` (a string, or a callable made into one only for an error) names it."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise DataError(f"{where() if callable(where) else where}: expected a string (or a list of strings), got "
                    f"{type(value).__name__}")


def _get_field(record: Any, key: str | int, where: str) -> Any:
    if isinstance(record, str):
        return record
    node = record
    for part in [key] if isinstance(key, int) else key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and str(part).isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            keys = sorted(node)[:20] if isinstance(node, dict) else type(node).__name__
            raise DataError(f"{where}: no field {key!r} (found: {keys})")
    return node


def _read_records(records: Iterable[tuple[Any, Any]], fields: list) -> Iterator[str]:
    for where, rec in records:
        for f in fields:
            try:
                value = _get_field(rec, f, "")
            except DataError as e:  # name the record (its line number is counted only now)
                raise DataError(f"{where() if callable(where) else where}{e}") from None
            yield _as_text(value, lambda where=where, f=f: f"{where() if callable(where) else where}: field {f!r}")


def _jsonl_records(path: Path, f, first_line=lambda: 1) -> Iterator[tuple[str, Any]]:
    """(where, record) per non-blank line; `first_line()` numbers the first line (only asked on an error)."""
    for n, line in enumerate(f):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n + first_line()}: invalid JSON ({e.msg} at column {e.colno})") from None
            yield (lambda n=n: f"{path}:{n + first_line()}"), record


def _json_records(path: Path, f) -> Iterator[tuple[str, Any]]:
    try:
        data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, list):
        yield from ((f"{path}: record {i}", r) for i, r in enumerate(data))
    else:
        yield f"{path}", data


def _read_csv(path: Path, f, src: SourceConfig, fields: list) -> Iterator[str]:
    delim = src.delimiter if src.delimiter != "auto" else "\t" if _suffix(path)[0] == ".tsv" else ","
    if delim in ("\\t", "tab"):
        delim = "\t"
    if len(delim) != 1:
        raise DataError(f"source {src.name!r}: delimiter must be one character, got {delim!r}")
    reader = csv.reader(f, delimiter=delim)
    try:
        header = next(reader, None) if src.csv_header else None
        cols = []
        for fld in fields:
            if isinstance(fld, int):
                cols.append(fld)
            elif header is None:
                raise DataError(f"{path}: column {fld!r} needs a header row; set csv_header: true or give "
                                "a 0-based column index")
            elif fld in header:
                cols.append(header.index(fld))
            else:
                raise DataError(f"{path}: no column {fld!r} in the header (columns: {header})")
        for row in reader:
            if not row:
                continue
            for c in cols:
                if c >= len(row):
                    raise DataError(f"{path}:{reader.line_num}: the row has {len(row)} columns, expected "
                                    f"at least {c + 1}")
                yield row[c]
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None


_TG_ITEM = re.compile(r'(?:xmin|number|time)\s*=\s*([-\d.eE+]+)\s*(?:xmax\s*=\s*[-\d.eE+]+\s*)?'
                      r'(?:text|mark)\s*=\s*"((?:[^"]|"")*)"')


def _read_textgrid(path: Path, f) -> Iterator[str]:
    """One document per Praat TextGrid (long format): the labels of all tiers in time order."""
    text = f.read()
    if "ooTextFile" not in text[:200]:
        raise DataError(f"{path}: not a Praat TextGrid (expected 'File type = \"ooTextFile\"' on line 1)")
    items = [(float(m.group(1)), m.group(2).replace('""', '"').strip()) for m in _TG_ITEM.finditer(text)]
    items.sort(key=lambda x: x[0])
    yield "\n".join(t for _, t in items if t)


def _read_parquet(path: Path, fields: list) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: cannot read as Parquet ({e})") from None
    names = pf.schema_arrow.names
    cols = []
    for fld in fields:
        name = names[fld] if isinstance(fld, int) and fld < len(names) else fld
        if name not in names:
            raise DataError(f"{path}: no column {fld!r} (columns: {names})")
        cols.append(name)
    for batch in pf.iter_batches(batch_size=1024, columns=list(dict.fromkeys(cols))):
        data = {c: batch.column(c).to_pylist() for c in set(cols)}
        for i in range(batch.num_rows):
            for c in cols:
                yield _as_text(data[c][i], f"{path}: column {c!r}")


def iter_file_documents(path: Path, src: SourceConfig, stats: ReadStats | None = None,
                        byte_range: tuple[int, int] | None = None) -> Iterator[str]:
    """Non-empty documents of one file (stripped); empty ones and replaced bytes are counted in `stats`.

    Files of one document or record per line (`splittable`) are read line by line from bytes, in
    `byte_range` when given (several workers read one large file): the ranges of a file give exactly
    the documents of the whole file, in order."""
    stats = stats if stats is not None else ReadStats()
    fmt, fields = file_format(path, src.format), src.fields()
    before = getattr(_replaced, "n", 0)
    f = None
    try:
        if fmt == "mds":
            from bcmb_jax.data import mds

            shard = mds.shard_of(path)
            name, kind = mds.column(shard, str(fields[0]))
            if kind != "text":
                raise DataError(f"{path}: column {name!r} holds token ids, not text")
            raw: Iterable[str] = (doc for doc in mds.samples(shard, name))
        elif fmt == "parquet":
            raw = _read_parquet(path, fields)
        elif splittable(path, src):
            start, end = byte_range or (0, path.stat().st_size)
            lines = _byte_lines(path, start, end)
            if fmt == "lines":
                raw = (line.rstrip("\n") for line in lines)
            else:
                raw = _read_records(_jsonl_records(path, lines, lambda: _first_line_number(path, start)), fields)
        else:
            f = _open_text(path, src.encoding, newline="" if fmt == "csv" else None)
            raw = {"text": lambda: iter([f.read()]),
                   "lines": lambda: (line.rstrip("\n") for line in f),
                   "jsonl": lambda: _read_records(_jsonl_records(path, f), fields),
                   "json": lambda: _read_records(_json_records(path, f), fields),
                   "csv": lambda: _read_csv(path, f, src, fields),
                   "textgrid": lambda: _read_textgrid(path, f)}[fmt]()
        stats.files += 1
        for doc in raw:
            doc = doc.strip()
            if doc:
                stats.docs += 1
                yield doc
            else:
                stats.skipped_empty += 1
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    finally:
        if f is not None:
            f.close()
        replaced = getattr(_replaced, "n", 0) - before
        stats.replaced_utf8 += replaced
        if replaced:
            log.warning("%s: %d undecodable bytes replaced by U+FFFD; set the source's `encoding` if the file is "
                        "not UTF-8", path, replaced)


def iter_documents(src: SourceConfig, stats: ReadStats | None = None) -> Iterator[str]:
    """All non-empty documents of a source, file by file, in a fixed order."""
    for path in expand_paths(src):
        yield from iter_file_documents(path, src, stats)
