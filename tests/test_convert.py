"""convert_weights.py: exact HF <-> JAX round trips, Composer checkpoints (weights, config, optimizer
moments that continue like torch-optimi), safe unpickling, damaged inputs, atomic/refused outputs, CLI."""

from __future__ import annotations

import datetime
import enum
import hashlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from conftest import TINY, hf_model, rng_ids, save_hf

import bcmb_jax
from bcmb_jax import composer as C
from bcmb_jax import params as P
from bcmb_jax import pretrained as PT
from bcmb_jax.config import ConfigError, ModelConfig
from bcmb_jax.heads import HEADS
from bcmb_jax.optim import stable_adamw, stable_adamw_state_from_moments, weight_decay_mask

optimi = pytest.importorskip("optimi")
pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using weight_decay:UserWarning"),
    # orbax's tensorstore callbacks of the deliberately failed restore may land during a later test
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]
REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("convert_weights", REPO / "convert_weights.py")
convert_weights = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_weights)
AUTO = {"mlm": "AutoModelForMaskedLM", "sequence": "AutoModelForSequenceClassification",
        "token": "AutoModelForTokenClassification", "base": "AutoModel"}
SPECIAL = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]  # ids 0..4, matching TINY's pad/cls/sep


def cli(*args) -> int:
    return convert_weights.main([str(a) for a in args])


