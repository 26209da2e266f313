"""Continued MLM pretraining: the run config, the jitted train step, checkpoints and metrics.

The train state is a plain pytree {params, opt_state, step, tokens}: `params` is the nested
parameter dict of the model (NNX paths, layer indices as strings, the same layout as a JAX
checkpoint directory's `params/`), so checkpoints, conversion and export share one format.
`train_step(state, batch, lr)` is a pure function; the model is rebuilt from (graphdef, params)
inside it. Python work (data, schedule, logging) stays outside the step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from bcmb_jax import checkpoint as ckpt
from bcmb_jax import optim, pretrained
from bcmb_jax.config import ConfigError, ModelConfig, opt
from bcmb_jax.data import DataConfig
from bcmb_jax.model import build, set_norm_folding
from bcmb_jax.optim import OptimConfig, ScheduleConfig
from bcmb_jax.sharding import DistributedConfig, MeshConfig

IGNORE = -100


@dataclass(frozen=True)
class ModelSection:
    """The `model:` section: where the weights come from and how the model computes."""

    init: str | None = opt(None, "JAX checkpoint dir (convert_weights.py to-jax, or a previous run dir) or HF "
                                 "dir/hub id to start from; null = random init from `config`")
    config: str | None = opt(None, "HF config.json for a random init (ignored when `init` is set)")
    overrides: dict[str, Any] = opt({}, "HF config keys set on top, e.g. {attention_backend: reference}")
    init_optimizer_state: bool = opt(True, "seed StableAdamW moments from `init`/optimizer when present "
                                           "(the original run kept the stable-phase moments)")
    compute_dtype: str = opt("float32", "float32 | bfloat16 activations; parameters stay float32")
    remat: bool = opt(False, "recompute each layer in the backward pass (less memory, ~1/3 more compute)")


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
    masked_cap_sigmas: float = opt(8.0, "room for masked tokens per row = mean + this many std devs "
                                        "(sparse prediction; an overflow is counted as `dropped`)")
    data_shards: int = opt(0, "readers of the data stream; 0 = one per process. Set it to another run's process "
                              "count to reproduce its batches exactly with fewer processes (a multiple of the "
                              "process count)")
    export_hf: bool = opt(True, "at the end, export the final weights to RUN_DIR/hf (transformers format)")
    model: ModelSection = opt(ModelSection(), "model init and compute settings")
    data: DataConfig = opt(DataConfig(), "the input pipeline")
    optim: OptimConfig = opt(OptimConfig(), "the optimizer")
    schedule: ScheduleConfig = opt(ScheduleConfig(), "the learning-rate schedule")
    mesh: MeshConfig = opt(MeshConfig(), "device mesh")
    distributed: DistributedConfig = opt(DistributedConfig(), "multi-host start-up")

    def __post_init__(self):
        if self.global_batch % self.micro_batch:
            raise ConfigError(f"global_batch ({self.global_batch}) must be a multiple of micro_batch "
                              f"({self.micro_batch})")
        for key in ("max_steps", "checkpoint_every", "log_every", "micro_batch", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"`{key}` must be >= 1, got {getattr(self, key)}")
        if self.model.compute_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"model.compute_dtype must be float32 or bfloat16, got {self.model.compute_dtype!r}")

    @property
    def accumulation(self) -> int:
        return self.global_batch // self.micro_batch


# ---------------------------------------------------------------------------------------------
# Model and state


def model_config(cfg: TrainConfig) -> ModelConfig:
    if cfg.model.init:
        mcfg, _ = pretrained.model_config(cfg.model.init)
    elif cfg.model.config:
        mcfg = ModelConfig.from_json(cfg.model.config)
    else:
        mcfg = ModelConfig()
    if cfg.model.overrides:
        base = mcfg.to_hf_dict()
        if "num_hidden_layers" in cfg.model.overrides and "layer_types" not in cfg.model.overrides:
            base.pop("layer_types")  # re-derived from global_attn_every_n_layers for the new depth
        mcfg = ModelConfig.from_hf_dict({**base, **cfg.model.overrides}, source="model.overrides")
    return mcfg


def init_model(cfg: TrainConfig, mcfg: ModelConfig):
    """The MLM model (train mode): weights from `model.init` (a run dir, JAX or HF checkpoint) or random from `seed`."""
    dtype = jnp.dtype(cfg.model.compute_dtype)
    if cfg.model.init:
        model = pretrained.from_pretrained(cfg.model.init, task="mlm", dtype=dtype, seed=cfg.seed,
                                           remat=cfg.model.remat, config_overrides=_overrides(cfg, mcfg))
        model.train()
        return model
    return build(mcfg, "mlm", seed=cfg.seed, dtype=dtype, remat=cfg.model.remat)


def _overrides(cfg: TrainConfig, mcfg: ModelConfig) -> dict:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    return {k: getattr(mcfg, k) for k in cfg.model.overrides if k in known}


def split_model(model, training: bool = True) -> tuple[nnx.GraphDef, dict, Any]:
    """(graphdef, params as a pure dict, the other state: dropout RNG streams).

    A `training` graph applies the layer norms as LayerNorms unless the model recomputes its layers
    (`model.set_norm_folding`: the faster choice for XLA:CPU's backward pass).
    """
    set_norm_folding(model, fold=model.model.remat or not training)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), rest


def fresh_rngs(rest, key: jax.Array):
    """Dropout RNG streams for one step: stream i gets fold_in(key, i), counts reset; resumes exactly."""
    leaves, treedef = jax.tree.flatten(rest)
    out = []
    for i, leaf in enumerate(leaves):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            out.append(jax.random.fold_in(key, i))
        else:
            out.append(jnp.zeros_like(leaf))
    return jax.tree.unflatten(treedef, out)


def masked_cap(seq_len: int, rate: float, sigmas: float) -> int:
    """Static room for masked positions per row: mean + `sigmas` binomial std devs (+ 8)."""
    mean = seq_len * rate
    return int(min(seq_len, math.ceil(mean + sigmas * math.sqrt(max(mean * (1 - rate), 1.0)) + 8)))


# ---------------------------------------------------------------------------------------------
# The step


def mlm_loss_sum(model, batch: dict[str, jax.Array], cap: int, chunk: int = 1024):
    """Sum of cross-entropies over the masked positions (sparse prediction) and their count.

    The head and the tied decoder run only on the gathered masked positions, `chunk` at a time
    with recomputation in the backward pass, so [tokens, vocab] logits never exist at once.
    """
    labels_RT = batch["labels"]
    h_RTD = model.model(batch["input_ids"], batch["segment_ids"], batch["position_ids"])
    is_masked_RT = labels_RT != IGNORE
    count_R = is_masked_RT.sum(-1)
    idx_RC = jax.vmap(lambda m: jnp.nonzero(m, size=cap, fill_value=0)[0])(is_masked_RT)
    h_ND = jnp.take_along_axis(h_RTD, idx_RC[..., None], axis=1).reshape(-1, h_RTD.shape[-1])
    y_N = jnp.take_along_axis(labels_RT, idx_RC, axis=1).reshape(-1)
    valid_N = (jnp.arange(cap)[None] < count_R[:, None]).reshape(-1)
    n = h_ND.shape[0]
    chunk = min(chunk, n)
    pad = -n % chunk
    h_cND = jnp.pad(h_ND, ((0, pad), (0, 0))).reshape(-1, chunk, h_ND.shape[-1])
    y_cN = jnp.pad(y_N, (0, pad)).reshape(-1, chunk)
    v_cN = jnp.pad(valid_N, (0, pad)).reshape(-1, chunk)

    @jax.checkpoint
    def piece(h, y, v):
        logits = model.mlm_logits(h).astype(jnp.float32)
        return jnp.where(v, optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(v, y, 0)), 0).sum()

    total = jax.lax.map(lambda a: piece(*a), (h_cND, y_cN, v_cN)).sum()
    dropped = jnp.maximum(count_R - cap, 0).sum()
    return total, jnp.minimum(count_R, cap).sum(), dropped


def make_train_step(graphdef, rest, tx: optax.GradientTransformation, cap: int, seed: int):
    """train_step(state, batch [accum, rows, T] arrays, lr) -> (state, metrics); jit it with donation."""
    base_key = jax.random.key(seed)

    def train_step(state, batch, lr):
        params = state["params"]
        key = jax.random.fold_in(base_key, state["step"])

        def loss_fn(p, micro, k):
            model = nnx.merge(graphdef, p, fresh_rngs(rest, k))
            total, count, dropped = mlm_loss_sum(model, micro, cap)
            return total, (count, dropped)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def accumulate(carry, xs):
            g_acc, l_acc, n_acc, d_acc = carry
            micro, i = xs
            (total, (count, dropped)), g = grad_fn(params, micro, jax.random.fold_in(key, i))
            return (jax.tree.map(jnp.add, g_acc, g), l_acc + total, n_acc + count, d_acc + dropped), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        n_micro = batch["input_ids"].shape[0]
        init = (zeros, jnp.float32(0), jnp.int32(0), jnp.int32(0))
        (g_sum, l_sum, n, dropped), _ = jax.lax.scan(accumulate, init, (batch, jnp.arange(n_micro)))
        denom = jnp.maximum(n, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g: g / denom, g_sum)  # mean over every masked token of the global batch
        opt_state = optim.set_learning_rate(state["opt_state"], lr)
        updates, opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1}
        finite = jnp.isfinite(l_sum) & jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(new_params)]))
        metrics = {"loss": l_sum / denom, "grad_norm": optax.tree.norm(grads), "masked_tokens": n,
                   "dropped": dropped, "tokens": (batch["segment_ids"] > 0).sum(), "finite": finite}
        return new_state, metrics

    return train_step


def init_state(params: dict, tx: optax.GradientTransformation, moments: tuple | None = None) -> dict:
    opt_state = tx.init(params)
    if moments is not None:
        step, mu, nu = moments
        seeded = optim.stable_adamw_state_from_moments(params, mu, nu, step)
        opt_state = optim.replace_stable_adamw_state(opt_state, seeded)
    return {"params": params, "opt_state": opt_state, "step": jnp.int32(0)}


def initial_moments(cfg: TrainConfig, params: dict) -> tuple | None:
    """(step, mu, nu) from `model.init`/optimizer (a converted Composer checkpoint), if wanted and present."""
    if not (cfg.model.init and cfg.model.init_optimizer_state and cfg.optim.name == "stable_adamw"):
        return None
    if ckpt.is_run_dir(cfg.model.init):
        return None  # a previous run's optimizer state is restored whole (`restore_init_optimizer`)
    init = Path(cfg.model.init)
    if not (init / "optimizer").is_dir():
        return None
    step, mu, nu, _ = ckpt.load_moments(init, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))
    return step, mu, nu


def restore_init_optimizer(cfg: TrainConfig, state: dict) -> dict:
    """When `model.init` is a previous run (phase 1 -> phase 2), continue from its optimizer state."""
    if not (cfg.model.init and cfg.model.init_optimizer_state and ckpt.is_run_dir(cfg.model.init)):
        return state
    where = ckpt.locate(cfg.model.init)  # the latest step, as `init_model` loaded its weights
    previous = ckpt.Checkpoints(Path(cfg.model.init), 1, read_only=True)
    opt_state = previous.restore_optimizer(where.step, state["opt_state"])
    previous.close()
    return {**state, "opt_state": opt_state}


class ShardedBatches:
    """This process's rows of every global batch, read as `k` consecutive data shards and concatenated.

    With k = 1 (one shard per process) this is the pipeline's own iterator. A process that reads
    shards [p*k, (p+1)*k) of `n` gets exactly the rows that processes p*k..(p+1)*k-1 of an `n`-process
    run would read, masks included (they are keyed by the global row), so one process can replay a
    multi-host run. The checkpointable state is the list of the shards' states.
    """

    def __init__(self, iterators: list):
        self.iterators = iterators

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(it) for it in self.iterators]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self) -> bytes:
        """JSON bytes (grain's checkpoint handler stores non-grain iterators' states as bytes)."""
        return json.dumps({"shards": [it.get_state() for it in self.iterators]}).encode()

    def set_state(self, state: bytes) -> None:
        shards = json.loads(state)["shards"]
        if len(shards) != len(self.iterators):
            raise ConfigError(f"the checkpoint's data iterator has {len(shards)} shards, this run "
                              f"{len(self.iterators)}: resume with the same data_shards / process count")
        for it, st in zip(self.iterators, shards):
            it.set_state(st)

    def start_prefetch(self) -> None:
        """Called by grain's checkpoint handler after a restore."""
        for it in self.iterators:
            getattr(it, "start_prefetch", lambda: None)()


def make_batches(cfg: TrainConfig, process_index: int, process_count: int) -> ShardedBatches:
    from bcmb_jax import data

    shards = cfg.data_shards or process_count
    if shards % process_count or cfg.global_batch % shards:
        raise ConfigError(f"data_shards ({shards}) must be a multiple of the process count ({process_count}) "
                          f"and divide global_batch ({cfg.global_batch})")
    k = shards // process_count
    return ShardedBatches([data.make_iterator(cfg.data, seed=cfg.seed, batch_size=cfg.global_batch,
                                              process_index=process_index * k + i, process_count=shards)
                           for i in range(k)])


def stack_micro(batch: dict[str, np.ndarray], accumulation: int) -> dict[str, np.ndarray]:
    """[rows, T] -> [accumulation, rows / accumulation, T] (each process's share of every micro-batch)."""
    return {k: v.reshape(accumulation, v.shape[0] // accumulation, *v.shape[1:]) for k, v in batch.items()}


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
                ckpt.truncate_metrics(self.path, resumed_at)
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
