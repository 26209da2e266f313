"""bcmb-jax: BioClinical ModernBERT in JAX/Flax NNX."""

from bcmb_jax.config import ConfigError, ModelConfig
from bcmb_jax.infer import encode
from bcmb_jax.model import (
    ModernBertForMaskedLM,
    ModernBertForSequenceClassification,
    ModernBertForTokenClassification,
    ModernBertModel,
    Output,
    build,
)
from bcmb_jax.params import WeightsError
from bcmb_jax.pretrained import from_pretrained, save_jax
from bcmb_jax.runtime import Runtime

__all__ = [
    "ConfigError",
    "ModelConfig",
    "ModernBertForMaskedLM",
    "ModernBertForSequenceClassification",
    "ModernBertForTokenClassification",
    "ModernBertModel",
    "Output",
    "Runtime",
    "WeightsError",
    "build",
    "encode",
    "from_pretrained",
    "save_jax",
]
