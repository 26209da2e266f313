"""The JAX backend of `protocol.fit`: the NNX model on packed rows, one jitted pure step.

Each batch of examples is packed into rows of a bucketed length (no compute on padding); sequence tasks pool
per document, NER scores every labelled token. The step is a pure function of (params as a pure dict,
optimizer state), like `train.py`'s; dropout streams are drawn from (seed, step) inside it (`state.fresh_rngs`),
so a run is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bcmb_jax.evaluation.encoding import EncodedTask, Example
from bcmb_jax.evaluation.protocol import FinetuneConfig, head_init
from bcmb_jax.modeling.heads import IGNORE
from bcmb_jax.training import optim

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
    from bcmb_jax.modeling.infer import best_fit

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
    from bcmb_jax.modeling.infer import make_rows

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

        from bcmb_jax.modeling.state import fresh_rngs, split_model
        from bcmb_jax.weights import pretrained

        self.kind, self.cfg, self.num_labels = data.kind, cfg, len(data.labels)
        self.budget = token_budget(data.train, cfg.batch_size)
        model = pretrained.from_pretrained(model_path, task="token" if data.kind == "ner" else "sequence",
                                           num_labels=self.num_labels, runtime=cfg.attention_backend)
        self.model_cfg = model.cfg
        self.graph_eval, params, self.rest = split_model(model)
        model.train()
        self.graph_train = split_model(model, training=True)[0]
        self.base_params = jax.tree.map(np.asarray, params)
        self.tx = optim.make_optimizer(optim.OptimConfig(
            name="adamw", lr=1.0, betas=list(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
            clip_grad_norm=cfg.clip_grad_norm or None))
        graph, rest, tx, kind = self.graph_train, self.rest, self.tx, self.kind

        def step(params, opt_state, batch, lr, key):
            def loss_fn(p):
                return packed_loss(nnx.merge(graph, p, fresh_rngs(rest, key)), batch, kind)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            opt_state = optim.set_learning_rate(opt_state, lr)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self._step = jax.jit(step, donate_argnums=(0, 1))
        self.params = self.opt_state = None

    def start(self, seed: int, lr: float, total_steps: int, warmup_steps: int) -> None:
        import jax
        import jax.numpy as jnp

        w, b = head_init(seed, self.model_cfg.hidden_size, self.num_labels, self.model_cfg.initializer_cutoff_factor)
        params = jax.tree.map(jnp.asarray, self.base_params)
        params["classifier"]["kernel"] = jnp.asarray(np.ascontiguousarray(w.T))
        params["classifier"]["bias"] = jnp.asarray(b)
        self.params = params
        self.opt_state = self.tx.init(self.params)
        self.key = jax.random.key(seed)
        self.steps = 0

    def train_step(self, batch: list[Example], lr: float) -> float:
        import jax

        arrays = pack_batch(batch, self.kind, self.model_cfg.pad_token_id, self.num_labels, self.cfg.batch_size,
                            self.budget)
        key = jax.random.fold_in(self.key, self.steps)
        self.params, self.opt_state, loss = self._step(self.params, self.opt_state, arrays, np.float32(lr), key)
        self.steps += 1
        return float(loss)

    def model(self):
        from flax import nnx

        return nnx.merge(self.graph_eval, self.params, self.rest, copy=True)

    def predict(self, examples: list[Example]) -> list[np.ndarray]:
        from bcmb_jax.modeling.infer import encode

        return encode(self.model(), [e.ids for e in examples], batch_tokens=self.cfg.eval_tokens)

    def snapshot(self) -> Any:
        import jax

        return jax.tree.map(np.array, self.params)  # a host copy: the step donates the device buffers

    def restore(self, snap: Any) -> None:
        import jax
        import jax.numpy as jnp

        self.params = jax.tree.map(jnp.asarray, snap)
