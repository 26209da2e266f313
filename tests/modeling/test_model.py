"""Parity of the Flax model with transformers' ModernBERT (float32, highest matmul precision).

Only real (non-pad) tokens are compared: pad positions are arbitrary in both implementations.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, TINY, hf_model, rng_ids, save_hf

import bcmb_jax
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.infer import encode

LENGTHS = (75, 50, 9, 1)  # longer than the window (16), not a multiple of any chunk; a 1-token row


def padded_batch(lengths=LENGTHS, vocab=512, seed=0):
    T = max(lengths)
    ids = rng_ids((len(lengths), T), vocab, seed=seed)
    mask = (np.arange(T)[None] < np.array(lengths)[:, None]).astype(np.int64)
    ids[:, 0] = 1
    return np.where(mask == 1, ids, 0), mask


def torch_out(model, ids, mask):
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask))
    return out.logits.numpy() if hasattr(out, "logits") else out.last_hidden_state.numpy()


def max_diff_valid(a, b, mask):
    return float(np.abs(np.asarray(a, np.float64) - b)[mask.astype(bool)].max())


@pytest.mark.parametrize("backend", ["reference", "blocked"])
@pytest.mark.parametrize("task", ["base", "mlm", "token"])
def test_token_level_parity(tmp_path, task, backend):
    hf = hf_model(task, num_labels=5)
    model, info = bcmb_jax.from_pretrained(save_hf(hf, tmp_path), runtime=backend, output_loading_info=True)
    assert model.task == task and not info.missing and not info.unexpected
    ids, mask = padded_batch()
    out = model(ids, attention_mask=mask)
    got = out.last_hidden_state if task == "base" else out.logits
    diff = max_diff_valid(got, torch_out(hf, ids, mask), mask)
    print(f"{task}/{backend}: max|d| = {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("problem", ["single_label_classification", "multi_label_classification"])
def test_sequence_classification_parity(tmp_path, pooling, problem):
    hf = hf_model("sequence", num_labels=3, classifier_pooling=pooling, problem_type=problem)
    model = bcmb_jax.from_pretrained(save_hf(hf, tmp_path))
    assert model.task == "sequence" and model.cfg.problem_type == problem
    ids, mask = padded_batch()
    got = np.asarray(model(ids, attention_mask=mask).logits)
    ref = torch_out(hf, ids, mask)
    assert got.shape == ref.shape == (len(LENGTHS), 3)
    diff = float(np.abs(got - ref).max())
    print(f"sequence/{pooling}/{problem}: max|d| = {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.parametrize("flags", [
    dict(attention_bias=True, mlp_bias=True, norm_bias=True, classifier_bias=True),
    dict(hidden_activation="gelu_pytorch_tanh", classifier_activation="silu", decoder_bias=False),
    dict(num_hidden_layers=5, global_attn_every_n_layers=2, local_attention=8,
         global_rope_theta=5000.0, local_rope_theta=321.0),
])
def test_optional_settings_parity(tmp_path, flags):
    """Settings the released checkpoints do not use are implemented, not ignored: they must match too."""
    hf = hf_model("mlm", **flags)
    model = bcmb_jax.from_pretrained(save_hf(hf, tmp_path))
    ids, mask = padded_batch()
    diff = max_diff_valid(model(ids, attention_mask=mask).logits, torch_out(hf, ids, mask), mask)
    print(f"{flags}: max|d| = {diff:.2e}")
    assert diff <= 1e-4


def test_base_size_parity(tmp_path):
    """The real ModernBERT-base config (22 layers, 768 wide, vocab 50368) at a short length."""
    import transformers as tf

    path = SHARED_DATA / "modernbert_tokenizer" / "base_config" / "model_config.json"
    cfg = tf.ModernBertConfig(**json.loads(path.read_text())) if path.exists() else tf.ModernBertConfig()
    assert cfg.num_hidden_layers == 22 and cfg.hidden_size == 768
    torch.manual_seed(0)
    hf = tf.ModernBertForMaskedLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    model = bcmb_jax.from_pretrained(save_hf(hf, tmp_path))
    ids, mask = padded_batch((160, 97), vocab=50368, seed=1)
    ids[:, 0] = 50281
    diff = max_diff_valid(model(ids, attention_mask=mask).logits, torch_out(hf, ids, mask), mask)
    print(f"base-size mlm: max|d| = {diff:.2e}")
    assert diff <= 5e-4


def test_packed_row_equals_separate_runs(tmp_path):
    """Three documents packed in one row give what each gives alone (segments + restarted positions)."""
    model = bcmb_jax.from_pretrained(save_hf(hf_model("token", num_labels=4), tmp_path))
    docs = [rng_ids((1, n), seed=n)[0] for n in (40, 23, 61)]
    ids = np.concatenate(docs + [np.zeros(4, np.int64)])[None]
    seg = np.concatenate([np.full(len(d), i + 1) for i, d in enumerate(docs)] + [np.zeros(4)])[None]
    packed = np.asarray(model(ids, segment_ids=seg).logits)[0]
    t, worst = 0, 0.0
    for d in docs:
        alone = np.asarray(model(d[None], attention_mask=np.ones((1, len(d)))).logits)[0]
        worst = max(worst, float(np.abs(packed[t:t + len(d)] - alone).max()))
        t += len(d)
    print(f"packed vs separate: max|d| = {worst:.2e}")
    assert worst <= 1e-5


def test_packed_sequence_classification_pools_per_document(tmp_path):
    hf = hf_model("sequence", num_labels=3, classifier_pooling="mean")
    model = bcmb_jax.from_pretrained(save_hf(hf, tmp_path))
    docs = [rng_ids((1, n), seed=n)[0] for n in (30, 7, 44)]
    outs = encode(model, docs)
    for d, got in zip(docs, outs):
        ref = torch_out(hf, d[None], np.ones((1, len(d)), np.int64))[0]
        assert got.shape == (3,)
        assert float(np.abs(got - ref).max()) <= 1e-4


def test_reference_equals_blocked_at_2048():
    """Long packed rows: banded local + online-softmax global layers equal dense masks."""
    cfg = ModelConfig.from_hf_dict({**TINY, "max_position_embeddings": 4096})
    ref_model = bcmb_jax.build(cfg, "mlm", seed=3, runtime="reference")
    blk_model = bcmb_jax.build(cfg, "mlm", seed=3, runtime=bcmb_jax.Runtime("blocked", global_chunk=512))
    ids = rng_ids((1, 2048), seed=5)
    seg = np.repeat([1, 2, 3, 0], [900, 700, 400, 48])[None]
    a = np.asarray(ref_model(ids, segment_ids=seg).logits)
    b = np.asarray(blk_model(ids, segment_ids=seg).logits)
    diff = float(np.abs(a - b)[seg > 0].max())
    print(f"reference vs blocked at 2048: max|d| = {diff:.2e}")
    assert diff <= 1e-5


def test_padding_rows_are_finite():
    cfg = ModelConfig.from_hf_dict(TINY)
    model = bcmb_jax.build(cfg, "token", seed=0)
    ids = rng_ids((2, 40))
    mask = np.zeros((2, 40), np.int64)
    mask[0, :5] = 1  # row 1 is entirely padding
    out = model(ids, attention_mask=mask)
    assert np.isfinite(np.asarray(out.logits)).all()


def test_bfloat16_compute_close_to_float32(tmp_path):
    d = save_hf(hf_model("mlm"), tmp_path)
    f32 = bcmb_jax.from_pretrained(d)
    bf16 = bcmb_jax.from_pretrained(d, dtype=jnp.bfloat16)
    ids, mask = padded_batch()
    a = np.asarray(f32(ids, attention_mask=mask).logits)
    b = np.asarray(bf16(ids, attention_mask=mask).logits, np.float32)
    assert bf16(ids, attention_mask=mask).logits.dtype == jnp.bfloat16
    assert max_diff_valid(b, a, mask) < 0.1 * float(np.abs(a).max())


def packed_mlm_batch(lengths: tuple[int, ...], pad: int, seed: int) -> dict:
    """Two identical rows packing documents of `lengths` then `pad` padding tokens, ~30% of real tokens
    masked: the MLM batch of `mlm_step`."""
    T = sum(lengths) + pad
    ids = rng_ids((2, T), seed=seed)
    seg = np.repeat([[*range(1, len(lengths) + 1), 0]], 2, 0).repeat([*lengths, pad], axis=1)
    pos = np.concatenate([*(np.arange(n) for n in lengths), np.zeros(pad, int)])[None].repeat(2, 0)
    labels = np.where((np.random.default_rng(seed + 1).random((2, T)) < 0.3) & (seg > 0), ids, -100)
    return {k: jnp.asarray(v, jnp.int32) for k, v in
            {"input_ids": ids, "segment_ids": seg, "position_ids": pos, "labels": labels}.items()}


def mlm_loss_and_grads(cfg: ModelConfig, batch: dict, cap: int, *, seed: int, **build_kw):
    """`mlm_step`'s loss of a model built with `build_kw`, and its gradients."""
    import jax
    from flax import nnx

    from bcmb_jax.training import mlm_step

    graphdef, params, rest = nnx.split(bcmb_jax.build(cfg, "mlm", seed=seed, **build_kw), nnx.Param, ...)

    def loss(p):
        total, count, _ = mlm_step.mlm_loss_sum(nnx.merge(graphdef, p, rest), batch, cap=cap)
        return total / count

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("backend", ["blocked", "reference"])  # the hand-made recompute; jax.checkpoint
def test_remat_gives_the_same_loss_and_gradients(backend):
    """Recomputing every layer in the backward pass changes memory, not numbers (trainer's loss)."""
    import jax

    cfg = ModelConfig.from_hf_dict(TINY)
    batch = packed_mlm_batch((30, 30), pad=4, seed=7)
    (l0, g0), (l1, g1) = (mlm_loss_and_grads(cfg, batch, 64, seed=1, remat=r, runtime=backend) for r in (False, True))
    worst = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)))
    print(f"{backend} remat vs stored activations: loss {abs(float(l0 - l1)):.2e}, grads max|d| = {worst:.2e}")
    assert abs(float(l0 - l1)) <= 1e-6 and worst <= 1e-5


