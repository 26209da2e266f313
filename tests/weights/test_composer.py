"""Composer checkpoints: weights, FlexBERT config (defaults included), embedded tokenizer, timestamp and
optimizer moments that continue like torch-optimi, in both checkpoint layouts."""

from __future__ import annotations

import json

import jax
import numpy as np
import optax
import pytest
import torch
from conftest import TINY, hf_model, rng_ids
from convert_helpers import (
    FLEX_CONFIG,
    assert_bit_identical,
    cli,
    composer_file,
    jax_tree_of,
    tensors,
    tiny_tokenizer,
    torch_out,
    train_torch,
)
from flax import nnx

import bcmb_jax
from bcmb_jax.errors import ConfigError
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.training.optim import stable_adamw, stable_adamw_state_from_moments, weight_decay_mask
from bcmb_jax.weights import composer, directories, keymap

optimi = pytest.importorskip("optimi")
pytestmark = [pytest.mark.filterwarnings("ignore:You are using weight_decay:UserWarning")]


def load_moments(directory, model):
    """(step, mu, nu, info) of a converted JAX directory, in the model's parameter form."""
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return directories.load_moments(directory, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))


def test_composer_checkpoint_weights_config_and_moments(tmp_path, monkeypatch, capsys):
    hf = hf_model("mlm", seed=7)
    opt = train_torch(hf)
    tok = tiny_tokenizer(tmp_path / "tok")
    pt = composer_file(tmp_path / "ep0-ba3-rank0.pt", hf, opt, monkeypatch, tokenizer=tok)
    assert cli("to-jax", pt, tmp_path / "jax", "--optimizer-state") == 0
    printed = capsys.readouterr().out
    assert "Composer checkpoint" in printed and "optimizer: StableAdamW at step 3" in printed

    # Config: mapped from the FlexBERT one (thetas, window, eps, mean pooling, ids from the tokenizer).
    raw = json.loads((tmp_path / "jax" / "config.json").read_text())
    cfg = ModelConfig.from_hf_dict(raw)
    assert (cfg.global_rope_theta, cfg.local_rope_theta, cfg.local_attention) == (160000.0, 10000.0, 16)
    assert cfg.layer_types == ModelConfig.from_hf_dict(TINY).layer_types and cfg.classifier_pooling == "mean"
    assert (cfg.pad_token_id, cfg.cls_token_id, cfg.sep_token_id, cfg.mask_token_id) == (0, 1, 2, 3)
    assert raw["bcmb_jax"]["source"]["timestamp"]["token"] == 144
    assert (tmp_path / "jax" / "tokenizer.json").is_file()

    # Weights: to HF again, bit-identical to the torch model, so transformers gives the same logits exactly.
    assert cli("to-hf", tmp_path / "jax", tmp_path / "hf_back") == 0
    ref = {k: v.numpy() for k, v in hf.state_dict().items() if k != keymap.TIED_DECODER}
    assert_bit_identical(ref, tensors(tmp_path / "hf_back" / "model.safetensors"))
    import transformers as tf

    ids = rng_ids((2, 21), seed=9)
    back = tf.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf_back").eval()
    assert torch.equal(torch_out(back, ids), torch_out(hf, ids))
    model = bcmb_jax.from_pretrained(tmp_path / "jax")
    np.testing.assert_allclose(np.asarray(model(ids).logits), torch_out(hf, ids).numpy(), atol=1e-4, rtol=0)

    # Moments: exactly optimi's, in the params tree layout; the position-keyed and the name-keyed
    # (torch >= 2.4) optimizer state dicts give the same result.
    step, mu, nu, hp = load_moments(tmp_path / "jax", model)
    assert step == 3 and hp["optimizer"] == "StableAdamW" and hp["lr"] == 1e-3 and hp["weight_decay"] == 1e-2
    assert hp["betas"] == [0.9, 0.98] and hp["eps"] == 1e-6 and hp["max_lr"] == 1e-3
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert jax.tree.structure(mu) == jax.tree.structure(params) == jax.tree.structure(nu)
    flat_mu, flat_nu = keymap.nnx_to_hf(mu, cfg, "mlm"), keymap.nnx_to_hf(nu, cfg, "mlm")
    for n, p in hf.named_parameters():
        np.testing.assert_array_equal(flat_mu[n], opt.state[p]["exp_avg"].numpy(), err_msg=n)
        np.testing.assert_array_equal(flat_nu[n], opt.state[p]["exp_avg_sq"].numpy(), err_msg=n)
    ck = composer.read_checkpoint(composer_file(tmp_path / "fqn.pt", hf, opt, monkeypatch, fqn=True))
    m2 = composer.moments_from_optimizer(ck.optimizer, cfg, "mlm", "fqn.pt")
    assert m2.step == 3 and all(np.array_equal(m2.exp_avg[k], flat_mu[k]) for k in flat_mu)

    # The seeded optax StableAdamW continues exactly like torch-optimi for two more steps.
    tx = stable_adamw(hp["lr"], b1=hp["betas"][0], b2=hp["betas"][1], eps=hp["eps"],
                      weight_decay=hp["weight_decay"], max_lr=hp["max_lr"], weight_decay_mask=weight_decay_mask)
    state = stable_adamw_state_from_moments(params, mu, nu, step)
    rng = np.random.default_rng(0)
    for _ in range(2):
        grads = {n: rng.normal(size=tuple(p.shape)).astype(np.float32) * 0.01 for n, p in hf.named_parameters()}
        for n, p in hf.named_parameters():
            p.grad = torch.tensor(grads[n])
        opt.step()
        updates, state = tx.update(jax_tree_of(grads, cfg), state, params)
        params = optax.apply_updates(params, updates)
    assert int(state.count) == 5 == opt.param_groups[0]["step"]
    ours = keymap.nnx_to_hf(jax.tree.map(np.asarray, params), cfg, "mlm")
    for n, p in hf.named_parameters():
        np.testing.assert_allclose(ours[n], p.detach().numpy(), rtol=0, atol=1e-7, err_msg=n)  # measured 7.5e-9


