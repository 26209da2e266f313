"""Evaluation: the paper's five tasks, its fine-tuning protocol in JAX and in torch, results and tables.

Owns the task data (`task_data.py`, the registry `tasks.py`, and `chemprot.py`, `brat.py`, `deid.py`),
`encoding.py` (examples as token ids), `metrics.py`, `protocol.py` (the paper's protocol, shared by
`jax_backend.py` and `torch_backend.py`), `results.py` (result files, table.md), `paper.py` (the paper's
numbers) and `report.py` (`reproduce.py`'s report). It uses modeling, weights, data and training's
optimizers.
"""

from bcmb_jax.evaluation.protocol import FinetuneConfig, fit
from bcmb_jax.evaluation.tasks import build_task

__all__ = ["FinetuneConfig", "build_task", "fit"]
