"""Fine-tuning and scoring on the paper's downstream tasks: the protocol, the data, the JAX backend, results.

The protocol (`fit`) is the HF Trainer set-up of the paper (modernbert-facts.md §9), shared by both backends:
AdamW (0.9, 0.999, 1e-8), weight decay 0.01 on every tensor but LayerNorm weights and biases, linear decay
to 0 without warmup, gradient clipping 1.0, batches of 16 examples, evaluation on the validation split after
every epoch, the best epoch's weights restored and scored on test. Unlike the paper's code, every seed
really changes both the data order (`epoch_batches`) and the classifier init (`head_init`); both are
numpy-defined, so the JAX and the PyTorch backend (`finetune_torch.py`) see the same batches and start
from the same weights for the same seed.

Tokenization (`load_encoder`, `encode_task`): `[CLS] text [SEP]` with a byte-level prefix space, truncated
to the model's context; NER words are tokenized one by one (each with its leading space, HF
`is_split_into_words`) and only a word's first sub-token carries its label.

The JAX backend packs each batch of examples into rows of a bucketed length (no compute on padding),
pools per document (sequence tasks) or scores every labelled token (NER), and runs one jitted pure step
of (params, opt_state). Results go to `<results_dir>/<name>/<backend>/<task>.json` (+ predictions), and
`table.md` summarizes every result file under `<results_dir>`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bcmb_jax import metrics, optim, tasks
from bcmb_jax.config import ConfigError, opt
from bcmb_jax.tasks import TaskData

log = logging.getLogger("evaluate")
IGNORE = -100  # label of tokens that carry no NER label (HF ignore_index)
MAIN_METRIC = {"ner": "f1", "classification": "weighted_f1", "multilabel": "weighted_f1"}
BACKENDS = ("jax", "torch")


class FinetuneError(ValueError):
    """A fine-tuning run was asked for something it cannot do."""


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning protocol; `evaluate.py --help` lists every key (key=value on the command line)."""

    epochs: int = opt(10, "training epochs; the best validation epoch is kept")
    lr: float | None = opt(None, "peak learning rate; null = tasks.default_lr(task, size)")
    size: str = opt("auto", "base | large | auto (large when hidden_size >= 1024): picks the default lr")
    batch_size: int = opt(16, "training examples per optimizer step")
    weight_decay: float = opt(0.01, "AdamW decay (lr * wd * p), not on LayerNorm weights and biases")
    betas: list[float] = opt([0.9, 0.999], "AdamW betas")
    eps: float = opt(1e-8, "AdamW epsilon")
    clip_grad_norm: float = opt(1.0, "clip gradients to this global norm (0 = off)")
    warmup_ratio: float = opt(0.0, "linear warmup over this fraction of all steps, then linear decay to 0")
    patience: int = opt(0, "stop after this many epochs without a better validation score (0 = run all)")
    max_length: int | None = opt(None, "tokens per example incl. [CLS]/[SEP]; null = the model's context")
    tokenizer: str | None = opt(None, "tokenizer directory; null = the model directory's tokenizer")
    max_train: int | None = opt(None, "use a fixed random subset of this many training examples")
    max_val: int | None = opt(None, "use a fixed random subset of this many validation examples")
    max_test: int | None = opt(None, "use a fixed random subset of this many test examples")
    name: str | None = opt(None, "model name in results/ and table.md; null = from the model path")
    save_predictions: bool = opt(True, "write <task>/seed<N>/test_predictions.jsonl")
    eval_batch_size: int = opt(16, "torch: examples per evaluation batch (padded)")
    eval_tokens: int = opt(16384, "jax: tokens per packed evaluation call")
    attention_backend: str | None = opt(None, "jax: blocked | reference | gpu; null = the model config's")
    attn_implementation: str = opt("sdpa", "torch: sdpa | eager")
    torch_threads: int | None = opt(None, "torch: intra-op threads; null = torch's default")

    def __post_init__(self):
        def bad(key, msg):
            raise ConfigError(f"`{key}` {msg}")

        for key in ("epochs", "batch_size", "eval_batch_size", "eval_tokens"):
            if getattr(self, key) < 1:
                bad(key, f"must be >= 1, got {getattr(self, key)}")
        if self.lr is not None and not self.lr > 0:
            bad("lr", f"must be > 0, got {self.lr}")
        if self.size not in ("auto", "base", "large"):
            bad("size", f"must be auto, base or large, got {self.size!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            bad("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if self.patience < 0:
            bad("patience", f"must be >= 0, got {self.patience}")
        if self.max_length is not None and self.max_length < 3:
            bad("max_length", f"must be >= 3 ([CLS], one token, [SEP]), got {self.max_length}")
        for key in ("max_train", "max_val", "max_test"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                bad(key, f"must be >= 1 or null, got {getattr(self, key)}")


# ---------------------------------------------------------------------------------------------
# Tokenization


def _prefix_space(node: Any) -> None:
    """Sets add_prefix_space on every ByteLevel pre-tokenizer of a tokenizer.json tree."""
    if isinstance(node, dict):
        if node.get("type") == "ByteLevel":
            node["add_prefix_space"] = True
        for v in node.values():
            _prefix_space(v)
    elif isinstance(node, list):
        for v in node:
            _prefix_space(v)


@dataclass(frozen=True)
class TextEncoder:
    """A `tokenizers.Tokenizer` with the paper's settings and the ids that frame an example.

    The paper loaded `AutoTokenizer(..., add_prefix_space=True)` with transformers 4.52, which rewrote the
    ByteLevel pre-tokenizer to add the space; transformers 5 ignores that argument for plain fast
    tokenizers, so the pre-tokenizer is rewritten here instead (as `data.load_tokenizer` does).
    """

    tokenizer: Any
    cls_id: int
    sep_id: int
    pad_id: int
    model_max_length: int | None  # tokenizer_config.json's, when below 10,000 (the paper's rule)

    def text(self, texts: Sequence[str]) -> list[list[int]]:
        """Content token ids of each text (no special tokens)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def words(self, docs: Sequence[Sequence[str]]) -> list[tuple[list[int], list[int | None]]]:
        """(content ids, word index of each id) of each word list, every word tokenized on its own."""
        encs = self.tokenizer.encode_batch([list(w) for w in docs], is_pretokenized=True, add_special_tokens=False)
        return [(e.ids, e.word_ids) for e in encs]


def load_encoder(directory: str | Path) -> TextEncoder:
    """The tokenizer of a model (or tokenizer) directory: tokenizer.json via `data.load_tokenizer`, or any
    HF tokenizer via `AutoTokenizer` (never remote code), with a byte-level prefix space either way."""
    from tokenizers import Tokenizer

    from bcmb_jax.data import DataError, load_tokenizer

    d = Path(directory)
    if not d.is_dir():
        raise FinetuneError(f"{d}: tokenizer directory does not exist")
    limit = None
    cfg_path = d / "tokenizer_config.json"
    if cfg_path.is_file():
        try:
            n = json.loads(cfg_path.read_text()).get("model_max_length")
        except json.JSONDecodeError as e:
            raise FinetuneError(f"{cfg_path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        limit = int(n) if isinstance(n, int | float) and n < 10_000 else None
    if (d / "tokenizer.json").is_file():
        try:
            info = load_tokenizer(d, prefix_space=True)
            return TextEncoder(info.tokenizer, info.cls_id, info.sep_id, info.pad_id, limit)
        except DataError:
            pass  # special tokens not named like ModernBERT's: AutoTokenizer knows them
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(d), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise FinetuneError(f"{d}: no usable tokenizer ({type(e).__name__}: {e})") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None or hf.cls_token_id is None or hf.sep_token_id is None:
        raise FinetuneError(f"{d}: the tokenizer needs a fast (tokenizers) backend and [CLS]/[SEP]-like tokens")
    spec = json.loads(backend.to_str())
    _prefix_space(spec.get("pre_tokenizer"))
    pad = hf.pad_token_id if hf.pad_token_id is not None else hf.sep_token_id
    return TextEncoder(Tokenizer.from_str(json.dumps(spec)), hf.cls_token_id, hf.sep_token_id, pad, limit)


@dataclass
class Example:
    """One tokenized example. `ids` holds [CLS] ... [SEP]."""

    id: str
    ids: np.ndarray  # int32 [n]
    label: Any = None  # classification: class id; multilabel: float32 multi-hot [C]
    token_labels: np.ndarray | None = None  # NER: int32 [n], the word's tag at its first sub-token, else -100
    words: list[str] | None = None  # NER: the words that kept a token (truncation drops the rest)
    tags: list[int] | None = None  # NER: their gold tag ids
    first: np.ndarray | None = None  # NER: token index of each kept word's first sub-token


@dataclass
class EncodedTask:
    name: str
    kind: str
    labels: list[str]
    train: list[Example]
    val: list[Example]
    test: list[Example]
    max_length: int
    stats: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[Example]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def subsample(rows: list, n: int | None) -> list:
    """A fixed random subset of n rows (the same for every seed and backend), in the original order."""
    if n is None or n >= len(rows):
        return rows
    keep = np.sort(np.random.default_rng(0).permutation(len(rows))[:n])
    return [rows[i] for i in keep]


def _frame(enc: TextEncoder, content: Sequence[int], max_length: int) -> np.ndarray:
    return np.asarray([enc.cls_id, *content[: max_length - 2], enc.sep_id], np.int32)


def encode_examples(rows: list[dict], kind: str, enc: TextEncoder, max_length: int) -> tuple[list[Example], dict]:
    """Tokenizes one split; returns the examples and counts of what truncation cut."""
    stats = {"examples": len(rows), "truncated_examples": 0, "dropped_words": 0}
    out = []
    if kind != "ner":
        for row, content in zip(rows, enc.text([r["text"] for r in rows])):
            stats["truncated_examples"] += len(content) > max_length - 2
            label = row["label"] if kind == "classification" else np.asarray(row["labels"], np.float32)
            out.append(Example(row["id"], _frame(enc, content, max_length), label=label))
        return out, stats
    for row, (content, word_ids) in zip(rows, enc.words([r["tokens"] for r in rows])):
        n = min(len(content), max_length - 2)
        stats["truncated_examples"] += len(content) > n
        token_labels = np.full(n + 2, IGNORE, np.int32)
        first, kept, prev = [], [], None
        for t, w in enumerate(word_ids[:n]):
            if w is not None and w != prev:
                token_labels[t + 1] = row["tags"][w]
                first.append(t + 1)
                kept.append(w)
            prev = w
        stats["dropped_words"] += len(row["tokens"]) - len(kept)
        out.append(Example(row["id"], _frame(enc, content, max_length), token_labels=token_labels,
                           words=[row["tokens"][w] for w in kept], tags=[row["tags"][w] for w in kept],
                           first=np.asarray(first, np.int64)))
    return out, stats


def encode_task(task: TaskData, enc: TextEncoder, max_length: int, cfg: FinetuneConfig) -> EncodedTask:
    """Tokenizes the (optionally subsampled) splits of a task."""
    splits, stats = {}, {}
    for split, limit in (("train", cfg.max_train), ("val", cfg.max_val), ("test", cfg.max_test)):
        rows = subsample(task.splits()[split], limit)
        if not rows:
            raise FinetuneError(f"task {task.name}: the {split} split is empty")
        splits[split], stats[split] = encode_examples(rows, task.kind, enc, max_length)
    return EncodedTask(task.name, task.kind, list(task.labels), max_length=max_length, stats=stats, **splits)


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
# Metrics and predictions


def _sigmoid_bce(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


def _cross_entropy(logits_NC: np.ndarray, y_N: np.ndarray) -> np.ndarray:
    z = logits_NC.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return np.log(np.exp(z).sum(-1)) - z[np.arange(len(y_N)), y_N]


def score(data: EncodedTask, examples: list[Example], outputs: list[np.ndarray]) -> tuple[dict, list[dict]]:
    """(metrics incl. the loss, one prediction record per example) from per-example logits
    ([C] for sequence tasks, [n, C] for NER)."""
    names = data.labels
    if data.kind == "ner":
        gold = [[names[t] for t in e.tags] for e in examples]
        pred = [[names[int(i)] for i in out[e.first].argmax(-1)] if len(e.first) else []
                for e, out in zip(examples, outputs)]
        logits = np.concatenate([o[e.token_labels != IGNORE] for e, o in zip(examples, outputs)])
        y = np.concatenate([e.token_labels[e.token_labels != IGNORE] for e in examples])
        result = metrics.ner_metrics(gold, pred)
        result["loss"] = float(_cross_entropy(logits, y).mean()) if len(y) else 0.0
        records = [{"id": e.id, "tokens": e.words, "gold": g, "pred": p} for e, g, p in zip(examples, gold, pred)]
        return result, records
    logits = np.stack(outputs).astype(np.float64)
    if data.kind == "classification":
        gold = np.asarray([e.label for e in examples])
        pred = logits.argmax(-1)
        result = metrics.classification_metrics(gold, pred, names)
        result["loss"] = float(_cross_entropy(logits, gold).mean())
        records = [{"id": e.id, "gold": names[g], "pred": names[p]} for e, g, p in zip(examples, gold, pred)]
        return result, records
    gold = np.stack([e.label for e in examples]).astype(np.int64)
    pred = metrics.logits_to_multihot(logits)
    result = metrics.multilabel_metrics(gold, pred)
    result["loss"] = float(_sigmoid_bce(logits, gold).mean())
    records = [{"id": e.id, "gold": [names[i] for i in np.flatnonzero(g)],
                "pred": [names[i] for i in np.flatnonzero(p)]} for e, g, p in zip(examples, gold, pred)]
    return result, records


# ---------------------------------------------------------------------------------------------
# The protocol, over any backend


class Backend(Protocol):
    """What `fit` needs from a backend (JAX here, PyTorch in finetune_torch.py)."""

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
    main = MAIN_METRIC[data.kind]
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
        val, _ = score(data, data.val, backend.predict(data.val))
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
    test, records = score(data, data.test, backend.predict(data.test))
    return {"test": test, "val": best_val, "best_epoch": best_epoch, "epochs": history,
            "seconds": time.perf_counter() - t_start, "predictions": records}


# ---------------------------------------------------------------------------------------------
# JAX backend: packed batches, one jitted step

_LEN_BUCKETS = tuple(2 ** k for k in range(6, 14))  # row lengths 64 ... 8192
BUDGET_SLACK = 1.25  # tokens per training batch = this x batch_size x mean example length


def bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n (beyond the last: n rounded up to a multiple of the last)."""
    for b in buckets:
        if b >= n:
            return b
    return -(-n // buckets[-1]) * buckets[-1]


def token_budget(examples: list[Example], batch_size: int) -> int:
    """Tokens per packed training batch: the mean batch's tokens with some slack for unlucky batches."""
    return math.ceil(BUDGET_SLACK * batch_size * float(np.mean([len(e.ids) for e in examples])))


def batch_shape(lengths: Sequence[int], budget: int) -> tuple[int, int, list[list[int]]]:
    """(rows, row length, best-fit bins) of a packed batch; few distinct shapes over a run.

    Row length: the longest example, or budget / 8 if larger (rows much longer than the items pack
    tightly), rounded up to a power of two. Rows: ceil(budget / row length), doubled, tripled, ... when
    the batch needs more.
    """
    from bcmb_jax.infer import best_fit

    row_len = bucket(max(max(lengths), budget // 8), _LEN_BUCKETS)
    bins = best_fit(lengths, row_len)
    base = -(-budget // row_len)
    return base * -(-len(bins) // base), row_len, bins


def pack_batch(batch: list[Example], kind: str, pad_id: int, num_labels: int, max_docs: int,
               budget: int) -> dict[str, np.ndarray]:
    """Packs a training batch into [R, L] rows (`batch_shape`): input_ids, segment_ids, position_ids, plus

    labels [R, M] (classification; M = `max_docs` slots per row, -1 = empty) or multi-hot [R, M, C]
    (multi-label), both with `valid` [R, M]; or token labels [R, L] (NER; -100 where unlabelled).
    """
    from bcmb_jax.infer import make_rows

    lengths = [len(e.ids) for e in batch]
    n_rows, row_len, bins = batch_shape(lengths, budget)
    rows = make_rows([e.ids for e in batch], bins, row_len, pad_id, n_rows)
    if kind == "ner":
        labels = np.full((n_rows, row_len), IGNORE, np.int32)
        for r, b in enumerate(bins):
            t = 0
            for i in b:
                labels[r, t:t + lengths[i]] = batch[i].token_labels
                t += lengths[i]
        return {**rows, "labels": labels}
    if max(len(b) for b in bins) > max_docs:
        raise ValueError(f"a row holds more than max_docs={max_docs} documents")
    valid = np.zeros((n_rows, max_docs), bool)
    if kind == "classification":
        labels = np.full((n_rows, max_docs), -1, np.int32)
    else:
        labels = np.zeros((n_rows, max_docs, num_labels), np.float32)
    for r, b in enumerate(bins):
        for s, i in enumerate(b):
            labels[r, s] = batch[i].label
            valid[r, s] = True
    return {**rows, "labels": labels, "valid": valid}


def packed_loss(model, batch: dict, kind: str):
    """HF's losses on a packed batch: CE mean over examples (classification), BCE mean over examples x
    labels (multi-label), CE mean over labelled tokens (NER)."""
    import jax.numpy as jnp
    import optax

    ids, seg, pos = batch["input_ids"], batch["segment_ids"], batch["position_ids"]
    if kind == "ner":
        logits = model.forward(ids, seg, pos, packed=True, num_segments=None).logits.astype(jnp.float32)
        y = batch["labels"]
        mask = y != IGNORE
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(mask, y, 0))
        return jnp.where(mask, ce, 0.0).sum() / jnp.maximum(mask.sum(), 1)
    valid = batch["valid"]
    logits = model.forward(ids, seg, pos, packed=True, num_segments=valid.shape[1]).logits.astype(jnp.float32)
    n = jnp.maximum(valid.sum(), 1)
    if kind == "classification":
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, batch["labels"], 0))
        return jnp.where(valid, ce, 0.0).sum() / n
    bce = optax.sigmoid_binary_cross_entropy(logits, batch["labels"]).mean(-1)
    return jnp.where(valid, bce, 0.0).sum() / n


class JaxBackend:
    """Fine-tuning with the NNX model on packed rows."""

    name = "jax"

    def __init__(self, model_path: str | Path, data: EncodedTask, cfg: FinetuneConfig):
        import jax
        import optax
        from flax import nnx

        from bcmb_jax import pretrained, trainer

        self.kind, self.cfg, self.num_labels = data.kind, cfg, len(data.labels)
        self.budget = token_budget(data.train, cfg.batch_size)
        overrides = {"attention_backend": cfg.attention_backend} if cfg.attention_backend else None
        model = pretrained.from_pretrained(model_path, task="token" if data.kind == "ner" else "sequence",
                                           num_labels=self.num_labels, config_overrides=overrides)
        self.mcfg = model.cfg
        model.train()
        self.graph_train, params, rest = trainer.split_model(model)
        model.eval()
        self.graph_eval, _, self.rest = trainer.split_model(model, training=False)
        self.base_params = jax.tree.map(np.asarray, params)
        self.tx = optim.make_optimizer(optim.OptimConfig(
            name="adamw", lr=1.0, betas=list(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
            clip_grad_norm=cfg.clip_grad_norm or None))
        graph, tx, kind = self.graph_train, self.tx, self.kind

        def step(params, opt_state, batch, lr, key):
            def loss_fn(p):
                model = nnx.merge(graph, p, trainer.fresh_rngs(rest, key))
                return packed_loss(model, batch, kind)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            opt_state = optim.set_learning_rate(opt_state, lr)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self._step = jax.jit(step, donate_argnums=(0, 1))
        self.params = self.opt_state = None

    def start(self, seed: int, lr: float, total_steps: int, warmup_steps: int) -> None:
        import jax
        import jax.numpy as jnp

        w, b = head_init(seed, self.mcfg.hidden_size, self.num_labels, self.mcfg.initializer_cutoff_factor)
        params = {**self.base_params, "classifier": {"kernel": np.ascontiguousarray(w.T), "bias": b}}
        self.params = jax.tree.map(jnp.asarray, params)
        self.opt_state = self.tx.init(self.params)
        self.key = jax.random.key(seed)
        self.steps = 0

    def train_step(self, batch: list[Example], lr: float) -> float:
        import jax

        arrays = pack_batch(batch, self.kind, self.mcfg.pad_token_id, self.num_labels, self.cfg.batch_size,
                            self.budget)
        key = jax.random.fold_in(self.key, self.steps)
        self.params, self.opt_state, loss = self._step(self.params, self.opt_state, arrays, np.float32(lr), key)
        self.steps += 1
        return float(loss)

    def model(self):
        from flax import nnx

        return nnx.merge(self.graph_eval, self.params, self.rest)

    def predict(self, examples: list[Example]) -> list[np.ndarray]:
        from bcmb_jax.infer import encode

        return encode(self.model(), [e.ids for e in examples], batch_tokens=self.cfg.eval_tokens)

    def snapshot(self) -> Any:
        import jax

        return jax.tree.map(np.array, self.params)  # a host copy: the step donates the device buffers

    def restore(self, snap: Any) -> None:
        import jax
        import jax.numpy as jnp

        self.params = jax.tree.map(jnp.asarray, snap)


# ---------------------------------------------------------------------------------------------
# Runs: model location, learning rate, results files


def model_info(model_path: str | Path, tokenizer: str | None) -> dict[str, Any]:
    """{"hidden_size", "context", "model_type", "tokenizer_dir", "is_jax"} of a JAX or HF model directory."""
    from bcmb_jax import checkpoint

    d = Path(model_path)
    if not d.is_dir():
        raise FinetuneError(f"{d}: model directory does not exist")
    where = checkpoint.locate(d)
    try:
        raw = json.loads(where.config.read_text())
    except json.JSONDecodeError as e:
        raise FinetuneError(f"{where.config}: invalid JSON at line {e.lineno}: {e.msg}") from None
    tok = Path(tokenizer) if tokenizer else where.tokenizer
    if tok is None:
        raise FinetuneError(f"{d}: no tokenizer files in the model directory; pass tokenizer=DIR")
    hidden = raw.get("hidden_size", raw.get("d_model", raw.get("dim")))
    context = raw.get("max_position_embeddings", raw.get("n_positions"))
    return {"hidden_size": hidden, "context": context, "model_type": raw.get("model_type"),
            "tokenizer_dir": tok, "is_jax": where.params is not None}


def max_length_for(info: dict, enc: TextEncoder, cfg: FinetuneConfig) -> int:
    """cfg.max_length, else the model's context, capped by the tokenizer's model_max_length (below 10,000)."""
    if cfg.max_length is not None:
        return cfg.max_length
    limits = [x for x in (info["context"], enc.model_max_length) if x]
    if not limits:
        raise FinetuneError("the model config has no max_position_embeddings; pass max_length=N")
    return int(min(limits))


def learning_rate(task: str, info: dict, cfg: FinetuneConfig) -> tuple[float, str]:
    """(peak lr, size): cfg.lr or the task's default for the model size."""
    size = cfg.size
    if size == "auto":
        size = "large" if (info["hidden_size"] or 0) >= 1024 else "base"
    return (cfg.lr if cfg.lr is not None else tasks.default_lr(task, size)), size


def default_name(model_path: str | Path) -> str:
    p = Path(model_path).resolve()
    name = f"{p.parent.parent.name}-step{p.name}" if p.name.isdigit() and p.parent.name == "checkpoints" else p.name
    return safe_name(name)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "model"


def atomic_write(path: Path, text: str) -> None:
    """Writes `text` to a temporary sibling, then renames it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def result_paths(results_dir: str | Path, name: str, backend: str, task: str) -> tuple[Path, Path]:
    """(<results_dir>/<name>/<backend>/<task>.json, the folder of its per-seed predictions)."""
    base = Path(results_dir) / name / backend
    return base / f"{task}.json", base / task


def summary(per_seed: dict[str, dict]) -> dict[str, dict[str, float]]:
    """{"median"|"mean"|"min"|"max": {metric: value}} over the seeds' test metrics."""
    s = metrics.summarize({k: v["test"] for k, v in per_seed.items()})
    return {stat: {m: s[m][stat] for m in s} for stat in ("median", "mean", "min", "max")}


def write_result(path: Path, pred_dir: Path, header: dict, per_seed: dict[str, dict],
                 predictions: dict[str, list[dict]]) -> dict:
    """Writes the task's JSON (and the new seeds' predictions), atomically; returns the JSON object."""
    for seed, records in predictions.items():
        atomic_write(pred_dir / f"seed{seed}" / "test_predictions.jsonl",
                     "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    obj = {**header, "seeds": per_seed, **summary(per_seed)}
    atomic_write(path, json.dumps(obj, indent=1) + "\n")
    return obj


def _cell(obj: dict) -> str:
    main = obj.get("main_metric", "f1")
    med, lo, hi = (obj.get(s, {}).get(main) for s in ("median", "min", "max"))
    if med is None:
        return ""
    return f"{100 * med:.1f} ({100 * lo:.1f}–{100 * hi:.1f})"


def write_table(results_dir: str | Path) -> Path:
    """Regenerates <results_dir>/table.md from every <name>/<backend>/<task>.json: rows = models, columns =
    tasks, cells = median main metric x 100 (min–max over seeds)."""
    root = Path(results_dir)
    cells: dict[tuple[str, str], dict[str, str]] = {}
    seeds: dict[tuple[str, str], set] = {}
    found: set[str] = set()
    for path in sorted(root.glob("*/*/*.json")):
        try:
            obj = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if not isinstance(obj, dict) or not {"task", "backend", "seeds"} <= set(obj):
            continue
        key = (path.parent.parent.name, path.parent.name)
        cells.setdefault(key, {})[obj["task"]] = _cell(obj)
        seeds.setdefault(key, set()).add(len(obj["seeds"]))
        found.add(obj["task"])
    cols = [t for t in tasks.PAPER_TASKS if t in found] + sorted(found - set(tasks.PAPER_TASKS))
    lines = ["# Fine-tuning results", "",
             "Median over seeds of the main test metric x 100 (min–max): entity-level micro F1 (seqeval) for NER, "
             "weighted F1 (sklearn) for classification.", "",
             "| model | backend | seeds | " + " | ".join(cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for (name, backend), row in sorted(cells.items()):
        n = "/".join(str(x) for x in sorted(seeds[(name, backend)]))
        lines.append(f"| {name} | {backend} | {n} | " + " | ".join(row.get(c, "") for c in cols) + " |")
    out = root / "table.md"
    atomic_write(out, "\n".join(lines) + "\n")
    return out


def config_dict(cfg: FinetuneConfig) -> dict:
    return dataclasses.asdict(cfg)
