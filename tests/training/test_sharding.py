"""training/sharding.py: every parameter's PartitionSpec on a data x fsdp mesh of 8 forced CPU devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = r"""
import json, sys
import jax
import numpy as np
from flax.traverse_util import flatten_dict
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.training import sharding
from bcmb_jax.weights import keymap, pretrained

assert jax.device_count() == 8, jax.devices()
cfg = ModelConfig.from_hf_dict(json.loads(sys.argv[1]))
out = {}
for name, data, fsdp, rules in (("2x4", 2, 4, {}), ("1x8", 1, 8, {}), ("2x4_vocab", 2, 4, {"vocab": "fsdp"})):
    mesh = sharding.make_mesh(sharding.MeshConfig(data=data, fsdp=fsdp))
    _, abstract, _ = pretrained.abstract_model(cfg, "mlm")
    shardings = sharding.param_shardings(abstract, keymap.axes_tree(cfg, "mlm"), mesh, rules)
    specs = {".".join(map(str, k)): [list(a) if isinstance(a, tuple) else a for a in v.spec]
             for k, v in flatten_dict(shardings).items()}
    # The arrays really are laid out that way: each device holds its shard.
    placed = jax.device_put(jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract), shardings)
    shard_shapes = {".".join(map(str, k)): list(v.addressable_shards[0].data.shape)
                    for k, v in flatten_dict(placed).items()}
    out[name] = {"specs": specs, "shard_shapes": shard_shapes}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def layouts() -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(TINY)], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def expected_spec(name: str, mesh: str) -> list:
    """FSDP shards every matrix along its hidden-size (`embed`) dimension, the first one where there are
    two; vectors stay replicated. With the rule vocab -> fsdp the embedding matrix shards its vocabulary."""
    if name.endswith(("scale", "bias")):  # norm scales, biases, the decoder bias
        return []
    if name.endswith("tok_embeddings.embedding"):  # [vocab, embed]
        return ["fsdp", None] if mesh == "2x4_vocab" else [None, "fsdp"]
    if name.endswith(("attn.Wqkv.kernel", "mlp.Wi.kernel", "head.dense.kernel")):  # [embed, qkv | mlp_in | embed]
        return ["fsdp", None]
    if name.endswith(("attn.Wo.kernel", "mlp.Wo.kernel")):  # [attn | mlp, embed]
        return [None, "fsdp"]
    raise AssertionError(f"unexpected parameter {name}")


