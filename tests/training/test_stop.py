"""Stop requests: a signal is acknowledged at once, also while the main thread is inside an XLA compile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import ROOT

SCRIPT = r"""
import sys, time
import jax, jax.numpy as jnp
from bcmb_jax.training.stop import StopRequest

stop = StopRequest().install()

def f(x):
    for i in range(600):
        x = jnp.sin(x @ x.T + i)
    return x

lowered = jax.jit(f).lower(jnp.ones((64, 64)))
print("compiling", flush=True)
t0 = time.perf_counter()
lowered.compile()
print(f"compiled after {time.perf_counter() - t0:.2f} s; requested={stop.requested} by {stop.name}", flush=True)
stop.uninstall()
"""


def test_a_signal_during_a_compile_is_acknowledged_at_once():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_COMPILATION_CACHE_DIR": ""}  # a real compile, not a hit
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "compiling"
    time.sleep(0.3)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    ack = proc.stderr.readline()
    acked = time.perf_counter() - sent
    out = proc.stdout.read()
    proc.wait(timeout=120)
    assert ack.startswith("SIGTERM received: the run saves a checkpoint"), ack
    compile_s = float(out.split("compiled after ")[1].split(" s")[0])
    assert "requested=True by SIGTERM" in out
    assert acked < 1.0 and acked < compile_s - 0.3, (acked, compile_s)  # before the compile ended