def test_folded_norms_compute_the_same_function():
    """Pre-norms folded into Wqkv / Wi (inference, remat) vs LayerNorms (training): same outputs and gradients."""
    import jax
    from flax import nnx

    cfg = ModelConfig.from_hf_dict({**TINY, "norm_bias": True, "attention_bias": True, "mlp_bias": True})
    ids = jnp.asarray(rng_ids((2, 40), seed=3), jnp.int32)

    def logits_and_grads(fold):
        model = bcmb_jax.build(cfg, "mlm", seed=2, runtime=bcmb_jax.Runtime("blocked", fold_norms=fold))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        seg, pos = jnp.ones_like(ids), jnp.broadcast_to(jnp.arange(40), (2, 40))
        f = lambda p: nnx.merge(graphdef, p, rest).model(ids, seg, pos)  # noqa: E731
        return jax.jit(lambda p: (f(p), jax.grad(lambda q: (f(q) ** 2).mean())(p)))(params)

    (a, ga), (b, gb) = logits_and_grads(True), logits_and_grads(False)
    gdiff = max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)))
    print(f"folded vs LayerNorm: hidden {float(jnp.abs(a - b).max()):.2e}, grads {gdiff:.2e}")
    assert float(jnp.abs(a - b).max()) <= 1e-5 and gdiff <= 1e-5


