"""On an NVIDIA GPU (skipped elsewhere): the `gpu` attention backend, parity with transformers, bf16, training.

    JAX_PLATFORMS=cuda python -m pytest -q tests/modeling/test_gpu.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import hf_model, rng_ids, save_hf
from flax import nnx

import bcmb_jax
from bcmb_jax.modeling.attention import attention, gpu_available
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.masks import reference_attention

pytestmark = pytest.mark.skipif(not gpu_available(), reason="needs a GPU")
WIDE = dict(hidden_size=256, intermediate_size=384, num_attention_heads=4)  # head dim 64, as the released models


def qkv(B=2, T=300, N=4, K=64, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(B, T, N, K)), jnp.float32) for _ in range(3))


def seg_ids(T=300):
    seg = np.zeros((2, T), np.int32)
    seg[0, :100], seg[0, 100:250] = 1, 2
    seg[1, :T - 10] = 1
    return jnp.asarray(seg)


@pytest.mark.parametrize("window", [None, 64])
def test_gpu_backend_values_and_gradients(window):
    """The Pallas kernel (Triton) for global and local layers on the GPU vs dense masks, float32."""
    q, k, v = qkv()
    seg = seg_ids()
    valid = np.asarray(seg) > 0
    w = jnp.cos(jnp.arange(64.0))

    def loss(fn):
        return lambda q, k, v: (jnp.where(seg[..., None, None] > 0, fn(q, k, v), 0) * w).sum()

    ref = lambda q, k, v: reference_attention(q, k, v, seg, window=window, scale=0.125)  # noqa: E731
    gpu = lambda q, k, v: attention(q, k, v, seg, window=window, backend="gpu")  # noqa: E731
    diff = float(jnp.abs(jax.jit(gpu)(q, k, v) - ref(q, k, v))[valid].max())
    g_ref = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
    g_gpu = jax.jit(jax.grad(loss(gpu), argnums=(0, 1, 2)))(q, k, v)
    gdiff = max(float(jnp.abs(a - b)[valid].max()) for a, b in zip(g_ref, g_gpu))
    print(f"window {window}: values {diff:.2e}, gradients {gdiff:.2e}")
    assert diff <= 1e-5 and gdiff <= 1e-4


def test_model_on_gpu_matches_transformers(tmp_path):
    """The `gpu` backend model (JAX on the GPU) against transformers (float32, on the CPU), padded and packed."""
    import torch

    hf = hf_model("mlm", **WIDE)
    model = bcmb_jax.from_pretrained(save_hf(hf, tmp_path), runtime="gpu")
    assert model.runtime.attention_backend == "gpu"
    lengths = (300, 170, 41)
    ids = rng_ids((3, 300), seed=2)
    mask = (np.arange(300)[None] < np.asarray(lengths)[:, None]).astype(np.int64)
    got = np.asarray(model(ids, attention_mask=mask).logits)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    diff = float(np.abs(got - ref)[mask > 0].max())
    # packed: the three documents in one row give what they give alone
    docs = [ids[r, :n] for r, n in enumerate(lengths)]
    packed = np.asarray(model(np.concatenate(docs)[None], segment_ids=np.repeat([1, 2, 3], lengths)[None]).logits)[0]
    pdiff = float(np.abs(packed - np.concatenate([ref[r, :n] for r, n in enumerate(lengths)])).max())
    print(f"gpu model vs transformers: padded {diff:.2e}, packed {pdiff:.2e}")
    assert diff <= 1e-4 and pdiff <= 1e-4


def test_bfloat16_on_gpu_close_to_float32(tmp_path):
    d = save_hf(hf_model("mlm", **WIDE), tmp_path)
    f32 = bcmb_jax.from_pretrained(d, runtime="gpu")
    bf16 = bcmb_jax.from_pretrained(d, dtype=jnp.bfloat16, runtime="gpu")
    ids = rng_ids((2, 256), seed=4)
    a = np.asarray(f32(ids).logits)
    out = bf16(ids).logits
    assert out.dtype == jnp.bfloat16
    rel = float(np.abs(np.asarray(out, np.float32) - a).max() / np.abs(a).max())
    print(f"bf16 vs fp32 on gpu: max|d| / max|logit| = {rel:.2e}")
    assert rel < 0.05


def test_train_steps_on_gpu_equal_cpu():
    """train.py's step (StableAdamW, sparse MLM loss) gives the same losses on the GPU and on the CPU."""
    from bcmb_jax.modeling.state import split_model
    from bcmb_jax.training import mlm_step, optim

    cfg = ModelConfig.from_hf_dict({**dict(vocab_size=512, num_hidden_layers=3, local_attention=16,
                                           max_position_embeddings=512, pad_token_id=0), **WIDE})
    B, T = 4, 128
    ids = rng_ids((B, T), seed=9)
    labels = np.where(np.random.default_rng(3).random((B, T)) < 0.3, ids, -100)
    batch = {"input_ids": ids, "labels": labels, "segment_ids": np.ones((B, T)),
             "position_ids": np.broadcast_to(np.arange(T), (B, T))}
    batch = {k: jnp.asarray(v, jnp.int32)[None] for k, v in batch.items()}

    def losses(device, backend):
        with jax.default_device(device):
            model = bcmb_jax.build(cfg, "mlm", seed=0, runtime=backend)
            graphdef, params, rest = split_model(model, training=True)
            tx = optim.make_optimizer(optim.OptimConfig(lr=1e-3))
            state = mlm_step.init_state(params, tx)
            step = jax.jit(mlm_step.make_train_step(graphdef, rest, tx, 64, 0))
            out = []
            for _ in range(4):
                state, metrics = step(state, jax.device_put(batch, device), jnp.float32(1e-3))
                out.append(float(metrics["loss"]))
            return out

    gpu = losses(jax.devices("gpu")[0], "gpu")
    cpu = losses(jax.devices("cpu")[0], "blocked")
    print(f"train losses gpu {gpu} cpu {cpu}")
    assert gpu[-1] < gpu[0]
    assert np.allclose(gpu, cpu, rtol=1e-4, atol=1e-4)


def test_bfloat16_train_steps_follow_float32_on_gpu():
    """The bf16 train step (gpu backend) against float32 on the same batch; tolerances of test_train_step."""
    from test_train_step import compare

    compare(ModelConfig.from_hf_dict({**dict(vocab_size=512, num_hidden_layers=4, local_attention=16,
                                             max_position_embeddings=512, pad_token_id=0), **WIDE}), "gpu")


def test_gpu_remat_gives_the_same_gradients():
    """remat through jax.checkpoint (the gpu backend's path) changes memory, not numbers."""
    from test_train_step import packed_batch

    from bcmb_jax.modeling.state import split_model
    from bcmb_jax.training import mlm_step

    cfg = ModelConfig.from_hf_dict({**dict(vocab_size=512, num_hidden_layers=4, local_attention=16,
                                           max_position_embeddings=512, pad_token_id=0), **WIDE})
    batch = {k: v[0] for k, v in packed_batch().items()}

    def grads(remat):
        model = bcmb_jax.build(cfg, "mlm", seed=1, remat=remat, runtime="gpu")
        graphdef, params, rest = split_model(model, training=True)

        def loss(p):
            model = nnx.merge(graphdef, p, rest)
            total, count, _ = mlm_step.mlm_loss_sum(model, batch, cap=64)
            return total / count

        return jax.jit(jax.grad(loss))(params)

    worst = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(grads(False)),
                                                             jax.tree.leaves(grads(True))))
    print(f"gpu remat vs stored activations: grads max|d| = {worst:.2e}")
    assert worst <= 1e-5
