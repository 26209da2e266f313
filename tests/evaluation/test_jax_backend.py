"""evaluation/jax_backend.py: packed rows give each example its unpacked logits, the packed loss is HF's batch loss."""

from __future__ import annotations

import numpy as np
from conftest import TINY_MODEL

from bcmb_jax.evaluation import jax_backend
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.heads import IGNORE


def test_packed_training_loss_and_predictions_equal_unpacked_runs():
    """Packed rows give each example the logits it gets alone, and the packed loss is HF's batch loss."""
    import functools

    import jax.numpy as jnp
    import optax
    from flax import nnx

    from bcmb_jax.evaluation.encoding import Example
    from bcmb_jax.modeling import model
    from bcmb_jax.modeling.infer import encode

    rng = np.random.default_rng(0)
    lengths = [5, 17, 9, 30, 3, 12, 22, 8]
    cfg = ModelConfig(**{**TINY_MODEL, "num_labels": 3})
    ids = [np.concatenate([[1], rng.integers(5, 600, n - 2), [2]]).astype(np.int32) for n in lengths]
    T = 32
    models, refs = {}, {}
    for task in ("sequence", "token"):
        models[task] = model.build(cfg, task, seed=1, runtime="reference")  # compiles faster
        rows = np.full((len(ids), T), 3, np.int32)
        for i, x in enumerate(ids):
            rows[i, :len(x)] = x
        mask = np.arange(T)[None] < np.asarray(lengths)[:, None]
        logits = np.asarray(models[task](rows, attention_mask=mask).logits)  # each row alone: padded, unpacked
        refs[task] = [logits[i, :n] for i, n in enumerate(lengths)] if task == "token" else list(logits)
        # Predictions: infer.encode's packed rows vs the same examples alone.
        for got, ref in zip(encode(models[task], ids, row_len=64, batch_tokens=256), refs[task]):
            assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5

    for kind in ("classification", "multilabel", "ner"):
        task = "token" if kind == "ner" else "sequence"
        batch = []
        for i, x in enumerate(ids):
            if kind == "ner":
                y = rng.integers(0, 3, len(x)).astype(np.int32)
                y[rng.random(len(x)) < 0.4] = IGNORE
                batch.append(Example(str(i), x, token_labels=y))
            else:
                lab = int(rng.integers(0, 3)) if kind == "classification" else (rng.random(3) < 0.5).astype(np.float32)
                batch.append(Example(str(i), x, label=lab))
        arrays = jax_backend.pack_batch(batch, kind, 3, 3, max_docs=8, budget=48)
        assert arrays["input_ids"].shape[0] > 1 and arrays["input_ids"].shape[1] in jax_backend._LEN_BUCKETS
        assert (arrays["segment_ids"] > 0).sum() == sum(lengths)  # every token once, no truncation
        ref = refs[task]
        if kind == "ner":
            logits = np.concatenate([r[e.token_labels != IGNORE] for r, e in zip(ref, batch)])
            y = np.concatenate([e.token_labels[e.token_labels != IGNORE] for e in batch])
            want = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), jnp.asarray(y)).mean()
        elif kind == "classification":
            want = optax.softmax_cross_entropy_with_integer_labels(
                jnp.asarray(np.stack(ref)), jnp.asarray([e.label for e in batch])).mean()
        else:
            want = optax.sigmoid_binary_cross_entropy(jnp.asarray(np.stack(ref)),
                                                      jnp.asarray(np.stack([e.label for e in batch]))).mean()
        loss = nnx.jit(functools.partial(jax_backend.packed_loss, kind=kind))
        got = loss(models[task], {k: jnp.asarray(v) for k, v in arrays.items()})
        assert abs(float(got) - float(want)) <= 1e-5 * abs(float(want))
