"""Composer checkpoints of the ModernBERT / BioClinical training runs: FlexBERT names and config, the
embedded tokenizer, and the StableAdamW moments - an adapter that yields HF-named arrays.

A Composer checkpoint (`torch.save` of `{"state": State.state_dict(), "rng": [...]}`) holds:

    state["model"]          FlexBERT weights: model.bert.embeddings.*, model.bert.encoder.layers.N.*,
                            model.bert.final_norm.*, model.head.*, model.decoder.* (decoder.weight is the
                            token embedding matrix, tied)
    state["optimizers"]     {optimizer class name: torch optimizer state_dict}; parameters keyed by
                            position (`optimizer.state_dict()`) or by name (Composer >= 0.20 with
                            torch.distributed.checkpoint's `get_optimizer_state_dict`)
    state["integrations"]["huggingface"]   {"model": {"config": {"content": FlexBertConfig dict}},
                                            "tokenizer": {file name (Composer >= 0.20) or file stem:
                                                          {"file_extension", "content"}}}
    state["timestamp"]      the counters, flat or (Composer >= 0.20) nested as {"Timestamp": {...}}
    state["schedulers"], state["callbacks"], ..., and "rng" beside "state"

FlexBERT names equal HF ModernBERT names after a prefix change (`bert.encoder.layers.N.` ->
`model.layers.N.`, `bert.` -> `model.`), so `keymap.KEY_MAP` does the rest. The file is read with
`torch_files.safe_load`, which never runs code from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bcmb_jax.errors import ConfigError, WeightsError
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.weights import keymap
from bcmb_jax.weights.torch_files import is_tensor, safe_load, torch_to_numpy

MODERNBERT_SPECIAL_IDS = {"cls_token_id": 50281, "bos_token_id": 50281, "sep_token_id": 50282,
                          "eos_token_id": 50282, "pad_token_id": 50283, "mask_token_id": 50284}
DROPPED_BUFFERS = ("rotary_emb.inv_freq", "rotary_emb._cos_cached", "rotary_emb._sin_cached")


# ---------------------------------------------------------------------------------------------
# FlexBERT names and config


def hf_name(flex_name: str) -> str:
    """FlexBERT (Composer) parameter name -> HF ModernBERT name.

    Drops the Composer `HuggingFaceModel` wrapper prefix `model.` and any `module.` (DDP) or
    `_orig_mod.` (torch.compile) components, then renames `bert.encoder.layers.N.` ->
    `model.layers.N.` and `bert.` -> `model.`; `head.*`, `decoder.*`, `classifier.*` keep their names.
    """
    n = ".".join(p for p in flex_name.split(".") if p not in ("module", "_orig_mod"))
    if n.startswith("model.") and not n.startswith(("model.layers.", "model.embeddings.", "model.final_norm.")):
        n = n[len("model."):]
    if n.startswith("bert.encoder.layers."):
        return "model.layers." + n[len("bert.encoder.layers."):]
    if n.startswith("bert."):
        return "model." + n[len("bert."):]
    return n


# FlexBertConfig's own defaults (ModernBERT src/bert_layers/configuration_bert.py, and the
# transformers BertConfig it extends) for the keys this mapping reads: a config that omits a key
# means this value.
FLEXBERT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 512, "initializer_range": 0.02,
    "attention_layer": "base", "attention_probs_dropout_prob": 0.0, "attn_out_bias": False, "attn_qkv_bias": False,
    "bert_layer": "prenorm", "decoder_bias": True, "embed_dropout_prob": 0.0, "embed_norm": True,
    "final_norm": False, "embedding_layer": "absolute_pos", "mlp_dropout_prob": 0.0, "mlp_in_bias": False,
    "mlp_layer": "mlp", "mlp_out_bias": False, "norm_kwargs": {}, "normalization": "rmsnorm",
    "head_class_dropout": 0.0, "head_pred_act": "silu", "head_pred_bias": False, "head_pred_norm": True,
    "rotary_emb_dim": None, "rotary_emb_base": 10000.0, "rotary_emb_scale_base": None,
    "rotary_emb_interleaved": False, "init_std": 0.02, "init_cutoff_factor": 2.0, "skip_first_prenorm": False,
    "sliding_window": -1, "global_attn_every_n_layers": -1, "local_attn_rotary_emb_base": -1,
    "local_attn_rotary_emb_dim": None, "tie_word_embeddings": True,
}


def hf_config_from_flexbert(flex: dict[str, Any], source: str = "FlexBERT config",
                            special_ids: dict[str, int] | None = None) -> dict[str, Any]:
    """An HF ModernBERT config.json dict from a FlexBERT config dict, as ModernBERT's HF converter maps it.

    Missing keys take `FLEXBERT_DEFAULTS` (what FlexBertConfig itself would use).
    rotary_emb_base -> global theta, local_attn_rotary_emb_base (-1: same) -> local theta,
    sliding_window -> local_attention, norm_kwargs.eps/bias -> norm_eps/norm_bias, *_bias flags,
    head_pred_act -> classifier_activation (the MLM head's activation), pooling "mean" as the
    converter writes it, max_position_embeddings 8192 (FlexBERT's BERT-inherited 512 is unused with
    rotary embeddings). Architectures the Flax model does not implement raise a `ConfigError`.
    """
    def get(key: str) -> Any:
        return FLEXBERT_DEFAULTS[key] if flex.get(key) is None else flex[key]

    def bad(key, why):
        default = "" if flex.get(key) is not None else " (the default)"
        raise ConfigError(f"{source}: FlexBERT `{key}` = {get(key)!r}{default} is not supported: {why}")

    def layer_kind(key, want):
        v = str(get(key))
        for pre in ("unpadded_", "padded_"):
            v = v[len(pre):] if v.startswith(pre) else v
        if v != want:
            bad(key, f"only {want!r} (the ModernBERT architecture) is implemented")

    layer_kind("attention_layer", "rope")
    layer_kind("mlp_layer", "glu")
    layer_kind("embedding_layer", "sans_pos")
    layer_kind("bert_layer", "prenorm")
    if get("normalization") != "layernorm":
        bad("normalization", "only 'layernorm' is implemented")
    for key, want in (("final_norm", True), ("embed_norm", True), ("skip_first_prenorm", True),
                      ("head_pred_norm", True), ("rotary_emb_interleaved", False)):
        if bool(get(key)) != want:
            bad(key, f"only {want} is implemented")
    if get("rotary_emb_scale_base") is not None:
        bad("rotary_emb_scale_base", "XPos scaling is not implemented")
    H, N = int(get("hidden_size")), int(get("num_attention_heads"))
    for key in ("rotary_emb_dim", "local_attn_rotary_emb_dim"):
        if get(key) not in (None, H // N):
            bad(key, f"partial rotary embeddings are not implemented (head_dim is {H // N})")
    if bool(get("attn_qkv_bias")) != bool(get("attn_out_bias")):
        bad("attn_qkv_bias", "must equal attn_out_bias (HF has one attention_bias)")
    if bool(get("mlp_in_bias")) != bool(get("mlp_out_bias")):
        bad("mlp_in_bias", "must equal mlp_out_bias (HF has one mlp_bias)")

    norm = get("norm_kwargs") or {}
    window = int(get("sliding_window"))
    every = int(get("global_attn_every_n_layers"))
    theta = float(get("rotary_emb_base"))
    local_theta = get("local_attn_rotary_emb_base")
    d = {
        "model_type": "modernbert",
        "vocab_size": int(get("vocab_size")),
        "hidden_size": H,
        "intermediate_size": int(get("intermediate_size")),
        "num_hidden_layers": int(get("num_hidden_layers")),
        "num_attention_heads": N,
        "max_position_embeddings": max(8192, int(get("max_position_embeddings"))),
        # sliding_window -1: no local layers at all.
        "global_attn_every_n_layers": every if window != -1 and every > 0 else 1,
        "local_attention": window if window != -1 else 128,
        "global_rope_theta": theta,
        "local_rope_theta": float(local_theta) if local_theta not in (-1, None) else theta,
        "hidden_activation": get("hidden_act"),
        "classifier_activation": get("head_pred_act"),
        "norm_eps": float(norm.get("eps", 1e-5)),  # torch.nn.LayerNorm's defaults
        "norm_bias": bool(norm.get("bias", True)),
        "attention_bias": bool(get("attn_out_bias")),
        "mlp_bias": bool(get("mlp_in_bias")),
        "classifier_bias": bool(get("head_pred_bias")),
        "decoder_bias": bool(get("decoder_bias")),
        "attention_dropout": float(get("attention_probs_dropout_prob")),
        "embedding_dropout": float(get("embed_dropout_prob")),
        "mlp_dropout": float(get("mlp_dropout_prob")),
        "classifier_dropout": float(get("head_class_dropout")),
        "classifier_pooling": "mean",
        "initializer_range": float(flex.get("init_std", flex.get("initializer_range", 0.02))),
        "initializer_cutoff_factor": float(get("init_cutoff_factor")),
        "tie_word_embeddings": bool(get("tie_word_embeddings")),
    }
    if special_ids is None:
        special_ids = MODERNBERT_SPECIAL_IDS if d["vocab_size"] == 50368 else {
            k: flex[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id")
            if flex.get(k) is not None}
    d.update(special_ids)
    return d


def special_ids_from_tokenizer(files: dict[str, str]) -> dict[str, int]:
    """{cls,sep,pad,mask,bos,eos}_token_id from tokenizer file texts (tokenizer.json + tokenizer_config.json)."""
    if "tokenizer.json" not in files:
        return {}
    try:
        tok = json.loads(files["tokenizer.json"])
        conf = json.loads(files.get("tokenizer_config.json", "{}"))
        special = json.loads(files.get("special_tokens_map.json", "{}"))
    except json.JSONDecodeError:
        return {}
    vocab = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    model_vocab = (tok.get("model") or {}).get("vocab")
    if isinstance(model_vocab, dict):
        vocab = {**model_vocab, **vocab}

    def token(name):
        v = special.get(name, conf.get(name))
        return v.get("content") if isinstance(v, dict) else v

    out = {}
    for role, keys in (("cls_token", ("cls_token_id", "bos_token_id")), ("sep_token", ("sep_token_id",
                       "eos_token_id")), ("pad_token", ("pad_token_id",)), ("mask_token", ("mask_token_id",))):
        t = token(role)
        if t in vocab:
            out.update({k: int(vocab[t]) for k in keys})
    return out


# ---------------------------------------------------------------------------------------------
# Reading a Composer checkpoint


@dataclass
class ComposerCheckpoint:
    state_dict: dict[str, np.ndarray]  # HF names -> arrays (numpy, saved dtypes)
    flex_config: dict[str, Any] | None  # the embedded FlexBERT config.json dict
    tokenizer: dict[str, str]  # embedded tokenizer files: file name -> text
    optimizer: dict[str, Any] | None  # torch optimizer state_dict of the (single) optimizer
    optimizer_name: str | None
    timestamp: dict[str, Any] = field(default_factory=dict)  # epoch / batch / sample / token counters
    run_name: str | None = None
    dropped: list[str] = field(default_factory=list)  # non-parameter buffers left out


def read_checkpoint(path: str | Path) -> ComposerCheckpoint:
    """Reads a Composer `.pt` checkpoint (see the module docstring) with `safe_load`."""
    path = Path(path)
    obj = safe_load(path)
    state = obj.get("state") if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise WeightsError(f"{path}: not a Composer checkpoint (expected a dict with state['model'] holding the "
                             "weights); a plain PyTorch state dict belongs in an HF directory as pytorch_model.bin")
    sd, dropped = {}, []
    for k, v in state["model"].items():
        name = hf_name(k)
        if name.endswith(DROPPED_BUFFERS) or not is_tensor(v):
            dropped.append(k)
            continue
        if name in sd:
            raise WeightsError(f"{path}: two checkpoint entries map to the HF name `{name}` (one is `{k}`)")
        sd[name] = torch_to_numpy(v)

    hf = ((state.get("integrations") or {}).get("huggingface") or {})
    content = (((hf.get("model") or {}).get("config") or {}).get("content"))
    if isinstance(content, str):
        try:
            content = json.loads(content)
        except json.JSONDecodeError:
            raise WeightsError(f"{path}: the embedded model config is not valid JSON") from None
    tokenizer = _tokenizer_files(hf.get("tokenizer") or {})
    optimizers = state.get("optimizers") or {}
    if len(optimizers) > 1:
        raise WeightsError(f"{path}: holds {len(optimizers)} optimizers ({sorted(optimizers)}); expected one")
    opt_name, opt_sd = next(iter(optimizers.items()), (None, None))
    timestamp = _counters(state.get("timestamp"))
    run_name = state.get("run_name") if isinstance(state.get("run_name"), str) else None
    return ComposerCheckpoint(sd, content if isinstance(content, dict) else None, tokenizer, opt_sd, opt_name,
                              timestamp, run_name, dropped)


def _tokenizer_files(entries: dict) -> dict[str, str]:
    """Embedded tokenizer files -> {file name: text}; keys are file names (Composer >= 0.20) or stems."""
    out = {}
    for key, entry in entries.items():
        ext = entry.get("file_extension") if isinstance(entry, dict) else None
        if ext not in (".json", ".txt") or not isinstance(key, str) or "/" in key or "\\" in key \
                or key.startswith("."):
            continue
        name = key if key.endswith(ext) else key + ext
        content = entry.get("content")
        out[name] = json.dumps(content, ensure_ascii=False) if ext == ".json" else "\n".join(content)
    return out


def _counters(ts: Any) -> dict[str, int]:
    """The integer counters of Composer's timestamp state, flat or nested as {"Timestamp": {...}}."""
    if isinstance(ts, dict) and len(ts) == 1 and isinstance(ts.get("Timestamp"), dict):
        ts = ts["Timestamp"]
    if not isinstance(ts, dict):
        return {}
    return {k: int(v) for k, v in ts.items() if isinstance(v, int | np.integer) and not isinstance(v, bool)}


# ---------------------------------------------------------------------------------------------
# Optimizer moments


@dataclass
class Moments:
    step: int  # updates done (torch-optimi's param-group `step`)
    exp_avg: dict[str, np.ndarray]  # HF name -> first moment, PyTorch layout
    exp_avg_sq: dict[str, np.ndarray]  # HF name -> second moment
    hparams: dict[str, Any]  # optimizer name, lr, betas, eps, weight_decay, max_lr, per-group settings
    missing: list[str] = field(default_factory=list)  # parameters without state (moments set to 0)


def _torch_shape(e: keymap.Entry, cfg: ModelConfig) -> tuple[int, ...]:
    shape = keymap.expected_shape(e, cfg)
    return shape[::-1] if e.transpose else shape


def _group_names(groups: list[dict], entries: list[keymap.Entry], cfg: ModelConfig, source: str) -> list[list[str]]:
    """HF names of each group's params, for position-keyed state dicts.

    torch numbers parameters by position over the groups in order; each group lists its params in
    the model's `named_parameters()` order (`params.module_order`, the FlexBERT order). One group:
    all parameters. Two groups: ModernBERT's weight-decay filter split them into "no decay"
    (ndim <= 1 or a bias) and "decay"; a group with weight_decay 0 is the no-decay one.
    """
    counts = [len(g["params"]) for g in groups]
    if sum(counts) != len(entries):
        raise WeightsError(f"{source}: the optimizer holds {sum(counts)} parameters in {len(groups)} group(s), "
                             f"the model has {len(entries)}")
    names = [e.hf for e in entries]
    if len(groups) == 1:
        return [names]
    if len(groups) != 2:
        raise WeightsError(f"{source}: cannot match {len(groups)} optimizer param groups to parameter names "
                             "(expected 1, or ModernBERT's 2: no-decay and decay)")
    no_decay = [e.hf for e in entries if len(_torch_shape(e, cfg)) <= 1 or e.hf.endswith(".bias")]
    decay = [n for n in names if n not in set(no_decay)]
    wd = [float(g.get("weight_decay", 0.0) or 0.0) for g in groups]
    options = [[no_decay, decay], [decay, no_decay]]
    if wd[1] == 0.0 and wd[0] != 0.0:
        options.reverse()
    for option in options:
        if [len(x) for x in option] == counts:
            return option
    raise WeightsError(f"{source}: optimizer group sizes {counts} do not match the no-decay/decay split "
                         f"({len(no_decay)}, {len(decay)}) of the model's parameters")


def moments_from_optimizer(opt_sd: dict[str, Any], cfg: ModelConfig, task: str, source: str,
                           name: str | None = None) -> Moments:
    """Adam-family moments of a torch optimizer state_dict, by HF parameter name; shapes verified."""
    if not isinstance(opt_sd, dict) or "state" not in opt_sd or "param_groups" not in opt_sd:
        raise WeightsError(f"{source}: the optimizer entry is not a torch optimizer state_dict")
    groups, state = opt_sd["param_groups"], opt_sd["state"]
    entries = keymap.module_order(cfg, task)
    by_name = {e.hf: e for e in entries}
    ids = [pid for g in groups for pid in g["params"]]
    if ids and all(isinstance(i, str) for i in ids):  # keyed by parameter name (torch >= 2.4 Composer)
        emb = "model.embeddings.tok_embeddings.weight"
        names = [hf_name(i) for i in ids]
        tied = {keymap.TIED_DECODER: emb} if emb not in names else {}  # the shared tensor under its other name
        key_of = {tied.get(hf_name(i), hf_name(i)): i for i in ids}
        unknown = sorted(set(key_of) - set(by_name))
        absent = sorted(set(by_name) - set(key_of))
        if unknown or absent:
            raise WeightsError(f"{source}: optimizer parameters do not match the model: unknown "
                                 f"{unknown or 'none'}; missing {absent or 'none'}")
    else:
        group_names = _group_names(groups, entries, cfg, source)
        key_of = {n: pid for g, names in zip(groups, group_names) for pid, n in zip(g["params"], names)}

    steps, mu, nu, missing = set(), {}, {}, []
    for n in (e.hf for e in entries):
        st = state.get(key_of[n])
        shape = _torch_shape(by_name[n], cfg)
        if not st:
            missing.append(n)
            mu[n] = nu[n] = np.zeros(shape, np.float32)
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            if key not in st:
                raise WeightsError(f"{source}: optimizer state of `{n}` has no `{key}` (keys: {sorted(st)}); "
                                     "not an Adam-family optimizer")
            x = torch_to_numpy(st[key]).astype(np.float32)
            if x.shape != shape:
                raise WeightsError(f"{source}: optimizer `{key}` of `{n}` (index {key_of[n]!r}) has shape "
                                     f"{list(x.shape)}, the parameter has {list(shape)}")
            (mu if key == "exp_avg" else nu)[n] = x
        if "step" in st:
            steps.add(int(float(st["step"])))
    steps |= {int(float(g["step"])) for g in groups if g.get("step") is not None}
    if len(steps) > 1:
        raise WeightsError(f"{source}: optimizer step counts differ between parameters: {sorted(steps)}")
    step = steps.pop() if steps else 0
    return Moments(step, mu, nu, _hparams(groups, name, step), missing)


def _plain(v):
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    try:
        return float(v)  # 0-d tensors / numpy scalars
    except (TypeError, ValueError):
        return repr(v)


def _hparams(groups: list[dict], name: str | None, step: int) -> dict[str, Any]:
    """Summary hyper-parameters (from the decaying group, else the first) and every group's settings."""
    plain = [{k: _plain(v) for k, v in g.items() if k != "params"} | {"num_params": len(g["params"])}
             for g in groups]
    main = max(plain, key=lambda g: float(g.get("weight_decay") or 0.0))
    out: dict[str, Any] = {"optimizer": name, "step": step}
    if "betas" not in main and "beta1" in main:  # torch-optimi names them beta1, beta2
        main = dict(main, betas=[main["beta1"], main.get("beta2")])
    for key in ("lr", "betas", "eps", "weight_decay", "max_lr", "initial_lr", "decouple_lr"):
        if key in main:
            out[key] = main[key]
    out["groups"] = plain
    return out


__all__ = ["read_checkpoint", "hf_name", "hf_config_from_flexbert", "special_ids_from_tokenizer",
           "moments_from_optimizer", "ComposerCheckpoint", "Moments", "FLEXBERT_DEFAULTS"]
