"""One run per run directory: `RUN_DIR/run.lock`, held by the process that trains into it.

The lock is a small JSON file created with `O_CREAT | O_EXCL` (atomic on local and network file
systems) naming its holder: host, pid, the process's start time, the SLURM job if any, since when.
While the run lives, a thread refreshes the file's modification time every `HEARTBEAT_S` seconds.
A second start finds the file and asks whether its holder still lives:

    same host     the pid exists and started when the lock says (a reused pid is not the holder)
    other host    the heartbeat is younger than `stale_after` seconds (that host's clock is not read)

A live holder is a `RunLocked` error naming the run directory and the holder. A dead one (killed, lost
node) is taken over with a warning: the stale file is renamed away first, which exactly one of several
processes racing for it can do. A multi-host job takes the lock once, in process 0 (`train.py`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from bcmb_jax.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
HEARTBEAT_S = 15.0  # how often a live holder touches the lock file
STALE_AFTER_S = 120.0  # a holder on another host whose lock is older than this is taken as dead


class RunLocked(ConfigError):
    """The run directory is in use by another live process."""


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process (clock ticks since boot), None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the parenthesised command name


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    now = _start_time(pid)
    return started is None or now is None or now == started


def _describe(holder: dict[str, Any]) -> str:
    job = f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else ""
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}{job}, since {holder.get('since', '?')}"


class RunLock:
    """`RUN_DIR/run.lock` for this process: `acquire()` it (or raise `RunLocked`), `release()` it at the end."""

    def __init__(self, run_dir: str | Path, stale_after: float = STALE_AFTER_S, heartbeat: float = HEARTBEAT_S):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.stale_after, self.heartbeat = stale_after, heartbeat
        self.token = secrets.token_hex(8)
        self.created_dir = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict[str, Any] | None:
        """The lock file's contents, {} when unreadable (being written, or cut short), None when absent."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _is_live(self, holder: dict[str, Any]) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return _alive(holder["pid"], holder.get("start_time"))
        return age < self.stale_after  # another host (or an unreadable file): only the heartbeat tells

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        me = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": _start_time(os.getpid()),
              "slurm_job": os.environ.get("SLURM_JOB_ID"), "token": self.token,
              "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def acquire(self) -> RunLock:
        """Takes the lock, taking over a dead holder's; a live holder raises `RunLocked`."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"run_dir: {self.run_dir} is a file; expected a directory (or a path to create)")
        self.created_dir = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"run_dir: cannot create {self.run_dir} ({e.strerror}); expected a writable "
                              "location") from None
        for _ in range(20):
            try:
                if self._create():
                    break
            except OSError as e:
                raise ConfigError(f"run_dir: cannot write {self.path} ({e.strerror}); expected a writable "
                                  "directory") from None
            holder = self.holder()
            if holder is None:
                continue  # released meanwhile
            if holder == {} and self._young():
                time.sleep(0.2)  # a holder is writing it right now
                continue
            if holder and self._is_live(holder):
                raise RunLocked(f"{self.run_dir}: in use by another run ({_describe(holder)}); wait for it to end, "
                                f"or remove {self.path} if that process is gone")
            aside = self.path.with_name(f".{LOCK_NAME}.stale-{self.token}")
            with contextlib.suppress(FileNotFoundError):  # another process took it over first
                os.replace(self.path, aside)
                aside.unlink()
                log.warning("%s: took over the lock of a run that is gone (%s)", self.run_dir, _describe(holder))
        else:
            raise RunLocked(f"{self.run_dir}: could not take {self.path}; other processes keep taking it")
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _young(self) -> bool:
        try:
            return time.time() - self.path.stat().st_mtime < 5.0
        except FileNotFoundError:
            return False

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Removes the lock if it is still this process's (and the run directory if this run made it empty)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if (self.holder() or {}).get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if self.created_dir:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()  # only when empty: a run that stopped before writing anything

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_for_job(run_dir: str | Path, stale_after: float = STALE_AFTER_S) -> RunLock | None:
    """The run lock of a (possibly multi-host) job: process 0 takes it and tells the others whether it could.

    Returns process 0's held lock (None elsewhere); every process raises when process 0 could not take it.
    """
    import jax

    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = RunLock(run_dir, stale_after=stale_after).acquire()
        except ConfigError as e:
            error = e
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        taken = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not taken and error is None:
            raise RunLocked(f"{run_dir}: process 0 of this job could not take the run lock (see its error)")
    if error is not None:
        raise error
    return lock
