"""The model config: ModernBERT's hyper-parameters, read from and written to HF `config.json`.

`ModelConfig` accepts both `config.json` layouts ModernBERT has shipped with:
the transformers-4 one (`global_attn_every_n_layers`, `global_rope_theta`, `local_rope_theta`)
and the transformers-5 one (`layer_types`, `rope_parameters`). Settings the model does not
implement are rejected with a `ConfigError` naming the key, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcmb_jax.atomic import read_json
from bcmb_jax.errors import ConfigError

GLOBAL, LOCAL = "full_attention", "sliding_attention"
ACTIVATIONS = ("gelu", "gelu_pytorch_tanh", "gelu_new", "gelu_fast", "silu", "swish", "relu")


@dataclass(frozen=True)
class ModelConfig:
    """ModernBERT hyper-parameters; field names follow Hugging Face `ModernBertConfig`."""

    vocab_size: int = 50368  # rows of the token embeddings and of the tied decoder (tokenizer size, padded)
    hidden_size: int = 768  # D, the width of every token's state
    intermediate_size: int = 1152  # width of one GeGLU half (Wi has 2x this many outputs)
    num_hidden_layers: int = 22  # encoder layers (22 base, 28 large)
    num_attention_heads: int = 12  # heads per layer; head dim = hidden_size / heads
    max_position_embeddings: int = 8192  # context length; `encode` refuses longer documents
    layer_types: tuple[str, ...] = ()  # per layer: "full_attention" (global) | "sliding_attention" (local)
    global_rope_theta: float = 160_000.0  # RoPE base of the global layers
    local_rope_theta: float = 10_000.0  # RoPE base of the local layers
    local_attention: int = 128  # full window; local layers see |i - j| <= local_attention // 2
    hidden_activation: str = "gelu"  # exact erf GELU
    classifier_activation: str = "gelu"  # activation of the prediction head (head.dense)
    norm_eps: float = 1e-5  # LayerNorm epsilon
    norm_bias: bool = False  # LayerNorms with a bias (ModernBERT: none)
    attention_bias: bool = False  # biases on Wqkv and Wo
    mlp_bias: bool = False  # biases on Wi and the MLP's Wo
    classifier_bias: bool = False  # bias of head.dense (the classifier itself always has one)
    decoder_bias: bool = True  # the tied MLM decoder's own bias [vocab]
    embedding_dropout: float = 0.0  # after the embedding norm (training only)
    mlp_dropout: float = 0.0  # on the MLP's GeGLU output (training only)
    classifier_dropout: float = 0.0  # before the classifier (fine-tuning)
    classifier_pooling: str = "cls"  # "cls" | "mean" (masked mean over real tokens)
    num_labels: int = 2  # outputs of the sequence / token classifier
    id2label: tuple[str, ...] = ()  # label names by id; empty = LABEL_0..LABEL_{n-1}
    problem_type: str | None = None  # single_label_classification | multi_label_classification | regression
    pad_token_id: int = 50283  # special token ids of the ModernBERT tokenizer
    cls_token_id: int = 50281
    sep_token_id: int = 50282
    bos_token_id: int | None = 50281
    eos_token_id: int | None = 50282
    mask_token_id: int | None = None  # not an HF config field; kept when a tokenizer told us
    initializer_range: float = 0.02  # std of the truncated-normal initialisation
    initializer_cutoff_factor: float = 2.0  # truncation at this many std devs

    def __post_init__(self):
        if not self.layer_types:
            object.__setattr__(self, "layer_types", default_layer_types(self.num_hidden_layers, 3))
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def window(self) -> int:
        """Half-width of the local attention window (64 for ModernBERT)."""
        return self.local_attention // 2

    def is_global(self, layer: int) -> bool:
        return self.layer_types[layer] == GLOBAL

    @property
    def labels(self) -> tuple[str, ...]:
        return self.id2label or tuple(f"LABEL_{i}" for i in range(self.num_labels))

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def bad(key, msg):
            raise ConfigError(f"model config: `{key}` {msg}")

        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "max_position_embeddings", "local_attention", "num_labels"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(key, f"must be a positive integer, got {value!r}")
        for key in ("norm_eps", "initializer_range", "initializer_cutoff_factor", "embedding_dropout", "mlp_dropout",
                    "classifier_dropout"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                bad(key, f"must be a number >= 0, got {value!r}")
        for key in ("pad_token_id", "cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id", "mask_token_id"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                bad(key, f"must be an integer token id, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            bad("hidden_size", f"({self.hidden_size}) must be a multiple of num_attention_heads "
                               f"({self.num_attention_heads})")
        if self.head_dim % 2:
            bad("hidden_size", f"gives an odd head_dim {self.head_dim}; rotary embeddings need it even")
        if len(self.layer_types) != self.num_hidden_layers:
            bad("layer_types", f"has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        for t in self.layer_types:
            if t not in (GLOBAL, LOCAL):
                bad("layer_types", f"entry {t!r} is not one of {GLOBAL!r}, {LOCAL!r}")
        if self.local_attention < 2 or self.local_attention % 2:
            bad("local_attention", f"must be an even number >= 2, got {self.local_attention}")
        for key in ("hidden_activation", "classifier_activation"):
            if getattr(self, key) not in ACTIVATIONS:
                bad(key, f"{getattr(self, key)!r} is not supported; use one of {ACTIVATIONS}")
        if self.classifier_pooling not in ("cls", "mean"):
            bad("classifier_pooling", f"must be 'cls' or 'mean', got {self.classifier_pooling!r}")
        if self.problem_type not in (None, "single_label_classification", "multi_label_classification",
                                     "regression"):
            bad("problem_type", f"{self.problem_type!r} is not a known problem type")
        if self.id2label and len(self.id2label) != self.num_labels:
            bad("id2label", f"has {len(self.id2label)} names for num_labels={self.num_labels}")
        for key in ("embedding_dropout", "mlp_dropout", "classifier_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                bad(key, f"must be in [0, 1), got {getattr(self, key)}")

    def special_ids_outside_vocabulary(self) -> dict[str, int]:
        """The special-token ids that are not ids of this vocabulary (transformers refuses such a config)."""
        keys = ("pad_token_id", "cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id", "mask_token_id")
        return {k: v for k in keys if (v := getattr(self, k)) is not None and not 0 <= v < self.vocab_size}

    # ------------------------------------------------------------------ HF I/O
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Builds a config from an HF `config.json` dict (transformers 4 or 5 layout)."""
        d = dict(d)

        def bad(key, msg):
            raise ConfigError(f"{source}: `{key}` {msg}")

        if d.get("model_type", "modernbert") != "modernbert":
            bad("model_type", f"is {d['model_type']!r}; only 'modernbert' checkpoints are supported")
        for key in ("rope_scaling",):
            if d.get(key):
                bad(key, f"= {d[key]!r} is not supported (plain RoPE only)")
        if float(d.get("attention_dropout", 0.0) or 0.0) != 0.0:
            bad("attention_dropout", f"= {d['attention_dropout']} is not supported; only 0.0 "
                                     "(the blocked attention kernels have no dropout)")
        if d.get("tie_word_embeddings", True) is False:
            bad("tie_word_embeddings", "= false is not supported; the MLM decoder is tied to the embeddings")
        if d.get("pad_token_id") is None:
            d["pad_token_id"] = cls.pad_token_id

        def integer(key, default) -> int:
            value = d.get(key, default)
            if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
                    or value != int(value) or value < 1):
                bad(key, f"must be a positive integer, got {value!r}")
            return int(value)

        n_layers = integer("num_hidden_layers", cls.num_hidden_layers)
        layer_types = d.get("layer_types")
        if layer_types is None:
            layer_types = default_layer_types(n_layers, integer("global_attn_every_n_layers", 3))
        rope = d.get("rope_parameters") or {}
        thetas = {}
        for kind, old_key, default in ((GLOBAL, "global_rope_theta", 160_000.0),
                                       (LOCAL, "local_rope_theta", 10_000.0)):
            p = rope.get(kind) or {}
            if p.get("rope_type", "default") != "default":
                bad("rope_parameters", f"[{kind!r}] rope_type {p['rope_type']!r} is not supported")
            theta = p.get("rope_theta", d.get(old_key, default))
            if isinstance(theta, bool) or not isinstance(theta, int | float) or not theta > 0:
                bad("rope_parameters", f"[{kind!r}] rope_theta must be a positive number, got {theta!r}")
            thetas[kind] = float(theta)
        if "norm_eps" not in d and "layer_norm_eps" in d:
            d["norm_eps"] = d["layer_norm_eps"]
        id2label = d.get("id2label") or {}
        names = tuple(str(id2label[k]) for k in sorted(id2label, key=int)) if id2label else ()
        num_labels = integer("num_labels", len(names) or cls.num_labels)
        if names and len(names) != num_labels:
            num_labels = len(names)

        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw.update(layer_types=tuple(layer_types), global_rope_theta=thetas[GLOBAL],
                  local_rope_theta=thetas[LOCAL], id2label=names, num_labels=num_labels)
        if kw.get("mask_token_id") is None:
            kw.pop("mask_token_id", None)
        try:
            return cls(**kw)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        d = read_json(path, ConfigError, "an HF config.json")
        return cls.from_hf_dict(d, source=str(path))

    def to_hf_dict(self, architecture: str | None = None) -> dict[str, Any]:
        """An HF `config.json` dict: the transformers-5 layout plus the old keys older versions read."""
        n = self.num_hidden_layers
        every = next((k for k in range(1, n + 1) if default_layer_types(n, k) == self.layer_types), None)
        d: dict[str, Any] = {
            "model_type": "modernbert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": n,
            "num_attention_heads": self.num_attention_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "layer_types": list(self.layer_types),
            "rope_parameters": {
                GLOBAL: {"rope_type": "default", "rope_theta": self.global_rope_theta},
                LOCAL: {"rope_type": "default", "rope_theta": self.local_rope_theta},
            },
            "global_rope_theta": self.global_rope_theta,
            "local_rope_theta": self.local_rope_theta,
            "local_attention": self.local_attention,
            "hidden_activation": self.hidden_activation,
            "classifier_activation": self.classifier_activation,
            "norm_eps": self.norm_eps,
            "norm_bias": self.norm_bias,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "classifier_bias": self.classifier_bias,
            "decoder_bias": self.decoder_bias,
            "attention_dropout": 0.0,
            "embedding_dropout": self.embedding_dropout,
            "mlp_dropout": self.mlp_dropout,
            "classifier_dropout": self.classifier_dropout,
            "classifier_pooling": self.classifier_pooling,
            "num_labels": self.num_labels,
            "id2label": {str(i): name for i, name in enumerate(self.labels)},
            "label2id": {name: i for i, name in enumerate(self.labels)},
            "pad_token_id": self.pad_token_id,
            "cls_token_id": self.cls_token_id,
            "sep_token_id": self.sep_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "initializer_range": self.initializer_range,
            "initializer_cutoff_factor": self.initializer_cutoff_factor,
            "tie_word_embeddings": True,
            "dtype": "float32",
        }
        if every is not None:
            d["global_attn_every_n_layers"] = every
        if self.problem_type:
            d["problem_type"] = self.problem_type
        if self.mask_token_id is not None:
            d["mask_token_id"] = self.mask_token_id
        if architecture:
            d["architectures"] = [architecture]
        return d


def default_layer_types(num_layers: int, every: int) -> tuple[str, ...]:
    """Layer i is global iff i % every == 0 (layers 0, 3, 6, ... for ModernBERT)."""
    if every < 1:
        raise ConfigError(f"global_attn_every_n_layers must be >= 1, got {every}")
    return tuple(GLOBAL if i % every == 0 else LOCAL for i in range(num_layers))
