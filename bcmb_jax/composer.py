"""Composer checkpoints of the ModernBERT / BioClinical training runs: safe loading, FlexBERT names and
config, and the StableAdamW moments.

A Composer checkpoint (`torch.save` of `{"state": State.state_dict(), "rng": [...]}`) holds:

    state["model"]          FlexBERT weights: model.bert.embeddings.*, model.bert.encoder.layers.N.*,
                            model.bert.final_norm.*, model.head.*, model.decoder.* (decoder.weight is the
                            token embedding matrix, tied)
    state["optimizers"]     {optimizer class name: torch optimizer state_dict}; parameters keyed by
                            position (torch < 2.4: `optimizer.state_dict()`) or by name (torch >= 2.4:
                            `get_optimizer_state_dict`)
    state["integrations"]["huggingface"]   {"model": {"config": {"content": FlexBertConfig dict}},
                                            "tokenizer": {file stem: {"file_extension", "content"}}}
    state["timestamp"], state["schedulers"], state["callbacks"], ..., and "rng" beside "state"

FlexBERT names equal HF ModernBERT names after a prefix change (`bert.encoder.layers.N.` ->
`model.layers.N.`, `bert.` -> `model.`), so `params.KEY_MAP` does the rest.

Loading never runs code from the file: `safe_load` lists the pickle's globals statically
(`pickletools`), refuses anything outside a short allow-list, and then unpickles with
`torch.load(weights_only=True)`, where the allowed non-tensor objects are numpy arrays/scalars
(the numpy RNG state), `datetime` values (the timestamp) and plain containers. Objects of
training-loop packages (composer, torchmetrics, omegaconf, ...) are rebuilt as inert placeholders
that only hold their data.
"""

from __future__ import annotations

import datetime
import json
import pickletools
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bcmb_jax import params as P
from bcmb_jax.config import ConfigError, ModelConfig

# Packages whose objects (enums, small state holders) may appear in a training checkpoint but are
# not needed here: they are rebuilt as `Inert` placeholders, never imported or run.
INERT_PACKAGES = ("composer", "torchmetrics", "omegaconf", "streaming", "src", "transformers", "tokenizers",
                  "optimi")
MODERNBERT_SPECIAL_IDS = {"cls_token_id": 50281, "bos_token_id": 50281, "sep_token_id": 50282,
                          "eos_token_id": 50282, "pad_token_id": 50283, "mask_token_id": 50284}
DROPPED_BUFFERS = ("rotary_emb.inv_freq", "rotary_emb._cos_cached", "rotary_emb._sin_cached")


# ---------------------------------------------------------------------------------------------
# Safe unpickling


class Inert:
    """Stands in for an object of a class this tool does not need: keeps the pickled data, runs nothing."""

    pickle_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.pickle_name}>"


