"""bcmb-jax: BioClinical ModernBERT in JAX/Flax NNX.

    modeling/    the architecture and how it computes (kernels, run-time option, packed inference)
    weights/     checkpoints in every form: HF, Composer, JAX directories; conversion both ways
    data/        corpora -> tokens -> packed, masked rows
    training/    continued MLM pretraining: optimizer, sharding, the step, run checkpoints
    evaluation/  the paper's tasks, its fine-tuning protocol (JAX and torch), results

Shared by all: `errors.py` (input errors), `cli.py` (the one error path of every command), `atomic.py`
(the one atomic writer) and `runconfig.py` (YAML run configs). A package imports only those above it
in this list (tests/test_layout.py).
"""

from bcmb_jax.errors import ConfigError, WeightsError
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.infer import encode
from bcmb_jax.modeling.model import (
    ModernBertForMaskedLM,
    ModernBertForSequenceClassification,
    ModernBertForTokenClassification,
    ModernBertModel,
    Output,
    build,
)
from bcmb_jax.modeling.runtime import Runtime
from bcmb_jax.weights.pretrained import from_pretrained, save_jax

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
