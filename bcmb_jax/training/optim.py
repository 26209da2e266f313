"""Optimizers and learning-rate schedules: StableAdamW, AdamW, the weight-decay mask, LR schedules.

`stable_adamw` is torch-optimi's `StableAdamW` (the optimizer of the ModernBERT / BioClinical
recipe) as an optax transformation; `optax.adamw` (torch's / the HF Trainer's AdamW: bias-corrected
moments, eps outside the sqrt, decay coupled to the lr) serves HF-Trainer-style fine-tuning.
`make_optimizer(OptimConfig)` builds either one under `optax.inject_hyperparams`, so a trainer can
overwrite `opt_state.hyperparams["learning_rate"]` every step with `peak_lr * lr_scale(schedule, t)`.

Time `t` in the schedules is what has been consumed *before* the update it sets the LR for (tokens
or optimizer steps, per `ScheduleConfig.unit`), as in Composer and HF `LambdaLR`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bcmb_jax.errors import ConfigError
from bcmb_jax.runconfig import opt

# ---------------------------------------------------------------------------------------------
# StableAdamW


class StableAdamWState(NamedTuple):
    """State of `stable_adamw`; `mu`/`nu` are torch-optimi's `exp_avg`/`exp_avg_sq` (already debiased)."""

    count: jax.Array  # int32: updates done so far (torch-optimi's param-group `step`)
    mu: optax.Updates  # first moment, like params
    nu: optax.Updates  # second moment, like params


