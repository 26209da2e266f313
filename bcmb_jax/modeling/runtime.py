"""How the model computes, as opposed to what: the run-time option and the platform fast paths.

`Runtime` is chosen when a model is built (`build(..., runtime=...)`, `from_pretrained(...,
runtime=...)`; a backend name is shorthand for `Runtime(attention_backend=name)`) and can be
swapped on a view of a model with `nnx.with_attributes(model, runtime=...)`. It is not part of
`ModelConfig`, which mirrors HF's config.json. Every setting computes the same function.

`attention_backend` picks the attention kernels (`attention.py`) and the paths around them:
  blocked    XLA:CPU: blocked kernels, pre-norms folded into the next linear layer
             (`fold_norms`), weight gradients as one token-major GEMM (`dense`), remat by a
             hand-made recompute, a matrix-vector bias gradient.
  gpu        the Pallas kernel for both layer kinds; plain LayerNorms, remat through
             `jax.checkpoint` with `remat_policy`.
  reference  dense masked attention and the plain paths of `gpu`: the model as written.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from bcmb_jax.errors import ConfigError
from bcmb_jax.modeling.attention import ATTENTION_BACKENDS

REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")


@dataclass(frozen=True)
class Runtime:
    """Run-time compute choices (not saved with the weights)."""

    attention_backend: str = "blocked"  # blocked (CPU default) | gpu (Pallas, NVIDIA GPUs) | reference (dense)
    local_chunk: int = 64  # blocked: query block of the banded local attention (>= half window)
    global_chunk: int = 1024  # blocked: key block of the online-softmax global attention
    fold_norms: bool = True  # blocked: fold pre-norm scales into Wqkv / Wi (inference, remat training)
    remat_policy: str = "nothing_saveable"  # gpu / reference: jax.checkpoint_policies name used by remat
    interpret: bool = False  # gpu: run the Pallas kernel through the interpreter (CPU tests)

    def __post_init__(self):
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ConfigError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")

    @property
    def cpu_paths(self) -> bool:
        return self.attention_backend == "blocked"

    def replace(self, **kw) -> Runtime:
        return dataclasses.replace(self, **kw)


DEFAULT_RUNTIME = Runtime()


def as_runtime(runtime: Runtime | str | None) -> Runtime:
    """A `Runtime` from itself, a backend name, or None (the defaults)."""
    if runtime is None:
        return DEFAULT_RUNTIME
    return Runtime(attention_backend=runtime) if isinstance(runtime, str) else runtime


# ---------------------------------------------------------------------------------------------
# Pre-norm + linear


class TokenLayerNorm(nnx.LayerNorm):
    """`nnx.LayerNorm` (same parameters, same function) applied to the tokens as one [N, D] matrix.

    XLA:CPU runs the backward pass of a norm over a [1, T, D] batch about 10x slower than over the
    same numbers as [T, D] (35 vs 3.4 ms at T = 2048, D = 768): 1.2 s of a 1 x 2,048 training step.
    """

    def __call__(self, x, *, mask=None):
        if x.ndim <= 2 or mask is not None:
            return super().__call__(x, mask=mask)
        return super().__call__(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def normed_linear(rt: Runtime, norm: nnx.LayerNorm | None, linear: nnx.Linear, x_BTD: jax.Array) -> jax.Array:
    """`linear(norm(x))` (`linear(x)` without a norm); on the CPU paths with the norm folded in.

    (x_hat * g + b) @ W + c == x_hat @ (g[:, None] * W) + (b @ W + c): the same function, but the
    scaled [B, T, D] activation is never formed. With per-layer recomputation XLA:CPU would
    otherwise materialise a [B, T, D] broadcast of every norm's scale and keep all of them alive
    for the whole backward pass (1.1 GB for the base model at 8,192 tokens); inference is ~12%
    faster. Not for training without remat: there XLA:CPU fuses the gradients of the norms' means
    along the residual stream into one chain that it recomputes in every weight-gradient copy
    (1.5x slower steps); `state.split_model` turns `fold_norms` off for such graphs.
    """
    if norm is None:
        return dense(rt, linear, x_BTD)
    if not (rt.cpu_paths and rt.fold_norms):
        return dense(rt, linear, norm(x_BTD))
    x32 = x_BTD.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    xc = x32 - mean
    xhat_BTD = (xc * jax.lax.rsqrt(jnp.square(xc).mean(-1, keepdims=True) + norm.epsilon)).astype(x_BTD.dtype)
    W_DO = linear.kernel[...] * norm.scale[...][:, None]
    b_O = linear.bias[...] if linear.bias is not None else None
    if norm.bias is not None:
        shift_O = norm.bias[...] @ linear.kernel[...]
        b_O = shift_O if b_O is None else b_O + shift_O
    return _affine(xhat_BTD, W_DO, b_O, linear.dtype or x_BTD.dtype, linear.precision)


def dense(rt: Runtime, linear: nnx.Linear, x_BTI: jax.Array) -> jax.Array:
    """`linear(x)`; on the CPU paths through `_matmul`, whose weight gradient is one token-major GEMM."""
    if not rt.cpu_paths:
        return linear(x_BTI)
    kernel_IO = linear.kernel[...]
    bias_O = linear.bias[...] if linear.bias is not None else None
    dtype = linear.dtype or jnp.result_type(x_BTI, kernel_IO, *(() if bias_O is None else (bias_O,)))
    return _affine(x_BTI, kernel_IO, bias_O, dtype, linear.precision)


def _affine(x_BTI: jax.Array, w_IO: jax.Array, b_O: jax.Array | None, dtype, precision) -> jax.Array:
    """x @ w + b in `dtype`, through `_matmul` unless a matmul precision is asked for."""
    x_BTI, w_IO = x_BTI.astype(dtype), w_IO.astype(dtype)
    y = _matmul(x_BTI, w_IO) if precision is None else jnp.dot(x_BTI, w_IO, precision=precision)
    return y if b_O is None else y + b_O.astype(dtype)


@jax.custom_vjp
def _matmul(x_BTI: jax.Array, w_IO: jax.Array) -> jax.Array:
    """x @ w whose weight gradient is x_NI.T @ g_NO over the flattened tokens N.

    Autodiff forms it as (g^T x)^T contracting over (B, T), which XLA:CPU runs as a copy of the
    transposed [O, N] gradient and a GEMM with both operands transposed: about half the speed of
    this form for the base model's projections (2,048 tokens x 768 x 2,304: 51 ms vs 27 ms).
    """
    return jnp.dot(x_BTI, w_IO)


def _matmul_fwd(x_BTI, w_IO):
    return _matmul(x_BTI, w_IO), (x_BTI, w_IO)


def _matmul_bwd(res, g_BTO):
    x_BTI, w_IO = res
    x_NI, g_NO = x_BTI.reshape(-1, x_BTI.shape[-1]), g_BTO.reshape(-1, g_BTO.shape[-1])
    return jnp.dot(g_BTO, w_IO.T).astype(x_BTI.dtype), jnp.dot(x_NI.T, g_NO).astype(w_IO.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


# ---------------------------------------------------------------------------------------------
# Remat


def remat_layer(rt: Runtime, layer: nnx.Module, x_BTD, seg_BT, tables):
    """`layer(x, seg, tables)` keeping only the layer input for the backward pass.

    `jax.checkpoint` with `rt.remat_policy`, except on the CPU paths: XLA:CPU merges
    `jax.checkpoint`'s recomputation back into the forward pass (common-subexpression elimination
    once the optimization barriers are gone), which keeps every activation alive, so there the
    backward pass recomputes the layer from `x + 0 * g[0]` (g: the incoming gradient), which XLA
    can neither merge with the forward pass nor schedule before the gradient arrives. Neither works
    with active MLP dropout (its masks would differ between the two passes).
    """
    drop = layer.mlp.drop
    if drop.rate > 0 and not drop.deterministic:
        raise ConfigError("remat=True needs mlp_dropout == 0 (or the model in eval mode)")
    graphdef, state = nnx.split(layer)
    if rt.cpu_paths:
        return _recompute(graphdef, state, x_BTD, seg_BT, tables)
    policy = getattr(jax.checkpoint_policies, rt.remat_policy)
    fn = jax.checkpoint(lambda st, x, s, t: nnx.merge(graphdef, st)(x, s, t), policy=policy)
    return fn(state, x_BTD, seg_BT, tables)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recompute(graphdef, state, x_BTD, seg_BT, tables):
    return nnx.merge(graphdef, state)(x_BTD, seg_BT, tables)


def _recompute_fwd(graphdef, state, x_BTD, seg_BT, tables):
    return _recompute(graphdef, state, x_BTD, seg_BT, tables), (state, x_BTD, seg_BT, tables)


def _recompute_bwd(graphdef, res, g_BTD):
    state, x_BTD, seg_BT, tables = res
    tied_BTD = x_BTD + 0 * g_BTD.reshape(-1)[0]  # == x; ties the recomputation to the gradient
    _, vjp = jax.vjp(lambda st, x: nnx.merge(graphdef, st)(x, seg_BT, tables), state, tied_BTD)
    d_state, d_x = vjp(g_BTD)
    # Likewise make the next layer's backward wait for this layer's weight gradients, so that they
    # are computed now and the recomputed activations they read can be freed.
    firsts = [leaf.reshape(-1)[0] for leaf in jax.tree.leaves(d_state)
              if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.size]
    d_x = d_x + 0 * sum(firsts).astype(d_x.dtype)
    return d_state, d_x, None, None


_recompute.defvjp(_recompute_fwd, _recompute_bwd)


# ---------------------------------------------------------------------------------------------
# Decoder bias


def add_bias(rt: Runtime, x_PV: jax.Array, b_V: jax.Array) -> jax.Array:
    """x + b over the last axis (b cast to x's dtype)."""
    return _add_bias(x_PV, b_V) if rt.cpu_paths else x_PV + b_V.astype(x_PV.dtype)


@jax.custom_vjp
def _add_bias(x_PV: jax.Array, b_V: jax.Array) -> jax.Array:
    """x + b whose bias gradient is a ones-vector matmul.

    (Autodiff would sum the [N, V] gradient over its leading axis, a reduction XLA:CPU runs about
    70x slower than the equivalent matrix-vector product for V = 50368.)
    """
    return x_PV + b_V.astype(x_PV.dtype)


def _add_bias_fwd(x_PV, b_V):
    return _add_bias(x_PV, b_V), b_V


def _add_bias_bwd(b_V, g_PV):
    g_flat_PV = g_PV.reshape(-1, g_PV.shape[-1])
    db_V = jnp.dot(jnp.ones((g_flat_PV.shape[0],), g_flat_PV.dtype), g_flat_PV, preferred_element_type=jnp.float32)
    return g_PV, db_V.astype(b_V.dtype)


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)
