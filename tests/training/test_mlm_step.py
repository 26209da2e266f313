"""The train step in bfloat16 compute against float32: same batch, N steps, float32 master state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import TINY, rng_ids

import bcmb_jax
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.state import split_model
from bcmb_jax.training import mlm_step, optim

STEPS = 8
# Measured on CPU (tiny model, 8 steps): loss 4.1e-4, per parameter 0.069, all parameters 0.020.
LOSS_RTOL = 2e-3  # every step: |loss_bf16 - loss_fp32| / loss_fp32
UPDATE_RTOL = 0.15  # after STEPS: |p_bf16 - p_fp32| / |p_fp32 - p_0| (L2), per parameter array
TOTAL_RTOL = 0.05  # the same over all parameters together


def packed_batch(B=2, T=128, seed=9):
    """One micro-batch of packed rows: two documents and a padded tail per row, 30% of tokens masked."""
    ids = rng_ids((B, T), seed=seed)
    seg = np.repeat([[1, 2, 0]], B, 0).repeat([70, 50, T - 120], axis=1)
    pos = np.concatenate([np.arange(70), np.arange(50), np.zeros(T - 120, int)])[None].repeat(B, 0)
    labels = np.where((np.random.default_rng(seed).random((B, T)) < 0.3) & (seg > 0), ids, -100)
    batch = {"input_ids": ids, "labels": labels, "segment_ids": seg, "position_ids": pos}
    return {k: jnp.asarray(v, jnp.int32)[None] for k, v in batch.items()}


def run_steps(cfg: ModelConfig, dtype, backend: str, batch, steps: int = STEPS):
    """Losses of `steps` train steps on `batch`, the initial and the final state."""
    model = bcmb_jax.build(cfg, "mlm", seed=0, dtype=dtype, runtime=backend)
    graphdef, params, rest = split_model(model, training=True)
    tx = optim.make_optimizer(optim.OptimConfig(lr=1e-3))
    state = mlm_step.init_state(params, tx)
    init = jax.tree.map(np.asarray, state["params"])
    step = jax.jit(mlm_step.make_train_step(graphdef, rest, tx, 64, 0))
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch, jnp.float32(1e-3))
        assert bool(metrics["finite"])
        losses.append(float(metrics["loss"]))
    return np.array(losses), init, state


def compare(cfg: ModelConfig, backend: str):
    batch = packed_batch()
    l32, init, s32 = run_steps(cfg, jnp.float32, backend, batch)
    l16, _, s16 = run_steps(cfg, jnp.bfloat16, backend, batch)
    # master weights and optimizer state stay float32 under bfloat16 compute
    for leaf in jax.tree.leaves((s16["params"], s16["opt_state"])):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32
    loss_rel = float(np.max(np.abs(l16 - l32) / l32))
    d16, d32 = ([np.asarray(p) - p0 for p, p0 in zip(jax.tree.leaves(s["params"]), jax.tree.leaves(init))]
                for s in (s16, s32))
    per_param = max(float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)) for a, b in zip(d16, d32))
    total = float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(d16, d32)) / sum(np.sum(b ** 2) for b in d32)))
    print(f"{backend}: fp32 losses {np.round(l32, 4)}, bf16 {np.round(l16, 4)}; max loss rel {loss_rel:.1e}, "
          f"update rel: max per parameter {per_param:.3f}, all {total:.3f}")
    assert l32[-1] < 0.9 * l32[0] and l16[-1] < 0.9 * l16[0]  # both learn the batch
    assert loss_rel <= LOSS_RTOL
    assert per_param <= UPDATE_RTOL and total <= TOTAL_RTOL


def test_bfloat16_steps_follow_float32_on_cpu():
    compare(ModelConfig.from_hf_dict(TINY), "blocked")
