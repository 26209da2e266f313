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


def masked_cap(seq_len: int, rate: float, sigmas: float) -> int:
    """Static room for masked positions per row: mean + `sigmas` binomial std devs (+ 8)."""
    mean = seq_len * rate
    return int(min(seq_len, math.ceil(mean + sigmas * math.sqrt(max(mean * (1 - rate), 1.0)) + 8)))


# ---------------------------------------------------------------------------------------------
# The step


def mlm_loss_sum(model, batch: dict[str, jax.Array], cap: int, chunk: int = 1024):
    """Sum of cross-entropies over the masked positions (sparse prediction) and their count.

    The head and the tied decoder run only on the gathered masked positions; the decoder and its
    cross-entropy are `decoder_cross_entropy`, `chunk` positions at a time.
    """
    labels_BT = batch["labels"]
    h_BTD = model.model(batch["input_ids"], batch["segment_ids"], batch["position_ids"])
    is_masked_BT = labels_BT != IGNORE
    count_B = is_masked_BT.sum(-1)
    idx_BP = jax.vmap(lambda m: jnp.nonzero(m, size=cap, fill_value=0)[0])(is_masked_BT)
    h_PD = jnp.take_along_axis(h_BTD, idx_BP[..., None], axis=1).reshape(-1, h_BTD.shape[-1])
    y_P = jnp.take_along_axis(labels_BT, idx_BP, axis=1).reshape(-1)
    valid_P = (jnp.arange(cap)[None] < count_B[:, None]).reshape(-1)
    x_PD = model.head(h_PD)
    emb_VD, bias_V = model.decoder(x_PD.dtype)
    bias_V = jnp.zeros(emb_VD.shape[0], jnp.float32) if bias_V is None else bias_V
    total = decoder_cross_entropy(x_PD, emb_VD, bias_V, y_P, valid_P, chunk)
    dropped = jnp.maximum(count_B - cap, 0).sum()
    return total, jnp.minimum(count_B, cap).sum(), dropped


# ---------------------------------------------------------------------------------------------
# The tied decoder and its cross-entropy, with their gradients computed in the forward pass


def _decoder_chunks(x_PD, y_P, valid_P, chunk: int):
    n = x_PD.shape[0]
    chunk = min(chunk, n)
    pad = -n % chunk
    return (jnp.pad(x_PD, ((0, pad), (0, 0))).reshape(-1, chunk, x_PD.shape[-1]),
            jnp.pad(y_P, (0, pad)).reshape(-1, chunk), jnp.pad(valid_P, (0, pad)).reshape(-1, chunk))


def _chunk_logits(x_CD, emb_VD, bias_V):
    return jnp.dot(x_CD, emb_VD.T, preferred_element_type=jnp.float32) + bias_V


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def decoder_cross_entropy(x_PD, emb_VD, bias_V, y_P, valid_P, chunk: int = 1024):
    """Sum over the valid positions of CE(x @ emb.T + bias, y): the tied MLM decoder and its loss.

    Logits, softmax and sums are float32 whatever the compute dtype, and [positions, vocab] logits
    exist `chunk` rows at a time. Differentiated, each chunk's gradients (softmax - one-hot, then
    the two matmuls) are made while its logits are at hand: no chunk is recomputed and no one-hot
    is scattered, which made the decoder about a sixth of a CPU train step at 4 x 512 tokens.
    """
    def piece(_, xs):
        x_CD, y_C, v_C = xs
        logits_CV = _chunk_logits(x_CD, emb_VD, bias_V)
        ce_C = optax.softmax_cross_entropy_with_integer_labels(logits_CV, jnp.where(v_C, y_C, 0))
        return None, jnp.where(v_C, ce_C, 0).sum()

    return jax.lax.scan(piece, None, _decoder_chunks(x_PD, y_P, valid_P, chunk))[1].sum()


def _decoder_ce_fwd(x_PD, emb_VD, bias_V, y_P, valid_P, chunk):
    V = emb_VD.shape[0]

    def piece(carry, xs):
        demb_VD, dbias_V = carry
        x_CD, y_C, v_C = xs
        logits_CV = _chunk_logits(x_CD, emb_VD, bias_V)
        lse_C = jax.nn.logsumexp(logits_CV, axis=-1)
        y_C = jnp.where(v_C, y_C, 0)
        is_y_CV = jnp.arange(V)[None, :] == y_C[:, None]
        ce_C = lse_C - jnp.where(is_y_CV, logits_CV, 0).sum(-1)
        # d(sum of CE)/d logits: softmax - one-hot on valid rows, 0 elsewhere
        dlogits_CV = jnp.where(v_C[:, None], jnp.exp(logits_CV - lse_C[:, None]) - is_y_CV, 0).astype(x_CD.dtype)
        dx_CD = jnp.dot(dlogits_CV, emb_VD, preferred_element_type=jnp.float32)
        demb_VD = demb_VD + jnp.dot(dlogits_CV.T, x_CD, preferred_element_type=jnp.float32)
        # the bias gradient as a ones-vector matmul (XLA:CPU reduces [C, V] over C far slower)
        ones_C = jnp.ones(dlogits_CV.shape[0], dlogits_CV.dtype)
        dbias_V = dbias_V + jnp.dot(ones_C, dlogits_CV, preferred_element_type=jnp.float32)
        return (demb_VD, dbias_V), (jnp.where(v_C, ce_C, 0).sum(), dx_CD)

    zeros = (jnp.zeros(emb_VD.shape, jnp.float32), jnp.zeros(bias_V.shape, jnp.float32))
    (demb_VD, dbias_V), (ce_c, dx_cCD) = jax.lax.scan(piece, zeros, _decoder_chunks(x_PD, y_P, valid_P, chunk))
    dx_PD = dx_cCD.reshape(-1, x_PD.shape[-1])[: x_PD.shape[0]]
    return ce_c.sum(), (dx_PD.astype(x_PD.dtype), demb_VD.astype(emb_VD.dtype), dbias_V.astype(bias_V.dtype))


def _decoder_ce_bwd(chunk, res, g):
    return (*(g.astype(d.dtype) * d for d in res), None, None)


decoder_cross_entropy.defvjp(_decoder_ce_fwd, _decoder_ce_bwd)


def make_train_step(graphdef, rest, tx: optax.GradientTransformation, cap: int, seed: int):
    """train_step(state, batch [accum, rows, T] arrays, lr) -> (state, metrics); jit it with donation.

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
            total, count, dropped = mlm_loss_sum(model, micro, cap)
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
