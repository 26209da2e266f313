"""Stop requests during training: SIGTERM, SIGINT and SIGUSR1 ask the run to save a checkpoint and exit.

`StopRequest` installs the handlers once training begins. Each signal is acknowledged on stderr at once,
also while the main thread is busy inside a compile or a device step: Python runs signal handlers only
between bytecodes of the main thread, so the acknowledgement comes from a thread that wakes on the
interpreter's signal wake-up file descriptor. The training loop reads `requested` after every step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    """Whether (and by which signal) the run was asked to stop; `install()` / `uninstall()` the handlers."""

    def __init__(self, what: str = "the run saves a checkpoint after the current step and exits with status 75"):
        self.what = what
        self.signum: int | None = None
        self._event = threading.Event()
        self._previous: dict[int, object] = {}
        self._fds: tuple[int, int] | None = None
        self._old_wakeup = -1

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "none"

    def _note(self, signum: int) -> None:
        first = not self._event.is_set()
        if first:
            self.signum = signum
            self._event.set()
        name = signal.Signals(signum).name
        line = (f"{name} received: {self.what}" if first else
                f"{name} received again: still stopping ({self.name}); SIGKILL abandons the checkpoint")
        print(line, file=sys.stderr, flush=True)

    def _watch(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in SIGNALS:
                    self._note(signum)

    def install(self) -> StopRequest:
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._fds = (r, w)
        for s in SIGNALS:
            self._previous[s] = signal.signal(s, lambda *_: None)  # the watcher thread does the work
        self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(r,), name="stop-request", daemon=True).start()
        return self

    def uninstall(self) -> None:
        if self._fds is None:
            return
        signal.set_wakeup_fd(self._old_wakeup)
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        for fd in reversed(self._fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = None
