"""Hugging Face weight files: model.safetensors, sharded safetensors with their index, pytorch_model.bin.

Pickled `.bin` files are read through `torch_files.safe_load`, which never runs code from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bcmb_jax.atomic import atomic, read_json
from bcmb_jax.errors import WeightsError

# ---------------------------------------------------------------------------------------------
# Reading HF weight files (pickles through `torch_files.safe_load`).

SAFE_NAMES = ("model.safetensors",)
BIN_NAMES = ("pytorch_model.bin",)


def read_hf_weights(directory: str | Path) -> dict[str, np.ndarray]:
    """All tensors of an HF directory: model.safetensors, sharded *.safetensors + index, or pytorch_model.bin."""
    d = Path(directory)
    index = next((d / n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                  if (d / n).is_file()), None)
    if index is not None:
        weight_map = read_json(index, WeightsError, "a shard index with a weight_map").get("weight_map")
        if not isinstance(weight_map, dict):
            raise WeightsError(f"{index}: not a valid shard index (no weight_map object)")
        files = sorted(set(weight_map.values()))
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
    from bcmb_jax.weights.torch_files import load_tensors

    return load_tensors(path)


def write_safetensors(sd: dict[str, np.ndarray], path: str | Path) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path), metadata={"format": "pt"})
HF_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def write_random_model(tokenizer_dir: str | Path, config: dict[str, Any], out: str | Path, seed: int = 0) -> int:
    """Writes a randomly initialised HF `ModernBertForMaskedLM` with the tokenizer beside it to `out` (replaced
    atomically); returns its number of parameters. `config`: ModernBertConfig keys (shape, pooling, ...); the
    vocabulary size and special ids come from the tokenizer."""
    import torch
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = tf.ModernBertConfig(**{"classifier_pooling": "mean", **config, "vocab_size": len(tok),
                                 "pad_token_id": tok.pad_token_id, "cls_token_id": tok.cls_token_id,
                                 "sep_token_id": tok.sep_token_id, "bos_token_id": tok.cls_token_id,
                                 "eos_token_id": tok.sep_token_id})
    torch.manual_seed(seed)
    model = tf.ModernBertForMaskedLM(cfg)
    with atomic(out, overwrite=True) as tmp:  # an incomplete leftover is replaced
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return sum(p.numel() for p in model.parameters())