def _debiased_beta(b: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(beta_hat, 1 - beta_hat) with beta_hat = (b^t - b) / (b^t - 1), accurate in float32.

    Written as b * expm1((t-1) log b) / expm1(t log b): exactly 0 at t = 1 (so m = g, v = g^2),
    -> b for large t, and without the cancellation of b^t - b.
    """
    log_b = jnp.log(jnp.maximum(b, jnp.finfo(t.dtype).tiny))
    hat = b * jnp.expm1((t - 1) * log_b) / jnp.expm1(t * log_b)
    return hat, 1 - hat


def _is_zero(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x == 0


def stable_adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    max_lr: float | None = None,
    decouple_lr: bool = True,
    weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformation:
    """StableAdamW (torch-optimi `StableAdamW`); the update is the full parameter delta.

    Per tensor, with t = count + 1 and debiased betas:
      m <- lerp(m, g, 1 - b1_hat);  v <- b2_hat v + (1 - b2_hat) g^2
      lr' = lr_t / max(1, sqrt(mean(g^2 / max(v, eps^2))))          (update clipping, new v)
      delta = -lr' m / (sqrt(v) + eps) - (lr' / max_lr) wd p          (decouple_lr=True)
                                        - lr' wd p                    (decouple_lr=False)
    The decay term is dropped where `weight_decay_mask` (a pytree of bools like params, or a
    function of params returning one) is False; None decays every tensor.

    `learning_rate` is a float or an optax schedule of `count` (evaluated before the increment).
    `max_lr` defaults to `learning_rate` when that is a Python number, as torch-optimi defaults it to
    the constructor lr. Under `optax.inject_hyperparams` (where lr arrives as an array) or with a
    schedule, pass `max_lr` (the peak lr) explicitly; omitting it is an error unless weight_decay is 0.
    A callable mask must be named in `inject_hyperparams(..., static_args=("weight_decay_mask",))`,
    since inject_hyperparams otherwise takes every callable for a schedule.
    """
    if max_lr is None and decouple_lr:
        if isinstance(learning_rate, int | float) and not isinstance(learning_rate, bool):
            max_lr = float(learning_rate)
        elif not _is_zero(weight_decay):
            raise ValueError(
                "stable_adamw: `max_lr` must be given when `learning_rate` is a schedule or an array "
                "(e.g. under optax.inject_hyperparams); it is the peak lr that scales the decoupled "
                "weight decay")

    def init_fn(params: optax.Params) -> StableAdamWState:
        return StableAdamWState(count=jnp.zeros([], jnp.int32),
                                mu=optax.tree.zeros_like(params), nu=optax.tree.zeros_like(params))

    def update_fn(updates, state: StableAdamWState, params=None):
        decays = not _is_zero(weight_decay)
        if decays and params is None:
            raise ValueError("stable_adamw: weight decay needs `params` in update(grads, state, params)")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        ctype = jnp.promote_types(jnp.float32, optax.tree.dtype(updates, "highest"))
        t = (state.count + 1).astype(ctype)
        b1_hat, b1_comp = _debiased_beta(jnp.asarray(b1, ctype), t)
        b2_hat, b2_comp = _debiased_beta(jnp.asarray(b2, ctype), t)
        mask = weight_decay_mask(params) if callable(weight_decay_mask) else weight_decay_mask
        if mask is None:
            mask = jax.tree.map(lambda _: True, updates)
        if params is None:
            params = jax.tree.map(lambda _: None, updates)
        # Decay coefficient per unit of clipped lr: wd / max_lr (fully decoupled) or wd.
        wd_per_lr = weight_decay / max_lr if decouple_lr and decays else weight_decay

        def leaf(g, m, v, p, decay):
            g32, m32, v32 = g.astype(ctype), m.astype(ctype), v.astype(ctype)
            m32 = m32 + b1_comp * (g32 - m32)
            v32 = b2_hat * v32 + b2_comp * (g32 * g32)
            rms = jnp.sqrt(jnp.mean(g32 * g32 / jnp.maximum(v32, jnp.square(eps))))
            lr_t = lr / jnp.maximum(1.0, rms)
            delta = -lr_t * m32 / (jnp.sqrt(v32) + eps)
            if decays and decay is not False:
                delta = delta - jnp.asarray(decay, ctype) * (lr_t * wd_per_lr) * p.astype(ctype)
            return delta.astype(g.dtype), m32.astype(m.dtype), v32.astype(v.dtype)

        out = jax.tree.map(leaf, updates, state.mu, state.nu, params, mask)
        treedef = jax.tree.structure(updates)
        delta, mu, nu = (treedef.unflatten(z) for z in zip(*treedef.flatten_up_to(out)))
        return delta, StableAdamWState(count=optax.safe_increment(state.count), mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def stable_adamw_state_from_moments(params: optax.Params, exp_avg: Any, exp_avg_sq: Any,
                                    step: int) -> StableAdamWState:
    """A `StableAdamWState` seeded from torch-optimi / Composer moments.

    `exp_avg` / `exp_avg_sq` hold one array per parameter under the same key paths as `params`
    (the containers may differ, e.g. nested dicts for an nnx `State`); the result takes the
    structure and dtypes of `params`. `step` is the param-group step of the checkpoint (updates
    already done): the next update uses t = step + 1, as torch-optimi does after `load_state_dict`.
    Put the result into an optimizer state with `replace_stable_adamw_state`.
    """
    if int(step) != step or step < 0:
        raise ValueError(f"stable_adamw_state_from_moments: step must be an integer >= 0, got {step!r}")
    flat_p, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys_p = [jax.tree_util.keystr(path) for path, _ in flat_p]
    out = []
    for name, tree in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        flat_x = jax.tree_util.tree_flatten_with_path(tree)[0]
        keys_x = [jax.tree_util.keystr(path) for path, _ in flat_x]
        if keys_x != keys_p:
            missing, extra = sorted(set(keys_p) - set(keys_x)), sorted(set(keys_x) - set(keys_p))
            raise ValueError(f"stable_adamw_state_from_moments: `{name}` does not match the parameters: "
                             f"missing {missing[:5]}, unexpected {extra[:5]}")
        leaves = []
        for key, (_, p), (_, x) in zip(keys_p, flat_p, flat_x):
            if np.shape(x) != np.shape(p):
                raise ValueError(f"stable_adamw_state_from_moments: `{name}`{key} has shape "
                                 f"{np.shape(x)}, the parameter has {np.shape(p)}")
            leaves.append(jnp.asarray(x, dtype=jnp.result_type(p)))
        out.append(treedef.unflatten(leaves))
    return StableAdamWState(count=jnp.asarray(int(step), jnp.int32), mu=out[0], nu=out[1])


def _is_stable_state(x: Any) -> bool:
    return isinstance(x, StableAdamWState)


def find_stable_adamw_state(opt_state: Any) -> StableAdamWState:
    """The one `StableAdamWState` inside an optimizer state (plain, chained or inject_hyperparams)."""
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_stable_state) if _is_stable_state(x)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one StableAdamWState in the optimizer state, found {len(found)}")
    return found[0]


def replace_stable_adamw_state(opt_state: Any, new: StableAdamWState) -> Any:
    """`opt_state` with its one `StableAdamWState` replaced by `new` (e.g. seeded from moments).

    For a state from `make_optimizer` this swaps `opt_state.inner_state[1]`; the inject_hyperparams
    `count` and `hyperparams` are kept (the trainer sets the lr itself, so that count is unused).
    """
    old = find_stable_adamw_state(opt_state)
    if jax.tree.structure(old.mu) != jax.tree.structure(new.mu):
        raise ValueError("replace_stable_adamw_state: the new moments are not shaped like the old ones")
    return jax.tree.map(lambda x: new if _is_stable_state(x) else x, opt_state, is_leaf=_is_stable_state)


# ---------------------------------------------------------------------------------------------
# Weight-decay mask


def weight_decay_mask(params: optax.Params) -> Any:
    """True (decay) for tensors with ndim > 1: the recipe's filter (no decay for biases and norm
    scales, which are all 1-D in our trees; embeddings and the tied decoder are decayed)."""
    return jax.tree.map(lambda p: bool(np.ndim(p) > 1), params)


# ---------------------------------------------------------------------------------------------
# The `optim:` section and the factory

OPTIMIZERS = ("stable_adamw", "adamw")


@dataclass(frozen=True)
class OptimConfig:
    """The `optim:` section of a train config. Defaults are the BioClinical base recipe."""

    name: str = opt("stable_adamw", "stable_adamw (pretraining recipe) | adamw (HF-Trainer-style fine-tuning)")
    lr: float = opt(3e-4, "peak learning rate (the schedule multiplies it)")
    betas: list[float] = opt([0.9, 0.98], "Adam betas [b1, b2] (HF fine-tuning: [0.9, 0.999])")
    eps: float = opt(1e-6, "added to sqrt(v) (HF fine-tuning: 1e-8)")
    weight_decay: float = opt(1e-5, "stable_adamw: per-step decay at max_lr; adamw: multiplied by lr "
                                    "(HF fine-tuning: 0.01); never applied to 1-D tensors")
    max_lr: float | None = opt(None, "stable_adamw: lr at which the decay is `weight_decay`; null = lr")
    clip_grad_norm: float | None = opt(None, "clip gradients to this global norm first; null or 0 = off "
                                             "(HF Trainer uses 1.0)")

    def __post_init__(self):
        def bad(key, msg):
            raise ConfigError(f"optim.{key} {msg}")

        if self.name not in OPTIMIZERS:
            bad("name", f"must be one of {OPTIMIZERS}, got {self.name!r}")
        if not self.lr > 0:
            bad("lr", f"must be > 0, got {self.lr}")
        check_adam_settings(bad, self.betas, self.eps, self.weight_decay)
        if self.max_lr is not None and not self.max_lr > 0:
            bad("max_lr", f"must be > 0 or null, got {self.max_lr}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm >= 0:
            bad("clip_grad_norm", f"must be >= 0 or null, got {self.clip_grad_norm}")


def check_adam_settings(bad: Callable[[str, str], None], betas, eps: float, weight_decay: float) -> None:
    """The Adam settings every optimizer config shares; `bad(key, message)` raises the config's own error."""
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        bad("betas", f"must be two numbers in [0, 1), got {betas}")
    if not eps >= 0:
        bad("eps", f"must be >= 0, got {eps}")
    if not weight_decay >= 0:
        bad("weight_decay", f"must be >= 0, got {weight_decay}")


