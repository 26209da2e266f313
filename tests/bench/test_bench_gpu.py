"""bench/gpu.py (bench/gpu.sh): stage deadlines inside the budget, failures reported, the CPU smoke run end to end."""

from __future__ import annotations

import json

import pytest

from bench import gpu


def test_stage_deadlines_share_the_budget():
    clock = gpu.Clock(480)
    deadlines = [clock.stage_deadline(s) for s in ("tests", "inference", "training")]
    assert deadlines == sorted(deadlines) and deadlines[-1] <= 480 - gpu.RESERVE_S / 2
    assert deadlines[0] == pytest.approx(gpu.RESERVE_S / 2 + gpu.SHARES["tests"] * (480 - gpu.RESERVE_S))
    assert clock.left(deadlines[0]) <= deadlines[0] and clock.left(-1) == 0


def test_failing_stages_are_reported_not_fatal(tmp_path, monkeypatch):
    """Tests that time out and a model that cannot be prepared still give a report naming each failure."""
    monkeypatch.setattr(gpu, "run_tests", lambda env, timeout: {"status": "timed out after 1 s", "output": ["..."]})

    def broken(args, tmp):
        raise OSError("no space left on device")

    monkeypatch.setattr(gpu.throughput, "prepare_model", broken)
    gpu.main(["--cpu-smoke", "--out", str(tmp_path), "--budget", "100"])
    md = (tmp_path / "gpu_cpu.md").read_text()
    assert "| tests | timed out after 1 s |" in md
    assert md.count("failed: OSError: no space left on device") == 2  # inference and training
    record = json.loads((tmp_path / "gpu_cpu.json").read_text())
    assert [s["stage"] for s in record["stages"]] == ["tests", "inference", "training"]


def test_cpu_smoke_runs_every_stage(tmp_path):
    """The GPU script's own code path on CPU at tiny sizes: tests (skipped without a GPU), inference, training."""
    gpu.main(["--cpu-smoke", "--out", str(tmp_path), "--budget", "900"])
    record = json.loads((tmp_path / "gpu_cpu.json").read_text())
    assert [s["status"] for s in record["stages"]] == ["ok", "ok", "ok"], record["stages"]
    inference, training = record["inference"], record["training"]
    assert {(r["set"], r["backend"]) for r in inference} == {
        (f"{k}_{L}", b) for k in ("fixed", "variable") for L in (64, 128) for b in ("jax", "torch-sdpa")}
    assert {(r["set"], r["backend"]) for r in training} == {
        (f"train_{L}", b) for L in (64, 32) for b in ("jax", "torch-sdpa")}
    assert all(r["tokens_per_s"] > 0 and r["peak_mem_mb"] > 0 for r in inference + training)
    assert all(r["batch_rows"] == 2 for r in training)  # as many as fit, capped at the smoke's 2
    assert all(0 < r["packing_efficiency"] <= 1 for r in inference)
    md = (tmp_path / "gpu_cpu.md").read_text()
    assert "## Inference" in md and "## Training" in md and "jax / torch-sdpa" in md and "MFU jax" in md
    assert "torch-fa2 not run" in md or "torch-fa2 tok/s" in md
