"""Running cases: one job (a backend on one or more cases) per subprocess, its result records back.

A job is a JSON-able dict; `run_job` runs one case in this process, `worker` the cases of a job
file one after another, appending each record to a JSON-lines file as soon as it is done, so that
a job stopped by its timeout still returns the cases it finished.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench import flops, jax_cases, measure, torch_cases
from bench.workload import make_set, mlm_batch

THROUGHPUT = Path(__file__).resolve().parent / "throughput.py"
# Device bytes one training token keeps alive per hidden unit and layer (bf16 base on an H200: ~0.64 MB
# a token for JAX); torch adds its dense logits. Only a first guess: out-of-memory halves the rows.
BYTES_PER_TOKEN_UNIT = {"jax": 20, "torch": 30}
MEMORY_SHARE = 0.7  # of the free memory that the first guess of rows may fill
# glibc malloc of every worker (both frameworks alike) keeps what it frees: one arena, no mmap per buffer,
# no trimming. XLA:CPU allocates a step's buffers afresh each time; with glibc's defaults a 4 x 512 training
# step faults in ~4 GB of new pages, and after the other framework's turn took up to 12.8 s instead of 7.9 s.
# A GLIBC_TUNABLES already set is kept.
WORKER_MALLOC = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def auto_rows(job: dict, framework: str) -> int:
    """Rows of `job["length"]` tokens that should fit in memory, at most `job["max_rows"]`."""
    cfg = job["cfg"]
    elem = 2 if job["dtype"] == "bfloat16" else 4
    per_token = elem * BYTES_PER_TOKEN_UNIT[framework] * cfg["hidden_size"] * len(cfg.get("layer_types") or [0] * 22)
    if framework == "torch":
        per_token += 12 * cfg["vocab_size"]  # logits, their gradient and the float32 softmax
    free = measure.free_memory_bytes(framework, job["device_kind"] == "gpu")
    return int(max(1, min(job["max_rows"], MEMORY_SHARE * free // (per_token * job["length"]))))


def run_job(job: dict) -> dict:
    """Runs one case (a backend on one set, or training at one length); the result record."""
    framework = "jax" if job["backend"] == "jax" else "torch"
    if framework == "jax":
        import jax

        if job["dtype"] == "float32":
            jax.config.update("jax_default_matmul_precision", "highest")  # no TF32 on GPU
        versions = {"jax": jax.__version__}
    else:
        import torch
        import transformers

        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        if job.get("threads"):
            torch.set_num_threads(job["threads"])
        versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                    "torch_threads": torch.get_num_threads()}
    job = dict(job)
    job["device_kind"], device = measure.device_name(framework)
    cfg = job["cfg"]
    cases = jax_cases if framework == "jax" else torch_cases
    if job["kind"] == "infer":
        docs = make_set(job["set_kind"], job["length"], job["samples"], cfg["vocab_size"])
        res = cases.infer(job, docs)
        tokens, rows = sum(len(d) for d in docs), job["batch_rows"]
        model_flops = sum(flops.forward_flops(cfg, len(d)) for d in docs) if cfg.get("layer_types") else None
    else:
        rows = job["batch_rows"] or auto_rows(job, framework)
        res = cases.train(job, lambda r: mlm_batch(job["length"], r, cfg["vocab_size"], cfg["mask_token_id"]), rows)
        rows, labels = res.pop("rows"), res.pop("labels")
        tokens = rows * job["length"]
        model_flops = (flops.train_flops(cfg, rows, job["length"], int((labels >= 0).sum()))
                       if cfg.get("layer_types") else None)
    med = statistics.median(res["times_s"])
    res["spread"] = (max(res["times_s"]) - min(res["times_s"])) / med  # (slowest - fastest) / median repeat
    peak = measure.gemm_peak(framework, job["device_kind"] == "gpu", job["dtype"])
    return {"set": job["set"], "backend": job["backend"], "kind": job["kind"], "tokens_per_s": tokens / med,
            "peak_mem_mb": res.pop("peak_mem_mb"), "mfu": (model_flops / med / peak) if model_flops else None,
            "tokens": tokens, "batch_rows": rows, "repeats": job["repeats"], "median_s": med, **res,
            "model_flops": model_flops, "gemm_peak_flops": peak, "device": device, "dtype": job["dtype"],
            "versions": versions, "malloc": os.environ.get("GLIBC_TUNABLES", "")}


def worker(job_path: str) -> None:
    """Runs every case of a job file ({"cases": [...], "result": path}), one record per line as each ends."""
    spec = json.loads(Path(job_path).read_text())
    if spec.get("turns"):
        measure.TURNS = measure.Turns(**spec["turns"])
    for job in spec["cases"]:
        try:
            record = run_job(job)
        except Exception as e:  # noqa: BLE001 - a failed case is recorded and the next one still runs
            record = failure(job, f"{type(e).__name__}: {e}".splitlines()[0][:300])
        with open(spec["result"], "a") as f:
            f.write(json.dumps(record) + "\n")


def failure(job: dict, err: str) -> dict:
    return {"set": job["set"], "backend": job["backend"], "kind": job["kind"], "tokens_per_s": None,
            "peak_mem_mb": None, "mfu": None, "error": err}


def run_cases(cases: list[dict], tmp: Path, timeout: float | None, in_process: bool = False,
              name: str | None = None) -> list[dict]:
    """Runs cases (of one backend) in one fresh subprocess, or here with `in_process`; a record per case.

    Cases not finished within `timeout` seconds are recorded as failed ("timed out"), as are the
    cases of a process that dies.
    """
    if in_process:
        records = []
        for job in cases:
            try:
                records.append(run_job(job))
            except Exception as e:  # noqa: BLE001 - reported, and the other cases still run
                records.append(failure(job, f"{type(e).__name__}: {e}".splitlines()[0][:300]))
        return records
    name = name or f"{cases[0]['backend']}-{cases[0]['set']}"
    path, result = tmp / f"{name}.job.json", tmp / f"{name}.result.jsonl"
    result.unlink(missing_ok=True)
    path.write_text(json.dumps({"cases": cases, "result": str(result)}))
    why = ""
    try:
        p = subprocess.run([sys.executable, str(THROUGHPUT), "--worker", str(path)], capture_output=True, text=True,
                           timeout=timeout)
        if p.returncode:
            why = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
    except subprocess.TimeoutExpired:
        why = f"timed out after {timeout:.0f} s"
    done = [json.loads(line) for line in result.read_text().splitlines()] if result.exists() else []
    return done + [failure(job, why or "no result") for job in cases[len(done):]]


def run_interleaved(cases: list[dict], tmp: Path, timeout: float | None) -> list[dict]:
    """Runs the cases of one set (one per backend) in their own processes at once, timing their repeats in
    turns: warm-ups first, then jax, torch, jax, torch, ... one repeat at a time; a record per case."""
    import select
    import time

    deadline = None if timeout is None else time.monotonic() + timeout * len(cases)
    procs, fifos, paths, logs = [], [], [], []
    for k, job in enumerate(cases):
        name = f"{job['backend']}-{job['set']}-{k}"
        go, done = tmp / f"{name}.go", tmp / f"{name}.done"
        for f in (go, done):
            f.unlink(missing_ok=True)
            os.mkfifo(f)
        path, result = tmp / f"{name}.job.json", tmp / f"{name}.result.jsonl"
        result.unlink(missing_ok=True)
        path.write_text(json.dumps({"cases": [job], "result": str(result), "turns": {"go": str(go),
                                                                                      "done": str(done)}}))
        fds = (os.open(go, os.O_RDWR), os.open(done, os.O_RDWR))  # O_RDWR: opening never blocks on Linux
        logs.append(tmp / f"{name}.log")
        log = open(logs[-1], "w")
        env = {**os.environ, "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", WORKER_MALLOC)}
        procs.append(subprocess.Popen([sys.executable, str(THROUGHPUT), "--worker", str(path)], stdout=log,
                                      stderr=subprocess.STDOUT, env=env))
        fifos.append(fds)
        paths.append(result)
    why: dict[int, str] = {}

    def read(k: int) -> str | None:
        """The next line from case k, or None when its process ended (or the run timed out)."""
        buf = b""
        while not buf.endswith(b"\n"):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                why[k] = f"timed out after {timeout:.0f} s"
                return None
            ready, _, _ = select.select([fifos[k][1]], [], [], 1.0 if left is None else min(1.0, left))
            if ready:
                buf += os.read(fifos[k][1], 1)
            elif procs[k].poll() is not None:
                return None
        return buf.decode().strip()

    live = [k for k in range(len(cases)) if read(k) == "ready"]
    for _ in range(max(job["repeats"] for job in cases)):
        for k in list(live):
            os.write(fifos[k][0], b"go\n")
            if not (read(k) or "").startswith("done"):
                live.remove(k)
    for k in range(len(cases)):  # let each finish (memory and GEMM peak) while the others wait
        if k in live:
            os.write(fifos[k][0], b"go\n")
        try:
            procs[k].wait(timeout=None if deadline is None else max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            why.setdefault(k, f"timed out after {timeout:.0f} s")
        if procs[k].poll() is None:
            procs[k].kill()
            procs[k].wait()
        for fd in fifos[k]:
            os.close(fd)
    records = []
    for k, job in enumerate(cases):
        done = [json.loads(line) for line in paths[k].read_text().splitlines()] if paths[k].exists() else []
        tail = logs[k].read_text().strip().splitlines()
        records += done or [failure(job, why.get(k) or (tail[-1] if tail else "no result"))]
    return records


def print_record(r: dict) -> None:
    """One line per case: throughput, time, memory, MFU, or the failure."""
    head = f"  {r['set']:>14} {r['backend']:<14}"
    if r.get("error"):
        print(f"{head} FAILED: {r['error']}", flush=True)
        return
    mfu = f"{100 * r['mfu']:.0f}%" if r["mfu"] is not None else "-"
    extra = f" attn={r['attn_implementation']}" if "attn_implementation" in r else ""
    if r.get("packing_efficiency") is not None:
        extra += f" packing={r['packing_efficiency']:.3f}"
    if r["kind"] != "infer":
        extra += f" rows={r['batch_rows']}"
    spread = f" ±{50 * r['spread']:.0f}%" if r.get("spread") is not None else ""
    print(f"{head} {r['tokens_per_s']:10.1f} tok/s  median {r['median_s']:.2f}s{spread}  mem {r['peak_mem_mb']:.0f} MB"
          f"  MFU {mfu}{extra}", flush=True)
