"""The run config of continued MLM pretraining: `TrainConfig` and its `model:` section.

Every field carries its help text (`runconfig.opt`); `train.py --help` lists them all. The `data:`,
`optim:`, `schedule:`, `mesh:` and `distributed:` sections are defined beside the code they configure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bcmb_jax.data.config import DataConfig
from bcmb_jax.errors import ConfigError
from bcmb_jax.modeling.attention import ATTENTION_BACKENDS
from bcmb_jax.runconfig import opt
from bcmb_jax.training.optim import OptimConfig, ScheduleConfig
from bcmb_jax.training.sharding import DistributedConfig, MeshConfig


@dataclass(frozen=True)
class ModelSection:
    """The `model:` section: where the weights come from and how the model computes."""

    init: str | None = opt(None, "JAX checkpoint dir (convert_weights.py to-jax, or a previous run dir) or HF "
                                 "dir/hub id to start from; null = random init from `config`")
    config: str | None = opt(None, "HF config.json for a random init (ignored when `init` is set)")
    overrides: dict[str, Any] = opt({}, "HF config keys set on top, e.g. {num_hidden_layers: 4}")
    init_optimizer_state: bool = opt(True, "seed StableAdamW moments from `init`/optimizer when present "
                                           "(the original run kept the stable-phase moments)")
    compute_dtype: str = opt("float32", "float32 | bfloat16 activations; parameters stay float32")
    remat: bool = opt(False, "recompute each layer in the backward pass (less memory, ~1/3 more compute)")
    attention_backend: str = opt("blocked", "blocked (CPU kernels) | gpu (Pallas kernels, NVIDIA GPUs) | reference "
                                            "(dense); see runtime.Runtime")


@dataclass(frozen=True)
class TrainConfig:
    """A continued-pretraining run. `train.py --help` lists every key."""

    run_dir: str = opt("runs/default", "checkpoints, metrics.jsonl, TensorBoard events and the HF export")
    max_steps: int = opt(1000, "optimizer steps to train (a resumed run continues up to it)")
    max_tokens: int | None = opt(None, "also stop once this many real (non-pad) tokens were trained on")
    checkpoint_every: int = opt(500, "save a checkpoint every this many steps (and at the end / on SIGTERM)")
    seed: int = opt(17, "seed of the model init, MLM masking and dropout")
    keep_checkpoints: int = opt(3, "checkpoints kept on disk (oldest deleted first)")
    log_every: int = opt(10, "write metrics every this many steps")
    global_batch: int = opt(576, "sequences (packed rows) per optimizer step, over all devices and hosts")
    micro_batch: int = opt(12, "rows per forward/backward pass over all devices; global_batch/micro_batch = "
                               "gradient accumulation steps")
    masked_cap_sigmas: float = opt(8.0, "room for the masked tokens of each device's rows of a micro-batch = "
                                        "mean + this many std devs (sparse prediction; an overflow is counted "
                                        "as `dropped`)")
    data_shards: int = opt(0, "readers of the data stream; 0 = one per process. Set it to another run's process "
                              "count to reproduce its batches exactly with fewer processes (a multiple of the "
                              "process count)")
    export_hf: bool = opt(True, "at the end, export the final weights to RUN_DIR/hf (transformers format)")
    lock_stale_after: float = opt(120.0, "seconds without a heartbeat after which another host's lock on run_dir "
                                         "counts as dead and is taken over (same-host holders are checked by pid)")
    model: ModelSection = opt(ModelSection(), "model init and compute settings")
    data: DataConfig = opt(DataConfig(), "the input pipeline")
    optim: OptimConfig = opt(OptimConfig(), "the optimizer")
    schedule: ScheduleConfig = opt(ScheduleConfig(), "the learning-rate schedule")
    mesh: MeshConfig = opt(MeshConfig(), "device mesh")
    distributed: DistributedConfig = opt(DistributedConfig(), "multi-host start-up")

    def __post_init__(self):
        for key in ("max_steps", "checkpoint_every", "log_every", "global_batch", "micro_batch", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"`{key}` must be >= 1, got {getattr(self, key)}")
        for key, low in (("max_tokens", 1), ("data_shards", 0), ("masked_cap_sigmas", 0)):
            value = getattr(self, key)
            if value is not None and not low <= value < float("inf"):
                raise ConfigError(f"`{key}` must be >= {low}, got {value}")
        if not self.lock_stale_after > 0:
            raise ConfigError(f"`lock_stale_after` must be > 0 seconds, got {self.lock_stale_after}")
        if self.global_batch % self.micro_batch:
            raise ConfigError(f"`global_batch` ({self.global_batch}) must be a multiple of `micro_batch` "
                              f"({self.micro_batch})")
        if self.model.compute_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"model.compute_dtype must be float32 or bfloat16, got {self.model.compute_dtype!r}")
        if self.model.attention_backend not in ATTENTION_BACKENDS:
            raise ConfigError(f"model.attention_backend must be one of {ATTENTION_BACKENDS}, "
                              f"got {self.model.attention_backend!r}")
        moved = sorted({"attention_backend", "local_chunk", "global_chunk"} & set(self.model.overrides))
        if moved:
            raise ConfigError(f"model.overrides.{moved[0]}: not a config.json key; the attention backend is "
                              "model.attention_backend")

    @property
    def accumulation(self) -> int:
        return self.global_batch // self.micro_batch
