"""The `gpu` attention backend lowered for CUDA on this CPU: the bf16 train step and packed inference use the
three Pallas (Triton) kernels on every layer, global and local, and no T x T buffer exists anywhere.

Nothing runs here; lowering checks what a GPU would be given, so a mistake in a GPU path fails on CPU."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bcmb_jax
from bcmb_jax.modeling import attention
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.state import split_model
from bcmb_jax.training import mlm_step, optim

KERNELS = ("packed_attention_fwd", "packed_attention_dkv", "packed_attention_dq")


def config(hidden: int, heads: int, positions: int = 8192) -> ModelConfig:
    return ModelConfig(vocab_size=512, hidden_size=hidden, intermediate_size=96, num_hidden_layers=3,
                       num_attention_heads=heads, local_attention=128, max_position_embeddings=positions,
                       pad_token_id=0, cls_token_id=1, sep_token_id=2, bos_token_id=1, eos_token_id=2)


@pytest.fixture
def as_on_a_gpu(monkeypatch):
    monkeypatch.setattr(attention, "gpu_available", lambda: True)  # dispatch as on a GPU; lowering needs no GPU


def triton_calls(text: str) -> dict[str, int]:
    lines = [line for line in text.splitlines() if "xla.gpu.triton" in line]
    return {name: sum(name in line for line in lines) for name in KERNELS} | {"all": len(lines)}


def square_buffers(text: str, T: int) -> int:
    return len(re.findall(rf"(?<![0-9]){T}x{T}(?![0-9])", text))


def lowered_train_step(cfg: ModelConfig, T: int, backend: str, remat: bool = False) -> str:
    model = bcmb_jax.build(cfg, "mlm", seed=0, dtype=jnp.bfloat16, remat=remat, runtime=backend)
    graphdef, params, rest = split_model(model, training=True)
    tx = optim.make_optimizer(optim.OptimConfig())
    state = jax.eval_shape(lambda p: mlm_step.init_state(p, tx), params)
    batch = {k: jax.ShapeDtypeStruct((2, 2, T), jnp.int32) for k in ("input_ids", "segment_ids", "position_ids",
                                                                      "labels")}
    step = jax.jit(mlm_step.make_train_step(graphdef, rest, tx, 64, 0))
    return step.trace(state, batch, np.float32(1e-3)).lower(lowering_platforms=("cuda",)).as_text()


def lowered_inference(cfg: ModelConfig, T: int, backend: str) -> str:
    model = bcmb_jax.build(cfg, "mlm", seed=0, dtype=jnp.bfloat16, runtime=backend)
    graphdef, params, rest = split_model(model)

    def forward(p, ids, seg, pos):
        from flax import nnx

        return nnx.merge(graphdef, p, rest).forward(ids, seg, pos, packed=True, num_segments=None).logits

    tokens = jax.ShapeDtypeStruct((2, T), jnp.int32)
    return jax.jit(forward).trace(params, tokens, tokens, tokens).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("remat", [False, True])
def test_the_bf16_train_step_lowers_to_the_three_kernels_on_every_layer(as_on_a_gpu, remat):
    T = 384
    text = lowered_train_step(config(64, 4), T, "gpu", remat=remat)
    calls = triton_calls(text)
    # 3 layers (global, local, local): one forward and both backward kernels each, and nothing else in Triton.
    assert calls == {"packed_attention_fwd": 3 + 3 * remat, "packed_attention_dkv": 3, "packed_attention_dq": 3,
                     "all": 9 + 3 * remat}, calls
    assert square_buffers(text, T) == 0


@pytest.mark.parametrize("T, hidden, heads", [(300, 256, 4), (8192, 160, 2)])  # head dims 64 and 80
def test_packed_inference_lowers_to_the_forward_kernel_only(as_on_a_gpu, T, hidden, heads):
    text = lowered_inference(config(hidden, heads), T, "gpu")
    assert triton_calls(text) == {"packed_attention_fwd": 3, "packed_attention_dkv": 0, "packed_attention_dq": 0,
                                  "all": 3}
    assert square_buffers(text, T) == 0


def test_the_checks_can_fail(as_on_a_gpu):
    """The dense reference backend builds T x T scores and calls no kernel: both checks see it."""
    text = lowered_train_step(config(64, 4), 384, "reference")
    assert triton_calls(text)["all"] == 0 and square_buffers(text, 384) > 0


def test_a_kernel_that_cannot_lower_falls_back_to_blocked_with_one_warning(as_on_a_gpu, monkeypatch):
    from bcmb_jax.modeling import pallas_attention

    def gone(*args, **kwargs):
        raise NotImplementedError("Pallas Triton lowering was removed")

    monkeypatch.setattr(pallas_attention, "pallas_attention", gone)
    attention.gpu_kernel_lowers.cache_clear()
    try:
        cfg = config(64, 4, positions=512)
        ids = np.random.default_rng(0).integers(3, 512, (1, 256))
        with pytest.warns(UserWarning, match="does not lower on jax .*using the blocked kernels") as record:
            gpu = bcmb_jax.build(cfg, "mlm", seed=0, runtime="gpu")(ids)
            bcmb_jax.build(cfg, "mlm", seed=0, runtime="gpu")(ids)
        assert len([w for w in record if "does not lower" in str(w.message)]) == 1
        blocked = bcmb_jax.build(cfg, "mlm", seed=0, runtime="blocked")(ids)
        np.testing.assert_allclose(np.asarray(gpu.logits), np.asarray(blocked.logits), atol=1e-5)
    finally:
        attention.gpu_kernel_lowers.cache_clear()
