"""The model as data: (graph definition, parameters as a pure dict, other state), and fresh dropout streams.

Parameters are nested pure dicts keyed by NNX path (layer indices as ints): the one form used in
memory, in checkpoints, by the optimizer and by every jitted step. `split_model` is the one way a
model becomes that form; `nnx.merge(graphdef, params, fresh_rngs(rest, key))` rebuilds it inside a step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def split_model(model, training: bool | None = None) -> tuple[nnx.GraphDef, dict, Any]:
    """(graphdef, params as a pure dict, the other state: dropout RNG streams). `model` is not changed.

    `training=True` gives the graph of a training step: it applies the layer norms as LayerNorms unless
    the model recomputes its layers (`runtime.normed_linear`: the faster choice for XLA:CPU's backward
    pass); `training=False` folds them (inference); None keeps the model's run-time option as it is.
    """
    if training is not None:
        fold = model.model.remat or not training
        model = nnx.with_attributes(model, runtime=model.runtime.replace(fold_norms=fold))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), rest


def fresh_rngs(rest, key: jax.Array):
    """Dropout RNG streams for one step: stream i gets fold_in(key, i), counts reset; resumes exactly."""
    leaves, treedef = jax.tree.flatten(rest)
    out = []
    for i, leaf in enumerate(leaves):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            out.append(jax.random.fold_in(key, i))
        else:
            out.append(jnp.zeros_like(leaf))
    return jax.tree.unflatten(treedef, out)