def tiny_tokenizer(directory: Path) -> Path:
    """A 512-token word-level tokenizer with ModernBERT's special-token roles, saved as HF files."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["the", "patient", "was", "given", "aspirin", "no", "acute", "distress", "."]
    vocab = {t: i for i, t in enumerate(SPECIAL + words + [f"w{i}" for i in range(512 - 14)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1),
                                                                                                ("[SEP]", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                   mask_token="[MASK]", unk_token="[UNK]")
    fast.save_pretrained(directory)
    return directory


def tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def assert_bit_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


def torch_out(model, ids):
    with torch.no_grad():
        out = model(torch.tensor(ids))
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def str_keys(tree):
    return {str(k): str_keys(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# HF -> JAX -> HF


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("task", ["mlm", "sequence", "token", "base"])
def test_round_trip_is_bit_identical(tmp_path, task, dtype):
    import transformers as tf

    overrides = {"num_labels": 3} if task in ("sequence", "token") else {}
    if task == "sequence":
        overrides["classifier_pooling"] = "mean"
    hf = hf_model(task, seed=1, **overrides).to(getattr(torch, dtype))
    save_hf(hf, tmp_path / "hf")
    assert cli("to-jax", tmp_path / "hf", tmp_path / "jax") == 0
    saved = json.loads((tmp_path / "jax" / "config.json").read_text())["bcmb_jax"]
    assert saved["task"] == task and saved["dtype"] == dtype  # default: the source dtype, stored as is
    assert cli("to-hf", tmp_path / "jax", tmp_path / "back") == 0
    assert_bit_identical(tensors(tmp_path / "hf" / "model.safetensors"),
                         tensors(tmp_path / "back" / "model.safetensors"))
    assert (tmp_path / "back" / "README.md").read_text().count(HEADS[task].hf_architecture) >= 2

    # The original and the re-exported directory, loaded alike (`.to(bf16)` on a live model would also
    # round its RoPE buffers, which loading in bf16 does not), give the same outputs exactly.
    auto = getattr(tf, AUTO[task])
    orig = auto.from_pretrained(tmp_path / "hf", dtype=getattr(torch, dtype)).eval()
    again = auto.from_pretrained(tmp_path / "back", dtype=getattr(torch, dtype)).eval()
    assert next(again.parameters()).dtype == getattr(torch, dtype)
    ids = rng_ids((2, 23), seed=4)
    assert torch.equal(torch_out(again, ids), torch_out(orig, ids))


def test_mlm_export_with_tokenizer_runs_fill_mask_and_bcmb_jax(tmp_path):
    from transformers import pipeline

    hf = hf_model("mlm", seed=2)
    save_hf(hf, tmp_path / "hf")
    tiny_tokenizer(tmp_path / "hf")
    assert cli("to-jax", tmp_path / "hf", tmp_path / "jax", "--dtype", "float32") == 0
    assert (tmp_path / "jax" / "tokenizer.json").is_file()
    assert cli("to-hf", tmp_path / "jax", tmp_path / "back") == 0
    fill = pipeline("fill-mask", model=str(tmp_path / "back"), tokenizer=str(tmp_path / "back"))
    got = fill("the patient was given [MASK] .", top_k=3)
    ref = pipeline("fill-mask", model=hf, tokenizer=str(tmp_path / "hf"))("the patient was given [MASK] .", top_k=3)
    assert [r["token"] for r in got] == [r["token"] for r in ref] and [r["score"] for r in got] == [
        r["score"] for r in ref]
    # Both directories load in bcmb_jax as the same model.
    ids = rng_ids((2, 17), seed=5)
    a = bcmb_jax.from_pretrained(tmp_path / "jax")(ids).logits
    b = bcmb_jax.from_pretrained(tmp_path / "back")(ids).logits
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(a), torch_out(hf, ids).numpy(), atol=1e-4, rtol=0)


def test_base_size_round_trip(tmp_path):
    """Base-size (149.7M parameters) HF -> JAX -> HF, float32, from numpy-random weights (no torch init)."""
    cfg = ModelConfig()
    rng = np.random.default_rng(0)
    sd = {}
    for e in P.module_order(cfg, "mlm"):
        shape = P.expected_shape(e, cfg)
        sd[e.hf] = rng.standard_normal(shape[::-1] if e.transpose else shape, dtype=np.float32)
    assert sum(x.size for x in sd.values()) == 149_655_232
    (tmp_path / "hf").mkdir()
    P.write_safetensors(sd, tmp_path / "hf" / "model.safetensors")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg.to_hf_dict("ModernBertForMaskedLM")))
    assert cli("to-jax", tmp_path / "hf", tmp_path / "jax", "--no-progress") == 0
    assert cli("to-hf", tmp_path / "jax", tmp_path / "back", "--no-progress") == 0
    assert_bit_identical(sd, tensors(tmp_path / "back" / "model.safetensors"))


def test_task_change_and_dtype_options(tmp_path, capsys):
    hf = hf_model("mlm", seed=3)
    save_hf(hf, tmp_path / "hf")
    # An MLM checkpoint converted as a bare backbone: the head tensors are left out and listed.
    assert cli("to-jax", tmp_path / "hf", tmp_path / "base", "--task", "base") == 0
    assert "not converted: decoder.bias, head.dense.weight, head.norm.weight" in capsys.readouterr().out
    # A classification task needs a classifier the MLM checkpoint does not have: named, nothing written.
    assert cli("to-jax", tmp_path / "hf", tmp_path / "tok", "--task", "token") == 2
    assert "classifier.bias" in capsys.readouterr().err and not (tmp_path / "tok").exists()
    # fp32 stored as bf16 and exported back: the bf16 rounding of the fp32 weights, as torch does it.
    assert cli("to-jax", tmp_path / "hf", tmp_path / "b16", "--dtype", "bfloat16") == 0
    assert cli("to-hf", tmp_path / "b16", tmp_path / "b16_f32", "--dtype", "float32") == 0
    ref = {k: v.to(torch.bfloat16).float().numpy() for k, v in hf.state_dict().items() if k != P.TIED_DECODER}
    assert_bit_identical(ref, tensors(tmp_path / "b16_f32" / "model.safetensors"))
    # A JAX MLM export as a bare encoder loads in transformers' AutoModel.
    assert cli("to-hf", tmp_path / "b16", tmp_path / "enc", "--task", "base") == 0
    assert json.loads((tmp_path / "enc" / "config.json").read_text())["architectures"] == ["ModernBertModel"]


# ---------------------------------------------------------------------------------------------
# train.py run directories


def test_run_and_step_directories(tmp_path):
    import orbax.checkpoint as ocp
    import transformers as tf

    hf = hf_model("mlm", seed=6)
    save_hf(hf, tmp_path / "hf")
    assert cli("to-jax", tmp_path / "hf", tmp_path / "jax") == 0
    tree = PT.load_jax_tree(tmp_path / "jax")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_bytes((tmp_path / "jax" / "config.json").read_bytes())
    tiny_tokenizer(run / "tokenizer")
    trees = {}
    for step, scale in ((5, 1.0), (12, 2.0)):
        t = jax.tree.map(np.asarray, tree)
        t["model"]["final_norm"]["scale"] = t["model"]["final_norm"]["scale"] * np.float32(scale)
        trees[step] = t
        with ocp.StandardCheckpointer() as ck:
            ck.save((run / "checkpoints" / str(step) / "params").absolute(), str_keys(t))
    (run / "checkpoints" / "13.orbax-checkpoint-tmp-0" / "params").mkdir(parents=True)  # an unfinished save

    assert PT.locate(run).step == 12 and PT.locate(run / "checkpoints" / "5").kind == "step"
    for src, step in ((run, 12), (run / "checkpoints" / "5", 5)):
        out = tmp_path / f"hf_{step}"
        assert cli("to-hf", src, out) == 0
        got = tensors(out / "model.safetensors")
        np.testing.assert_array_equal(got["model.final_norm.weight"], trees[step]["model"]["final_norm"]["scale"])
        assert (out / "tokenizer.json").is_file()
        assert (f"train run, step {step}" if src == run else f"train step {step}") in (out / "README.md").read_text()
    m = tf.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf_12")
    assert torch.equal(m.model.final_norm.weight, 2 * hf.model.final_norm.weight)
    ids = rng_ids((1, 9))
    np.testing.assert_array_equal(np.asarray(bcmb_jax.from_pretrained(run)(ids).logits),
                                  np.asarray(bcmb_jax.from_pretrained(tmp_path / "hf_12")(ids).logits))


# ---------------------------------------------------------------------------------------------
# Composer checkpoints


def flexbert_name(hf_name: str) -> str:
    if hf_name.startswith("model.layers."):
        return "model.bert.encoder.layers." + hf_name[len("model.layers."):]
    if hf_name.startswith("model."):
        return "model.bert." + hf_name[len("model."):]
    return "model." + hf_name


FLEX_CONFIG = {  # a FlexBERT config.json dict as Composer embeds it (BERT-inherited keys included)
    "architectures": ["FlexBertForMaskedLM"], "model_type": "bert", "vocab_size": 512, "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4, "max_position_embeddings": 512,
    "hidden_act": "gelu", "head_pred_act": "gelu", "attention_layer": "rope", "bert_layer": "prenorm",
    "embedding_layer": "sans_pos", "mlp_layer": "glu", "normalization": "layernorm",
    "norm_kwargs": {"eps": 1e-05, "bias": False}, "final_norm": True, "embed_norm": True, "skip_first_prenorm": True,
    "head_pred_norm": True, "attn_out_bias": False, "attn_qkv_bias": False, "mlp_in_bias": False,
    "mlp_out_bias": False, "head_pred_bias": False, "decoder_bias": True, "attn_out_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.0, "sliding_window": 16, "global_attn_every_n_layers": 3,
    "rotary_emb_base": 160000.0, "local_attn_rotary_emb_base": 10000.0, "rotary_emb_dim": None,
    "rotary_emb_interleaved": False, "padding": "unpadded", "pad_token_id": 0, "layer_norm_eps": 1e-12,
    "init_method": "full_megatron", "init_std": 0.02, "init_cutoff_factor": 2.0, "loss_kwargs": {"reduction": "mean"},
}


def train_torch(hf, steps=3, lr=1e-3, wd=1e-2, seed=0):
    """A few real torch-optimi StableAdamW steps with ModernBERT's two param groups (no decay / decay)."""
    no_decay = [p for n, p in hf.named_parameters() if p.ndim <= 1 or n.endswith(".bias")]
    decay = [p for n, p in hf.named_parameters() if not (p.ndim <= 1 or n.endswith(".bias"))]
    opt = optimi.StableAdamW([{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=wd, decouple_lr=True, foreach=False,
                             triton=False)
    hf.train()
    for i in range(steps):
        ids = torch.tensor(rng_ids((2, 24), seed=100 + i))
        labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(i)) < 0.3, ids, -100)
        opt.zero_grad()
        hf(ids, labels=labels).loss.backward()
        opt.step()
    hf.eval()
    return opt


