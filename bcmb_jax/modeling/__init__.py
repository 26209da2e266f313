"""The model: ModernBERT in Flax NNX and how it computes.

Owns the architecture and nothing else of the system: `config.py` (ModelConfig, HF config.json),
`model.py` (backbone and task heads), `inputs.py` (padded or packed rows), `heads.py` (the task-head
registry), `masks.py` (which keys a query may see), `attention.py` (backend dispatch) with its kernels
`banded.py` and `blocked.py` (XLA:CPU: local and global layers) and `pallas_attention.py` (GPUs),
`runtime.py` (the run-time compute option), `state.py` (the model as graph + pure-dict parameters) and
`infer.py` (packed inference). It imports nothing from weights, data, training or evaluation.
"""

from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.heads import HEADS
from bcmb_jax.modeling.infer import encode, plan_rows
from bcmb_jax.modeling.model import (
    ModernBertForMaskedLM,
    ModernBertForSequenceClassification,
    ModernBertForTokenClassification,
    ModernBertModel,
    Output,
    build,
)
from bcmb_jax.modeling.runtime import Runtime

__all__ = ["HEADS", "ModelConfig", "ModernBertForMaskedLM", "ModernBertForSequenceClassification",
           "ModernBertForTokenClassification", "ModernBertModel", "Output", "Runtime", "build", "encode", "plan_rows"]
