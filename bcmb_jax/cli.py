"""The one error path of every command line (train.py, convert_weights.py, evaluate.py, demo.py, bench, data).

`@command` wraps a command's `main(argv)`:

- bad input becomes one line `error: <file, key or line>: <what was wrong, what was expected>` on
  stderr and exit status 2. Bad input is an `errors.InputError` (ConfigError, DataError,
  WeightsError, ConversionError, FinetuneError, TaskDataError) and the library
  errors that mean a file is missing or damaged: OSError (missing file, directory, permissions),
  YAML and JSON syntax errors, undecodable text, safetensors and refused-pickle errors, and errors
  raised inside orbax/tensorstore while reading a checkpoint. Messages that do not name a file get
  the file the failing code was reading, found in the traceback.
- Ctrl-C (SIGINT) or SIGTERM prints one line and exits 128 + the signal (130, 143); writers remove their
  temporary output on the way out (`atomic.atomic`). Training installs its own handlers once it trains:
  they save a checkpoint and the run exits with `RESUMABLE_STATUS`.
- anything else is a bug and keeps its traceback.
- `--debug` anywhere on the command line, or the environment variable BCMB_DEBUG=1, prints the full
  traceback before the error line as well.
"""

from __future__ import annotations

import argparse
import functools
import gc
import io
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from bcmb_jax.errors import ConfigError, InputError

DEBUG_ENV = "BCMB_DEBUG"
DEBUG_FLAG = "--debug"
# Exit statuses of every command (the README's "Exit statuses" lists them):
INPUT_STATUS = 2  # bad input: one `error:` line
NONFINITE_STATUS = 3  # train.py stopped on a non-finite loss or weight (the last checkpoint is kept)
RESUMABLE_STATUS = 75  # train.py was stopped by a signal and saved a checkpoint: rerun it to continue
INTERRUPT_STATUS = 130  # SIGINT before there was anything to save (128 + the signal; SIGTERM: 143)

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


class ArgumentParser(argparse.ArgumentParser):
    """argparse for every command: a bad argument is one `error:` line and status 2, not a usage block."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise ConfigError(f"{message} (see {self.prog} --help)")


def count(low: int = 1):
    """An argparse type: an integer >= `low` (counts, sizes and repeats are never negative or zero)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = "count"
    return parse


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value}")
    return value


def counts(flag: str, text: str, low: int = 1) -> list[int]:
    """A comma-separated list of integers >= `low` (e.g. `--lengths 512,2048`); '' is the empty list."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated integers") from None
    bad = [v for v in values if v < low]
    if bad:
        raise ConfigError(f"{flag} {text!r}: expected integers >= {low}, got {bad[0]}")
    return values


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


def error_line(exc: BaseException) -> str | None:
    """The one-line message for a bad-input exception, or None when `exc` is a bug."""
    names = _qualnames(exc)
    frames = _frames(exc.__traceback__)
    if isinstance(exc, InputError):
        return _one_line(exc)  # the package's input errors; any other exception raised inside it is a bug
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
    if names & _LIBRARY_INPUT:
        return _where(exc, _one_line(exc) or type(exc).__name__)
    if names & set(_READER_TYPES) and frames and any(m.startswith(_READER_MODULES) for m, _ in frames[:8]):
        text = _one_line(exc)
        text = text[:300] + (" ..." if len(text) > 300 else "")
        return _where(exc, f"cannot restore checkpoint ({type(exc).__name__}: {text}); truncated, corrupt, or "
                           "written for another model or optimizer?")
    return None


def print_error(exc: BaseException, debug: bool = False, file=None) -> int | None:
    """Prints the error line for a bad-input exception or an interrupt; returns the exit status, None for a bug."""
    file = file or sys.stderr
    if "subprocess.CalledProcessError" in _qualnames(exc) and exc.returncode in (INPUT_STATUS, INTERRUPT_STATUS):
        return exc.returncode  # a command run by this one already printed its error line
    if isinstance(exc, KeyboardInterrupt):
        if debug:
            traceback.print_exception(exc, file=file)
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"error: interrupted ({_signal_name(signum)}); partial output was removed", file=file, flush=True)
        return 128 + signum
    message = error_line(exc)
    if message is None:
        return None
    if debug:
        traceback.print_exception(exc, file=file)
    print(f"error: {message}", file=file, flush=True)
    return INPUT_STATUS


_interrupted = threading.Event()


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM outside training: unwinds like Ctrl-C, so writers remove their temporary output."""

    def __init__(self, signum: int):
        super().__init__(_signal_name(signum))
        self.signum = signum


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name + (" / Ctrl-C" if signum == signal.SIGINT else "")