class _TimeUnit(enum.Enum):  # stands in for composer.core.time.TimeUnit when the checkpoint is written
    TOKEN = "tok"


def composer_file(path: Path, hf, opt, monkeypatch, *, fqn: bool = False, tokenizer: Path | None = None,
                  extra: dict | None = None) -> Path:
    """A Composer-format checkpoint of `hf` and `opt`: FlexBERT names, embedded config + tokenizer, RNG,
    timestamp (datetime.timedelta), scheduler state and an object of a training-loop package."""
    model = {flexbert_name(k): v for k, v in hf.state_dict().items()}  # includes the tied model.decoder.weight
    assert "model.decoder.weight" in model
    osd = opt.state_dict()
    if fqn:  # torch >= 2.4 Composer: get_optimizer_state_dict keys parameters by name (duplicates removed)
        name_of = {id(p): flexbert_name(n) for n, p in hf.named_parameters()}
        pid_name = {i: name_of[id(p)] for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
        osd = {"state": {pid_name[i]: s for i, s in osd["state"].items()},
               "param_groups": [dict(g, params=[pid_name[i] for i in g["params"]]) for g in osd["param_groups"]]}
    mod = types.ModuleType("composer.core.time")
    for name, m in (("composer", types.ModuleType("composer")), ("composer.core", types.ModuleType("composer.core")),
                    ("composer.core.time", mod)):
        monkeypatch.setitem(sys.modules, name, m)
    _TimeUnit.__module__, _TimeUnit.__qualname__ = "composer.core.time", "TimeUnit"
    mod.TimeUnit = _TimeUnit
    tok_state = {}
    if tokenizer is not None:
        for f in sorted(tokenizer.glob("*.json")):
            tok_state[f.stem] = {"file_extension": ".json", "content": json.loads(f.read_text())}
    state = {
        "model": model,
        "optimizers": {"StableAdamW": osd},
        "schedulers": {"LambdaLR": {"base_lrs": [1e-3, 1e-3], "last_epoch": 3, "_step_count": 4,
                                    "lr_lambdas": [None, None]}},
        "timestamp": {"epoch": 0, "batch": 3, "sample": 6, "token": 144, "batch_in_epoch": 3,
                      "total_wct": datetime.timedelta(seconds=12.5), "batch_wct": datetime.timedelta(seconds=0.1)},
        "integrations": {"huggingface": {"model": {"config": {"file_extension": ".json", "content": FLEX_CONFIG,
                                                              "class": "src.bert_layers.model.FlexBertForMaskedLM"}},
                                         "tokenizer": tok_state}},
        "run_name": "bioclinical-tiny", "rank_zero_seed": 17, "algorithms": [], "callbacks": {},
        "metadata": {"composer_env_info": {"composer_version": "0.24"}, "precision": "amp_bf16"},
        "dataset_state": {"train": {"epoch": 0, "sample_in_epoch": 6}, "eval": {}},
        "max_duration_unit": _TimeUnit.TOKEN,
        **(extra or {}),
    }
    rng = [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.random.get_rng_state()}]
    torch.save({"state": state, "rng": rng}, path)
    for name in ("composer.core.time", "composer.core", "composer"):
        monkeypatch.delitem(sys.modules, name)  # the loader must not need (or import) these packages
    return path


