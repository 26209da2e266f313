"""train.py and the trainer: the loss, accumulation, resume, preemption, NaN guard, sharding, multi-host."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import TINY_RUN_MODEL, hf_model, rng_ids
from flax import nnx

import bcmb_jax
import train
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.state import split_model
from bcmb_jax.runconfig import load
from bcmb_jax.training import batches, mlm_step
from bcmb_jax.weights import directories

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from bcmb_jax.data import demo_corpus

    d = tmp_path_factory.mktemp("corpus")
    demo_corpus.write_corpus(d / "notes.jsonl", n_docs=300, seed=1)
    demo_corpus.build_tokenizer([d / "notes.jsonl"], d / "tokenizer", vocab_size=512)
    return d


def write_config(path: Path, corpus: Path, run_dir: Path, **top) -> Path:
    cfg = {
        "run_dir": str(run_dir), "max_steps": 6, "checkpoint_every": 3, "seed": 5, "log_every": 1,
        "global_batch": 8, "micro_batch": 4, "export_hf": False,
        "model": {"overrides": TINY_RUN_MODEL},
        "data": {"tokenizer": str(corpus / "tokenizer"), "seq_len": 64,
                 "sources": [{"name": "notes", "paths": [str(corpus / "notes.jsonl")], "field": "text"}],
                 "mlm_probability": 0.3},
        "optim": {"lr": 3.0e-3, "weight_decay": 1.0e-5},
        "schedule": {"name": "wsd", "unit": "steps", "warmup": 2, "total": 6, "decay": 2, "decay_shape": "1-sqrt"},
    }
    for k, v in top.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_subprocess(args: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600, **kw)


def test_sparse_loss_equals_hf_masked_lm_loss(tmp_path):
    """The head on gathered masked positions gives transformers' dense MLM loss."""
    hf = hf_model("mlm")
    hf.save_pretrained(tmp_path)
    model = bcmb_jax.from_pretrained(tmp_path)
    ids = rng_ids((3, 50))
    labels = np.where(np.random.default_rng(1).random(ids.shape) < 0.3, ids, -100)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), labels=torch.tensor(labels)).loss.item()
    batch = {"input_ids": jnp.asarray(ids), "segment_ids": jnp.ones(ids.shape, jnp.int32),
             "position_ids": jnp.broadcast_to(jnp.arange(50), ids.shape), "labels": jnp.asarray(labels)}
    total, count, dropped = nnx.jit(mlm_step.mlm_loss_sum, static_argnums=(2, 3))(model, batch, 40, 16)
    assert int(count) == int((labels != -100).sum()) and int(dropped) == 0
    assert abs(float(total / count) - ref) <= 1e-5


def test_masked_cap_covers_the_binomial_tail():
    mean, std = 8192 * 0.3, (8192 * 0.3 * 0.7) ** 0.5
    assert mean + 8 * std <= mlm_step.masked_cap(8192, 0.3, 8.0) <= mean + 8 * std + 10
    assert 19.2 + 8 * 3.66 <= mlm_step.masked_cap(64, 0.3, 8.0) <= 64


def test_accumulation_equals_one_big_batch():
    """2 micro-batches of 4 rows give the same update as 1 batch of 8 (the loss is a global token mean)."""
    from bcmb_jax.training import optim

    mcfg = ModelConfig.from_hf_dict(TINY_RUN_MODEL)
    model = bcmb_jax.build(mcfg, "mlm", seed=0)
    graphdef, params, rest = split_model(model, training=True)
    tx = optim.make_optimizer(optim.OptimConfig(lr=1e-3))
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 512, size=(8, 32)).astype(np.int32)
    seg = np.ones_like(ids)
    seg[::2, 20:] = 0  # rows with padding, so the micro-batches hold different masked counts
    labels = np.where((rng.random(ids.shape) < 0.3) & (seg > 0), ids, -100).astype(np.int32)
    batch = {"input_ids": ids, "segment_ids": seg, "position_ids": np.broadcast_to(np.arange(32), ids.shape),
             "labels": labels}
    step = jax.jit(mlm_step.make_train_step(graphdef, rest, tx, cap=32, seed=0))
    outs = []
    for acc in (1, 2):
        state = mlm_step.init_state(params, tx)
        state, m = step(state, {k: jnp.asarray(v) for k, v in batches.stack_micro(batch, acc).items()},
                        np.float32(1e-3))
        outs.append((float(m["loss"]), state["params"]))
    assert abs(outs[0][0] - outs[1][0]) <= 1e-6
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), outs[0][1], outs[1][1]))
    assert max(diffs) <= 1e-6


