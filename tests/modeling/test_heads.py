"""modeling/heads.py: one registry of task heads, consistent with the model classes, the key map and transformers."""

from __future__ import annotations

import transformers

from bcmb_jax.modeling import heads, model
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.weights import keymap, pretrained


def test_registry_matches_model_classes_key_map_and_transformers():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                      max_position_embeddings=64, num_labels=3)
    for name, head in heads.HEADS.items():
        cls = getattr(model, head.module)
        assert cls.task == name and cls.__name__ == head.module
        assert hasattr(transformers, head.hf_architecture) and hasattr(transformers, head.auto_class)
        # the head rows of the key map are exactly the rows outside the backbone
        rows = {e.hf.split(".")[0] + "." for e in keymap.key_map(cfg, name) if not e.hf.startswith("model.")}
        assert rows == set(head.prefixes)
        assert heads.BY_ARCHITECTURE[head.hf_architecture] is head
        assert pretrained.infer_task({"architectures": [head.hf_architecture]}, None) == name
        assert type(model.build(cfg, name)) is cls
    assert heads.get("token").pipeline_tag == "token-classification"
    try:
        heads.get("regression")
    except ValueError as e:
        assert "unknown task 'regression'" in str(e)
    else:
        raise AssertionError("an unknown head must raise")
