"""Small files on disk: the one atomic writer and the one strict JSON reader.

A file or directory is written to a temporary sibling, then renamed into place.

Temporaries are named `.NAME.tmp-<pid>-<hex>`, so one left by a killed process is recognised by its
name and removed by the next write of NAME (`remove_stale_temps`); an overwrite moves the old NAME to
`.NAME.old-<pid>-<hex>` only for the instant between its two renames.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _temp_name(out: Path, kind: str = "tmp") -> Path:
    return out.parent / f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _in_use(name: str) -> bool:
    """Whether the process named in a `.NAME.tmp-<pid>-<hex>` is another live process (still writing it)."""
    try:
        pid = int(name.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(p: Path) -> None:
    """Removes a file or a directory tree, if it is there."""
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def remove_stale_temps(directory: str | Path, name: str | None = None) -> list[Path]:
    """Removes `.NAME.tmp-<pid>-*` siblings (of `name`, or of every name) whose process is gone.

    A `.NAME.old-<pid>-*` left between the two renames of an overwrite is put back as NAME when
    NAME is missing, else removed. Returns what was removed or restored.
    """
    d = Path(directory)
    if not d.is_dir():
        return []
    done = []
    for p in sorted(d.iterdir()):
        stem, sep, rest = p.name[1:].rpartition(".")
        kind = rest.split("-", 1)[0]
        if not p.name.startswith(".") or not sep or kind not in ("tmp", "old") or rest.count("-") not in (1, 2):
            continue
        if (name and stem != name) or _in_use(p.name):
            continue
        target = d / stem
        if kind == "old" and not target.exists():
            os.replace(p, target)
        else:
            _remove(p)
        done.append(p)
    if done:
        log.warning("removed or restored leftovers of interrupted writes: %s", ", ".join(p.name for p in done))
    return done


@contextlib.contextmanager
def atomic(out: str | Path, overwrite: bool = False, first_wins: bool = False) -> Iterator[Path]:
    """Yields a temporary sibling path of `out` to write (a file or a directory); renames it to `out` after.

    An existing non-empty `out` is refused unless `overwrite`, and replaced only once the new one is
    complete; on any error (or Ctrl-C) the temporary is removed and `out` is as it was. `first_wins`
    is for caches that concurrent processes may build at once: an `out` that another writer created
    meanwhile is kept and this writer's copy dropped.
    """
    out = Path(out)
    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        what = "is a file" if out.is_file() else "is a directory that is not empty"
        raise FileExistsError(f"{out}: already exists and {what} (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent, out.name)
    tmp, existed = _temp_name(out), out.exists()
    try:
        yield tmp
        if first_wins and out.exists() and not existed:
            _remove(tmp)
        elif out.exists():
            old = _temp_name(out, "old")
            os.replace(out, old)
            os.replace(tmp, out)
            _remove(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


def write_text(path: str | Path, data: str | bytes) -> Path:
    """Writes a file atomically (replacing it): text as UTF-8, or bytes as they are."""
    with atomic(path, overwrite=True) as tmp:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return Path(path)


def read_json(path: str | Path, error: type[Exception], expected: str = "a JSON object") -> dict[str, Any]:
    """A JSON object read from `path`; any fault raises `error` with one line naming the file (and line)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: no such file (expected {expected})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno}); expected {expected}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte at offset {e.start}); expected {expected}") from None
    if not isinstance(d, dict):
        raise error(f"{path}: holds a JSON {type(d).__name__}; expected {expected}")
    return d


def check_writable_dir(path: str | Path, what: str, error: type[Exception]) -> None:
    """Fails now, before any work, when `path` cannot be (or become) a directory this process writes in.

    `what` is how the user named it (`--results-dir`, `data.cache_dir`); nothing is left behind: the
    probe is a temporary directory made and removed in the nearest existing parent."""
    d = Path(path).expanduser().absolute()
    existing = next(p for p in (d, *d.parents) if p.exists())
    if not existing.is_dir():
        raise error(f"{what}: {existing} is a file; expected a directory (or a path to create)")
    try:
        probe = Path(tempfile.mkdtemp(prefix=".write-probe-", dir=existing))
    except OSError as e:
        raise error(f"{what}: cannot write in {existing} ({e.strerror}); expected a writable location "
                    f"for {d}") from None
    probe.rmdir()


__all__ = ["atomic", "read_json", "write_text", "remove_stale_temps", "check_writable_dir"]
