"""What a run reports while it trains: metrics.jsonl, TensorBoard events and a tokens/s meter."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bcmb_jax.training import checkpoints

# ---------------------------------------------------------------------------------------------
# Metrics


class MetricsLog:
    """metrics.jsonl (one object per logged step) and TensorBoard events, written by process 0.

    A resumed run (`resumed_at` = the restored step) first drops the metrics.jsonl lines of later
    steps, and its TensorBoard writer purges the events of later steps (`purge_step`), so every
    step appears once in both.
    """

    def __init__(self, run_dir: Path, enabled: bool, resumed_at: int | None = None):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            if resumed_at is not None:
                checkpoints.truncate_metrics(self.path, resumed_at)
            self.tb = SummaryWriter(str(run_dir / "tensorboard"),
                                    purge_step=None if resumed_at is None else resumed_at + 1)

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for k, v in values.items():
            self.tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Throughput:
    """Tokens/s over the steps since the last reading."""

    def __init__(self):
        self.t0, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def read(self) -> float:
        now = time.perf_counter()
        rate = self.tokens / max(now - self.t0, 1e-9)
        self.t0, self.tokens = now, 0
        return rate