def jax_tree_of(sd: dict[str, np.ndarray], cfg: ModelConfig) -> dict:
    tree, report = P.hf_to_nnx(sd, cfg, "mlm")
    assert not report.missing
    return jax.tree.map(jnp.asarray, tree)


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
    ref = {k: v.numpy() for k, v in hf.state_dict().items() if k != P.TIED_DECODER}
    assert_bit_identical(ref, tensors(tmp_path / "hf_back" / "model.safetensors"))
    import transformers as tf

    ids = rng_ids((2, 21), seed=9)
    back = tf.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf_back").eval()
    assert torch.equal(torch_out(back, ids), torch_out(hf, ids))
    model = bcmb_jax.from_pretrained(tmp_path / "jax")
    np.testing.assert_allclose(np.asarray(model(ids).logits), torch_out(hf, ids).numpy(), atol=1e-4, rtol=0)

    # Moments: exactly optimi's, in the params tree layout; the position-keyed and the name-keyed
    # (torch >= 2.4) optimizer state dicts give the same result.
    step, mu, nu, hp = C.load_optimizer_moments(tmp_path / "jax")
    assert step == 3 and hp["optimizer"] == "StableAdamW" and hp["lr"] == 1e-3 and hp["weight_decay"] == 1e-2
    assert hp["betas"] == [0.9, 0.98] and hp["eps"] == 1e-6 and hp["max_lr"] == 1e-3
    params = P.model_tree(model)
    assert jax.tree.structure(mu) == jax.tree.structure(params) == jax.tree.structure(nu)
    flat_mu, flat_nu = P.nnx_to_hf(mu, cfg, "mlm"), P.nnx_to_hf(nu, cfg, "mlm")
    for n, p in hf.named_parameters():
        np.testing.assert_array_equal(flat_mu[n], opt.state[p]["exp_avg"].numpy(), err_msg=n)
        np.testing.assert_array_equal(flat_nu[n], opt.state[p]["exp_avg_sq"].numpy(), err_msg=n)
    ck = C.read_checkpoint(composer_file(tmp_path / "fqn.pt", hf, opt, monkeypatch, fqn=True))
    m2 = C.moments_from_optimizer(ck.optimizer, cfg, "mlm", "fqn.pt")
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
    ours = P.nnx_to_hf(jax.tree.map(np.asarray, params), cfg, "mlm")
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
    # Without --optimizer-state the weights alone convert.
    assert cli("to-jax", pt, tmp_path / "out") == 0 and not (tmp_path / "out" / "optimizer").exists()
    # No embedded config: --config (an HF config.json) must say what the model is.
    bare = composer_file(tmp_path / "bare.pt", hf, opt, monkeypatch, extra={"integrations": {}})
    assert cli("to-jax", bare, tmp_path / "bare") == 2 and "--config" in capsys.readouterr().err
    hf.config.save_pretrained(tmp_path / "cfg")
    assert cli("to-jax", bare, tmp_path / "bare", "--config", tmp_path / "cfg" / "config.json") == 0
    assert ModelConfig.from_json(tmp_path / "bare" / "config.json") == ModelConfig.from_hf_dict(hf.config.to_dict())