def _clip(clip_grad_norm: float | None) -> optax.GradientTransformation:
    return optax.clip_by_global_norm(clip_grad_norm) if clip_grad_norm else optax.identity()


def _stable_chain(learning_rate, b1, b2, eps, weight_decay, max_lr, clip_grad_norm, weight_decay_mask):
    return optax.chain(_clip(clip_grad_norm),
                       stable_adamw(learning_rate, b1, b2, eps, weight_decay, max_lr,
                                    decouple_lr=True, weight_decay_mask=weight_decay_mask))


def _adamw_chain(learning_rate, b1, b2, eps, weight_decay, clip_grad_norm, weight_decay_mask):
    return optax.chain(_clip(clip_grad_norm),
                       optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                                   mask=weight_decay_mask))


def make_optimizer(optim_cfg: OptimConfig, peak_lr: float | None = None) -> optax.GradientTransformation:
    """The configured optimizer: chain(global-norm clip or identity, stable_adamw | adamw).

    Wrapped in `optax.inject_hyperparams`, so `opt_state.hyperparams` holds learning_rate, b1, b2,
    eps, weight_decay (and max_lr for stable_adamw); the trainer overwrites
    `opt_state.hyperparams["learning_rate"]` before each update (see `set_learning_rate`).
    It starts at `peak_lr` (default `optim_cfg.lr`), which is also the default `max_lr`.
    The moments live in `opt_state.inner_state[1]`.
    """
    peak = float(optim_cfg.lr if peak_lr is None else peak_lr)
    static = ("clip_grad_norm", "weight_decay_mask")
    kw = dict(learning_rate=peak, b1=float(optim_cfg.betas[0]), b2=float(optim_cfg.betas[1]), eps=float(optim_cfg.eps),
              weight_decay=float(optim_cfg.weight_decay), clip_grad_norm=optim_cfg.clip_grad_norm,
              weight_decay_mask=weight_decay_mask)
    if optim_cfg.name == "stable_adamw":
        max_lr = float(optim_cfg.max_lr if optim_cfg.max_lr is not None else peak)
        return optax.inject_hyperparams(_stable_chain, static_args=static)(max_lr=max_lr, **kw)
    return optax.inject_hyperparams(_adamw_chain, static_args=static)(**kw)