def test_composer_optimizer_mismatch_is_named(tmp_path, monkeypatch, capsys):
    hf = hf_model("mlm", seed=8)
    opt = train_torch(hf, steps=1)
    p = hf.model.layers[1].mlp.Wi.weight
    opt.state[p]["exp_avg"] = opt.state[p]["exp_avg"][:, :5].clone()
    pt = composer_file(tmp_path / "bad.pt", hf, opt, monkeypatch)
    assert cli("to-jax", pt, tmp_path / "out", "--optimizer-state") == 2
    err = capsys.readouterr().err
    assert "exp_avg` of `model.layers.1.mlp.Wi.weight`" in err and "[192, 5]" in err
    assert not (tmp_path / "out").exists()
    # Without --optimizer-state the weights alone convert, given the special-token ids: the checkpoint has no
    # tokenizer and a 512-token vocabulary, so ModernBERT's ids would be false (and transformers would refuse).
    assert cli("to-jax", pt, tmp_path / "out") == 2 and "--tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    tok = tiny_tokenizer(tmp_path / "tok")
    assert cli("to-jax", pt, tmp_path / "out", "--tokenizer", tok) == 0
    assert not (tmp_path / "out" / "optimizer").exists()
    # No embedded config: --config (an HF config.json) must say what the model is.
    bare = composer_file(tmp_path / "bare.pt", hf, opt, monkeypatch, extra={"integrations": {}})
    assert cli("to-jax", bare, tmp_path / "bare") == 2 and "--config" in capsys.readouterr().err
    hf.config.save_pretrained(tmp_path / "cfg")
    assert cli("to-jax", bare, tmp_path / "bare", "--config", tmp_path / "cfg" / "config.json") == 0
    assert ModelConfig.from_json(tmp_path / "bare" / "config.json") == ModelConfig.from_hf_dict(hf.config.to_dict())


def test_flexbert_config_mapping():
    base = dict(FLEX_CONFIG, vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22,
                num_attention_heads=12, sliding_window=128)
    cfg = ModelConfig.from_hf_dict(composer.hf_config_from_flexbert(base))
    assert cfg == ModelConfig(classifier_pooling="mean", mask_token_id=50284)  # BioClinical base, ModernBERT ids
    stage1 = composer.hf_config_from_flexbert(dict(base, rotary_emb_base=10000.0, local_attn_rotary_emb_base=-1))
    assert stage1["global_rope_theta"] == stage1["local_rope_theta"] == 10000.0
    for key, value in (("normalization", "rmsnorm"), ("attention_layer", "rope_parallel"),
                       ("skip_first_prenorm", False), ("rotary_emb_interleaved", True)):
        with pytest.raises(ConfigError, match=f"`{key}`"):
            composer.hf_config_from_flexbert(dict(base, **{key: value}))
    assert (composer.hf_name("model._orig_mod.bert.encoder.layers.3.attn.Wqkv.weight")
            == "model.layers.3.attn.Wqkv.weight")
    assert composer.hf_name("module.model.bert.final_norm.weight") == "model.final_norm.weight"
    assert composer.hf_name("model.decoder.bias") == "decoder.bias"