def test_flexbert_config_mapping():
    base = dict(FLEX_CONFIG, vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22,
                num_attention_heads=12, sliding_window=128)
    cfg = ModelConfig.from_hf_dict(C.hf_config_from_flexbert(base))
    assert cfg == ModelConfig(classifier_pooling="mean", mask_token_id=50284)  # BioClinical base, ModernBERT ids
    stage1 = C.hf_config_from_flexbert(dict(base, rotary_emb_base=10000.0, local_attn_rotary_emb_base=-1))
    assert stage1["global_rope_theta"] == stage1["local_rope_theta"] == 10000.0
    for key, value in (("normalization", "rmsnorm"), ("attention_layer", "rope_parallel"),
                       ("skip_first_prenorm", False), ("rotary_emb_interleaved", True)):
        with pytest.raises(ConfigError, match=f"`{key}`"):
            C.hf_config_from_flexbert(dict(base, **{key: value}))
    assert C.hf_name("model._orig_mod.bert.encoder.layers.3.attn.Wqkv.weight") == "model.layers.3.attn.Wqkv.weight"
    assert C.hf_name("module.model.bert.final_norm.weight") == "model.final_norm.weight"
    assert C.hf_name("model.decoder.bias") == "decoder.bias"


# ---------------------------------------------------------------------------------------------
# Safety, damaged inputs, refused outputs, the CLI


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"state": {"model": {"model.bert.final_norm.weight": torch.ones(4)}, "x": _Payload(marker)}}, bad)
    assert "posix.system" in C.pickle_globals(bad) or "nt.system" in C.pickle_globals(bad)
    assert cli("to-jax", bad, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "refused to unpickle" in err and "nothing in it was executed" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    # The same payload in an HF directory's pytorch_model.bin.
    hf_model("mlm").config.save_pretrained(tmp_path / "hf")
    torch.save({"model.final_norm.weight": torch.ones(64), "x": _Payload(marker)},
               tmp_path / "hf" / "pytorch_model.bin")
    assert cli("to-jax", tmp_path / "hf", tmp_path / "out") == 2
    assert "refused to unpickle" in capsys.readouterr().err and not marker.exists()


@pytest.mark.parametrize("damage", ["truncated_pt", "truncated_safetensors", "damaged_orbax"])
def test_damaged_inputs_give_one_line(tmp_path, damage, capsys):
    hf = hf_model("mlm")
    save_hf(hf, tmp_path / "hf")
    if damage == "truncated_pt":
        src = tmp_path / "ck.pt"
        torch.save({"state": {"model": hf.state_dict()}}, src)
        src.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        args = ["to-jax", src, tmp_path / "out"]
    elif damage == "truncated_safetensors":
        f = tmp_path / "hf" / "model.safetensors"
        f.write_bytes(f.read_bytes()[:4000])
        src = tmp_path / "hf"
        args = ["to-jax", src, tmp_path / "out"]
    else:
        assert cli("to-jax", tmp_path / "hf", tmp_path / "jax") == 0
        for f in (tmp_path / "jax" / "params").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(f.read_bytes()[:10])
        src = tmp_path / "jax"
        args = ["to-hf", src, tmp_path / "out"]
    capsys.readouterr()
    assert cli(*args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(src) in err
    assert "truncated or corrupt" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_existing_output_is_refused_untouched_unless_overwrite(tmp_path, capsys):
    save_hf(hf_model("mlm"), tmp_path / "hf")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = digest(out)
    assert cli("to-jax", tmp_path / "hf", out) == 2
    assert "already exists" in capsys.readouterr().err and digest(out) == before
    assert cli("to-jax", tmp_path / "hf", out, "--overwrite") == 0
    assert not (out / "keep.txt").exists() and PT.locate(out).kind == "jax"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_cli_help_and_exit_codes(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, str(REPO / "convert_weights.py"), "to-jax", "--help"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "examples:" in run.stdout and "--optimizer-state" in run.stdout
    assert "to-hf SRC OUT" in run.stdout
    # A damaged orbax tree: one line on stderr, no traceback, not even orbax's background-task noise.
    save_hf(hf_model("mlm"), tmp_path / "hf")
    assert cli("to-jax", tmp_path / "hf", tmp_path / "jax") == 0
    for f in (tmp_path / "jax" / "params" / "d").iterdir():
        f.write_bytes(f.read_bytes()[:10])
    run = subprocess.run([sys.executable, str(REPO / "convert_weights.py"), "to-hf", str(tmp_path / "jax"),
                          str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("error: ") and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1 and "truncated or corrupt" in run.stderr and run.stdout == ""
    with pytest.raises(SystemExit) as e:
        convert_weights.main(["sideways", "a", "b"])
    assert e.value.code == 2
    assert cli("to-jax", tmp_path / "missing", tmp_path / "out") == 2