def set_learning_rate(opt_state: Any, lr: Any) -> Any:
    """A copy of an inject_hyperparams state with `hyperparams["learning_rate"] = lr` (jit-safe)."""
    old = opt_state.hyperparams["learning_rate"]
    hp = dict(opt_state.hyperparams, learning_rate=jnp.asarray(lr, dtype=jnp.result_type(old)))
    return opt_state._replace(hyperparams=hp)


# ---------------------------------------------------------------------------------------------
# Schedules

SCHEDULES = ("constant", "wsd", "one_minus_sqrt", "linear")
WSD_WARMUP_START = 1e-10  # ModernBERT's WSD warms up linearly from this multiplier, not 0


@dataclass(frozen=True)
class ScheduleConfig:
    """The `schedule:` section: the lr multiplier as a function of time t (tokens or steps)."""

    name: str = opt("constant", "constant (optional linear warmup from 0) | wsd (warmup from 1e-10, stable, "
                                "decay to alpha_f) | one_minus_sqrt (no warmup) | linear (HF: warmup, then "
                                "linear to 0 at total)")
    unit: str = opt("tokens", "what t counts: tokens (non-pad tokens consumed) | steps (optimizer steps)")
    warmup: float = opt(0.0, "linear warmup length, in `unit`")
    total: float = opt(0.0, "t_max: schedule length in `unit` (wsd, one_minus_sqrt, linear)")
    decay: float | None = opt(None, "t_decay: length of the final decay in `unit` (wsd, one_minus_sqrt); "
                                    "null = total; 0 = no decay (wsd only)")
    alpha_f: float = opt(0.001, "final multiplier of the wsd / one_minus_sqrt decay")
    decay_shape: str = opt("linear", "wsd decay curve: linear | 1-sqrt")

    def __post_init__(self):
        def bad(key, msg):
            raise ConfigError(f"schedule.{key} {msg}")

        if self.name not in SCHEDULES:
            bad("name", f"must be one of {SCHEDULES}, got {self.name!r}")
        if self.unit not in ("tokens", "steps"):
            bad("unit", f"must be 'tokens' or 'steps', got {self.unit!r}")
        if self.decay_shape not in ("linear", "1-sqrt"):
            bad("decay_shape", f"must be 'linear' or '1-sqrt', got {self.decay_shape!r}")
        if not self.warmup >= 0:
            bad("warmup", f"must be >= 0, got {self.warmup}")
        if not 0.0 <= self.alpha_f <= 1.0:
            bad("alpha_f", f"must be in [0, 1], got {self.alpha_f}")
        if self.name == "constant":
            return
        if not self.total > 0:
            bad("total", f"must be > 0 for the {self.name!r} schedule, got {self.total}")
        if self.name == "one_minus_sqrt" and self.warmup > 0:
            bad("warmup", "must be 0 for one_minus_sqrt (it has no warmup); use name: wsd with "
                          "decay_shape: 1-sqrt for a warmup followed by a 1-sqrt decay")
        if self.name == "linear":
            if self.warmup > self.total:
                bad("warmup", f"({self.warmup}) exceeds schedule.total ({self.total})")
            return
        d = self.t_decay
        if not 0 <= d <= self.total:
            bad("decay", f"must be in [0, total={self.total}], got {d}")
        if self.name == "one_minus_sqrt" and d == 0:
            bad("decay", "must be > 0 for one_minus_sqrt")
        if self.warmup + d > self.total:
            bad("warmup", f"({self.warmup}) + schedule.decay ({d}) exceeds schedule.total ({self.total})")

    @property
    def t_decay(self) -> float:
        return self.total if self.decay is None else self.decay


