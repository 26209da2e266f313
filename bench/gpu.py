"""The GPU comparison in one short run: GPU tests, inference and MLM training, JAX against torch.

    bench/gpu.sh [--budget 480] [--out bench/results]     # on one GPU, after pip install -e ".[gpu]"
    bench/gpu.sh --cpu-smoke                                # the same stages on CPU at tiny sizes

Stages, each with its share of the time budget (time a stage leaves unused passes to the next) and
each failure or timeout reported, never fatal:
  tests      `pytest tests/modeling/test_gpu.py`
  inference  JAX vs torch-sdpa, and torch-fa2 when `flash_attn` imports, on fixed and variable sets of
             512 and 8192 tokens (bf16, random base-size weights; `throughput.py`'s protocol)
  training   MLM steps of both frameworks on rows of 8192 and 1024 tokens, as many rows as fit in
             device memory (out-of-memory halves them); tokens/s, MFU and peak device memory
Cases of one backend share one process per stage (a process's timeout is its share of the stage).
Writes gpu_<device>.md and gpu_<device>.json to --out.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bcmb_jax import cli
from bench import report, runner, throughput  # noqa: E402

SHARES = {"tests": 0.25, "inference": 0.35, "training": 0.40}  # of the budget left after RESERVE_S
RESERVE_S = 20  # start-up, model preparation and the report
PRESETS = {  # throughput.py arguments of the inference and training stages
    "gpu": {"common": ["--size", "base", "--dtype", "bfloat16"],
            "inference": ["--lengths", "512,8192", "--samples", "1024,32", "--batch-tokens", "131072",
                          "--repeats", "3", "--train-lengths", ""],
            "training": ["--lengths", "", "--train-lengths", "8192,1024", "--train-batch-tokens", "0",
                         "--train-max-rows", "256", "--train-warmup", "2", "--train-steps", "3"]},
    "cpu-smoke": {"common": ["--size", "mini", "--dtype", "float32"],
                  "inference": ["--lengths", "64,128", "--samples", "4,2", "--batch-tokens", "256", "--repeats", "1",
                                "--train-lengths", ""],
                  "training": ["--lengths", "", "--train-lengths", "64,32", "--train-batch-tokens", "0",
                               "--train-max-rows", "2", "--train-warmup", "1", "--train-steps", "1"]},
}


class Clock:
    """Deadlines of the stages: a share of the budget each, plus what earlier stages left."""

    def __init__(self, budget: float):
        self.t0, self.budget = time.monotonic(), budget
        self.spent_shares = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def stage_deadline(self, name: str) -> float:
        """Seconds since the start by which stage `name` must end."""
        self.spent_shares += SHARES[name]
        return min(self.budget - RESERVE_S / 2, RESERVE_S / 2 + self.spent_shares * (self.budget - RESERVE_S))

    def left(self, deadline: float) -> float:
        return max(0.0, deadline - self.elapsed())


def imports(module: str, env: dict, timeout: float = 60) -> bool:
    """Whether `module` imports in a fresh interpreter (a broken CUDA extension may crash it)."""
    try:
        return subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True,
                              timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def run_tests(env: dict, timeout: float) -> dict:
    """`pytest tests/modeling/test_gpu.py`: its status and the last lines of its output (the printed differences)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/modeling/test_gpu.py"]
    try:
        p = subprocess.run(cmd, cwd=throughput.ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        lines = (p.stdout + p.stderr).strip().splitlines()
        status = "ok" if p.returncode == 0 else f"failed (exit status {p.returncode})"
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        lines, status = out.strip().splitlines(), f"timed out after {timeout:.0f} s"
    return {"status": status, "output": lines[-25:]}


def run_stage(name: str, argv: list[str], model: tuple[Path, dict], tmp: Path, deadline: float, clock: Clock,
              env_backends: list[str]) -> tuple[list[dict], str]:
    """The cases of a throughput.py argument list, one process per backend, within the stage's deadline."""
    args = throughput.parser().parse_args(argv + ["--backends", ",".join(env_backends),
                                                  "--train-backends", ",".join(env_backends)])
    jobs, protocol = throughput.make_jobs(args, *model)
    groups: dict[str, list[dict]] = {}
    for job in jobs:
        groups.setdefault(job["backend"], []).append(job)
    results = []
    for i, (backend, cases) in enumerate(groups.items()):
        timeout = clock.left(deadline) / (len(groups) - i)
        print(f"{name}: {backend}, {len(cases)} cases, {timeout:.0f} s", flush=True)
        if timeout < 5:
            recs = [runner.failure(job, "not run: the stage's time was spent") for job in cases]
        else:
            recs = runner.run_cases(cases, tmp, timeout, name=f"{name}-{backend}")
        for r in recs:
            runner.print_record(r)
        results += recs
    return results, protocol


def slug(device: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", device.lower()).strip("_") or "unknown"


def write_report(out: Path, stages: list[dict], tests: dict, results: dict, protocols: dict, meta: dict) -> Path:
    """gpu_<device>.md (stages, tests, inference and training tables) and gpu_<device>.json."""
    all_results = results["inference"] + results["training"]
    ok = [r for r in all_results if not r.get("error")]
    device = ok[0]["device"] if ok else meta["fallback_device"]
    name = "cpu" if meta["smoke"] else slug(device.replace("NVIDIA", "nvidia"))
    lines = [f"# GPU comparison: {device}, {meta['dtype']} ({meta['date']})", "",
             f"`bench/gpu.sh{' --cpu-smoke' if meta['smoke'] else ''}`: budget {meta['budget']:.0f} s, "
             f"took {meta['took']:.0f} s. Random weights (the model of each protocol below), the same in both "
             "frameworks; real tokens/s, median of the timed passes or steps after a warm-up.", "",
             "| stage | status | seconds | deadline (s from start) |", "|---|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']:.0f} | {s['deadline']:.0f} |" for s in stages]
    lines += ["", "## tests/modeling/test_gpu.py", "", f"{tests.get('status', 'not run')}", "", "```text",
              *tests.get("output", []), "```", ""]
    for stage in ("inference", "training"):
        lines += [f"## {stage.capitalize()}", "", protocols.get(stage, "not run"), ""]
        if results[stage]:
            lines += report.table(results[stage]) + [""]
    rmeta = report.meta_of(all_results, "", meta["dtype"], meta["date"])
    lines += ["", "Memory: " + rmeta["memory"] + " (JAX cannot reset its peak: a JAX figure is its process's "
              "peak so far, over the cases before it)",
              f"MFU: model FLOPs (x3 for training) / measured {meta['dtype']} GEMM peak of the same framework: "
              + ", ".join(f"{b} {p / 1e12:.1f} TFLOP/s" for b, p in rmeta["peaks"].items()),
              "Packing: real tokens / tokens computed (JAX: packed rows; torch: batches padded to their longest)",
              f"Versions: {rmeta['versions']}", ""]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_{name}.md"
    report.write_atomic(out / f"gpu_{name}.json", json.dumps({"stages": stages, "tests": tests, **results}, indent=1))
    report.write_atomic(path, "\n".join(lines))
    return path


@cli.command
def main(argv=None) -> int:
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--budget", type=float, default=480, help="seconds for the whole run (stages share it)")
    ap.add_argument("--cpu-smoke", action="store_true", help="the same stages on CPU at tiny sizes (CI)")
    ap.add_argument("--out", help="where gpu_<device>.md goes (default: bench/results; "
                                  "bench/out/smoke with --cpu-smoke)")
    args = ap.parse_args(argv)
    if args.budget < 2 * RESERVE_S:
        ap.error(f"--budget must be at least {2 * RESERVE_S} s, got {args.budget}")
    clock = Clock(args.budget)
    preset = PRESETS["cpu-smoke" if args.cpu_smoke else "gpu"]
    out = Path(args.out or throughput.ROOT / "bench" / ("out/smoke" if args.cpu_smoke else "results"))
    env = dict(os.environ, **({"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""} if args.cpu_smoke else {}))
    os.environ.update(env)  # the case processes inherit it
    stages: list[dict] = []
    results: dict[str, list[dict]] = {"inference": [], "training": []}
    protocols: dict[str, str] = {}
    tests: dict = {}

    def stage(name: str, fn) -> None:
        deadline, t0 = clock.stage_deadline(name), clock.elapsed()
        try:
            status = fn(deadline) or "ok"
        except Exception as e:  # noqa: BLE001 - a failed stage is reported and the next one still runs
            status = f"failed: {type(e).__name__}: {e}".splitlines()[0][:200]
        stages.append({"stage": name, "status": status, "seconds": clock.elapsed() - t0, "deadline": deadline})
        print(f"stage {name}: {status} ({clock.elapsed() - t0:.0f} s)", flush=True)

    def tests_stage(deadline):
        tests.update(run_tests(env, clock.left(deadline)))
        return tests["status"]

    backends = ["jax", "torch-sdpa"] + (["torch-fa2"] if imports("flash_attn", env) else [])
    with tempfile.TemporaryDirectory(prefix="bcmb-gpu-") as tmp_s:
        tmp = Path(tmp_s)
        model: list = []

        def bench_stage(name):
            def fn(deadline):
                if not model:
                    base = throughput.parser().parse_args(preset["common"])
                    model.extend(throughput.prepare_model(base, tmp))
                results[name], protocols[name] = run_stage(name, preset["common"] + preset[name], tuple(model),
                                                           tmp, deadline, clock, backends)
                failed = sum(bool(r.get("error")) for r in results[name])
                return f"{failed} of {len(results[name])} cases failed" if failed else "ok"
            return fn

        stage("tests", tests_stage)
        stage("inference", bench_stage("inference"))
        stage("training", bench_stage("training"))
    if "torch-fa2" not in backends:
        protocols = {k: v + "; torch-fa2 not run: flash_attn does not import" for k, v in protocols.items()}
    meta = {"smoke": args.cpu_smoke, "budget": args.budget, "took": clock.elapsed(), "dtype": preset["common"][-1],
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "fallback_device": "unknown"}
    path = write_report(out, stages, tests, results, protocols, meta)
    print(f"wrote {path} ({clock.elapsed():.0f} s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
