"""THE key map between Hugging Face ModernBERT state dicts and the NNX parameter tree, and weight I/O.

`KEY_MAP` is the single table used in both directions (HF -> JAX on load, JAX -> HF on export).
Each row: (HF name, NNX path, kind, logical axes). `{i}` expands to layer numbers; rows whose
condition is false for a config (layer 0 has no attn_norm; biases that are off) are skipped.
Kinds: "linear" (PyTorch [out, in] -> kernel [in, out], a transpose), "copy" (same layout).
The logical axes name each dimension of the JAX array for sharding rules (`sharding.py`).
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from bcmb_jax.config import ModelConfig
from bcmb_jax.heads import get as get_head

Cond = Callable[[ModelConfig, int], bool]
ALWAYS: Cond = lambda cfg, i: True  # noqa: E731

# (HF name, NNX path, kind, logical axes of the JAX array, condition)
KEY_MAP: tuple[tuple[str, str, str, tuple[str | None, ...], Cond], ...] = (
    ("model.embeddings.tok_embeddings.weight", "model.embeddings.tok_embeddings.embedding", "copy",
     ("vocab", "embed"), ALWAYS),
    ("model.embeddings.norm.weight", "model.embeddings.norm.scale", "copy", ("norm",), ALWAYS),
    ("model.embeddings.norm.bias", "model.embeddings.norm.bias", "copy", ("norm",), lambda c, i: c.norm_bias),
    ("model.layers.{i}.attn_norm.weight", "model.layers.{i}.attn_norm.scale", "copy", ("norm",),
     lambda c, i: i > 0),
    ("model.layers.{i}.attn_norm.bias", "model.layers.{i}.attn_norm.bias", "copy", ("norm",),
     lambda c, i: i > 0 and c.norm_bias),
    ("model.layers.{i}.attn.Wqkv.weight", "model.layers.{i}.attn.Wqkv.kernel", "linear", ("embed", "qkv"),
     ALWAYS),
    ("model.layers.{i}.attn.Wqkv.bias", "model.layers.{i}.attn.Wqkv.bias", "copy", ("qkv",),
     lambda c, i: c.attention_bias),
    ("model.layers.{i}.attn.Wo.weight", "model.layers.{i}.attn.Wo.kernel", "linear", ("heads", "embed"),
     ALWAYS),
    ("model.layers.{i}.attn.Wo.bias", "model.layers.{i}.attn.Wo.bias", "copy", ("norm",),
     lambda c, i: c.attention_bias),
    ("model.layers.{i}.mlp_norm.weight", "model.layers.{i}.mlp_norm.scale", "copy", ("norm",), ALWAYS),
    ("model.layers.{i}.mlp_norm.bias", "model.layers.{i}.mlp_norm.bias", "copy", ("norm",),
     lambda c, i: c.norm_bias),
    ("model.layers.{i}.mlp.Wi.weight", "model.layers.{i}.mlp.Wi.kernel", "linear", ("embed", "mlp"), ALWAYS),
    ("model.layers.{i}.mlp.Wi.bias", "model.layers.{i}.mlp.Wi.bias", "copy", ("mlp",), lambda c, i: c.mlp_bias),
    ("model.layers.{i}.mlp.Wo.weight", "model.layers.{i}.mlp.Wo.kernel", "linear", ("mlp", "embed"), ALWAYS),
    ("model.layers.{i}.mlp.Wo.bias", "model.layers.{i}.mlp.Wo.bias", "copy", ("norm",), lambda c, i: c.mlp_bias),
    ("model.final_norm.weight", "model.final_norm.scale", "copy", ("norm",), ALWAYS),
    ("model.final_norm.bias", "model.final_norm.bias", "copy", ("norm",), lambda c, i: c.norm_bias),
    # Prediction head (MLM and task models share the names).
    ("head.dense.weight", "head.dense.kernel", "linear", ("embed", "heads"), ALWAYS),
    ("head.dense.bias", "head.dense.bias", "copy", ("norm",), lambda c, i: c.classifier_bias),
    ("head.norm.weight", "head.norm.scale", "copy", ("norm",), ALWAYS),
    ("head.norm.bias", "head.norm.bias", "copy", ("norm",), lambda c, i: c.norm_bias),
    # MLM decoder: the weight is tied to the embeddings; only the bias is a parameter.
    ("decoder.bias", "decoder_bias", "copy", ("vocab",), lambda c, i: c.decoder_bias),
    # Task classifiers.
    ("classifier.weight", "classifier.kernel", "linear", ("embed", "labels"), ALWAYS),
    ("classifier.bias", "classifier.bias", "copy", ("labels",), ALWAYS),
)
TIED_DECODER = "decoder.weight"


class WeightsError(ValueError):
    """A checkpoint cannot be read or does not match the model."""


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


def logical_axes(cfg: ModelConfig, task: str) -> dict[tuple, tuple[str | None, ...]]:
    """NNX path -> logical axis names, for the sharding rules."""
    return {e.path: e.axes for e in key_map(cfg, task)}


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
        node = tree
        for p in e.path[:-1]:
            node = node.setdefault(p, {})
        node[e.path[-1]] = np.ascontiguousarray(x.T) if e.transpose else x
    report.unexpected = sorted(k for k in sd if k not in used)
    return tree, report


def nnx_to_hf(tree: dict, cfg: ModelConfig, task: str) -> dict[str, np.ndarray]:
    """Nested NNX pure dict -> HF state dict (numpy; the tied decoder weight is not written)."""
    out = {}
    for e in key_map(cfg, task):
        node = tree
        try:
            for p in e.path:
                node = node[p]
        except (KeyError, IndexError, TypeError):
            raise WeightsError(f"parameter {'.'.join(map(str, e.path))} (HF `{e.hf}`) is missing") from None
        x = np.asarray(node)
        out[e.hf] = np.ascontiguousarray(x.T) if e.transpose else x
    return out


def expected_shape(e: Entry, cfg: ModelConfig) -> tuple[int, ...]:
    """Shape of the JAX array for a key-map entry."""
    H, F, V, C = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_labels
    dims = {"vocab": V, "embed": H, "norm": H, "qkv": 3 * H, "heads": H, "mlp": 2 * F, "labels": C}
    if e.hf.endswith("mlp.Wo.weight"):
        return (F, H)
    return tuple(dims[a] for a in e.axes)


def model_tree(model: nnx.Module) -> dict:
    """The model's parameters as a nested pure dict of arrays (NNX paths)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def assign(model: nnx.Module, tree: dict) -> None:
    """Writes the arrays of a nested pure dict (possibly partial) into the model's parameters, in place."""
    import jax.numpy as jnp

    def walk(node, sub, path):
        for k, v in sub.items():
            if isinstance(v, dict):
                walk(node[k], v, path + (k,))
                continue
            var = node[k]
            value = jnp.asarray(v, dtype=var.get_value().dtype)
            if value.shape != var.get_value().shape:
                raise WeightsError(f"parameter {'.'.join(map(str, path + (k,)))}: shape {value.shape}, "
                                   f"model expects {var.get_value().shape}")
            var.set_value(value)

    walk(nnx.state(model, nnx.Param), tree, ())


