"""One run per run directory: a live holder refuses a second start, a dead one is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from bcmb_jax.training.run_lock import LOCK_NAME, RunLock, RunLocked

HOLD = """
import sys, time
from bcmb_jax.training.run_lock import RunLock
lock = RunLock(sys.argv[1], heartbeat=0.2).acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_refuses_and_a_dead_one_is_taken_over(tmp_path, caplog):
    run = tmp_path / "run"
    proc = _holder(run)
    try:
        with pytest.raises(RunLocked) as e:
            RunLock(run).acquire()
        msg = str(e.value)
        assert str(run) in msg and f"pid {proc.pid}" in msg and socket.gethostname() in msg and "since 20" in msg
    finally:
        proc.kill()
        proc.wait()
    # The holder was killed: its lock is still there, and the next start takes it over with a warning.
    assert (run / LOCK_NAME).exists()
    lock = RunLock(run).acquire()
    assert "took over the lock of a run that is gone" in caplog.text and f"pid {proc.pid}" in caplog.text
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (run / LOCK_NAME).exists() and run.is_dir()


def test_another_hosts_lock_counts_while_its_heartbeat_is_fresh(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"host": "node-17", "pid": 1234, "since": "2026-12-01T10:00:00"}))
    with pytest.raises(RunLocked, match="host node-17, pid 1234"):
        RunLock(run, stale_after=60).acquire()
    old = time.time() - 120  # that node stopped beating two minutes ago: lost
    os.utime(run / LOCK_NAME, (old, old))
    RunLock(run, stale_after=60).acquire().release()


def test_a_same_host_pid_reused_by_another_process_is_not_the_holder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    me = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": "1", "since": "then"}
    (run / LOCK_NAME).write_text(json.dumps(me))  # our pid, but a process that started at another time
    RunLock(run).acquire().release()


def test_a_lock_made_for_a_new_run_directory_leaves_nothing_when_released(tmp_path):
    lock = RunLock(tmp_path / "new" / "run").acquire()
    lock.release()
    assert not (tmp_path / "new" / "run").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(RunLocked.__mro__[1], match="is a file"):
        RunLock(tmp_path / "file").acquire()
