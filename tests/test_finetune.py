"""bcmb_jax.finetune: the paper's defaults, where each hyper-parameter comes from, the max-length rules."""

from __future__ import annotations

import pytest

from bcmb_jax import paper
from bcmb_jax.config import ConfigError
from bcmb_jax.encoding import TextEncoder
from bcmb_jax.finetune import FinetuneConfig, max_length_for, resolve


def _enc(model_max_length):
    return TextEncoder(None, 1, 2, 3, model_max_length)


def _info(hidden, context=8192):
    return {"hidden_size": hidden, "context": context}


def test_defaults_are_the_papers():
    cfg = FinetuneConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.weight_decay, cfg.lr) == (10, 16, 1e-5, None)
    assert paper.SEEDS == (42, 43, 44, 45, 46)


@pytest.mark.parametrize("task, hidden, lr, size", [
    ("chemprot", 768, 5e-5, "base"), ("chemprot", 1024, 2e-5, "large"), ("phenotype", 768, 8e-5, "base"),
    ("phenotype", 1024, 5e-5, "large"), ("cos", 768, 1e-4, "base"), ("cos", 1024, 1.5e-4, "large"),
    ("social_history", 768, 1.5e-4, "base"), ("social_history", 1024, 2e-4, "large"),
    ("deid", 768, 7e-5, "base"), ("deid", 1024, 7e-5, "large")])
def test_table5_learning_rate_by_task_and_size(task, hidden, lr, size):
    hp = resolve(task, _info(hidden), _enc(8192), FinetuneConfig(), set())
    assert hp["lr"] == lr and hp["size"] == size
    assert hp["sources"]["lr"] == f"paper Table 5 ({task}, {size})"
    assert hp["sources"]["weight_decay"] == hp["sources"]["epochs"] == hp["sources"]["batch_size"] == "paper"
    assert (hp["weight_decay"], hp["epochs"], hp["batch_size"], hp["max_length"]) == (1e-5, 10, 16, 8192)


def test_other_sizes_fall_back_and_user_values_are_recorded():
    hp = resolve("cos", _info(128, 512), _enc(None), FinetuneConfig(), set())
    assert hp["lr"] == paper.FALLBACK_LR and hp["sources"]["lr"].startswith("fallback 2e-05 (model size")
    assert hp["size"] == "hidden 128"
    # size=base forces the base row; user values say so
    cfg = FinetuneConfig(size="base", weight_decay=0.01, epochs=3)
    hp = resolve("cos", _info(128, 512), _enc(None), cfg, {"size", "weight_decay", "epochs"})
    assert hp["lr"] == 1e-4 and hp["sources"]["size"] == "user"
    assert hp["sources"]["weight_decay"] == hp["sources"]["epochs"] == "user" and hp["weight_decay"] == 0.01
    hp = resolve("cos", _info(768), _enc(None), FinetuneConfig(lr=3e-5), {"lr"})
    assert (hp["lr"], hp["sources"]["lr"]) == (3e-5, "user")


def test_max_length_rules():
    model = FinetuneConfig()
    paper_rule = FinetuneConfig(max_length_rule="paper")
    # The released tokenizers say 8192: both rules agree.
    assert max_length_for(_info(768, 8192), _enc(8192), model)[0] == 8192
    assert max_length_for(_info(768, 8192), _enc(8192), paper_rule)[0] == 8192
    # No tokenizer limit (absent or >= 10,000): the model's context vs the authors' 512.
    assert max_length_for(_info(768, 8192), _enc(None), model) == (8192, "model rule: min(model context, "
                                                                          "tokenizer model_max_length)")
    assert max_length_for(_info(768, 8192), _enc(None), paper_rule) == (512, "paper rule: 512")
    # A tokenizer limit below the context caps the model rule; the paper rule takes it as is.
    assert max_length_for(_info(768, 8192), _enc(4096), model)[0] == 4096
    assert max_length_for(_info(768, 2048), _enc(4096), model)[0] == 2048
    assert max_length_for(_info(768, 2048), _enc(4096), paper_rule)[0] == 4096
    assert max_length_for(_info(768), _enc(8192), FinetuneConfig(max_length=100)) == (100, "user")
    with pytest.raises(ConfigError, match="max_length_rule"):
        FinetuneConfig(max_length_rule="longest")
    with pytest.raises(ConfigError, match="weight_decay"):
        FinetuneConfig(weight_decay=-1.0)
