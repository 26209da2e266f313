"""The fine-tuning protocol of the paper, shared by the JAX (`jax_backend.py`) and torch
(`torch_backend.py`) backends.

`fit` is the HF Trainer set-up of the paper (§3.2.2, Appendix B of arXiv 2506.10896): AdamW (0.9, 0.999, 1e-8), weight
decay on every tensor but LayerNorm weights and biases, linear decay to 0 without warmup, gradient
clipping 1.0, evaluation on the validation split after every epoch, the best epoch's weights restored and
scored on test. The defaults are the paper's (`paper.py`): Table 5's learning rate for the task and
model size, weight decay 1e-5, 10 epochs, batches of 16, seeds 42-46 with the median reported;
`resolve_hyperparameters` records every value actually used and where it came from. Unlike the paper's code, every seed
really changes both the data order (`epoch_batches`) and the classifier init (`head_init`); both are
numpy-defined, so both backends see the same batches and start from the same weights for a seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bcmb_jax.atomic import read_json
from bcmb_jax.errors import ConfigError, FinetuneError
from bcmb_jax.evaluation import metrics, paper
from bcmb_jax.evaluation.encoding import EncodedTask, Example, TextEncoder
from bcmb_jax.runconfig import opt
from bcmb_jax.training import optim

FINETUNE_BACKENDS = ("jax", "torch")
MAX_LENGTH_RULES = ("model", "paper")
PAPER_MAX_LENGTH = 512  # the authors' code, for a tokenizer without a model_max_length below 10,000


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning protocol; `evaluate.py --help` lists every key (key=value on the command line)."""

    epochs: int = opt(paper.EPOCHS, "training epochs; the best validation epoch is kept (paper: 10)")
    lr: float | None = opt(None, "peak learning rate; null = the paper's Table 5 rate for the task and size")
    size: str = opt("auto", "base | large | auto (hidden 768 = base, 1024 = large, else the fallback lr)")
    batch_size: int = opt(paper.BATCH_SIZE, "training examples per optimizer step (paper: 16)")
    weight_decay: float = opt(paper.WEIGHT_DECAY, "AdamW decay (lr * wd * p), not on LayerNorm weights and "
                                                  "biases (paper: 1e-5)")
    betas: list[float] = opt([0.9, 0.999], "AdamW betas")
    eps: float = opt(1e-8, "AdamW epsilon")
    clip_grad_norm: float = opt(1.0, "clip gradients to this global norm (0 = off)")
    warmup_ratio: float = opt(0.0, "linear warmup over this fraction of all steps, then linear decay to 0")
    patience: int = opt(0, "stop after this many epochs without a better validation score (0 = run all)")
    max_length: int | None = opt(None, "tokens per example incl. [CLS]/[SEP]; null = by max_length_rule")
    max_length_rule: str = opt("model", "model: the model's context, capped by the tokenizer's "
                                        "model_max_length when below 10,000 | paper: the authors' rule, "
                                        "model_max_length when below 10,000, else 512")
    tokenizer: str | None = opt(None, "tokenizer directory; null = the model directory's tokenizer")
    max_train: int | None = opt(None, "use a fixed random subset of this many training examples")
    max_val: int | None = opt(None, "use a fixed random subset of this many validation examples")
    max_test: int | None = opt(None, "use a fixed random subset of this many test examples")
    name: str | None = opt(None, "model name in results/ and table.md; null = from the model path")
    paper_row: str | None = opt(None, "the paper's Table 2 row to show beside this model; null = by name")
    save_predictions: bool = opt(True, "write <task>/seed<N>/test_predictions.jsonl")
    eval_batch_size: int = opt(16, "torch: examples per evaluation batch (padded)")
    eval_tokens: int = opt(16384, "jax: tokens per packed evaluation call")
    attention_backend: str | None = opt(None, "jax: blocked | reference | gpu; null = blocked")
    attn_implementation: str = opt("sdpa", "torch: sdpa | eager | flash_attention_2 (needs flash-attn)")
    torch_threads: int | None = opt(None, "torch: intra-op threads; null = torch's default")

    def __post_init__(self):
        def bad(key, msg):
            raise ConfigError(f"`{key}` {msg}")

        for key in ("epochs", "batch_size", "eval_batch_size", "eval_tokens"):
            if getattr(self, key) < 1:
                bad(key, f"must be >= 1, got {getattr(self, key)}")
        if self.lr is not None and not self.lr > 0:
            bad("lr", f"must be > 0, got {self.lr}")
        optim.check_adam_settings(bad, self.betas, self.eps, self.weight_decay)
        if not self.clip_grad_norm >= 0:
            bad("clip_grad_norm", f"must be >= 0 (0 = off), got {self.clip_grad_norm}")
        if self.size not in ("auto", "base", "large"):
            bad("size", f"must be auto, base or large, got {self.size!r}")
        if self.max_length_rule not in MAX_LENGTH_RULES:
            bad("max_length_rule", f"must be one of {MAX_LENGTH_RULES}, got {self.max_length_rule!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            bad("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if self.patience < 0:
            bad("patience", f"must be >= 0, got {self.patience}")
        if self.max_length is not None and self.max_length < 3:
            bad("max_length", f"must be >= 3 ([CLS], one token, [SEP]), got {self.max_length}")
        for key in ("max_train", "max_val", "max_test", "torch_threads"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                bad(key, f"must be >= 1 or null, got {getattr(self, key)}")
        if self.attn_implementation not in ("sdpa", "eager", "flash_attention_2"):
            bad("attn_implementation", f"must be sdpa, eager or flash_attention_2, got {self.attn_implementation!r}")
        if self.name is not None and (not self.name.strip() or "/" in self.name or "\\" in self.name
                                      or self.name in (".", "..")):
            bad("name", f"must be a plain name (it names a folder of the results directory), got {self.name!r}")

    def limits(self) -> dict[str, int | None]:
        """Examples kept per split (None = all)."""
        return {"train": self.max_train, "val": self.max_val, "test": self.max_test}


# ---------------------------------------------------------------------------------------------
# Run set-up: the model, the effective hyper-parameters and where each came from


def model_info(model_path: str | Path, tokenizer: str | None) -> dict[str, Any]:
    """{"hidden_size", "context", "model_type", "tokenizer_dir", "is_jax", "vocab_size"} of a JAX or HF model
    directory."""
    from bcmb_jax.weights import directories

    d = Path(model_path)
    if d.is_file():
        raise FinetuneError(f"--model {d}: a file; expected a model directory (HF or JAX checkpoint, a train run "
                            "or one of its steps)")
    if not d.is_dir():
        raise FinetuneError(f"--model {d}: no such directory")
    where = directories.locate(d)
    raw = read_json(where.config, FinetuneError, "an HF config.json")
    tok = Path(tokenizer) if tokenizer else where.tokenizer
    if tok is None:
        raise FinetuneError(f"{d}: no tokenizer files in the model directory; pass tokenizer=DIR")
    hidden = raw.get("hidden_size", raw.get("d_model", raw.get("dim")))
    context = raw.get("max_position_embeddings", raw.get("n_positions"))
    return {"hidden_size": hidden, "context": context, "model_type": raw.get("model_type"),
            "tokenizer_dir": tok, "is_jax": where.params is not None, "vocab_size": raw.get("vocab_size")}


def max_length_for(info: dict, enc: TextEncoder, cfg: FinetuneConfig) -> tuple[int, str]:
    """(tokens per example, why): cfg.max_length, else `cfg.max_length_rule`.

    "model" (the default): the model's context, capped by the tokenizer's model_max_length when that is
    below 10,000. "paper": the authors' code, model_max_length when below 10,000, else 512. Both give
    8,192 for the released (Bio)ModernBERT tokenizers, whose model_max_length is 8192; for a tokenizer
    without such a limit the "model" rule uses the context the model was trained for instead of 512.
    """
    if cfg.max_length is not None:
        return cfg.max_length, "user"
    tok = enc.model_max_length
    if cfg.max_length_rule == "paper":
        return (tok, "paper rule: tokenizer model_max_length") if tok else (PAPER_MAX_LENGTH, "paper rule: 512")
    limits = [x for x in (info["context"], tok) if x]
    if not limits:
        raise FinetuneError("the model config has no max_position_embeddings; pass max_length=N")
    return int(min(limits)), "model rule: min(model context, tokenizer model_max_length)"


def resolve_hyperparameters(task: str, info: dict, enc: TextEncoder, cfg: FinetuneConfig,
                            user: set[str]) -> dict[str, Any]:
    """The hyper-parameters actually used, {key: value}, plus "sources": {key: where it came from}.

    `user` names the keys given on the command line; every other key is the paper's default (or, for the
    learning rate of a model size the paper has no row for, the stated fallback).
    """
    size = cfg.size if cfg.size != "auto" else paper.size_of(info["hidden_size"])
    lr, lr_source = (cfg.lr, "user") if cfg.lr is not None else paper.default_lr(task, size)
    max_length, ml_source = max_length_for(info, enc, cfg)
    values = {"lr": lr, "size": size or f"hidden {info['hidden_size']}", "weight_decay": cfg.weight_decay,
              "epochs": cfg.epochs, "batch_size": cfg.batch_size, "max_length": max_length}
    sources = {k: "user" if k in user else "paper" for k in ("weight_decay", "epochs", "batch_size")}
    sources.update(lr=lr_source, max_length=ml_source,
                   size="user" if "size" in user else f"hidden_size {info['hidden_size']}")
    return {**values, "sources": sources}


# ---------------------------------------------------------------------------------------------
# Seeds: data order and head init, shared by both backends


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Example indices of each batch of one epoch: a permutation from (seed, epoch), cut into batches
    (the last one may be smaller, as the HF Trainer's drop_last=False)."""
    order = np.random.default_rng((seed, epoch)).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def head_init(seed: int, hidden_size: int, num_labels: int, cutoff: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """The fresh classifier of a seed, HF layout (weight [C, H], bias [C]): ModernBERT's init, a normal of
    std hidden_size^-0.5 truncated at +-cutoff std, and a zero bias."""
    rng = np.random.default_rng((seed, 7919))
    x = rng.standard_normal((num_labels, hidden_size))
    while (bad := np.abs(x) > cutoff).any():
        x[bad] = rng.standard_normal(int(bad.sum()))
    return (x * hidden_size ** -0.5).astype(np.float32), np.zeros(num_labels, np.float32)


# ---------------------------------------------------------------------------------------------
# The protocol, over any backend


class Backend(Protocol):
    """What `fit` needs from a backend (JAX here, PyTorch in torch_backend.py)."""

    name: str

    def start(self, seed: int, lr: float, total_steps: int, warmup_steps: int) -> None:
        """Fresh weights (the checkpoint plus `head_init(seed)`) and a fresh optimizer."""

    def train_step(self, batch: list[Example], lr: float) -> float:
        """One optimizer step at learning rate `lr` on these examples; returns the batch loss."""

    def predict(self, examples: list[Example]) -> list[np.ndarray]:
        """Per-example logits: [C] (sequence tasks) or [n, C] (NER)."""

    def snapshot(self) -> Any:
        """A copy of the current weights."""

    def restore(self, snap: Any) -> None:
        """Puts weights from `snapshot` back."""


def schedule(total_steps: int, warmup_steps: int) -> optim.ScheduleConfig:
    """HF `get_linear_schedule_with_warmup` (optimizer steps)."""
    return optim.ScheduleConfig(name="linear", unit="steps", warmup=warmup_steps, total=total_steps)


def warmup_steps(cfg: FinetuneConfig, total_steps: int) -> int:
    return math.ceil(cfg.warmup_ratio * total_steps)  # HF TrainingArguments.get_warmup_steps


def fit(backend: Backend, data: EncodedTask, cfg: FinetuneConfig, seed: int, lr: float,
        on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Trains one seed: `cfg.epochs` epochs (or until `patience` epochs bring no better validation score),
    restores the best validation epoch (first best on ties, as the HF Trainer) and scores it on test.

    Returns {"test", "val", "best_epoch", "epochs": [{"epoch", "train_loss", "losses", "val", "seconds"}],
    "seconds", "predictions"}.
    """
    main = metrics.MAIN_METRIC[data.kind]
    t_start = time.perf_counter()
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warm = warmup_steps(cfg, total)
    sched = schedule(total, warm)
    backend.start(seed, lr, total, warm)
    step, best, best_epoch, best_val, snap = 0, -math.inf, 0, None, None
    history = []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        losses = []
        for idx in epoch_batches(len(data.train), cfg.batch_size, seed, epoch):
            lr_t = lr * float(optim.lr_scale(sched, step))
            losses.append(backend.train_step([data.train[i] for i in idx], lr_t))
            step += 1
        val, _ = metrics.score(data, data.val, backend.predict(data.val))
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "losses": [float(x) for x in losses],
               "val": val, "seconds": time.perf_counter() - t0}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if val[main] > best:
            best, best_epoch, best_val, snap = val[main], epoch, val, backend.snapshot()
        elif cfg.patience and epoch - best_epoch >= cfg.patience:
            break
    if best_epoch != history[-1]["epoch"]:
        backend.restore(snap)
    test, records = metrics.score(data, data.test, backend.predict(data.test))
    return {"test": test, "val": best_val, "best_epoch": best_epoch, "epochs": history,
            "seconds": time.perf_counter() - t_start, "predictions": records}