@pytest.mark.parametrize("mesh", ["2x4", "1x8", "2x4_vocab"])
def test_every_parameter_partition_spec(layouts, mesh):
    specs, shard_shapes = layouts[mesh]["specs"], layouts[mesh]["shard_shapes"]
    L = TINY["num_hidden_layers"]
    assert len(specs) == 1 + 1 + (L - 1) + L * 5 + 1 + 3  # embeddings, norms, layers, final norm, head
    fsdp = 8 if mesh == "1x8" else 4
    for name, spec in specs.items():
        assert spec == expected_spec(name, mesh), name
    H, F, V = TINY["hidden_size"], TINY["intermediate_size"], TINY["vocab_size"]
    assert shard_shapes["model.layers.1.attn.Wqkv.kernel"] == [H // fsdp, 3 * H]
    assert shard_shapes["model.layers.1.mlp.Wo.kernel"] == [F, H // fsdp]
    assert shard_shapes["model.embeddings.tok_embeddings.embedding"] == (
        [V // fsdp, H] if mesh == "2x4_vocab" else [V, H // fsdp])
    assert shard_shapes["model.final_norm.scale"] == [H]



STEP_SCRIPT = r"""
import contextlib, json, re, sys
import jax, jax.numpy as jnp
import numpy as np
import bcmb_jax
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.runtime import Runtime
from bcmb_jax.modeling.state import split_model
from bcmb_jax.training import mlm_step, optim, sharding
from bcmb_jax.weights import keymap

cfg = ModelConfig.from_hf_dict(json.loads(sys.argv[1]))
tx = optim.make_optimizer(optim.OptimConfig())
B, T = 16, 64
rng = np.random.default_rng(0)
ids = rng.integers(5, cfg.vocab_size, (B, T)).astype(np.int32)
seg = np.ones_like(ids)
seg[::3, 40:] = 0  # padded rows: the devices hold different numbers of masked tokens
local = {"input_ids": ids, "segment_ids": seg, "position_ids": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)),
         "labels": np.where((rng.random((B, T)) < 0.3) & (seg > 0), ids, -100).astype(np.int32)}
local = {k: v[None] for k, v in local.items()}  # one micro-batch
out = {}
param_shapes = set()
for name, runtime, (data, fsdp), groups, in_mesh in (
        ("one_device", "blocked", (1, 1), 1, True), ("per_device", "blocked", (8, 1), 8, True),
        ("pallas_per_device", Runtime("gpu", interpret=True), (8, 1), 8, True), ("fsdp", "blocked", (4, 2), 8, True),
        ("mlm_group_across_devices", "reference", (8, 1), 1, True),
        ("kernels_without_mesh", "blocked", (8, 1), 8, False)):
    graphdef, params, rest = split_model(bcmb_jax.build(cfg, "mlm", seed=0, runtime=runtime), training=True)
    param_shapes |= {s for x in jax.tree.leaves(params) for s in (x.shape, x.shape[::-1])}
    mesh = sharding.make_mesh(sharding.MeshConfig(data=data, fsdp=fsdp), jax.devices()[:data * fsdp])
    batch = sharding.global_batch(local, mesh, row_axis=1)
    state, _ = mlm_step.init_sharded_state(params, tx, None, mesh, sharding.param_shardings(
        params, keymap.axes_tree(cfg, "mlm"), mesh))
    cap = mlm_step.masked_cap(B // groups * T, 0.3, 8.0)
    step = jax.jit(mlm_step.make_train_step(graphdef, rest, tx, cap, 0, groups=groups))
    with jax.set_mesh(mesh) if in_mesh else contextlib.nullcontext():  # as train.py runs its step
        hlo = step.lower(state, batch, jnp.float32(1e-3)).compile().as_text()
        state, m = step(state, batch, jnp.float32(1e-3))
    gathered = [tuple(int(n) for n in dims.split(",") if n)  # operand shapes of the all-gathers
                for dims in re.findall(r"= [a-z0-9]+\[([0-9,]*)\][^ ]* all-gather(?:-start)?\(", hlo)]
    out[name] = {"loss": float(m["loss"]), "masked": int(m["masked_tokens"]), "dropped": int(m["dropped"]),
                 "gathers": len(gathered), "activation_gathers": [g for g in gathered if g not in param_shapes],
                 "params": [float(x.sum()) for x in jax.tree.leaves(state["params"])]}
print(json.dumps(out))
"""


def test_train_step_keeps_each_devices_rows_on_that_device():
    """train.py's step on 8 devices equals one device and moves no activations between devices: the attention
    kernels (blocked and Pallas) run per device under `shard_map`, the sparse MLM head gathers each device's masked
    tokens on that device, and with FSDP (4 x 2) only weights are gathered. Negative controls: without the mesh
    set the kernels gather every row to every device, and one masked-token group for the whole batch needs a
    gather too."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", STEP_SCRIPT, json.dumps(TINY)], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    one = out["one_device"]
    assert out["mlm_group_across_devices"]["gathers"] > 0 and out["kernels_without_mesh"]["gathers"] > 0
    assert out["fsdp"]["gathers"] > 0 and out["fsdp"]["activation_gathers"] == []
    for name in ("per_device", "pallas_per_device", "fsdp"):
        got = out[name]
        assert got["gathers"] == 0 or name == "fsdp", name
        assert got["masked"] == one["masked"] > 0 and got["dropped"] == one["dropped"] == 0
        assert abs(got["loss"] - one["loss"]) <= 1e-5, name
        for a, b in zip(got["params"], one["params"]):
            assert abs(a - b) <= 1e-4 * max(abs(b), 1.0), name
