"""The jitted MLM train step: sparse masked-token loss, gradient accumulation, the optimizer update.

The train state is a plain pytree {params, opt_state, step}: `params` is the nested parameter dict of
the model (NNX paths, layer indices as ints, the same form as a JAX checkpoint directory's `params/`),
so checkpoints, conversion and export share one format. `train_step(state, batch, lr)` is a pure
function; the model is rebuilt from (graphdef, params) inside it. Python work (data, schedule,
logging) stays outside the step.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bcmb_jax.modeling.heads import IGNORE
from bcmb_jax.modeling.state import fresh_rngs
from bcmb_jax.training import optim


def masked_cap(tokens: int, rate: float, sigmas: float) -> int:
    """Static room for the masked positions among `tokens` token slots: mean + `sigmas` binomial std devs (+ 8).

    The room is kept per group of rows (`mlm_loss_sum`'s `groups`): a group of n rows needs ~sqrt(n)
    fewer std devs of room per row than n groups of one row.
    """
    mean = tokens * rate
    return int(min(tokens, math.ceil(mean + sigmas * math.sqrt(max(mean * (1 - rate), 1.0)) + 8)))


# ---------------------------------------------------------------------------------------------
# The step


def mlm_loss_sum(model, batch: dict[str, jax.Array], cap: int, chunk: int = 1024, groups: int | None = None):
    """(sum of cross-entropies over the masked positions, their count, masked positions dropped).

    Sparse prediction: the head and the tied decoder run only on the masked positions, gathered into
    `cap` slots per group of rows (`groups` equal groups of consecutive rows; None = one per row); a
    group with more masked positions than `cap` drops the rest. On a mesh, one group per device
    keeps the gather local (rows are sharded over the devices in that order). The decoder and its
    cross-entropy are `decoder_cross_entropy`, `chunk` positions at a time.
    """
    labels_BT = batch["labels"]
    h_BTD = model.model(batch["input_ids"], batch["segment_ids"], batch["position_ids"])
    B, T, D = h_BTD.shape
    G = B if groups is None else groups
    if B % G:
        raise ValueError(f"{B} rows do not split into {G} equal groups")
    labels_GN = labels_BT.reshape(G, -1)  # a group's rows, one after the other
    is_masked_GN = labels_GN != IGNORE
    count_G = is_masked_GN.sum(-1)
    idx_GP = jax.vmap(lambda m: jnp.nonzero(m, size=cap, fill_value=0)[0])(is_masked_GN)
    h_GPD = jnp.take_along_axis(h_BTD.reshape(G, -1, D), idx_GP[..., None], axis=1)
    y_GP = jnp.take_along_axis(labels_GN, idx_GP, axis=1)
    valid_GP = jnp.arange(cap)[None] < count_G[:, None]
    x_GPD = model.head(h_GPD if groups else h_GPD.reshape(1, -1, D))  # per-row slots: one decoder group
    y_GP, valid_GP = (y_GP, valid_GP) if groups else (y_GP.reshape(1, -1), valid_GP.reshape(1, -1))
    emb_VD, bias_V = model.decoder(x_GPD.dtype)
    bias_V = jnp.zeros(emb_VD.shape[0], jnp.float32) if bias_V is None else bias_V
    total = decoder_cross_entropy(x_GPD, emb_VD, bias_V, y_GP, valid_GP, chunk)
    dropped = jnp.maximum(count_G - cap, 0).sum()
    return total, jnp.minimum(count_G, cap).sum(), dropped


# ---------------------------------------------------------------------------------------------
# The tied decoder and its cross-entropy, with their gradients computed in the forward pass.
# Positions come in groups [G, P] (one per device on a mesh): the loop runs over chunks of P and
# every product keeps G as a batch axis, so a device computes its own group's logits only.


def _decoder_chunks(x_GPD, y_GP, valid_GP, chunk: int):
    """[n, G, chunk, ...] slices of the positions (padded to whole chunks), the loop axis first."""
    P = x_GPD.shape[1]
    chunk = min(chunk, P)
    pad = -P % chunk

    def cut(a):
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        return jnp.moveaxis(a.reshape(a.shape[0], -1, chunk, *a.shape[2:]), 1, 0)

    return cut(x_GPD), cut(y_GP), cut(valid_GP)


def _chunk_logits(x_GCD, emb_VD, bias_V):
    return jnp.einsum("gcd,vd->gcv", x_GCD, emb_VD, preferred_element_type=jnp.float32) + bias_V


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def decoder_cross_entropy(x_GPD, emb_VD, bias_V, y_GP, valid_GP, chunk: int = 1024):
    """Sum over the valid positions of CE(x @ emb.T + bias, y): the tied MLM decoder and its loss.

    Logits, softmax and sums are float32 whatever the compute dtype, and [positions, vocab] logits
    exist `chunk` positions of each group at a time. Differentiated, each chunk's gradients (softmax
    - one-hot, then the two matmuls) are made while its logits are at hand: no chunk is recomputed
    and no one-hot is scattered, which made the decoder about a sixth of a CPU train step at 4 x 512
    tokens. The embedding and bias gradients are summed per group, and over the groups once at the end.
    """
    def piece(_, xs):
        x_GCD, y_GC, v_GC = xs
        logits_GCV = _chunk_logits(x_GCD, emb_VD, bias_V)
        ce_GC = optax.softmax_cross_entropy_with_integer_labels(logits_GCV, jnp.where(v_GC, y_GC, 0))
        return None, jnp.where(v_GC, ce_GC, 0).sum()

    return jax.lax.scan(piece, None, _decoder_chunks(x_GPD, y_GP, valid_GP, chunk))[1].sum()


def _decoder_ce_fwd(x_GPD, emb_VD, bias_V, y_GP, valid_GP, chunk):
    G, P, D = x_GPD.shape
    V = emb_VD.shape[0]

    def piece(carry, xs):
        demb_GVD, dbias_GV = carry
        x_GCD, y_GC, v_GC = xs
        logits_GCV = _chunk_logits(x_GCD, emb_VD, bias_V)
        lse_GC = jax.nn.logsumexp(logits_GCV, axis=-1)
        y_GC = jnp.where(v_GC, y_GC, 0)
        is_y_GCV = jnp.arange(V) == y_GC[..., None]
        ce_GC = lse_GC - jnp.where(is_y_GCV, logits_GCV, 0).sum(-1)
        # d(sum of CE)/d logits: softmax - one-hot on valid positions, 0 elsewhere
        dlogits_GCV = jnp.where(v_GC[..., None], jnp.exp(logits_GCV - lse_GC[..., None]) - is_y_GCV,
                                0).astype(x_GCD.dtype)
        dx_GCD = jnp.einsum("gcv,vd->gcd", dlogits_GCV, emb_VD, preferred_element_type=jnp.float32)
        demb_GVD = demb_GVD + jnp.einsum("gcv,gcd->gvd", dlogits_GCV, x_GCD, preferred_element_type=jnp.float32)
        # the bias gradient as a ones-vector matmul (XLA:CPU reduces [C, V] over C far slower)
        ones_GC = jnp.ones(dlogits_GCV.shape[:2], dlogits_GCV.dtype)
        dbias_GV = dbias_GV + jnp.einsum("gc,gcv->gv", ones_GC, dlogits_GCV, preferred_element_type=jnp.float32)
        return (demb_GVD, dbias_GV), (jnp.where(v_GC, ce_GC, 0).sum(), dx_GCD)

    zeros = (jnp.zeros((G, *emb_VD.shape), jnp.float32), jnp.zeros((G, V), jnp.float32))
    (demb_GVD, dbias_GV), (ce_n, dx_nGCD) = jax.lax.scan(piece, zeros, _decoder_chunks(x_GPD, y_GP, valid_GP, chunk))
    dx_GPD = jnp.moveaxis(dx_nGCD, 0, 1).reshape(G, -1, D)[:, :P]
    grads = (dx_GPD.astype(x_GPD.dtype), demb_GVD.sum(0).astype(emb_VD.dtype), dbias_GV.sum(0).astype(bias_V.dtype))
    return ce_n.sum(), grads


def _decoder_ce_bwd(chunk, res, g):
    return (*(g.astype(d.dtype) * d for d in res), None, None)


decoder_cross_entropy.defvjp(_decoder_ce_fwd, _decoder_ce_bwd)


def make_train_step(graphdef, rest, tx: optax.GradientTransformation, cap: int, seed: int,
                    groups: int | None = None):
    """train_step(state, batch [accum, rows, T] arrays, lr) -> (state, metrics); jit it with donation.

    `cap` and `groups`: the room for masked positions per group of a micro-batch's rows (`mlm_loss_sum`).

    Mixed precision: the model computes in its compute dtype (bfloat16 on GPUs) from float32
    parameters; gradients (accumulated over micro-batches), optimizer state, updates and the loss
    are float32. `metrics` stay on the device: `finite` (loss and new weights) is for a guard that
    reads it when it logs, so no step waits for the host.
    """
    base_key = jax.random.key(seed)

    def train_step(state, batch, lr):
        params = state["params"]
        key = jax.random.fold_in(base_key, state["step"])

        def loss_fn(p, micro, k):
            model = nnx.merge(graphdef, p, fresh_rngs(rest, k))
            total, count, dropped = mlm_loss_sum(model, micro, cap, groups=groups)
            return total, (count, dropped)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def accumulate(carry, xs):
            g_acc, l_acc, n_acc, d_acc = carry
            micro, i = xs
            (total, (count, dropped)), g = grad_fn(params, micro, jax.random.fold_in(key, i))
            return (jax.tree.map(jnp.add, g_acc, g), l_acc + total, n_acc + count, d_acc + dropped), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        n_micro = batch["input_ids"].shape[0]
        init = (zeros, jnp.float32(0), jnp.int32(0), jnp.int32(0))
        (g_sum, l_sum, n, dropped), _ = jax.lax.scan(accumulate, init, (batch, jnp.arange(n_micro)))
        denom = jnp.maximum(n, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g: g / denom, g_sum)  # mean over every masked token of the global batch
        opt_state = optim.set_learning_rate(state["opt_state"], lr)
        updates, opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1}
        finite = jnp.isfinite(l_sum) & jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(new_params)]))
        metrics = {"loss": l_sum / denom, "grad_norm": optax.tree.norm(grads), "masked_tokens": n,
                   "dropped": dropped, "tokens": (batch["segment_ids"] > 0).sum(), "finite": finite}
        return new_state, metrics

    return train_step


def init_state(params: dict, tx: optax.GradientTransformation, moments: tuple | None = None) -> dict:
    """{params, opt_state, step 0}; StableAdamW's moments seeded from (step, mu, nu) when given."""
    opt_state = tx.init(params)
    if moments is not None:
        step, mu, nu = moments
        seeded = optim.stable_adamw_state_from_moments(params, mu, nu, step)
        opt_state = optim.replace_stable_adamw_state(opt_state, seeded)
    return {"params": params, "opt_state": opt_state, "step": jnp.int32(0)}


def init_sharded_state(params: dict, tx: optax.GradientTransformation, moments: tuple | None, mesh,
                       param_shardings: dict) -> tuple[dict, dict]:
    """(state, its shardings): `init_state` computed straight into its layout on the mesh. The optimizer's
    per-parameter trees follow the parameters' shardings; counts and hyper-parameters are replicated."""
    from bcmb_jax.training.sharding import replicated

    abstract = jax.eval_shape(lambda p: init_state(p, tx, None), params)
    shardings = {"params": param_shardings, "step": replicated(mesh),
                 "opt_state": optax.tree_map_params(tx, lambda _, s: s, abstract["opt_state"], param_shardings,
                                                    transform_non_params=lambda _: replicated(mesh))}
    state = jax.jit(lambda p: init_state(p, tx, moments), out_shardings=shardings)(params)
    return state, shardings