# ---------------------------------------------------------------------------------------------
# Reading PyTorch/HF weight files, safely.

SAFE_NAMES = ("model.safetensors",)
BIN_NAMES = ("pytorch_model.bin",)


def read_hf_weights(directory: str | Path) -> dict[str, np.ndarray]:
    """All tensors of an HF directory: model.safetensors, sharded *.safetensors + index, or pytorch_model.bin."""
    d = Path(directory)
    index = next((d / n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                  if (d / n).is_file()), None)
    if index is not None:
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise WeightsError(f"{index}: not a valid shard index ({e})") from None
        sd: dict[str, np.ndarray] = {}
        for f in files:
            if not (d / f).is_file():
                raise WeightsError(f"{index}: lists shard {f}, which does not exist in {d}")
            sd.update(read_weight_file(d / f))
        return sd
    for name in SAFE_NAMES + BIN_NAMES:
        if (d / name).is_file():
            return read_weight_file(d / name)
    raise WeightsError(f"{d}: no model.safetensors, sharded *.safetensors with an index, or pytorch_model.bin")


def read_weight_file(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{path}: cannot read safetensors file ({e}); truncated or corrupt?") from None
    return {k: torch_to_numpy(v) for k, v in torch_load(path).items() if _is_tensor(v)}


def torch_load(path: str | Path) -> Any:
    """`torch.load(..., weights_only=True)`: a pickle that asks for any other object is refused unrun."""
    import torch

    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"{path}: not a PyTorch zip checkpoint (truncated or corrupt, or a legacy format)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{path}: refused to unpickle: it needs objects outside the safe allow-list "
                           f"({first}); nothing in it was executed") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"{path}: cannot read PyTorch checkpoint ({e}); truncated or corrupt?") from None


def _is_tensor(x) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def torch_to_numpy(t) -> np.ndarray:
    """Bit-exact tensor -> numpy (bfloat16 via ml_dtypes)."""
    import ml_dtypes
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def write_safetensors(sd: dict[str, np.ndarray], path: str | Path) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path), metadata={"format": "pt"})
