"""training/optim.py against torch-optimi StableAdamW, torch.optim.AdamW, the ModernBERT/Composer
schedule formulas (written out here in float64) and transformers' linear schedule."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bcmb_jax.errors import ConfigError
from bcmb_jax.runconfig import load
from bcmb_jax.training.optim import (
    OptimConfig,
    ScheduleConfig,
    StableAdamWState,
    find_stable_adamw_state,
    lr_scale,
    make_optimizer,
    replace_stable_adamw_state,
    set_learning_rate,
    stable_adamw,
    stable_adamw_state_from_moments,
    weight_decay_mask,
)

torch = pytest.importorskip("torch")
optimi = pytest.importorskip("optimi")

# optimi warns that wd >= 1e-3 is high for decouple_lr; the tests use 1e-2 so the decay is visible.
pytestmark = pytest.mark.filterwarnings("ignore:You are using weight_decay:UserWarning")
SHAPES = {"emb": (7, 4), "bias": (5,), "w": (2, 3, 4), "norm": (4,)}  # 1-D ones: no decay
PEAK, STEPS, EPS = 1e-2, 20, 1e-6


def _problem(seed: int = 0):
    """Initial params, 20 gradient sets (steps 6 and 13 with 100x spikes) and a varying lr."""
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s) * 0.5 for k, s in SHAPES.items()}
    grads = []
    for i in range(STEPS):
        g = {k: rng.normal(size=s) * 0.3 for k, s in SHAPES.items()}
        if i in (6, 13):
            g["emb"] = g["emb"] * 100.0
            g["bias"] = g["bias"] * 100.0
        grads.append(g)
    lrs = PEAK * np.concatenate([np.linspace(0.2, 1.0, 5), np.ones(8), np.linspace(1.0, 0.1, 7)])
    return params, grads, lrs


def _torch_groups(tp: dict, wd: float, exclude_1d: bool):
    if not exclude_1d:
        return [{"params": list(tp.values()), "weight_decay": wd}]
    return [{"params": [p for p in tp.values() if p.ndim > 1], "weight_decay": wd},
            {"params": [p for p in tp.values() if p.ndim <= 1], "weight_decay": 0.0}]


def _torch_run(opt, tp, grads, lrs, clip=None):
    """Steps a torch optimizer; returns the largest StableAdamW RMS seen (0 for other optimizers)."""
    max_rms = 0.0
    for g, lr in zip(grads, lrs):
        for k, p in tp.items():
            p.grad = torch.tensor(g[k], dtype=p.dtype)
        if clip:
            torch.nn.utils.clip_grad_norm_(list(tp.values()), clip)
        for group in opt.param_groups:
            group["lr"] = float(lr)
        clipped = {k: p.grad.clone() for k, p in tp.items()}
        opt.step()
        for k, p in tp.items():
            st = opt.state[p]
            if "eps_sq" in st:
                rms = clipped[k].pow(2).div(st["exp_avg_sq"].maximum(st["eps_sq"])).mean().sqrt().item()
                max_rms = max(max_rms, rms)
    return max_rms


def _optimi(tp, wd, exclude_1d):
    return optimi.StableAdamW(_torch_groups(tp, wd, exclude_1d), lr=PEAK, betas=(0.9, 0.98), eps=EPS,
                              weight_decay=wd, decouple_lr=True, foreach=False, triton=False)


def _jax_run(tx, params, grads, lrs, state=None, inject=True):
    """Steps an optax transformation under jit, setting the lr each step when it is injected."""
    state = tx.init(params) if state is None else state

    @jax.jit
    def step(params, state, g, lr):
        if inject:
            state = set_learning_rate(state, lr)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    for g, lr in zip(grads, lrs):
        params, state = step(params, state, g, lr)
    return params, state


def _np(tree, dtype):
    return {k: jnp.asarray(v, dtype) for k, v in tree.items()}


def _stable_tx(driver: str, wd: float, exclude_1d: bool, lrs, clip=None):
    mask = weight_decay_mask if exclude_1d else None
    if driver == "factory":
        assert exclude_1d or wd == 0
        return make_optimizer(OptimConfig(name="stable_adamw", lr=PEAK, betas=[0.9, 0.98], eps=EPS,
                                          weight_decay=wd, clip_grad_norm=clip))
    if driver == "inject":
        return optax.inject_hyperparams(stable_adamw, static_args="weight_decay_mask")(
            learning_rate=PEAK, b1=0.9, b2=0.98, eps=EPS, weight_decay=wd, max_lr=PEAK,
            weight_decay_mask=mask)
    table = jnp.asarray(lrs, jnp.float32)
    return stable_adamw(lambda count: table[count], b1=0.9, b2=0.98, eps=EPS, weight_decay=wd,
                        max_lr=PEAK, weight_decay_mask=mask)


@pytest.mark.parametrize("wd,exclude_1d,driver,clip", [
    (0.0, False, "factory", None),
    (1e-2, True, "factory", None),
    (1e-2, True, "factory", 1.0),
    (1e-2, True, "inject", None),
    (1e-2, False, "schedule", None),
    (1e-2, False, "inject", None),
])
def test_stable_adamw_matches_optimi(wd, exclude_1d, driver, clip):
    """float32 JAX vs float64 torch-optimi, 20 steps with a varying lr and RMS-clipped spikes.

    torch runs in float64 because its own float32 run drifts by ~6e-7 (it rounds the decay factor
    1 - lr/max_lr*wd to float32 every step); this way the bound measures our float32 error.
    """
    params, grads, lrs = _problem()
    tp = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    opt = _optimi(tp, wd, exclude_1d)
    max_rms = _torch_run(opt, tp, grads, lrs, clip=clip)
    assert max_rms > 1.2, "the update clipping never triggered"

    tx = _stable_tx(driver, wd, exclude_1d, lrs, clip)
    out, state = _jax_run(tx, _np(params, jnp.float32), [_np(g, jnp.float32) for g in grads], lrs,
                          inject=driver != "schedule")
    ours = find_stable_adamw_state(state)
    assert int(ours.count) == STEPS == int(opt.param_groups[0]["step"])
    for k, p in tp.items():
        np.testing.assert_allclose(np.asarray(out[k]), p.numpy(), rtol=0, atol=1e-6, err_msg=k)
        st = opt.state[p]
        for mine, theirs in ((ours.mu[k], st["exp_avg"]), (ours.nu[k], st["exp_avg_sq"])):
            theirs = theirs.numpy()  # float32 rounding and torch's clip (norm + 1e-6), vs the scale
            np.testing.assert_allclose(np.asarray(mine), theirs, rtol=0, atol=5e-6 * np.abs(theirs).max())
    if wd:  # the decay is visible: without it the params differ
        no_wd = _jax_run(_stable_tx(driver, 0.0, exclude_1d, lrs, clip), _np(params, jnp.float32),
                         [_np(g, jnp.float32) for g in grads], lrs, inject=driver != "schedule")[0]
        assert max(float(jnp.abs(no_wd[k] - out[k]).max()) for k in SHAPES) > 1e-5


@pytest.mark.parametrize("name", ["stable_adamw", "adamw"])
def test_float64_matches_torch_exactly(name):
    """float64 on both sides separates formula differences from float32 rounding: equal to 1e-12."""
    params, grads, lrs = _problem(seed=1)
    tp = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    if name == "stable_adamw":
        opt = _optimi(tp, 1e-2, True)
        assert _torch_run(opt, tp, grads, lrs) > 1.2
    else:
        opt = torch.optim.AdamW(_torch_groups(tp, 0.01, True), lr=PEAK, betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=0.01)
        _torch_run(opt, tp, grads, lrs)
    with jax.enable_x64(True):
        if name == "stable_adamw":
            tx = _stable_tx("factory", 1e-2, True, lrs)
        else:
            tx = make_optimizer(OptimConfig(name="adamw", lr=PEAK, betas=[0.9, 0.999], eps=1e-8,
                                            weight_decay=0.01))
        out, _ = _jax_run(tx, _np(params, jnp.float64), [_np(g, jnp.float64) for g in grads], lrs)
        for k, p in tp.items():
            assert out[k].dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(out[k]), p.numpy(), rtol=0, atol=1e-12, err_msg=k)


def test_seed_from_moments_continues_like_optimi_load_state_dict():
    params, grads, lrs = _problem(seed=2)
    tp = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}  # the reference
    opt = _optimi(tp, 1e-2, True)
    _torch_run(opt, tp, grads[:10], lrs[:10])
    sd = opt.state_dict()
    mid = {k: p.numpy().copy() for k, p in tp.items()}
    exp_avg = {k: opt.state[p]["exp_avg"].numpy().copy() for k, p in tp.items()}
    exp_avg_sq = {k: opt.state[p]["exp_avg_sq"].numpy().copy() for k, p in tp.items()}
    step = int(sd["param_groups"][0]["step"])
    assert step == 10

    tp2 = {k: torch.tensor(v) for k, v in mid.items()}
    opt2 = _optimi(tp2, 1e-2, True)
    opt2.load_state_dict(sd)
    _torch_run(opt2, tp2, grads[10:], lrs[10:])

    p_mid = _np(mid, jnp.float32)
    tx = make_optimizer(OptimConfig(lr=PEAK, betas=[0.9, 0.98], eps=EPS, weight_decay=1e-2))
    seeded = stable_adamw_state_from_moments(p_mid, exp_avg, exp_avg_sq, step)
    state = replace_stable_adamw_state(tx.init(p_mid), seeded)
    assert isinstance(state.inner_state[1], StableAdamWState) and int(state.inner_state[1].count) == 10
    g32 = [_np(g, jnp.float32) for g in grads[10:]]
    out, _ = _jax_run(tx, p_mid, g32, lrs[10:], state=state)
    fresh, _ = _jax_run(tx, p_mid, g32, lrs[10:])
    for k, p in tp2.items():
        np.testing.assert_allclose(np.asarray(out[k]), p.numpy(), rtol=0, atol=1e-6, err_msg=k)
    assert max(float(jnp.abs(fresh[k] - out[k]).max()) for k in SHAPES) > 1e-3  # the seed mattered

    bad = dict(exp_avg, emb=np.zeros((4, 7), np.float32))
    with pytest.raises(ValueError, match=r"exp_avg`\['emb'\].*shape"):
        stable_adamw_state_from_moments(p_mid, bad, exp_avg_sq, step)
    with pytest.raises(ValueError, match=r"exp_avg_sq` does not match.*missing \[\"\['norm'\]\"\]"):
        stable_adamw_state_from_moments(p_mid, exp_avg, {k: v for k, v in exp_avg_sq.items() if k != "norm"},
                                        step)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_adamw_matches_torch_adamw(clip):
    """HF-Trainer-style AdamW (coupled lr*wd decay, 1-D excluded, optional clip): float32 JAX vs
    float64 torch (torch's float32 run drifts by ~6e-7 through its rounded 1 - lr*wd factor)."""
    params, grads, lrs = _problem(seed=3)
    tp = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    opt = torch.optim.AdamW(_torch_groups(tp, 0.01, True), lr=PEAK, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.01)
    _torch_run(opt, tp, grads, lrs, clip=clip)
    cfg = OptimConfig(name="adamw", lr=PEAK, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01,
                      clip_grad_norm=clip)
    out, state = _jax_run(make_optimizer(cfg), _np(params, jnp.float32), [_np(g, jnp.float32) for g in grads],
                          lrs)
    assert set(state.hyperparams) == {"learning_rate", "b1", "b2", "eps", "weight_decay"}
    for k, p in tp.items():
        np.testing.assert_allclose(np.asarray(out[k]), p.numpy(), rtol=0, atol=1e-6, err_msg=k)
    if clip:  # the clipping changed the result
        unclipped = _jax_run(make_optimizer(dataclasses.replace(cfg, clip_grad_norm=None)),
                             _np(params, jnp.float32), [_np(g, jnp.float32) for g in grads], lrs)[0]
        assert max(float(jnp.abs(unclipped[k] - out[k]).max()) for k in SHAPES) > 1e-3


def test_factory_state_and_errors():
    params = _np(_problem()[0], jnp.float32)
    tx = make_optimizer(OptimConfig(lr=3e-4, weight_decay=1e-5))
    state = tx.init(params)
    hp = state.hyperparams
    assert float(hp["learning_rate"]) == pytest.approx(3e-4) and float(hp["max_lr"]) == pytest.approx(3e-4)
    assert float(set_learning_rate(state, 1e-5).hyperparams["learning_rate"]) == pytest.approx(1e-5)
    assert weight_decay_mask({"a": jnp.zeros((2, 2)), "b": jnp.zeros(3), "c": jnp.zeros(())}) == \
        {"a": True, "b": False, "c": False}
    with pytest.raises(ValueError, match="max_lr"):
        stable_adamw(optax.constant_schedule(1e-3), weight_decay=1e-5)
    with pytest.raises(ValueError, match="max_lr"):
        optax.inject_hyperparams(stable_adamw)(learning_rate=1e-3, weight_decay=1e-5).init(params)
    with pytest.raises(ValueError, match="exactly one"):
        find_stable_adamw_state(optax.adam(1e-3).init(params))


# ---------------------------------------------------------------------------------------------
# Schedules: the formulas written out independently, in float64.


def _reference(cfg: ScheduleConfig, t: float) -> float:
    w, T, af = float(cfg.warmup), float(cfg.total), cfg.alpha_f
    D = T if cfg.decay is None else float(cfg.decay)
    if cfg.name == "constant":  # Composer: LinearScheduler(0 -> 1 over t_warmup), then 1
        return min(1.0, t / w) if t < w else 1.0
    if cfg.name == "linear":  # transformers.get_linear_schedule_with_warmup
        if t < w:
            return t / max(1.0, w)
        return max(0.0, (T - t) / max(1.0, T - w))

    def one_minus_sqrt():
        if t <= T - D:
            return 1.0
        return max(af, af + (1 - af) * (1 - math.sqrt((t - (T - D)) / D)))

    if cfg.name == "one_minus_sqrt":
        return one_minus_sqrt()
    if t < w:  # wsd: Composer LinearScheduler(alpha_i=1e-10, alpha_f=1, t_max=t_warmup)
        return 1e-10 + min(1.0, t / w) * (1.0 - 1e-10)
    if D == 0 or t < T - D:
        return 1.0
    if cfg.decay_shape == "1-sqrt":
        return one_minus_sqrt()
    return max(0.0, 1 - ((t - (T - D)) / D) * (1 - af))


SCHEDULE_CASES = [
    ScheduleConfig(name="constant"),
    ScheduleConfig(name="constant", unit="steps", warmup=100),
    ScheduleConfig(name="wsd", warmup=3e9, total=1.6e11, decay=1.6e10, alpha_f=0.0),
    ScheduleConfig(name="wsd", unit="steps", warmup=10, total=100, decay=30, alpha_f=0.1),
    ScheduleConfig(name="wsd", unit="steps", warmup=10, total=100, decay=30, decay_shape="1-sqrt"),
    ScheduleConfig(name="wsd", warmup=5e8, total=1e10, decay=0),
    ScheduleConfig(name="one_minus_sqrt", total=8_247_337_000, alpha_f=0.001),  # phase 2 base
    ScheduleConfig(name="one_minus_sqrt", total=8_247_337_000, decay=2_749_112_000),  # phase 2 large
    ScheduleConfig(name="linear", unit="steps", warmup=10, total=100),
    ScheduleConfig(name="linear", unit="steps", warmup=0, total=57),
]


def _grid(cfg: ScheduleConfig) -> np.ndarray:
    T = cfg.total or 1e4
    marks = [0.0, cfg.warmup, T - cfg.t_decay, T, 2 * T]
    pts = [m + d for m in marks for d in (-1.0, 0.0, 1.0, 0.5)]
    pts += list(np.random.default_rng(0).uniform(0, 1.2 * T, 64))
    return np.unique(np.clip(np.asarray(pts, np.float64), 0, None))


@pytest.mark.parametrize("cfg", SCHEDULE_CASES, ids=lambda c: f"{c.name}-{c.decay_shape}-{c.warmup:g}")
def test_lr_scale_matches_formulas(cfg):
    t = _grid(cfg)
    ref = np.array([_reference(cfg, x) for x in t])
    got = lr_scale(cfg, t)
    assert got.dtype == np.float64 and got.shape == t.shape
    np.testing.assert_allclose(got, ref, rtol=1e-7, atol=0)
    assert float(lr_scale(cfg, float(t[3]))) == pytest.approx(ref[3], rel=1e-7)
    assert (got >= 0).all()
    with jax.enable_x64(True):  # the jnp branch: the same formula (XLA may round 1 ulp differently)
        np.testing.assert_allclose(np.asarray(lr_scale(cfg, jnp.asarray(t))), ref, rtol=1e-7, atol=1e-15)
    # float32 under jit: t itself is rounded (to ~1e3 at 1e10 tokens), hence the looser bound there.
    sched = jax.jit(lambda t: 2.0 * lr_scale(cfg, t))
    tol = 2e-6 if cfg.unit == "steps" else 2e-4
    np.testing.assert_allclose(np.asarray(sched(jnp.asarray(t, jnp.float32))), 2 * ref, rtol=0, atol=tol)


def test_linear_matches_transformers_and_wsd_matches_optax_pieces():
    transformers = pytest.importorskip("transformers")
    for w, total in ((10, 100), (0, 57), (7, 7)):
        cfg = ScheduleConfig(name="linear", unit="steps", warmup=w, total=total)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        hf = transformers.get_linear_schedule_with_warmup(opt, w, total).lr_lambdas[0]
        steps = np.arange(0, total + 5)
        np.testing.assert_allclose(lr_scale(cfg, steps), [hf(int(s)) for s in steps], rtol=1e-12, atol=0)
        assert int(jax.jit(lambda t, c=cfg: lr_scale(c, t))(jnp.asarray(0)) == 0) == (w > 0)  # HF's first step has lr 0

    cfg = ScheduleConfig(name="wsd", unit="steps", warmup=10, total=100, decay=30, alpha_f=0.1)
    pieces = optax.join_schedules(
        [optax.linear_schedule(1e-10, 1.0, 10), optax.constant_schedule(1.0),
         optax.linear_schedule(1.0, 0.1, 30)], [10, 70])
    steps = jnp.arange(0, 101)
    np.testing.assert_allclose(lr_scale(cfg, steps), pieces(steps), rtol=0, atol=1e-6)


def test_config_sections_and_errors(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("optim:\n  name: adamw\n  lr: 5.0e-5\n  betas: [0.9, 0.999]\n  eps: 1.0e-8\n"
                    "schedule:\n  name: one_minus_sqrt\n  total: 8247337000\n  decay: 2749112000\n")
    o = load(OptimConfig, path, section="optim")
    assert (o.name, o.lr, o.betas, o.clip_grad_norm) == ("adamw", 5e-5, [0.9, 0.999], None)
    s = load(ScheduleConfig, path, ["alpha_f=0.01"], section="schedule")
    assert (s.total, s.t_decay, s.alpha_f, s.unit) == (8247337000.0, 2749112000.0, 0.01, "tokens")
    bad = [(OptimConfig, ["name=sgd"], "optim.name"), (OptimConfig, ["betas=[0.9]"], "optim.betas"),
           (ScheduleConfig, ["name=cosine"], "schedule.name"),
           (ScheduleConfig, ["warmup=10"], "schedule.warmup"),
           (ScheduleConfig, ["decay=9000000000"], "schedule.decay"),
           (ScheduleConfig, ["name=wsd", "warmup=6000000000"], "schedule.warmup")]
    for cls, over, key in bad:
        section = "optim" if cls is OptimConfig else "schedule"
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
            load(cls, path, over, section=section)
        assert str(e.value).startswith("command line (") and str(path) not in str(e.value)  # what the user typed
    path.write_text("schedule:\n  name: one_minus_sqrt\n  total: 100\n  decay: 10\n  warmup: 10\n")
    with pytest.raises(ConfigError, match=r"schedule\.warmup") as e:
        load(ScheduleConfig, path, section="schedule")
    assert str(e.value).startswith(str(path))  # a bad value in the file names the file
