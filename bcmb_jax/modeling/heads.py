"""The task heads a ModernBERT checkpoint can carry, one registry for the model, the key map and exports.

Each head names the NNX module class (`model.py`), the HF architecture written into `config.json`,
the transformers Auto class and pipeline tag of its model card, and the HF parameter-name prefixes of its
head rows in the key map (besides the backbone's `model.` rows).
"""

from __future__ import annotations

from dataclasses import dataclass

from bcmb_jax.errors import ConfigError

IGNORE = -100  # the label of a position no head is trained on (HF's ignore_index), MLM and NER alike


@dataclass(frozen=True)
class Head:
    name: str  # "base" | "mlm" | "sequence" | "token"
    module: str  # class name in model.py
    hf_architecture: str  # config.json "architectures"
    auto_class: str  # transformers Auto class that loads the export
    pipeline_tag: str  # model card pipeline_tag
    prefixes: tuple[str, ...]  # HF names of the head's parameters start with one of these


HEADS: dict[str, Head] = {h.name: h for h in (
    Head("base", "ModernBertModel", "ModernBertModel", "AutoModel", "feature-extraction", ()),
    Head("mlm", "ModernBertForMaskedLM", "ModernBertForMaskedLM", "AutoModelForMaskedLM", "fill-mask",
         ("head.", "decoder.")),
    Head("sequence", "ModernBertForSequenceClassification", "ModernBertForSequenceClassification",
         "AutoModelForSequenceClassification", "text-classification", ("head.", "classifier.")),
    Head("token", "ModernBertForTokenClassification", "ModernBertForTokenClassification",
         "AutoModelForTokenClassification", "token-classification", ("head.", "classifier.")),
)}
BY_ARCHITECTURE: dict[str, Head] = {h.hf_architecture: h for h in HEADS.values()}


def get(name: str) -> Head:
    """The head called `name`; an unknown name is a ValueError listing the known ones."""
    if name not in HEADS:
        raise ConfigError(f"unknown task {name!r}; expected one of {sorted(HEADS)}")
    return HEADS[name]