def _real_globals() -> dict[str, Any]:
    """Pickle globals rebuilt for real: value constructors that cannot run other code."""
    from numpy._core import multiarray

    out: dict[str, Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x / 2.x pickles
        out[f"{mod}._reconstruct"] = multiarray._reconstruct
        out[f"{mod}.scalar"] = multiarray.scalar
    out["numpy.ndarray"] = np.ndarray
    out["numpy.dtype"] = np.dtype
    for name in dir(np.dtypes):
        if name.endswith("DType"):
            out[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    for name in ("timedelta", "datetime", "date", "time", "timezone"):
        out[f"datetime.{name}"] = getattr(datetime, name)
    out["collections.defaultdict"] = defaultdict
    for t in (list, dict, tuple, set, frozenset, int, float, bool, str):
        out[f"builtins.{t.__name__}"] = t
    return out


def pickle_globals(path: Path) -> set[str]:
    """The `module.name` globals a torch zip checkpoint's pickle refers to, read without unpickling."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if not names:
                raise P.WeightsError(f"{path}: a zip file, but not a torch.save checkpoint (no data.pkl)")
            data = zf.read(names[0])
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise P.WeightsError(f"{path}: cannot read PyTorch checkpoint ({e}); truncated or corrupt?") from None
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    found, ops = set(), set()
    try:
        for op, arg, _ in pickletools.genops(data):
            ops.add(op.name)
            if op.name == "GLOBAL":
                module, name = arg.split(" ", 1)
                module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))
                found.add(f"{module}.{name}")
    except (ValueError, EOFError) as e:  # pickletools reports damage as ValueError
        raise P.WeightsError(f"{path}: damaged pickle in the checkpoint ({e}); truncated or corrupt?") from None
    for op in ("STACK_GLOBAL", "INST", "OBJ"):
        if op in ops:
            raise P.WeightsError(f"{path}: the pickle uses the {op} opcode, which the safe loader does not accept "
                                 "(torch.save writes pickle protocol 2); nothing in it was executed")
    return found


def safe_load(path: str | Path) -> Any:
    """Unpickles a `torch.save` zip checkpoint without running code from it (tensors on the CPU, mmapped).

    Globals torch itself allows (tensors, storages, OrderedDict) and `_real_globals` are rebuilt;
    those of `INERT_PACKAGES` become `Inert` placeholders; any other global (a function such as
    `os.system`, an unknown class) makes the whole file refused before anything is unpickled.
    """
    import torch
    from torch import _weights_only_unpickler as wou

    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise P.WeightsError(f"{path}: not a PyTorch zip checkpoint (truncated or corrupt, or a legacy format)")
    torch_ok = set(wou._get_allowed_globals())
    real = _real_globals()
    # All of `real`, found or not: objects are rebuilt only if their type is allowed (numpy dtype classes).
    allowed: list[tuple[Any, str]] = [(obj, name) for name, obj in real.items()]
    refused = []
    for g in sorted(pickle_globals(path) - torch_ok - set(real)):
        if g.split(".", 1)[0] in INERT_PACKAGES:
            allowed.append((type("Inert_" + g.replace(".", "_"), (Inert,), {"pickle_name": g}), g))
        else:
            refused.append(g)
    if refused:
        raise P.WeightsError(f"{path}: refused to unpickle: it refers to {', '.join(refused)}, outside the "
                             "allow-list (tensors, numpy arrays, datetime values, plain containers, inert "
                             f"placeholders for {'/'.join(INERT_PACKAGES)} objects); nothing in it was executed")
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except wou.UnpicklingError as e:
        from bcmb_jax.cli import refusal

        raise P.WeightsError(f"{path}: {refusal(str(e))}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        msg = " ".join(str(e).split())[:300]
        raise P.WeightsError(f"{path}: cannot read PyTorch checkpoint ({msg}); truncated or corrupt?") from None


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


def _flag(flex: dict, key: str, default: Any) -> Any:
    v = flex.get(key, default)
    return default if v is None and default is not None else v


def hf_config_from_flexbert(flex: dict[str, Any], source: str = "FlexBERT config",
                            special_ids: dict[str, int] | None = None) -> dict[str, Any]:
    """An HF ModernBERT config.json dict from a FlexBERT config dict, as ModernBERT's HF converter maps it.

    rotary_emb_base -> global theta, local_attn_rotary_emb_base (-1: same) -> local theta,
    sliding_window -> local_attention, norm_kwargs.eps/bias -> norm_eps/norm_bias, *_bias flags,
    head_pred_act -> classifier_activation (the MLM head's activation), pooling "mean" as the
    converter writes it, max_position_embeddings 8192 (FlexBERT's BERT-inherited 512 is unused with
    rotary embeddings). Architectures the Flax model does not implement raise a `ConfigError`.
    """
    def bad(key, why):
        raise ConfigError(f"{source}: FlexBERT `{key}` = {flex.get(key)!r} is not supported: {why}")

    def layer_kind(key, want, default):
        v = str(_flag(flex, key, default))
        for pre in ("unpadded_", "padded_"):
            v = v[len(pre):] if v.startswith(pre) else v
        if v != want:
            bad(key, f"only {want!r} (the ModernBERT architecture) is implemented")

    layer_kind("attention_layer", "rope", "base")
    layer_kind("mlp_layer", "glu", "mlp")
    layer_kind("embedding_layer", "sans_pos", "absolute_pos")
    layer_kind("bert_layer", "prenorm", "prenorm")
    if _flag(flex, "normalization", "rmsnorm") != "layernorm":
        bad("normalization", "only 'layernorm' is implemented")
    for key, want in (("final_norm", True), ("embed_norm", True), ("skip_first_prenorm", True),
                      ("head_pred_norm", True), ("rotary_emb_interleaved", False)):
        if bool(_flag(flex, key, not want)) != want:
            bad(key, f"only {want} is implemented")
    if flex.get("rotary_emb_scale_base") is not None:
        bad("rotary_emb_scale_base", "XPos scaling is not implemented")
    H, N = int(_flag(flex, "hidden_size", 768)), int(_flag(flex, "num_attention_heads", 12))
    for key in ("rotary_emb_dim", "local_attn_rotary_emb_dim"):
        if flex.get(key) not in (None, H // N):
            bad(key, f"partial rotary embeddings are not implemented (head_dim is {H // N})")
    if bool(flex.get("attn_qkv_bias", False)) != bool(flex.get("attn_out_bias", False)):
        bad("attn_qkv_bias", "must equal attn_out_bias (HF has one attention_bias)")
    if bool(flex.get("mlp_in_bias", False)) != bool(flex.get("mlp_out_bias", False)):
        bad("mlp_in_bias", "must equal mlp_out_bias (HF has one mlp_bias)")

    norm = flex.get("norm_kwargs") or {}
    window = int(_flag(flex, "sliding_window", -1))
    every = int(_flag(flex, "global_attn_every_n_layers", -1))
    theta = float(_flag(flex, "rotary_emb_base", 10000.0))
    local_theta = float(_flag(flex, "local_attn_rotary_emb_base", -1))
    d = {
        "model_type": "modernbert",
        "vocab_size": int(_flag(flex, "vocab_size", 30522)),
        "hidden_size": H,
        "intermediate_size": int(_flag(flex, "intermediate_size", 3072)),
        "num_hidden_layers": int(_flag(flex, "num_hidden_layers", 12)),
        "num_attention_heads": N,
        "max_position_embeddings": max(8192, int(_flag(flex, "max_position_embeddings", 512))),
        # sliding_window -1: no local layers at all.
        "global_attn_every_n_layers": every if window != -1 and every > 0 else 1,
        "local_attention": window if window != -1 else 128,
        "global_rope_theta": theta,
        "local_rope_theta": local_theta if local_theta not in (-1, None) else theta,
        "hidden_activation": _flag(flex, "hidden_act", "gelu"),
        "classifier_activation": _flag(flex, "head_pred_act", "silu"),
        "norm_eps": float(norm.get("eps", 1e-5)),
        "norm_bias": bool(norm.get("bias", True)),
        "attention_bias": bool(flex.get("attn_out_bias", False)),
        "mlp_bias": bool(flex.get("mlp_in_bias", False)),
        "classifier_bias": bool(flex.get("head_pred_bias", False)),
        "decoder_bias": bool(_flag(flex, "decoder_bias", True)),
        "attention_dropout": float(_flag(flex, "attention_probs_dropout_prob", 0.0)),
        "embedding_dropout": float(_flag(flex, "embed_dropout_prob", 0.0)),
        "mlp_dropout": float(_flag(flex, "mlp_dropout_prob", 0.0)),
        "classifier_dropout": float(_flag(flex, "head_class_dropout", 0.0)),
        "classifier_pooling": "mean",
        "initializer_range": float(_flag(flex, "init_std", _flag(flex, "initializer_range", 0.02))),
        "initializer_cutoff_factor": float(_flag(flex, "init_cutoff_factor", 2.0)),
        "tie_word_embeddings": bool(_flag(flex, "tie_word_embeddings", True)),
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
    from bcmb_jax.params import torch_to_numpy

    path = Path(path)
    obj = safe_load(path)
    state = obj.get("state") if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise P.WeightsError(f"{path}: not a Composer checkpoint (expected a dict with state['model'] holding the "
                             "weights); a plain PyTorch state dict belongs in an HF directory as pytorch_model.bin")
    sd, dropped = {}, []
    for k, v in state["model"].items():
        name = hf_name(k)
        if name.endswith(DROPPED_BUFFERS) or not _is_tensor(v):
            dropped.append(k)
            continue
        if name in sd:
            raise P.WeightsError(f"{path}: two checkpoint entries map to the HF name `{name}` (one is `{k}`)")
        sd[name] = torch_to_numpy(v)

    hf = ((state.get("integrations") or {}).get("huggingface") or {})
    content = (((hf.get("model") or {}).get("config") or {}).get("content"))
    if isinstance(content, str):
        try:
            content = json.loads(content)
        except json.JSONDecodeError:
            raise P.WeightsError(f"{path}: the embedded model config is not valid JSON") from None
    tokenizer = {}
    for stem, entry in (hf.get("tokenizer") or {}).items():
        ext = entry.get("file_extension") if isinstance(entry, dict) else None
        if ext not in (".json", ".txt") or "/" in stem or "\\" in stem or stem.startswith("."):
            continue
        content_t = entry.get("content")
        tokenizer[stem + ext] = json.dumps(content_t, ensure_ascii=False) if ext == ".json" else "\n".join(content_t)

    optimizers = state.get("optimizers") or {}
    if len(optimizers) > 1:
        raise P.WeightsError(f"{path}: holds {len(optimizers)} optimizers ({sorted(optimizers)}); expected one")
    opt_name, opt_sd = next(iter(optimizers.items()), (None, None))
    ts = state.get("timestamp") or {}
    timestamp = {k: int(v) for k, v in ts.items() if isinstance(v, int | np.integer)} if isinstance(ts, dict) else {}
    run_name = state.get("run_name") if isinstance(state.get("run_name"), str) else None
    return ComposerCheckpoint(sd, content if isinstance(content, dict) else None, tokenizer, opt_sd, opt_name,
                              timestamp, run_name, dropped)


def _is_tensor(x) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


# ---------------------------------------------------------------------------------------------
# Optimizer moments


@dataclass
class Moments:
    step: int  # updates done (torch-optimi's param-group `step`)
    exp_avg: dict[str, np.ndarray]  # HF name -> first moment, PyTorch layout
    exp_avg_sq: dict[str, np.ndarray]  # HF name -> second moment
    hparams: dict[str, Any]  # optimizer name, lr, betas, eps, weight_decay, max_lr, per-group settings
    missing: list[str] = field(default_factory=list)  # parameters without state (moments set to 0)


def _torch_shape(e: P.Entry, cfg: ModelConfig) -> tuple[int, ...]:
    shape = P.expected_shape(e, cfg)
    return shape[::-1] if e.transpose else shape


def _group_names(groups: list[dict], entries: list[P.Entry], cfg: ModelConfig, source: str) -> list[list[str]]:
    """HF names of each group's params, for position-keyed state dicts.

    torch numbers parameters by position over the groups in order; each group lists its params in
    the model's `named_parameters()` order (`params.module_order`, the FlexBERT order). One group:
    all parameters. Two groups: ModernBERT's weight-decay filter split them into "no decay"
    (ndim <= 1 or a bias) and "decay"; a group with weight_decay 0 is the no-decay one.
    """
    counts = [len(g["params"]) for g in groups]
    if sum(counts) != len(entries):
        raise P.WeightsError(f"{source}: the optimizer holds {sum(counts)} parameters in {len(groups)} group(s), "
                             f"the model has {len(entries)}")
    names = [e.hf for e in entries]
    if len(groups) == 1:
        return [names]
    if len(groups) != 2:
        raise P.WeightsError(f"{source}: cannot match {len(groups)} optimizer param groups to parameter names "
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
    raise P.WeightsError(f"{source}: optimizer group sizes {counts} do not match the no-decay/decay split "
                         f"({len(no_decay)}, {len(decay)}) of the model's parameters")


def moments_from_optimizer(opt_sd: dict[str, Any], cfg: ModelConfig, task: str, source: str,
                           name: str | None = None) -> Moments:
    """Adam-family moments of a torch optimizer state_dict, by HF parameter name; shapes verified."""
    from bcmb_jax.params import torch_to_numpy

    if not isinstance(opt_sd, dict) or "state" not in opt_sd or "param_groups" not in opt_sd:
        raise P.WeightsError(f"{source}: the optimizer entry is not a torch optimizer state_dict")
    groups, state = opt_sd["param_groups"], opt_sd["state"]
    entries = P.module_order(cfg, task)
    by_name = {e.hf: e for e in entries}
    ids = [pid for g in groups for pid in g["params"]]
    if ids and all(isinstance(i, str) for i in ids):  # keyed by parameter name (torch >= 2.4 Composer)
        emb = "model.embeddings.tok_embeddings.weight"
        names = [hf_name(i) for i in ids]
        tied = {P.TIED_DECODER: emb} if emb not in names else {}  # the shared tensor under its other name
        key_of = {tied.get(hf_name(i), hf_name(i)): i for i in ids}
        unknown = sorted(set(key_of) - set(by_name))
        absent = sorted(set(by_name) - set(key_of))
        if unknown or absent:
            raise P.WeightsError(f"{source}: optimizer parameters do not match the model: unknown "
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
                raise P.WeightsError(f"{source}: optimizer state of `{n}` has no `{key}` (keys: {sorted(st)}); "
                                     "not an Adam-family optimizer")
            x = torch_to_numpy(st[key]).astype(np.float32)
            if x.shape != shape:
                raise P.WeightsError(f"{source}: optimizer `{key}` of `{n}` (index {key_of[n]!r}) has shape "
                                     f"{list(x.shape)}, the parameter has {list(shape)}")
            (mu if key == "exp_avg" else nu)[n] = x
        if "step" in st:
            steps.add(int(float(st["step"])))
    steps |= {int(float(g["step"])) for g in groups if g.get("step") is not None}
    if len(steps) > 1:
        raise P.WeightsError(f"{source}: optimizer step counts differ between parameters: {sorted(steps)}")
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


def save_moments(out: Path, moments: Moments, cfg: ModelConfig, task: str) -> None:
    """Writes out/optimizer/ (orbax {count, mu, nu}, trees like params/) and out/optimizer.json."""
    import orbax.checkpoint as ocp

    mu, rep_mu = P.hf_to_nnx(moments.exp_avg, cfg, task, source="optimizer exp_avg")
    nu, rep_nu = P.hf_to_nnx(moments.exp_avg_sq, cfg, task, source="optimizer exp_avg_sq")
    rep_mu.raise_if("optimizer exp_avg")
    rep_nu.raise_if("optimizer exp_avg_sq")

    def str_keys(t):
        return {str(k): str_keys(v) for k, v in t.items()} if isinstance(t, dict) else np.asarray(t, np.float32)

    tree = {"count": np.asarray(moments.step, np.int64), "mu": str_keys(mu), "nu": str_keys(nu)}
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save((out / "optimizer").absolute(), tree)
    info = dict(moments.hparams, missing_state=moments.missing)
    (out / "optimizer.json").write_text(json.dumps(info, indent=2) + "\n")


def load_optimizer_moments(jax_dir: str | Path) -> tuple[int, dict, dict, dict[str, Any]]:
    """(step, mu_tree, nu_tree, hparams) of a JAX checkpoint directory converted with `--optimizer-state`.

    The trees have the structure of `pretrained.load_jax_tree(jax_dir)` (nested dicts, NNX paths,
    int layer keys), float32; feed them to `optim.stable_adamw_state_from_moments(params, mu, nu,
    step)`. hparams: optimizer.json (lr, betas, eps, weight_decay, max_lr, per-group settings).
    """
    from bcmb_jax.pretrained import restore_tree

    d = Path(jax_dir)
    if not (d / "optimizer").is_dir():
        raise P.WeightsError(f"{d}: no optimizer/ (convert the Composer checkpoint with --optimizer-state)")
    tree = restore_tree(d / "optimizer")
    try:
        hparams = json.loads((d / "optimizer.json").read_text())
    except FileNotFoundError:
        hparams = {}
    except json.JSONDecodeError as e:
        raise P.WeightsError(f"{d / 'optimizer.json'}: invalid JSON at line {e.lineno}: {e.msg}") from None
    return int(np.asarray(tree["count"])), tree["mu"], tree["nu"], hparams


__all__ = ["safe_load", "pickle_globals", "read_checkpoint", "hf_name", "hf_config_from_flexbert",
           "special_ids_from_tokenizer", "moments_from_optimizer", "save_moments", "load_optimizer_moments",
           "ComposerCheckpoint", "Moments", "Inert", "INERT_PACKAGES"]
