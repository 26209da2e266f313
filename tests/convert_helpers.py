"""Helpers of the conversion tests: the CLI, a tiny tokenizer, Composer-format checkpoints built locally."""

from __future__ import annotations

import datetime
import enum
import hashlib
import importlib.util
import json
import random
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from conftest import rng_ids

from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.weights import keymap

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


def digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# HF -> JAX -> HF


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
    import optimi

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
                  extra: dict | None = None, new_layout: bool = False) -> Path:
    """A Composer-format checkpoint of `hf` and `opt`: FlexBERT names, embedded config + tokenizer, RNG,
    timestamp (datetime.timedelta), scheduler state and an object of a training-loop package.

    new_layout: as Composer >= 0.20 writes it - tokenizer files keyed by file name, the timestamp
    nested as {"Timestamp": {...}}, and the optimizer state keyed by parameter name (implies `fqn`);
    otherwise the older layout - file stems, a flat timestamp, positional optimizer state (unless `fqn`).
    """
    fqn = fqn or new_layout
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
    timestamp = {"epoch": 0, "batch": 3, "sample": 6, "token": 144, "batch_in_epoch": 3,
                 "total_wct": datetime.timedelta(seconds=12.5), "batch_wct": datetime.timedelta(seconds=0.1)}
    tok_state = {}
    if tokenizer is not None:
        for f in sorted(tokenizer.glob("*.json")):
            tok_state[f.name if new_layout else f.stem] = {"file_extension": ".json",
                                                           "content": json.loads(f.read_text())}
    state = {
        "model": model,
        "optimizers": {"StableAdamW": osd},
        "schedulers": {"LambdaLR": {"base_lrs": [1e-3, 1e-3], "last_epoch": 3, "_step_count": 4,
                                    "lr_lambdas": [None, None]}},
        "timestamp": {"Timestamp": timestamp} if new_layout else timestamp,
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
    tree, report = keymap.hf_to_nnx(sd, cfg, "mlm")
    assert not report.missing
    return jax.tree.map(jnp.asarray, tree)
