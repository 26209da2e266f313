"""The one key map between Hugging Face ModernBERT state dicts and the NNX parameter tree.

`KEY_MAP` is the single table used in both directions (HF -> JAX on load, JAX -> HF on export).
Each row: (HF name, NNX path, kind, logical axes). `{i}` expands to layer numbers; rows whose
condition is false for a config (layer 0 has no attn_norm; biases that are off) are skipped.
Kinds: "linear" (PyTorch [out, in] -> kernel [in, out], a transpose), "copy" (same layout).
The logical axes name what each dimension of the JAX array is, and fix its size (`AXIS_KEYS`);
`training/sharding.py` maps them to mesh axes:

    vocab   the vocabulary                    embed   the hidden size (the residual stream)
    qkv     3 x hidden: queries, keys, values attn    num_heads x head_dim: the heads' outputs
    mlp_in  2 x intermediate: GeGLU input and gate     mlp    the intermediate size
    labels  the classifier's labels

Parameters are nested pure dicts keyed by NNX path (`nnx.to_pure_dict(nnx.state(model, nnx.Param))`,
layer indices as ints), the one form used in memory, in checkpoints and by the optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bcmb_jax.errors import WeightsError
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.heads import get as get_head

Cond = Callable[[ModelConfig, int], bool]
ALWAYS: Cond = lambda cfg, i: True  # noqa: E731

# (HF name, NNX path, kind, logical axes of the JAX array, condition)
KEY_MAP: tuple[tuple[str, str, str, tuple[str | None, ...], Cond], ...] = (
    ("model.embeddings.tok_embeddings.weight", "model.embeddings.tok_embeddings.embedding", "copy",
     ("vocab", "embed"), ALWAYS),
    ("model.embeddings.norm.weight", "model.embeddings.norm.scale", "copy", ("embed",), ALWAYS),
    ("model.embeddings.norm.bias", "model.embeddings.norm.bias", "copy", ("embed",), lambda c, i: c.norm_bias),
    ("model.layers.{i}.attn_norm.weight", "model.layers.{i}.attn_norm.scale", "copy", ("embed",),
     lambda c, i: i > 0),
    ("model.layers.{i}.attn_norm.bias", "model.layers.{i}.attn_norm.bias", "copy", ("embed",),
     lambda c, i: i > 0 and c.norm_bias),
    ("model.layers.{i}.attn.Wqkv.weight", "model.layers.{i}.attn.Wqkv.kernel", "linear", ("embed", "qkv"),
     ALWAYS),
    ("model.layers.{i}.attn.Wqkv.bias", "model.layers.{i}.attn.Wqkv.bias", "copy", ("qkv",),
     lambda c, i: c.attention_bias),
    ("model.layers.{i}.attn.Wo.weight", "model.layers.{i}.attn.Wo.kernel", "linear", ("attn", "embed"),
     ALWAYS),
    ("model.layers.{i}.attn.Wo.bias", "model.layers.{i}.attn.Wo.bias", "copy", ("embed",),
     lambda c, i: c.attention_bias),
    ("model.layers.{i}.mlp_norm.weight", "model.layers.{i}.mlp_norm.scale", "copy", ("embed",), ALWAYS),
    ("model.layers.{i}.mlp_norm.bias", "model.layers.{i}.mlp_norm.bias", "copy", ("embed",),
     lambda c, i: c.norm_bias),
    ("model.layers.{i}.mlp.Wi.weight", "model.layers.{i}.mlp.Wi.kernel", "linear", ("embed", "mlp_in"), ALWAYS),
    ("model.layers.{i}.mlp.Wi.bias", "model.layers.{i}.mlp.Wi.bias", "copy", ("mlp_in",), lambda c, i: c.mlp_bias),
    ("model.layers.{i}.mlp.Wo.weight", "model.layers.{i}.mlp.Wo.kernel", "linear", ("mlp", "embed"), ALWAYS),
    ("model.layers.{i}.mlp.Wo.bias", "model.layers.{i}.mlp.Wo.bias", "copy", ("embed",), lambda c, i: c.mlp_bias),
    ("model.final_norm.weight", "model.final_norm.scale", "copy", ("embed",), ALWAYS),
    ("model.final_norm.bias", "model.final_norm.bias", "copy", ("embed",), lambda c, i: c.norm_bias),
    # Prediction head (MLM and task models share the names).
    ("head.dense.weight", "head.dense.kernel", "linear", ("embed", "embed"), ALWAYS),
    ("head.dense.bias", "head.dense.bias", "copy", ("embed",), lambda c, i: c.classifier_bias),
    ("head.norm.weight", "head.norm.scale", "copy", ("embed",), ALWAYS),
    ("head.norm.bias", "head.norm.bias", "copy", ("embed",), lambda c, i: c.norm_bias),
    # MLM decoder: the weight is tied to the embeddings; only the bias is a parameter.
    ("decoder.bias", "decoder_bias", "copy", ("vocab",), lambda c, i: c.decoder_bias),
    # Task classifiers.
    ("classifier.weight", "classifier.kernel", "linear", ("embed", "labels"), ALWAYS),
    ("classifier.bias", "classifier.bias", "copy", ("labels",), ALWAYS),
)
TIED_DECODER = "decoder.weight"


@dataclass(frozen=True)
class Entry:
    hf: str
    path: tuple[str | int, ...]
    transpose: bool
    axes: tuple[str | None, ...]


def key_map(cfg: ModelConfig, task: str) -> list[Entry]:
    """The rows of `KEY_MAP` that exist for this config and task, with layer numbers filled in."""
    heads = get_head(task).prefixes
    out = []
    for hf, path, kind, axes, cond in KEY_MAP:
        if not hf.startswith("model.") and not hf.startswith(heads):
            continue
        layers = range(cfg.num_hidden_layers) if "{i}" in hf else [0]
        for i in layers:
            if cond(cfg, i):
                nnx_path = tuple(int(p) if p.isdigit() else p for p in path.format(i=i).split("."))
                out.append(Entry(hf.format(i=i), nnx_path, kind == "linear", axes))
    return out


def module_order(cfg: ModelConfig, task: str) -> list[Entry]:
    """`key_map` in PyTorch `named_parameters()` order: embeddings, layer 0, layer 1, ..., final norm, heads.

    HF ModernBERT and FlexBERT declare their modules in the same order (embeddings: tok_embeddings,
    norm; layer: attn_norm, attn.Wqkv, attn.Wo, mlp_norm, mlp.Wi, mlp.Wo; final_norm; head.dense,
    head.norm; decoder.bias or classifier) and a Linear/LayerNorm lists weight before bias, which is
    the row order of `KEY_MAP`. The tied decoder weight is not a separate parameter.
    """
    def key(e: Entry) -> tuple[int, int]:
        if e.path[:2] == ("model", "layers"):
            return 1, int(e.path[2])
        return (0, 0) if e.path[:2] == ("model", "embeddings") else (2, 0)

    return sorted(key_map(cfg, task), key=key)  # stable: within a layer, table order is module order


def axes_tree(cfg: ModelConfig, task: str) -> dict:
    """The logical axes of every parameter, as a nested dict shaped like the parameters."""
    tree: dict = {}
    for e in key_map(cfg, task):
        _set(tree, e.path, e.axes)
    return tree


def _set(tree: dict, path: tuple, value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


# ---------------------------------------------------------------------------------------------
# Conversion between flat HF state dicts (numpy) and nested NNX pure dicts.


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)  # HF names the model needs but the checkpoint lacks
    unexpected: list[str] = field(default_factory=list)  # HF names in the checkpoint the model does not use

    def raise_if(self, source: str, allow_missing: tuple[str, ...] = ()) -> None:
        missing = [k for k in self.missing if not k.startswith(allow_missing)]
        if missing or self.unexpected:
            raise WeightsError(f"{source}: state dict does not match the model: "
                               f"missing {missing or 'none'}; unexpected {self.unexpected or 'none'}")


def _normalize_hf_names(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A bare `ModernBertModel` saves its keys without the `model.` prefix; add it back."""
    if any(k.startswith("model.") for k in sd):
        return sd
    return {(k if k.startswith(("head.", "decoder.", "classifier.")) else "model." + k): v for k, v in sd.items()}


