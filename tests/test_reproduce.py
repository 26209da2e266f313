"""reproduce.py end to end at the smallest scale: every stage runs, the report holds what it promises, and a
rerun skips every complete stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from task_helpers import write_conll_task, write_csv_task

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp: Path) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "reproduce_tiny.yaml").read_text())
    cfg.update(
        out_dir=str(tmp / "out"),
        random_init={**cfg["random_init"], "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96},
        phase1={"config": "configs/reproduce_tiny_train.yaml", "overrides": {"max_steps": 6, "checkpoint_every": 3}},
        phase2={"config": "configs/reproduce_tiny_train.yaml",
                "overrides": {"max_steps": 6, "checkpoint_every": 3, "data": {"mlm_probability": 0.15},
                              "schedule": {"name": "one_minus_sqrt", "unit": "steps", "warmup": 0, "total": 6,
                                           "decay": 6}}},
        tasks={"csv": {"data": str(write_csv_task(tmp / "csv"))},
               "conll": {"data": str(write_conll_task(tmp / "conll"))},
               "phenotype": {"data": str(tmp / "no-mimic")}},
        finetune={"epochs": 1, "lr": 1e-3, "batch_size": 8, "max_length": 64, "attention_backend": "reference"},
        heldout_docs=16,
        throughput=["--lengths", "64", "--samples", "4", "--sets", "fixed", "--repeats", "1", "--batch-tokens", "256",
                    "--train-lengths", "", "--in-process"],
    )
    path = tmp / "reproduce.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "reproduce.py"), "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)


def test_tiny_chain_end_to_end_and_resume(tmp_path):
    config = _config(tmp_path)
    first = _run(config)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = tmp_path / "out"
    summary = json.loads((out / "report" / "summary.json").read_text())
    # Every available task has a number from both backends; the absent one is a note, not an error.
    for backend in ("jax", "torch"):
        assert set(summary["table2"][backend]) == {"csv", "conll"}
        assert all(isinstance(v, float) and 0 <= v <= 100 for v in summary["table2"][backend].values())
    assert any(n.startswith("phenotype: skipped") for n in summary["skipped"])
    # Continued pretraining lowers the held-out MLM loss; the throughput table has both frameworks.
    loss = summary["heldout_mlm_loss"]
    assert loss["phase 2"] < loss["initial"], loss
    assert summary["throughput_frameworks"] == ["jax", "torch-sdpa"]
    report = (out / "report" / "report.md").read_text()
    for text in ("Wall time per stage", "paper: BioClinical ModernBERT-base", "loss_curves.png", "phenotype: skipped",
                 "Table 3", "(user)"):
        assert text in report, text
    assert (out / "report" / "loss_curves.png").stat().st_size > 1000
    # the summary is written by the report stage, before its own time is known
    assert set(summary["timings"]) == {"convert", "phase1", "phase2", "export", "finetune", "table2", "throughput"}
    # A rerun finds every stage complete (the report is rewritten).
    second = _run(config)
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in ("convert", "phase1", "phase2", "export", "finetune", "throughput"):
        assert f"== {stage}: complete, skipped" in second.stdout, stage