# ---------------------------------------------------------------------------------------------
# Safety, damaged inputs, refused outputs, the CLI




def test_composer_new_layout_converts_like_the_old(tmp_path, monkeypatch):
    """Composer >= 0.20 (tokenizer keyed by file name, nested Timestamp, optimizer state keyed by parameter
    name) and the older layout (stems, flat timestamp, positional state) convert to the same directory."""
    from tokenizers import Tokenizer

    hf = hf_model("mlm", seed=11)
    opt = train_torch(hf, steps=2)
    tok = tiny_tokenizer(tmp_path / "tok")
    old = composer_file(tmp_path / "old.pt", hf, opt, monkeypatch, tokenizer=tok)
    new = composer_file(tmp_path / "new.pt", hf, opt, monkeypatch, tokenizer=tok, new_layout=True)
    assert all(isinstance(i, int) for i in composer.read_checkpoint(old).optimizer["param_groups"][0]["params"])
    assert all(isinstance(i, str) for i in composer.read_checkpoint(new).optimizer["param_groups"][0]["params"])
    embedded = sorted(f.name for f in tok.glob("*.json") if f.name in directories.TOKENIZER_FILES)
    assert "tokenizer.json" in embedded
    for src in ("old", "new"):
        assert cli("to-jax", tmp_path / f"{src}.pt", tmp_path / src, "--optimizer-state") == 0
        names = sorted(p.name for p in (tmp_path / src).iterdir() if p.name.endswith((".json", ".txt")))
        assert names == sorted(["config.json", "optimizer.json", *embedded])  # never tokenizer.json.json
        assert Tokenizer.from_file(str(tmp_path / src / "tokenizer.json")).token_to_id("[MASK]") == 3
        source = json.loads((tmp_path / src / "config.json").read_text())["bcmb_jax"]["source"]
        assert source["timestamp"] == {"epoch": 0, "batch": 3, "sample": 6, "token": 144, "batch_in_epoch": 3}
    model = bcmb_jax.from_pretrained(tmp_path / "new")
    ids = rng_ids((2, 13), seed=3)
    np.testing.assert_array_equal(np.asarray(model(ids).logits),
                                  np.asarray(bcmb_jax.from_pretrained(tmp_path / "old")(ids).logits))
    a, b = load_moments(tmp_path / "old", model), load_moments(tmp_path / "new", model)
    assert a[0] == b[0] == 2
    for x, y in zip(jax.tree.leaves(a[1:3]), jax.tree.leaves(b[1:3]), strict=True):
        np.testing.assert_array_equal(x, y)
    flat_mu = keymap.nnx_to_hf(b[1], ModelConfig.from_hf_dict(hf.config.to_dict()), "mlm")
    for n, p in hf.named_parameters():
        np.testing.assert_array_equal(flat_mu[n], opt.state[p]["exp_avg"].numpy(), err_msg=n)


def test_flexbert_config_missing_keys_take_flexbert_defaults():
    """Keys left out of a FlexBERT config mean FlexBertConfig's own defaults (as ModernBERT's yamls rely on)."""
    full = composer.hf_config_from_flexbert(FLEX_CONFIG)
    flex_defaults = composer.FLEXBERT_DEFAULTS
    defaults_equal = [k for k, v in FLEX_CONFIG.items() if k in flex_defaults and flex_defaults[k] == v]
    assert {"head_pred_norm", "embed_norm", "rotary_emb_interleaved", "decoder_bias", "bert_layer"} <= set(
        defaults_equal)
    sparse = {k: v for k, v in FLEX_CONFIG.items() if k not in defaults_equal}
    assert composer.hf_config_from_flexbert(sparse) == full
    # Keys whose FlexBertConfig default is another architecture: leaving them out is refused, naming the default.
    for key in ("final_norm", "skip_first_prenorm", "attention_layer", "normalization", "mlp_layer"):
        with pytest.raises(ConfigError, match=rf"`{key}` = .* \(the default\)"):
            composer.hf_config_from_flexbert({k: v for k, v in FLEX_CONFIG.items() if k != key})