def _one_minus_sqrt(xp, t, total: float, decay: float, alpha_f: float):
    """1 until total - decay, then alpha_f + (1 - alpha_f)(1 - sqrt(frac)), floored at alpha_f."""
    frac = xp.clip((t - (total - decay)) / decay, 0.0, None)
    return xp.maximum(alpha_f, alpha_f + (1.0 - alpha_f) * (1.0 - xp.sqrt(frac)))


def lr_scale(schedule: ScheduleConfig, t: Any) -> Any:
    """The multiplier of the peak lr at time t (ModernBERT / Composer / HF formulas).

    numpy float64 for Python or numpy input (exact at token counts beyond int32; use this on the
    host for token schedules); jnp for JAX arrays and tracers, so it also runs under jit, where
    float32 resolves t only to ~1e3 at 1e10 (fine for step counts).
    """
    xp = jnp if isinstance(t, jax.Array) else np
    t = xp.asarray(t, dtype=jnp.result_type(float) if xp is jnp else np.float64)
    w, total = float(schedule.warmup), float(schedule.total)  # Python floats: token counts overflow int32
    if schedule.name == "linear":  # transformers.get_linear_schedule_with_warmup
        warm = t / max(1.0, w)
        rest = xp.maximum(0.0, (total - t) / max(1.0, total - w))
        return xp.where(t < w, warm, rest)
    if schedule.name == "constant":  # Composer ConstantWithWarmupScheduler
        return xp.minimum(1.0, t / w) if w > 0 else xp.ones_like(t)
    if schedule.name == "one_minus_sqrt":  # ModernBERT OneMinusSqrtScheduler
        return _one_minus_sqrt(xp, t, total, float(schedule.t_decay), float(schedule.alpha_f))
    # wsd: ModernBERT WarmupStableDecayScheduler (+ a 1-sqrt decay shape). Past `total` the linear
    # decay goes on below alpha_f down to 0, as in the reference; the 1-sqrt shape stays at alpha_f.
    d = float(schedule.t_decay)
    warm = WSD_WARMUP_START + xp.minimum(1.0, t / w) * (1.0 - WSD_WARMUP_START) if w > 0 else 1.0
    if d == 0:
        after = xp.ones_like(t)
    elif schedule.decay_shape == "linear":
        after = xp.where(t < total - d, 1.0,
                         xp.maximum(0.0, 1.0 - (t - (total - d)) / d * (1.0 - schedule.alpha_f)))
    else:
        after = _one_minus_sqrt(xp, t, total, d, schedule.alpha_f)
    return xp.where(t < w, warm, after)