def test_train_help_lists_every_key():
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0
    for key in ("run_dir", "max_steps", "checkpoint_every", "seed", "data.seq_len", "data.mlm_probability",
                "optim.lr", "schedule.name", "mesh.fsdp", "model.init", "global_batch"):
        assert f"  {key} " in out.stdout, key


def test_resume_is_bit_exact(tmp_path, corpus):
    """Stopped at step 3 and restarted to 6, a run logs exactly the losses of an uninterrupted run."""
    full, split = tmp_path / "full", tmp_path / "split"
    assert train.main(["--config", str(write_config(tmp_path / "a.yaml", corpus, full))]) == 0
    cfg = write_config(tmp_path / "b.yaml", corpus, split)
    assert train.main(["--config", str(cfg), "max_steps=3"]) == 0
    assert train.main(["--config", str(cfg), "export_hf=true"]) == 0
    a, b = losses(full), losses(split)
    print("uninterrupted:", a, "\nresumed:      ", b)
    assert len(a) == len(b) == 6 and a == b
    assert a[-1] < a[0]
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "tokens_per_s"} <= set(rows[0]) and rows[-1]["dropped"] == 0
    assert list((full / "tensorboard").iterdir())
    assert sorted(int(p.name) for p in (full / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]

    # The end-of-run export loads in transformers and computes what the JAX checkpoint computes.
    import transformers as tf

    hf = tf.AutoModelForMaskedLM.from_pretrained(split / "hf").eval()
    jx = bcmb_jax.from_pretrained(split)  # the run directory's latest checkpoint
    ids = rng_ids((2, 40), vocab=512, low=5)
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    assert np.abs(np.asarray(jx(ids).logits) - ref).max() <= 1e-4

    # Phase 2 starts from this run: its weights and its optimizer state (step count continues).
    import orbax.checkpoint as ocp

    phase2 = tmp_path / "phase2"
    cfg2 = write_config(tmp_path / "p2.yaml", corpus, phase2, max_steps=1, model={"init": str(split)},
                        data={**json.loads(cfg.read_text())["data"], "mlm_probability": 0.15})
    assert train.main(["--config", str(cfg2)]) == 0
    meta = json.loads((phase2 / "checkpoints" / "1" / "meta" / "metadata").read_text())
    assert meta["step"] == 1
    with ocp.StandardCheckpointer() as ck:
        opt = ck.restore((phase2 / "checkpoints" / "1" / "opt_state").absolute())
    counts = [int(np.asarray(x)) for x in jax.tree.leaves(opt) if np.ndim(x) == 0 and
              np.issubdtype(np.asarray(x).dtype, np.integer)]
    assert 7 in counts  # StableAdamW's step: 6 from the first run + 1


def test_nan_guard_stops_without_saving(tmp_path, corpus, caplog):
    run = tmp_path / "nan"
    cfg = write_config(tmp_path / "c.yaml", corpus, run, optim={"lr": 1.0e38, "weight_decay": 0.0},
                       schedule={"name": "constant"})
    assert train.main(["--config", str(cfg), "checkpoint_every=1", "max_steps=50"]) == 3
    assert "non-finite loss" in caplog.text
    bad_step = len(losses(run)) + 1 if (run / "metrics.jsonl").exists() else 1
    steps = directories.run_steps(run)
    assert steps and max(steps) < bad_step  # the state of the failing step was never saved
    for step in steps:  # and every saved state is finite
        model = bcmb_jax.from_pretrained(run / "checkpoints" / str(step))
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_sigterm_saves_a_checkpoint_and_resumes(tmp_path, corpus):
    run = tmp_path / "pre"
    cfg = write_config(tmp_path / "d.yaml", corpus, run, max_steps=100000, checkpoint_every=100000)
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, out  # stopped and saved: not the 0 of a finished run
    steps = [int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(steps) == 1 and steps[0] == len(losses(run))
    assert "SIGTERM received" in out and f"at step {steps[0]}: checkpoint saved" in out
    assert not (run / "run.lock").exists()


def test_unreadable_latest_checkpoint_is_moved_aside_and_each_step_logged_once(tmp_path, corpus, caplog):
    """A truncated latest checkpoint: the run warns, moves it aside (not deleted), resumes from the previous
    one, drops the metrics of the steps after it, and ends with the uninterrupted run's losses, once each."""
    caplog.set_level(logging.INFO)
    run = tmp_path / "trunc"
    cfg = write_config(tmp_path / "t.yaml", corpus, run)
    assert train.main(["--config", str(cfg)]) == 0
    ref = losses(run)
    assert directories.run_steps(run) == [3, 6]
    for f in (run / "checkpoints" / "6" / "params").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:10])
    untouched = {p: p.read_bytes() for p in (run / "checkpoints" / "6").rglob("*") if p.is_file()}
    events = sorted((run / "tensorboard").iterdir())
    (run / ".hf.tmp-999999999-00aa").mkdir()  # a killed export's leftover (no such process)
    assert train.main(["--config", str(cfg)]) == 0
    assert "checkpoint 6 cannot be restored" in caplog.text and "resumed from step 3" in caplog.text
    aside = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("unrestorable-6-")]
    assert len(aside) == 1
    assert {aside[0] / p.relative_to(run / "checkpoints" / "6"): b for p, b in untouched.items()} == {
        p: p.read_bytes() for p in aside[0].rglob("*") if p.is_file()}
    assert directories.run_steps(run) == [3, 6]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and [r["loss"] for r in rows] == ref
    assert len(list((run / "tensorboard").iterdir())) == len(events) + 1  # a new events file, steps > 3 purged
    assert not (run / ".hf.tmp-999999999-00aa").exists()


