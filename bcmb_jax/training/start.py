"""Where a run starts from: the model config, the initial weights and the optimizer moments.

`model.init` may be a JAX checkpoint directory (`convert_weights.py to-jax`), a previous run (phase 1 ->
phase 2: weights and the whole optimizer state), or an HF directory / hub id; without it the model is
random from `seed` with `model.config` + `model.overrides`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from bcmb_jax.errors import ConfigError
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.model import build
from bcmb_jax.training import checkpoints
from bcmb_jax.training.config import TrainConfig
from bcmb_jax.weights import directories, pretrained

# ---------------------------------------------------------------------------------------------
# Model and state


def _number(value):
    """A numeric string as its number (YAML 1.1 reads `1e-6`, without a dot, as a string); anything else as is."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    return value


def run_model_config(cfg: TrainConfig) -> ModelConfig:
    if cfg.model.init:
        model_cfg, _ = pretrained.read_model_config(cfg.model.init)
    elif cfg.model.config:
        model_cfg = ModelConfig.from_json(cfg.model.config)
    else:
        model_cfg = ModelConfig()
    if cfg.model.overrides:
        base = model_cfg.to_hf_dict()
        known = (set(base) | {f.name for f in dataclasses.fields(ModelConfig)}
                 | {"layer_norm_eps", "global_attn_every_n_layers"})
        unknown = sorted(set(cfg.model.overrides) - known)
        if unknown:
            raise ConfigError(f"model.overrides.{unknown[0]}: not a ModernBERT config.json key (known: "
                              f"{', '.join(sorted(known))})")
        overrides = {k: _number(v) for k, v in cfg.model.overrides.items()}
        if "num_hidden_layers" in cfg.model.overrides and "layer_types" not in cfg.model.overrides:
            base.pop("layer_types")  # re-derived from global_attn_every_n_layers for the new depth
        model_cfg = ModelConfig.from_hf_dict({**base, **overrides}, source="model.overrides")
    return model_cfg


def init_model(cfg: TrainConfig, model_cfg: ModelConfig):
    """The MLM model (train mode): weights from `model.init` (a run dir, JAX or HF checkpoint) or random from `seed`."""
    dtype = jnp.dtype(cfg.model.compute_dtype)
    if cfg.model.init:
        model = pretrained.from_pretrained(cfg.model.init, task="mlm", dtype=dtype, seed=cfg.seed,
                                           remat=cfg.model.remat, config_overrides=_overrides(cfg, model_cfg),
                                           runtime=cfg.model.attention_backend)
        model.train()
        return model
    return build(model_cfg, "mlm", seed=cfg.seed, dtype=dtype, remat=cfg.model.remat,
                 runtime=cfg.model.attention_backend)


def _overrides(cfg: TrainConfig, model_cfg: ModelConfig) -> dict:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    return {k: getattr(model_cfg, k) for k in cfg.model.overrides if k in known}


def initial_moments(cfg: TrainConfig, params: dict) -> tuple | None:
    """(step, mu, nu) from `model.init`/optimizer (a converted Composer checkpoint), if wanted and present."""
    if not (cfg.model.init and cfg.model.init_optimizer_state and cfg.optim.name == "stable_adamw"):
        return None
    if directories.is_run_dir(cfg.model.init):
        return None  # a previous run's optimizer state is restored whole (`restore_init_optimizer`)
    init = Path(cfg.model.init)
    if not (init / "optimizer").is_dir():
        return None
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    step, mu, nu, _ = directories.load_moments(init, abstract)
    return step, mu, nu


def restore_init_optimizer(cfg: TrainConfig, state: dict) -> dict:
    """When `model.init` is a previous run (phase 1 -> phase 2), continue from its optimizer state."""
    if not (cfg.model.init and cfg.model.init_optimizer_state and directories.is_run_dir(cfg.model.init)):
        return state
    where = directories.locate(cfg.model.init)  # the latest step, as `init_model` loaded its weights
    previous = checkpoints.Checkpoints(Path(cfg.model.init), 1, read_only=True)
    opt_state = previous.restore_optimizer(where.step, state["opt_state"])
    previous.close()
    return {**state, "opt_state": opt_state}