@pytest.mark.parametrize("fold", [True, False])
def test_cpu_paths_give_the_reference_loss_and_gradients(fold):
    """The blocked runtime's hand-made pieces (kernels, folded norms, token-major weight gradients of
    `runtime.dense`, the decoder bias) change speed, not the MLM loss or any parameter's gradient."""
    import jax

    cfg = ModelConfig.from_hf_dict({**TINY, "norm_bias": True, "attention_bias": True, "mlp_bias": True})
    batch = packed_mlm_batch((20, 24), pad=4, seed=11)
    l0, g0 = mlm_loss_and_grads(cfg, batch, 48, seed=4, runtime="reference")
    l1, g1 = mlm_loss_and_grads(cfg, batch, 48, seed=4,
                                runtime=bcmb_jax.Runtime("blocked", local_chunk=16, global_chunk=16, fold_norms=fold))
    worst = max(float(jnp.abs(a - b).max() / (jnp.abs(a).max() + 1e-12))
                for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)))
    print(f"blocked (fold_norms={fold}) vs reference: loss {abs(float(l0 - l1)):.2e}, grads max rel|d| = {worst:.2e}")
    assert abs(float(l0 - l1)) <= 1e-5 and worst <= 1e-4


def test_runtime_is_not_model_config():
    """How the model computes is a run-time option: config.json keys only in ModelConfig, checked choices."""
    assert not {"attention_backend", "local_chunk", "global_chunk"} & set(ModelConfig.__dataclass_fields__)
    assert ModelConfig.from_hf_dict({**TINY, "attention_backend": "gpu"}) == ModelConfig.from_hf_dict(TINY)
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        bcmb_jax.Runtime("flash")
    with pytest.raises(ValueError, match="remat_policy"):
        bcmb_jax.Runtime(remat_policy="everything")
    model = bcmb_jax.build(ModelConfig.from_hf_dict(TINY), "token", runtime="reference")
    assert model.runtime == model.model.layers[1].attn.runtime == bcmb_jax.Runtime("reference")


def test_gpu_kernel_model_equals_reference_in_interpret_mode():
    """The whole model on the `gpu` backend's Pallas kernel (interpreted on CPU), packed rows, vs dense masks."""
    cfg = ModelConfig.from_hf_dict(TINY)
    ids = rng_ids((2, 96), seed=4)
    seg = np.repeat([[1, 2, 0], [1, 1, 1]], [50, 40, 6], axis=1)
    ref = bcmb_jax.build(cfg, "mlm", seed=5, runtime="reference")
    pal = bcmb_jax.build(cfg, "mlm", seed=5, runtime=bcmb_jax.Runtime("gpu", interpret=True))
    a = np.asarray(ref(ids, segment_ids=seg).logits)
    b = np.asarray(pal(ids, segment_ids=seg).logits)
    diff = float(np.abs(a - b)[seg > 0].max())
    print(f"gpu kernel (interpret) vs reference model: max|d| = {diff:.2e}")
    assert diff <= 1e-5


def test_token_ids_outside_the_vocabulary_are_refused_in_an_eager_call():
    from bcmb_jax.errors import InputError

    model = bcmb_jax.build(ModelConfig(**{**TINY, "num_hidden_layers": 1}), "mlm", seed=0)
    ok = model(np.array([[1, 5, 2]]))
    assert np.isfinite(np.asarray(ok.logits)).all()
    for bad in ([[1, TINY["vocab_size"], 2]], [[1, -3, 2]]):
        with pytest.raises(InputError, match="outside the model's vocabulary"):
            model(np.array(bad))