def test_kill_9_during_async_save_never_leaves_a_bad_checkpoint(tmp_path, corpus):
    """SIGKILL at random moments of a run that saves every step; the survivor restores and matches."""
    ref = tmp_path / "ref"
    assert train.main(["--config", str(write_config(tmp_path / "r.yaml", corpus, ref, max_steps=8))]) == 0
    run = tmp_path / "kill"
    cfg = write_config(tmp_path / "k.yaml", corpus, run, max_steps=8, checkpoint_every=1)
    for delay in (1.0, 2.5):
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--config", str(cfg)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and not (run / "checkpoints").exists():
            time.sleep(0.1)
        time.sleep(delay)
        proc.kill()
        proc.wait()
    assert train.main(["--config", str(cfg)]) == 0
    logged = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        logged[row["step"]] = row["loss"]  # a step re-run after a kill must log the same loss again
    assert logged == dict(enumerate(losses(ref), start=1))


def test_config_files_load():
    for name in ("demo", "bioclinical_base_phase1", "bioclinical_base_phase2", "bioclinical_large_phase1",
                 "bioclinical_large_phase2"):
        cfg = load(train.TrainConfig, ROOT / "configs" / f"{name}.yaml")
        assert cfg.global_batch % cfg.micro_batch == 0
    p1 = load(train.TrainConfig, ROOT / "configs" / "bioclinical_base_phase1.yaml")
    p2 = load(train.TrainConfig, ROOT / "configs" / "bioclinical_large_phase2.yaml")
    assert (p1.optim.lr, p1.optim.weight_decay, p1.data.mlm_probability, p1.global_batch) == (3e-4, 1e-5, 0.3, 576)
    assert (p2.optim.lr, p2.optim.weight_decay, p2.data.mlm_probability, p2.global_batch) == (5e-5, 1e-6, 0.15, 616)
    assert p2.schedule.name == "one_minus_sqrt" and p2.schedule.decay == 2_749_112_000
    assert p1.optim.betas == [0.9, 0.98] and p1.optim.eps == 1e-6 and p1.data.seq_len == 8192


