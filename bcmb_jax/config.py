"""Configuration: the model config read from HF `config.json`, and YAML run configs with overrides.

`ModelConfig` accepts both `config.json` layouts ModernBERT has shipped with:
the transformers-4 one (`global_attn_every_n_layers`, `global_rope_theta`, `local_rope_theta`)
and the transformers-5 one (`layer_types`, `rope_parameters`). Settings the model does not
implement are rejected with a `ConfigError` naming the key, never silently ignored.

Run configs (train, data, evaluation) are nested dataclasses whose fields carry a help text
(`opt(default, "help")`); `load(cls, yaml_path, ["a.b=1", ...])` builds them, and
`describe(cls)` lists every key for `--help`.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bcmb_jax.atomic import read_json


class ConfigError(ValueError):
    """A configuration value is missing, unknown or unsupported."""


GLOBAL, LOCAL = "full_attention", "sliding_attention"
ACTIVATIONS = ("gelu", "gelu_pytorch_tanh", "gelu_new", "gelu_fast", "silu", "swish", "relu")


@dataclass(frozen=True)
class ModelConfig:
    """ModernBERT hyper-parameters; field names follow Hugging Face `ModernBertConfig`."""

    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152  # width of one GeGLU half (Wi has 2x this many outputs)
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    max_position_embeddings: int = 8192
    layer_types: tuple[str, ...] = ()  # per layer: "full_attention" (global) | "sliding_attention" (local)
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    local_attention: int = 128  # full window; local layers see |i - j| <= local_attention // 2
    hidden_activation: str = "gelu"  # exact erf GELU
    classifier_activation: str = "gelu"
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    classifier_bias: bool = False  # bias of head.dense (the classifier itself always has one)
    decoder_bias: bool = True
    embedding_dropout: float = 0.0
    mlp_dropout: float = 0.0
    classifier_dropout: float = 0.0
    classifier_pooling: str = "cls"  # "cls" | "mean" (masked mean over real tokens)
    num_labels: int = 2
    id2label: tuple[str, ...] = ()  # label names by id; empty = LABEL_0..LABEL_{n-1}
    problem_type: str | None = None  # single_label_classification | multi_label_classification | regression
    pad_token_id: int = 50283
    cls_token_id: int = 50281
    sep_token_id: int = 50282
    bos_token_id: int | None = 50281
    eos_token_id: int | None = 50282
    mask_token_id: int | None = None  # not an HF config field; kept when a tokenizer told us
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0

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

        n_layers = int(d.get("num_hidden_layers", cls.num_hidden_layers))
        layer_types = d.get("layer_types")
        if layer_types is None:
            layer_types = default_layer_types(n_layers, int(d.get("global_attn_every_n_layers", 3)))
        rope = d.get("rope_parameters") or {}
        thetas = {}
        for kind, old_key, default in ((GLOBAL, "global_rope_theta", 160_000.0),
                                       (LOCAL, "local_rope_theta", 10_000.0)):
            p = rope.get(kind) or {}
            if p.get("rope_type", "default") != "default":
                bad("rope_parameters", f"[{kind!r}] rope_type {p['rope_type']!r} is not supported")
            thetas[kind] = float(p.get("rope_theta", d.get(old_key, default)))
        if "norm_eps" not in d and "layer_norm_eps" in d:
            d["norm_eps"] = d["layer_norm_eps"]
        id2label = d.get("id2label") or {}
        names = tuple(str(id2label[k]) for k in sorted(id2label, key=int)) if id2label else ()
        num_labels = int(d.get("num_labels", len(names) or cls.num_labels))
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


# ---------------------------------------------------------------------------------------------
# Run configs: nested dataclasses + YAML + key=value overrides.


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and the help text that `--help` prints."""
    if isinstance(default, list | dict) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["a.b=3", "c=x"]` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and raw.strip()[:1] not in ("'", '"'):
            value = raw.strip()  # an unquoted string stays as typed (YAML would read `|` or `>` as "")
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"`{key}` must be a section (mapping), got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (float, int) and isinstance(value, str):
        try:  # YAML 1.1 reads `3e-4` (no dot) as a string
            number = float(value)
        except ValueError:
            raise ConfigError(f"`{key}` must be {tp.__name__}, got {value!r}") from None
        if tp is float or number.is_integer():
            return tp(number)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if origin in (list, tuple) and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        return origin(_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    base = origin or tp
    if base is Any or isinstance(base, typing.TypeVar):
        return value
    if isinstance(base, type) and not isinstance(value, base):
        raise ConfigError(f"`{key}` must be {getattr(base, '__name__', base)}, got {value!r}")
    return value


def from_dict(cls: type, d: dict[str, Any], prefix: str = "") -> Any:
    """Builds dataclass `cls` from a nested dict; unknown keys are an error naming them."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)} "
                          f"(known under `{prefix or '.'}`: {', '.join(sorted(names))})")
    kw = {k: _coerce(hints[k], v, prefix + k) for k, v in d.items()}
    return cls(**kw)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def load(cls: type, path: str | Path | None = None, overrides: list[str] | None = None,
         section: str | None = None) -> Any:
    """Reads YAML `path` (optionally one `section` of it), applies `key=value` overrides, builds `cls`."""
    d: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            what = getattr(e, "problem", None) or " ".join(str(e).split())
            raise ConfigError(f"{where}: invalid YAML: {what}"
                              + (f" (column {mark.column + 1})" if mark is not None else "")) from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        if section is not None:
            d = d.get(section) or {}
    d = merge(d, parse_overrides(overrides or []))
    try:
        return from_dict(cls, d)
    except ConfigError as e:
        raise ConfigError(f"{path or 'config'}: {e}") from None


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf field of dataclass `cls`, depth first."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        rows.append((prefix + f.name, repr(default), f.metadata.get("help", "")))
    return rows


def help_text(cls: type) -> str:
    rows = describe(cls)
    width = max(len(k) for k, _, _ in rows)
    return "\n".join(f"  {k:<{width}}  {h} [default: {d}]" for k, d, h in rows)
