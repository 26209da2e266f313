"""ModelConfig from both HF config.json layouts; unsupported settings are rejected by name."""

from __future__ import annotations

import json

import pytest
import transformers as tf
from conftest import TINY, shared_data

from bcmb_jax.errors import ConfigError
from bcmb_jax.modeling.config import GLOBAL, LOCAL, ModelConfig


def test_old_and_new_layouts_give_the_same_config(tmp_path):
    old = {**TINY, "model_type": "modernbert", "global_attn_every_n_layers": 3, "global_rope_theta": 160000.0,
           "local_rope_theta": 10000.0, "num_hidden_layers": 7, "classifier_pooling": "mean"}
    tf.ModernBertConfig(**old).save_pretrained(tmp_path)  # transformers 5 re-saves in its own layout
    new = json.loads((tmp_path / "config.json").read_text())
    assert "layer_types" in new and "rope_parameters" in new and "global_rope_theta" not in new
    a, b = ModelConfig.from_hf_dict(old), ModelConfig.from_json(tmp_path / "config.json")
    assert a == b
    assert a.layer_types == (GLOBAL, LOCAL, LOCAL, GLOBAL, LOCAL, LOCAL, GLOBAL)
    assert (a.global_rope_theta, a.local_rope_theta, a.window) == (160000.0, 10000.0, 8)


def test_real_configs_parse():
    base = ModelConfig.from_json(shared_data("modernbert_tokenizer", "base_config", "model_config.json"))
    large = ModelConfig.from_json(shared_data("modernbert_tokenizer", "config.json"))
    assert (base.num_hidden_layers, base.hidden_size, base.intermediate_size) == (22, 768, 1152)
    assert (large.num_hidden_layers, large.hidden_size, large.num_attention_heads) == (28, 1024, 16)
    for cfg in (base, large):
        assert [i for i in range(cfg.num_hidden_layers) if cfg.is_global(i)][-1] == cfg.num_hidden_layers - 1
        assert cfg.classifier_pooling == "mean" and cfg.window == 64 and cfg.pad_token_id == 50283


def test_to_hf_dict_round_trips_through_transformers(tmp_path):
    cfg = ModelConfig.from_hf_dict({**TINY, "num_labels": 3, "id2label": {"0": "a", "1": "b", "2": "c"},
                                    "problem_type": "multi_label_classification", "local_rope_theta": 77.0})
    d = cfg.to_hf_dict("ModernBertForSequenceClassification")
    hf = tf.ModernBertConfig(**d)
    assert hf.layer_types == list(cfg.layer_types) and hf.sliding_window == cfg.window
    assert hf.rope_parameters["sliding_attention"]["rope_theta"] == 77.0
    assert hf.id2label == {0: "a", 1: "b", 2: "c"} and hf.problem_type == "multi_label_classification"
    assert ModelConfig.from_hf_dict(d) == cfg


@pytest.mark.parametrize("key,value,needle", [
    ("hidden_activation", "gelu_tanh_magic", "hidden_activation"),
    ("attention_dropout", 0.1, "attention_dropout"),
    ("rope_scaling", {"type": "linear", "factor": 2.0}, "rope_scaling"),
    ("model_type", "bert", "model_type"),
    ("tie_word_embeddings", False, "tie_word_embeddings"),
    ("classifier_pooling", "max", "classifier_pooling"),
    ("hidden_size", 66, "hidden_size"),
    ("rope_parameters", {"full_attention": {"rope_type": "yarn", "rope_theta": 1.0}}, "rope_type"),
])
def test_unsupported_settings_are_rejected(key, value, needle):
    with pytest.raises(ConfigError, match=needle):
        ModelConfig.from_hf_dict({**TINY, key: value})


def test_bad_json_names_file_and_line(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{\n  "hidden_size": 64,\n  oops\n}')
    with pytest.raises(ConfigError, match=r"config.json:3: invalid JSON"):
        ModelConfig.from_json(p)