def _run_devices(tmp_path, corpus, name, n_devices, mesh, max_steps=3):
    run = tmp_path / name
    cfg = write_config(tmp_path / f"{name}.yaml", corpus, run, max_steps=5, mesh=mesh, global_batch=16,
                       micro_batch=8)
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n_devices}", "JAX_PLATFORMS": "cpu"}
    out = run_subprocess(["--config", str(cfg), f"max_steps={max_steps}"], env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return losses(run)


def test_eight_devices_data4_fsdp2_equal_one_device_and_resume_on_another_mesh(tmp_path, corpus):
    """8 forced CPU devices (data 4 x fsdp 2) train like 1 device; the run then resumes on a 2 x 1 mesh."""
    one = _run_devices(tmp_path, corpus, "one", 1, {"data": 1, "fsdp": 1}, max_steps=5)
    eight = _run_devices(tmp_path, corpus, "eight", 8, {"data": 4, "fsdp": 2}, max_steps=3)
    resumed = _run_devices(tmp_path, corpus, "eight", 2, {"data": 2, "fsdp": 1}, max_steps=5)
    print("1 device:          ", one, "\n8 devices, then 2:", resumed)
    assert eight == resumed[:3]
    assert np.abs(np.array(one) - np.array(resumed)).max() <= 1e-5


def test_two_processes_on_loopback_equal_one_process(tmp_path, corpus):
    """jax.distributed with CPU collectives: 2 processes x 1 device train like 1 process reading both shards."""
    import socket

    one = tmp_path / "one_proc"
    cfg1 = write_config(tmp_path / "p1.yaml", corpus, one, max_steps=3, data_shards=2)
    out = run_subprocess(["--config", str(cfg1)], env={"JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = tmp_path / "two_procs"
    cfg2 = write_config(tmp_path / "p2.yaml", corpus, two, max_steps=3)
    procs = [subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--config", str(cfg2),
                               f"distributed.coordinator=127.0.0.1:{port}", "distributed.num_processes=2",
                               f"distributed.process_id={i}"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    a, b = losses(one), losses(two)
    print("1 process: ", a, "\n2 processes:", b)
    assert len(a) == len(b) == 3 and np.abs(np.array(a) - np.array(b)).max() <= 1e-5


def test_a_second_run_on_the_same_run_directory_refuses_before_reading_data(tmp_path, corpus):
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", corpus, run, max_steps=2, checkpoint_every=2)
    hold = ("import sys, time\nfrom bcmb_jax.training.run_lock import RunLock\nRunLock(sys.argv[1]).acquire()\n"
            "print('held', flush=True)\ntime.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = run_subprocess(["--config", str(cfg)])
        assert r.returncode == 2, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: {run}: in use by another run") and f"pid {holder.pid}" in last
        assert "source notes" not in r.stderr and "Traceback" not in r.stderr  # refused before the data
        assert sorted(p.name for p in run.iterdir()) == ["run.lock"]
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone (killed, its lock left behind): the next start takes the directory over and trains.
    r = run_subprocess(["--config", str(cfg)])
    assert r.returncode == 0, r.stderr
    assert "took over the lock of a run that is gone" in r.stderr and len(losses(run)) == 2
    assert not (run / "run.lock").exists()


def test_decoder_cross_entropy_gradients_match_autodiff():
    """The decoder's CE and its gradients made in the forward pass equal autodiff of the plain formula
    (float32, several groups, chunks that do not divide the positions, invalid positions, a scaled cotangent)."""
    import optax

    G, P, V, D = 3, 37, 300, 16  # 3 groups (devices) of 37 positions
    k = jax.random.split(jax.random.key(0), 5)
    x, emb = jax.random.normal(k[0], (G, P, D)), jax.random.normal(k[1], (V, D)) * 0.3
    bias, y = jax.random.normal(k[2], (V,)), jax.random.randint(k[3], (G, P), 0, V)
    valid = jax.random.uniform(k[4], (G, P)) < 0.7

    def plain(x, emb, bias):
        logits = x @ emb.T + bias
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, y, 0))
        return jnp.where(valid, ce, 0).sum()

    def fused(x, emb, bias):
        return mlm_step.decoder_cross_entropy(x, emb, bias, y, valid, 8)

    assert abs(float(fused(x, emb, bias)) - float(plain(x, emb, bias))) <= 1e-6 * float(plain(x, emb, bias))
    want = jax.grad(lambda *a: 2.5 * plain(*a), argnums=(0, 1, 2))(x, emb, bias)
    got = jax.jit(jax.grad(lambda *a: 2.5 * fused(*a), argnums=(0, 1, 2)))(x, emb, bias)
    for w, g in zip(want, got):
        assert float(jnp.abs(w - g).max()) <= 1e-5 * max(float(jnp.abs(w).max()), 1.0)
    assert float(jnp.abs(got[0][~valid]).max()) == 0.0  # invalid positions get no gradient
