"""The one error path of every command line (train.py, convert_weights.py, evaluate.py, demo.py, bench, data).

`@command` wraps a command's `main(argv)`:

- bad input becomes one line `error: <file, key or line>: <what was wrong, what was expected>` on
  stderr and exit status 2. Bad input is any `ValueError` subclass of this package (ConfigError,
  DataError, WeightsError, ConversionError, FinetuneError, TaskDataError, ...) and the library
  errors that mean a file is missing or damaged: OSError (missing file, directory, permissions),
  YAML and JSON syntax errors, undecodable text, safetensors and refused-pickle errors, and errors
  raised inside orbax/tensorstore while reading a checkpoint. Messages that do not name a file get
  the file the failing code was reading, found in the traceback.
- Ctrl-C (SIGINT) prints one line and exits 130; writers remove their temporary output on the way
  out (`atomic.atomic`). Training installs its own handler, which saves a checkpoint.
- anything else is a bug and keeps its traceback.
- `--debug` anywhere on the command line, or the environment variable BCMB_DEBUG=1, prints the full
  traceback before the error line as well.
"""

from __future__ import annotations

import functools
import gc
import io
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

DEBUG_ENV = "BCMB_DEBUG"
DEBUG_FLAG = "--debug"
INPUT_STATUS, INTERRUPT_STATUS = 2, 130

# Library exception types (module-qualified names, matched over the MRO) that mean bad input.
_LIBRARY_INPUT = {
    "yaml.error.YAMLError", "json.decoder.JSONDecodeError", "builtins.UnicodeError", "builtins.OSError",
    "safetensors._safetensors_rust.SafetensorError", "safetensors.SafetensorError", "_pickle.UnpicklingError",
    "pickle.UnpicklingError", "zipfile.BadZipFile", "builtins.EOFError",
}
# Libraries whose errors, while they read a checkpoint, mean a damaged or mismatched checkpoint.
_READER_MODULES = ("orbax.", "tensorstore")
_READER_TYPES = ("builtins.ValueError", "builtins.KeyError", "builtins.RuntimeError", "builtins.TypeError")
_PATH_NAMES = ("path", "file", "filename", "src", "source", "directory", "directory_path", "step_dir", "self", "f")


def debug_requested(argv: list[str] | None = None) -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no") or (
        DEBUG_FLAG in (sys.argv[1:] if argv is None else argv))


def _qualnames(exc: BaseException) -> set[str]:
    return {f"{t.__module__}.{t.__qualname__}" for t in type(exc).__mro__}


def _frames(tb: TracebackType | None):
    """(module name, locals) of every frame of a traceback, innermost first."""
    out = []
    while tb is not None:
        out.append((tb.tb_frame.f_globals.get("__name__", ""), tb.tb_frame.f_locals))
        tb = tb.tb_next
    return out[::-1]


def _as_path(value) -> Path | None:
    if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
        value = value.name
    if isinstance(value, Path | str) and value and len(str(value)) < 4096:
        try:
            p = Path(value)
            return p if p.exists() else None
        except (OSError, ValueError):
            return None
    return None


def culprit(exc: BaseException) -> Path | None:
    """The file or directory the failing code was reading: the innermost path-like local of the traceback."""
    for _, local in _frames(exc.__traceback__):
        for name in _PATH_NAMES:
            if name in local and (p := _as_path(local[name])) is not None:
                return p
        for value in local.values():
            if isinstance(value, Path) and (p := _as_path(value)) is not None:
                return p
    return None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _where(exc: BaseException, text: str) -> str:
    """`text`, prefixed by the culprit file when the text does not already name it."""
    p = culprit(exc)
    if p is None or str(p) in text or str(p.absolute()) in text:
        return text
    return f"{p}: {text}"


def _decode_message(exc: UnicodeDecodeError) -> str:
    byte = exc.object[exc.start:exc.start + 1]
    line = exc.object[:exc.start].count(b"\n") + 1
    p = culprit(exc)
    whole = p is not None and p.is_file() and p.stat().st_size == len(exc.object)
    where = f"{p}:{line}" if whole else (str(p) if p else "input")
    return (f"{where}: not valid {exc.encoding} text (byte 0x{byte.hex()} at offset {exc.start}); "
            "expected UTF-8 (re-encode the file)")


def refusal(torch_message: str) -> str:
    """Why a `weights_only` load was refused: the globals the pickle asked for, not torch's advice to turn
    the check off."""
    found = sorted(set(re.findall(r"GLOBAL ([\w.]+)", torch_message)))
    what = f"it asks for {', '.join(found)}" if found else "it asks for objects"
    return (f"refused to unpickle: {what}, outside the safe allow-list (tensors and plain containers); "
            "nothing in it was executed")