def hf_to_nnx(sd: dict[str, np.ndarray], cfg: ModelConfig, task: str, source: str = "state dict"
              ) -> tuple[dict, LoadReport]:
    """HF state dict -> (nested NNX pure dict of the entries found, report of missing/unexpected keys)."""
    sd = _normalize_hf_names(sd)
    tied = sd.get(TIED_DECODER)
    emb = sd.get("model.embeddings.tok_embeddings.weight")
    if tied is not None and emb is not None and not np.array_equal(tied, emb):
        raise WeightsError(f"{source}: `{TIED_DECODER}` differs from the token embeddings, but the decoder "
                           "is tied to them in ModernBERT")
    report = LoadReport()
    tree: dict = {}
    used = {TIED_DECODER}
    for e in key_map(cfg, task):
        if e.hf not in sd:
            report.missing.append(e.hf)
            continue
        used.add(e.hf)
        x = np.asarray(sd[e.hf])
        want = expected_shape(e, cfg)
        shape = want[::-1] if e.transpose else want
        if x.shape != shape:
            raise WeightsError(f"{source}: `{e.hf}` has shape {list(x.shape)}, expected {list(shape)}")
        _set(tree, e.path, np.ascontiguousarray(x.T) if e.transpose else x)
    report.unexpected = sorted(k for k in sd if k not in used)
    return tree, report


