"""The FLOP model: matmuls plus attention over the keys each token really attends to."""

from __future__ import annotations

from typing import Any

import numpy as np


def keys_attended(n: int, window: int | None) -> int:
    """Sum over the n queries of a document of the keys each one attends to."""
    if window is None or window >= n - 1:
        return n * n
    i = np.arange(n)
    return int((np.minimum(i + window, n - 1) - np.maximum(i - window, 0) + 1).sum())


def forward_flops(cfg: dict[str, Any], n: int, head_tokens: float = 0) -> float:
    """Model FLOPs of one forward pass over one document of n tokens (multiply-add = 2).

    Matmuls of every layer (Wqkv, Wo, Wi, Wo_mlp) plus attention scores and values over the keys
    each query really attends to (the window on local layers); `head_tokens` positions also go
    through the MLM head (dense H x H, decoder H x V).
    """
    H, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    linear = 2 * n * (H * 3 * H + H * H + H * 2 * F + F * H)
    total = 0.0
    for kind in cfg["layer_types"]:
        window = None if kind == "full_attention" else cfg["local_attention"] // 2
        total += linear + 4 * H * keys_attended(n, window)
    return total + 2 * head_tokens * (H * H + H * V)


def train_flops(cfg: dict[str, Any], rows: int, length: int, masked: int) -> float:
    """Model FLOPs of one MLM training step: 3x the forward pass, the head on the `masked` positions."""
    return 3 * rows * forward_flops(cfg, length, masked / rows)