def describe(exc: BaseException) -> str | None:
    """The one-line message for a bad-input exception, or None when `exc` is a bug."""
    names = _qualnames(exc)
    frames = _frames(exc.__traceback__)
    if isinstance(exc, ValueError) and (type(exc).__module__.startswith("bcmb_jax") or (
            type(exc) is ValueError and frames and frames[0][0].startswith("bcmb_jax."))):
        return _one_line(exc)  # the package's own errors, and plain ValueErrors it raises itself
    if "json.decoder.JSONDecodeError" in names:
        p = culprit(exc)
        return f"{p or 'input'}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
    if isinstance(exc, UnicodeDecodeError):
        return _decode_message(exc)
    if "yaml.error.YAMLError" in names:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            problem = getattr(exc, "problem", None) or "syntax error"
            return f"{mark.name}:{mark.line + 1}: invalid YAML: {problem} (column {mark.column + 1})"
        return _where(exc, f"invalid YAML: {_one_line(exc)}")
    if isinstance(exc, OSError) and exc.filename is not None:
        what = exc.strerror or _one_line(exc)
        other = f" -> {exc.filename2}" if exc.filename2 else ""
        return f"{exc.filename}{other}: {what}"
    if "pickle.UnpicklingError" in names or "_pickle.UnpicklingError" in names:
        return _where(exc, refusal(str(exc)))
    if names & _LIBRARY_INPUT:
        return _where(exc, _one_line(exc) or type(exc).__name__)
    if names & set(_READER_TYPES) and frames and any(m.startswith(_READER_MODULES) for m, _ in frames[:8]):
        text = _one_line(exc)
        text = text[:300] + (" ..." if len(text) > 300 else "")
        return _where(exc, f"cannot restore checkpoint ({type(exc).__name__}: {text}); truncated, corrupt, or "
                           "written for another model or optimizer?")
    return None


def report(exc: BaseException, debug: bool = False, file=None) -> int | None:
    """Prints the error line for a bad-input exception or an interrupt; returns the exit status, None for a bug."""
    file = file or sys.stderr
    if "subprocess.CalledProcessError" in _qualnames(exc) and exc.returncode in (INPUT_STATUS, INTERRUPT_STATUS):
        return exc.returncode  # a command run by this one already printed its error line
    if isinstance(exc, KeyboardInterrupt):
        if debug:
            traceback.print_exception(exc, file=file)
        print("error: interrupted (SIGINT / Ctrl-C); partial output was removed", file=file, flush=True)
        return INTERRUPT_STATUS
    message = describe(exc)
    if message is None:
        return None
    if debug:
        traceback.print_exception(exc, file=file)
    print(f"error: {message}", file=file, flush=True)
    return INPUT_STATUS


_interrupted = threading.Event()


def _in_callback(frame) -> bool:
    """Whether `frame` runs inside a gc callback or a finalizer, where a raised exception is only printed."""
    codes = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in codes or frame.f_code.co_name in ("__del__", "_xla_gc_callback"):
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum, frame) -> None:
    """Ctrl-C: KeyboardInterrupt, so writers clean up on the way out; re-sent shortly if it lands in a callback."""
    _interrupted.set()
    if _in_callback(frame):
        threading.Timer(0.02, os.kill, (os.getpid(), signum)).start()
        return
    raise KeyboardInterrupt


def _quiet_closed_loop(hook=sys.unraisablehook):
    """An unraisable-exception hook that drops orbax's 'Event loop is closed' callbacks after a failed restore."""
    def quiet(u):
        if not (isinstance(u.exc_value, RuntimeError) and "Event loop is closed" in str(u.exc_value)):
            hook(u)
    return quiet


def command(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorates `main(argv)`: returns its status, 2 for bad input, 130 for Ctrl-C; re-raises bugs.

    `--debug` is taken out of argv before `main` sees it.
    """
    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        given = list(sys.argv[1:] if argv is None else argv)
        debug = debug_requested(given)
        try:
            status = main([a for a in given if a != DEBUG_FLAG])
        except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - sorted into input errors and bugs
            status = report(e, debug)
            if status is None:
                raise
        if _interrupted.is_set() and status != INTERRUPT_STATUS:  # Ctrl-C came too late to stop the work
            print("error: interrupted (SIGINT / Ctrl-C) as the command finished; its output is complete",
                  file=sys.stderr, flush=True)
            return INTERRUPT_STATUS
        return 0 if status is None else int(status)

    return wrapped


def run(main: Callable[..., int]) -> None:
    """The `if __name__ == "__main__":` line of a command: runs the decorated `main` and exits with its status."""
    sys.unraisablehook = _quiet_closed_loop()
    signal.signal(signal.SIGINT, _on_sigint)
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if status == INTERRUPT_STATUS:
        os._exit(status)  # background writer threads must not keep an interrupted process alive
    sys.exit(status)


__all__ = ["command", "run", "describe", "report", "culprit", "refusal", "debug_requested", "DEBUG_ENV"]