def _in_callback(frame) -> bool:
    """Whether `frame` runs inside a gc callback or a finalizer, where a raised exception is only printed."""
    codes = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in codes or frame.f_code.co_name in ("__del__", "_xla_gc_callback"):
            return True
        frame = frame.f_back
    return False


def _on_signal(signum, frame) -> None:
    """SIGINT / SIGTERM: `Interrupted`, so writers clean up on the way out; re-sent if it lands in a callback."""
    _interrupted.set()
    if _in_callback(frame):
        threading.Timer(0.02, os.kill, (os.getpid(), signum)).start()
        return
    raise Interrupted(signum)


# Third-party chatter a command's user did not ask for: transformers' load reports and warnings, the hub's
# and transformers' progress bars. `--debug` (or the variables set beforehand) keeps them. Child processes
# (reproduce.py's stages, bench cases) inherit the settings.
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def quiet_libraries() -> None:
    """Silences transformers and huggingface_hub below errors (unless the environment already says otherwise)."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    if "transformers" in sys.modules and os.environ["TRANSFORMERS_VERBOSITY"] == "error":  # read at import
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def _quiet_closed_loop(hook=sys.unraisablehook):
    """An unraisable-exception hook that drops orbax's 'Event loop is closed' callbacks after a failed restore,
    and re-sends a signal whose `Interrupted` was swallowed by a callback (a weakref's, a finalizer's) that
    `_in_callback` did not recognise, so that it interrupts the command instead of being printed."""
    def quiet(u):
        if isinstance(u.exc_value, Interrupted):
            threading.Timer(0.02, os.kill, (os.getpid(), u.exc_value.signum)).start()
            return
        if not (isinstance(u.exc_value, RuntimeError) and "Event loop is closed" in str(u.exc_value)):
            hook(u)
    return quiet


def command(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorates `main(argv)`: returns its status, 2 for bad input, 128 + n for signal n; re-raises bugs.

    `--debug` is taken out of argv before `main` sees it.
    """
    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        given = list(sys.argv[1:] if argv is None else argv)
        debug = debug_requested(given)
        if not debug:
            quiet_libraries()
        try:
            status = main([a for a in given if a != DEBUG_FLAG])
        except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - sorted into input errors and bugs
            status = print_error(e, debug)
            if status is None:
                raise
        if _interrupted.is_set() and (status or 0) < 128:  # the signal came too late to stop the work
            print("error: interrupted as the command finished; its output is complete", file=sys.stderr, flush=True)
            return INTERRUPT_STATUS
        return 0 if status is None else int(status)

    return wrapped


def run(main: Callable[..., int]) -> None:
    """The `if __name__ == "__main__":` line of a command: runs the decorated `main` and exits with its status."""
    sys.unraisablehook = _quiet_closed_loop()
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if status == INPUT_STATUS and not debug_requested():
        # The error line is the whole report: a failed orbax read leaves asyncio tasks whose exceptions
        # would otherwise be logged (dozens of lines) when they are collected during shutdown.
        logging.disable(logging.CRITICAL)
        sys.unraisablehook = lambda unraisable: None
    if status > 128:
        os._exit(status)  # background writer threads must not keep an interrupted process alive
    sys.exit(status)


__all__ = ["command", "run", "Interrupted", "ArgumentParser", "count", "counts", "seconds", "error_line", "print_error",
           "culprit", "debug_requested", "DEBUG_ENV", "INPUT_STATUS", "NONFINITE_STATUS", "RESUMABLE_STATUS",
           "INTERRUPT_STATUS"]
