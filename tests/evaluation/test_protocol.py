"""evaluation/protocol.py: the paper's defaults, where each hyper-parameter comes from, the max-length rules, `fit`
(best epoch, patience, schedule), seeded order and head, weight decay as the HF Trainer."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_MODEL, hf_model

from bcmb_jax.errors import ConfigError
from bcmb_jax.evaluation import encoding, paper
from bcmb_jax.evaluation.encoding import TextEncoder
from bcmb_jax.evaluation.protocol import (
    FinetuneConfig,
    epoch_batches,
    fit,
    head_init,
    max_length_for,
    resolve_hyperparameters,
)
from bcmb_jax.modeling.config import ModelConfig


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
    hp = resolve_hyperparameters(task, _info(hidden), _enc(8192), FinetuneConfig(), set())
    assert hp["lr"] == lr and hp["size"] == size
    assert hp["sources"]["lr"] == f"paper Table 5 ({task}, {size})"
    assert hp["sources"]["weight_decay"] == hp["sources"]["epochs"] == hp["sources"]["batch_size"] == "paper"
    assert (hp["weight_decay"], hp["epochs"], hp["batch_size"], hp["max_length"]) == (1e-5, 10, 16, 8192)


def test_other_sizes_fall_back_and_user_values_are_recorded():
    hp = resolve_hyperparameters("cos", _info(128, 512), _enc(None), FinetuneConfig(), set())
    assert hp["lr"] == paper.FALLBACK_LR and hp["sources"]["lr"].startswith("fallback 2e-05 (model size")
    assert hp["size"] == "hidden 128"
    # size=base forces the base row; user values say so
    cfg = FinetuneConfig(size="base", weight_decay=0.01, epochs=3)
    hp = resolve_hyperparameters("cos", _info(128, 512), _enc(None), cfg, {"size", "weight_decay", "epochs"})
    assert hp["lr"] == 1e-4 and hp["sources"]["size"] == "user"
    assert hp["sources"]["weight_decay"] == hp["sources"]["epochs"] == "user" and hp["weight_decay"] == 0.01
    hp = resolve_hyperparameters("cos", _info(768), _enc(None), FinetuneConfig(lr=3e-5), {"lr"})
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


class ScriptedBackend:
    """Validation accuracy follows a script; records what `fit` asks for."""

    name = "scripted"

    def __init__(self, val_correct: list[int]):
        self.script, self.epoch, self.lrs, self.batches, self.restored = val_correct, 0, [], [], None

    def start(self, seed, lr, total_steps, warmup_steps):
        self.total = total_steps

    def train_step(self, batch, lr):
        self.lrs.append(lr)
        self.batches.append([e.id for e in batch])
        return 1.0

    def predict(self, examples):
        if examples[0].id.startswith("val"):
            self.epoch += 1
            k = self.script[self.epoch - 1]
        else:
            k = self.script[(self.restored or self.epoch) - 1]
        return [np.array([1.0, 0.0]) if i < k else np.array([0.0, 1.0]) for i in range(len(examples))]

    def snapshot(self):
        return self.epoch

    def restore(self, snap):
        self.restored = snap


def _scripted_data(n_train: int) -> encoding.EncodedTask:
    def ex(split, i):
        return encoding.Example(f"{split}{i}", np.array([1, 5, 2], np.int32), label=0)

    return encoding.EncodedTask("toy", "classification", ["a", "b"], [ex("train", i) for i in range(n_train)],
                         [ex("val", i) for i in range(10)], [ex("test", i) for i in range(10)], max_length=8)


def test_fit_keeps_the_best_epoch_and_stops_on_patience():
    import torch
    from transformers import get_linear_schedule_with_warmup

    data = _scripted_data(37)
    cfg = FinetuneConfig(epochs=6, patience=2, batch_size=8, warmup_ratio=0.1)
    b = ScriptedBackend([2, 6, 4, 6, 3, 9])  # the tie at epoch 4 is no improvement: stop after epoch 4
    res = fit(b, data, cfg, seed=42, lr=1e-3)
    assert [e["epoch"] for e in res["epochs"]] == [1, 2, 3, 4] and res["best_epoch"] == 2 and b.restored == 2
    assert res["test"]["accuracy"] == 0.6 and res["val"] == res["epochs"][1]["val"]
    assert [len(e["losses"]) for e in res["epochs"]] == [5] * 4
    # Every epoch visits every training example once, in a seed-dependent order.
    for k in range(4):
        assert sorted(i for batch in b.batches[5 * k:5 * k + 5] for i in batch) == sorted(e.id for e in data.train)
    assert b.batches[:5] != b.batches[5:10]
    other = ScriptedBackend([1] * 6)
    fit(other, data, FinetuneConfig(epochs=1, batch_size=8), seed=43, lr=1e-3)
    assert other.batches != b.batches[:5]
    # The learning rates are HF's linear schedule with warmup over all 6 x 5 steps (early stop or not).
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = get_linear_schedule_with_warmup(opt, 3, 30)
    want = []
    for _ in range(20):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(b.lrs, want, rtol=1e-12, atol=0)


def test_seeds_change_order_and_head_and_weight_decay_follows_the_hf_trainer():
    from flax import nnx
    from transformers import Trainer

    from bcmb_jax.modeling import model
    from bcmb_jax.training import optim
    from bcmb_jax.weights import keymap

    a, b = epoch_batches(50, 16, 42, 1), epoch_batches(50, 16, 43, 1)
    assert [len(x) for x in a] == [16, 16, 16, 2] and not all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(np.concatenate(a), np.concatenate(epoch_batches(50, 16, 42, 1)))
    w42, b42 = head_init(42, 256, 6)
    assert w42.shape == (6, 256) and not b42.any() and not np.array_equal(w42, head_init(43, 256, 6)[0])
    assert abs(w42.std() * 16 - 0.88) < 0.05 and np.abs(w42).max() <= 2 / 16  # std H^-0.5, cut at 2 std
    # No decay on exactly the tensors the HF Trainer exempts (LayerNorm weights, biases).
    cfg = ModelConfig(**{**TINY_MODEL, "num_labels": 3})
    decay_hf = set(Trainer.get_decay_parameter_names(None, hf_model("sequence", num_labels=3, **_hf_kw())))
    mask = nnx.to_pure_dict(optim.weight_decay_mask(nnx.split(model.build(cfg, "sequence"), nnx.Param, ...)[1]))
    for e in keymap.key_map(cfg, "sequence"):
        node = mask
        for p in e.path:
            node = node[p]
        assert node == (e.hf in decay_hf), e.hf


def _hf_kw() -> dict:
    return {k: TINY_MODEL[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                       "num_attention_heads", "local_attention")}