def nnx_to_hf(tree: dict, cfg: ModelConfig, task: str, source: str = "parameters") -> dict[str, np.ndarray]:
    """Nested NNX pure dict -> HF state dict (numpy; the tied decoder weight is not written).

    Every array must have the shape the config gives it (`expected_shape`); `source` names the tree
    in the error otherwise.
    """
    out = {}
    for e in key_map(cfg, task):
        node = tree
        name = ".".join(map(str, e.path))
        try:
            for p in e.path:
                node = node[p]
        except (KeyError, IndexError, TypeError):
            raise WeightsError(f"{source}: parameter {name} (HF `{e.hf}`) is missing") from None
        x = np.asarray(node)
        if x.shape != (want := expected_shape(e, cfg)):
            raise WeightsError(f"{source}: parameter {name} has shape {list(x.shape)}, but the config expects "
                               f"{list(want)} ({_shape_keys(e, cfg)}); the config and the parameters disagree")
        out[e.hf] = np.ascontiguousarray(x.T) if e.transpose else x
    return out


# The config key behind each axis name of the key map.
AXIS_KEYS = {"vocab": "vocab_size", "embed": "hidden_size", "qkv": "hidden_size", "attn": "hidden_size",
             "mlp_in": "intermediate_size", "mlp": "intermediate_size", "labels": "num_labels"}


def expected_shape(e: Entry, cfg: ModelConfig) -> tuple[int, ...]:
    """Shape of the JAX array for a key-map entry."""
    H, F = cfg.hidden_size, cfg.intermediate_size
    sizes = {"vocab": cfg.vocab_size, "embed": H, "qkv": 3 * H, "attn": H, "mlp_in": 2 * F, "mlp": F,
             "labels": cfg.num_labels}
    return tuple(sizes[a] for a in e.axes)


def _shape_keys(e: Entry, cfg: ModelConfig) -> str:
    """The config keys behind an entry's expected shape, with their values."""
    return ", ".join(f"{k}={getattr(cfg, k)}" for k in dict.fromkeys(AXIS_KEYS[a] for a in e.axes))
