"""Continued MLM pretraining: what `train.py` runs, step by step.

Owns `config.py` (TrainConfig), `preflight.py` (checks before any work), `start.py` (initial weights
and optimizer moments), `sharding.py` (mesh, logical-axis rules, multi-host start-up), `optim.py`
(StableAdamW, AdamW, the schedules), `batches.py` (this process's rows of each global batch),
`mlm_step.py` (the jitted train step), `checkpoints.py` (run checkpoints and resume), `run_lock.py`
(one run per run directory), `stop.py` (signals that save and stop) and `progress.py` (metrics.jsonl,
TensorBoard, tokens/s). It uses modeling, weights and data.
"""

from bcmb_jax.training.config import TrainConfig
from bcmb_jax.training.mlm_step import make_train_step
from bcmb_jax.training.optim import lr_scale, make_optimizer, stable_adamw

__all__ = ["TrainConfig", "lr_scale", "make_optimizer", "make_train_step", "stable_adamw"]
