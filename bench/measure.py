"""Measurement: the one timer, peak memory (device or resident set), the device's name, the GEMM peak."""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


class Turns:
    """Interleaved timing (`runner.run_interleaved`): this process times one repeat when the parent says "go",
    so the frameworks' repeats alternate (jax, torch, jax, torch, ...) and share the machine's drift.

    Lines over two FIFOs: this process writes "ready" (warm-up done) and "done <seconds>"; the parent writes
    "go" for each repeat, and a last "go" that lets it finish (its memory and GEMM-peak measurements run
    while no other case is timed)."""

    def __init__(self, go: str, done: str):
        self.go, self.done = open(go), open(done, "w")
        self.started = False

    def take(self) -> None:
        if not self.started:
            self.done.write("ready\n")
            self.done.flush()
            self.started = True
        if self.go.readline().strip() != "go":
            raise RuntimeError("the benchmark's parent process went away")

    def give(self, seconds: float) -> None:
        self.done.write(f"done {seconds!r}\n")
        self.done.flush()


TURNS: Turns | None = None  # set in a worker of an interleaved run


def timed(fn: Callable[[], object], warmup: int, repeats: int, turns: bool = True) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed calls; a case's repeats take turns
    when interleaved (`turns`; not the process's own measurements, such as the GEMM peak)."""
    for _ in range(warmup):
        fn()
    gate = TURNS if turns else None
    times = []
    for _ in range(repeats):
        if gate is not None:
            gate.take()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if gate is not None:
            gate.give(times[-1])
    if gate is not None:
        gate.take()  # wait until every case of the set has timed its repeats
    return times


class PeakMemory:
    """Peak memory of the enclosed block in MB: device memory on GPU, resident set size on CPU.

    JAX cannot reset its device peak, so on GPU a JAX figure is the process's peak so far.
    """

    def __init__(self, framework: str, device_kind: str):
        self.framework, self.gpu = framework, device_kind == "gpu"
        self.mb: float | None = None
        self.how = ""

    def __enter__(self):
        if self.gpu and self.framework == "torch":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif not self.gpu:
            release_free_memory()
            try:  # Linux: "5" resets the peak RSS (VmHWM) of this process
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.gpu and self.framework == "torch":
            import torch

            self.mb, self.how = torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated"
        elif self.gpu:
            import jax

            stats = jax.local_devices()[0].memory_stats() or {}
            self.mb, self.how = stats.get("peak_bytes_in_use", 0) / 2**20, "jax memory_stats peak_bytes_in_use"
        else:
            status = Path("/proc/self/status")
            if status.exists():
                kb = next(int(line.split()[1]) for line in status.read_text().splitlines()
                          if line.startswith("VmHWM"))
                self.mb, self.how = kb / 1024, "peak RSS (VmHWM, reset before the timed passes)"
            else:
                import resource

                self.mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                self.how = "peak RSS of the process (ru_maxrss)"
        return False


def timed_steps(run, framework: str, job: dict) -> dict:
    """Training timing: the first step (compilation) alone, then warm-up and timed steps under PeakMemory."""
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    with PeakMemory(framework, job["device_kind"]) as mem:
        times = timed(run, job["warmup"] - 1, job["repeats"])
    return {"times_s": times, "peak_mem_mb": mem.mb, "memory": mem.how, "first_step_s": first}


def is_out_of_memory(e: BaseException) -> bool:
    text = f"{type(e).__name__}: {e}"
    return "RESOURCE_EXHAUSTED" in text or "OutOfMemory" in text or "out of memory" in text.lower()


def fit_rows(attempt, rows: int, cleanup) -> dict:
    """`attempt(rows)`, halving `rows` after each out-of-memory error (the result says how many fit)."""
    while True:
        try:
            return attempt(rows)
        except Exception as e:
            if rows <= 1 or not is_out_of_memory(e):
                raise
            cleanup()
            rows //= 2


def release_free_memory() -> None:
    """Returns memory freed by earlier phases (model loading, compilation) to the OS (glibc), so that
    the peak RSS of the timed part counts what it keeps alive, not what the allocator cached before."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def free_memory_bytes(framework: str, gpu: bool) -> int:
    """Memory a case may still fill: free device memory on GPU, MemAvailable of the host on CPU."""
    if gpu and framework == "torch":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    if gpu:
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        return int(stats.get("bytes_limit", 0) - stats.get("bytes_in_use", 0))
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) * 1024
    return 4 << 30


def device_name(framework: str) -> tuple[str, str]:
    """(kind "cpu" | "gpu", readable name)."""
    if framework == "jax":
        import jax

        d = jax.devices()[0]
        if d.platform == "gpu":
            return "gpu", d.device_kind
    else:
        import torch

        if torch.cuda.is_available():
            return "gpu", torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return "cpu", f"{cpu} ({os.cpu_count()} cores)"


@functools.cache
def gemm_peak(framework: str, gpu: bool, dtype: str = "float32") -> float:
    """Matmul FLOP/s of a large square GEMM in `dtype` (median of 5 after a warm-up), once per process."""
    n = 8192 if gpu else 2048
    if framework == "jax":
        import jax
        import jax.numpy as jnp

        a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.dtype(dtype))
        f = jax.jit(lambda a: jnp.dot(a, a, precision="highest"))
        run = lambda: f(a).block_until_ready()  # noqa: E731
    else:
        import torch

        a = torch.randn(n, n, dtype=getattr(torch, dtype), device="cuda" if gpu else "cpu")

        def run():
            torch.mm(a, a)
            if gpu:
                torch.cuda.synchronize()
    return 2 * n**3 / statistics.median(timed(run, 1, 5, turns=False))
