"""Continued MLM pretraining of ModernBERT in JAX, as in BioClinical ModernBERT.

    python train.py --config configs/bioclinical_base_phase1.yaml [key=value ...]
    python train.py --config configs/demo.yaml run_dir=runs/try max_steps=50
    python train.py --help          # every config key and its meaning

A run directory that already holds checkpoints resumes from the latest one that restores: weights,
optimizer state, step, token count and the data iterator, so the run continues with exactly the
batches and masks it would have seen (a checkpoint that cannot be read is moved aside, never
deleted). Nothing in an existing run is rewritten before the restore has succeeded. One run at a time
holds a run directory (RUN_DIR/run.lock).

Exit status: 0 finished (and exported), 2 bad input or a run directory in use, 3 stopped on a non-finite
loss, 75 stopped by SIGTERM / SIGINT / SIGUSR1 after saving a checkpoint (run the same command to
continue), 130 / 143 interrupted before training began (nothing to save).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import yaml

from bcmb_jax import cli
from bcmb_jax.cli import NONFINITE_STATUS, RESUMABLE_STATUS, command, run
from bcmb_jax.errors import ConfigError
from bcmb_jax.runconfig import help_text, load, to_dict
from bcmb_jax.training.config import TrainConfig

log = logging.getLogger("train")


def parse_args(argv: list[str] | None) -> TrainConfig:
    ap = cli.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (YAML sections, or key=value overrides with dotted names):\n" + help_text(TrainConfig))
    ap.add_argument("--config", help="YAML run config (configs/*.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. max_steps=100 data.seq_len=1024")
    args = ap.parse_args(argv)
    return load(TrainConfig, args.config, args.overrides)


@command
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("jax", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = parse_args(argv)

    from bcmb_jax.data import demo_corpus
    from bcmb_jax.training import preflight, run_lock, sharding, start

    # 0. Every check that needs no work (positions, vocabulary, sources, a resume's settings), before any write.
    demo_corpus.ensure_default(cfg.data.tokenizer)  # configs/demo.yaml's data is made on first use
    preflight.check_run(cfg, start.run_model_config(cfg))
    sharding.init_distributed(cfg.distributed)

    # 1. One run per run directory: process 0 holds RUN_DIR/run.lock for the whole job (a dead holder's is
    #    taken over), before any data is read or anything else is written.
    lock = run_lock.lock_for_job(cfg.run_dir, cfg.lock_stale_after)
    try:
        return train(cfg)
    finally:
        if lock is not None:
            lock.release()


def train(cfg: TrainConfig) -> int:
    """The run itself; returns the exit status (0 finished, 3 non-finite, 75 stopped by a signal and saved)."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from tqdm import tqdm

    from bcmb_jax import atomic
    from bcmb_jax.modeling.state import split_model
    from bcmb_jax.training import batches, checkpoints, mlm_step, optim, progress, sharding, start
    from bcmb_jax.training.stop import StopRequest
    from bcmb_jax.weights import directories, keymap, pretrained

    main_process = jax.process_index() == 0
    run_dir = Path(cfg.run_dir)
    mesh = sharding.make_mesh(cfg.mesh)
    if cfg.micro_batch % mesh.size:
        raise ConfigError(f"micro_batch ({cfg.micro_batch}) must be a multiple of the device count ({mesh.size})")
    log.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), jax.device_count(), jax.process_count())

    # 2. The model, as a graph definition plus a sharded parameter tree (nothing is written yet).
    model_cfg = start.run_model_config(cfg)
    model = start.init_model(cfg, model_cfg)
    graphdef, host_params, rest = split_model(model, training=True)
    param_sh = sharding.param_shardings(host_params, keymap.axes_tree(model_cfg, "mlm"), mesh, cfg.mesh.rules)
    state_params = jax.jit(lambda p: p, out_shardings=param_sh)(host_params)

    # 3. The optimizer (moments seeded from a converted Composer checkpoint when there are some).
    tx = optim.make_optimizer(cfg.optim)
    moments = start.initial_moments(cfg, host_params)
    state, state_sh = mlm_step.init_sharded_state(state_params, tx, moments, mesh, param_sh)
    state = start.restore_init_optimizer(cfg, state)
    del host_params, state_params, model

    # 4. The data: this process's rows of every global batch.
    it = batches.make_batches(cfg, jax.process_index(), jax.process_count())
    # room for the masked tokens of each device's rows of a micro-batch (the gather stays on the device)
    cap = mlm_step.masked_cap(cfg.micro_batch // mesh.size * cfg.data.seq_len, cfg.data.mlm_probability,
                              cfg.masked_cap_sigmas)

    # 5. Resume from the newest checkpoint of this run that restores, if any. Unfinished saves of a
    #    killed run are removed, unreadable checkpoints moved aside; nothing else is touched before
    #    the restore succeeded.
    run_checkpoints = checkpoints.Checkpoints(run_dir, cfg.keep_checkpoints)
    tokens_seen, step = 0, 0
    if (restored := run_checkpoints.restore_latest(state, it)) is not None:
        state, meta, step = restored
        tokens_seen = int(meta["tokens"])
        log.info("resumed from step %d (%d tokens seen)", step, tokens_seen)
    if main_process:
        atomic.remove_stale_temps(run_dir)
        atomic.write_text(run_dir / "config.json", json.dumps(pretrained.jax_config(model_cfg, "mlm", "float32"),
                                                                    indent=2) + "\n")
        atomic.write_text(run_dir / "train_config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        if cfg.data.tokenizer:
            tok_src = Path(cfg.data.tokenizer)
            with atomic.atomic(run_dir / "tokenizer", overwrite=True) as tmp:
                tmp.mkdir()
                directories.copy_tokenizer(tok_src if tok_src.is_dir() else tok_src.parent, tmp)

    # 6. Train. SIGTERM / SIGINT / SIGUSR1 (preemption, Ctrl-C, a scheduler's warning) are acknowledged at
    #    once; the run then saves a checkpoint after the current step and exits with status 75.
    train_step = jax.jit(mlm_step.make_train_step(graphdef, rest, tx, cap, cfg.seed, groups=mesh.size),
                         donate_argnums=0, out_shardings=(state_sh, sharding.replicated(mesh)))
    stop = StopRequest().install()
    metrics_log = progress.MetricsLog(run_dir, main_process, resumed_at=step if restored is not None else None)
    speed = progress.Throughput()
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not main_process, dynamic_ncols=True, unit="step")
    peak = cfg.optim.lr
    status = 0

    def done() -> bool:
        return step >= cfg.max_steps or (cfg.max_tokens is not None and tokens_seen >= cfg.max_tokens)

    pending = []  # metrics of the steps since the last check, still on the device

    def check() -> dict | None:
        """The last step's metrics on the host, or None when a step since the last check was non-finite."""
        got = jax.device_get([{k: v.addressable_data(0) for k, v in m.items()} for m in pending])
        pending.clear()
        for i, m in enumerate(got):
            if not (m["finite"] and math.isfinite(float(m["loss"]))):
                log.error("step %d: non-finite loss (%s) or weights; stopping without saving "
                          "(last checkpoint: step %s)", step - len(got) + i + 1, m["loss"], run_checkpoints.latest())
                return None
        return got[-1]

    if done() and restored is not None:
        log.warning("%s is already at step %d (%d tokens): max_steps=%d / max_tokens=%s are reached, nothing to "
                    "train; raise them to continue", run_dir, step, tokens_seen, cfg.max_steps, cfg.max_tokens)
    while not done():
        # The schedule's time is what was consumed before this update (tokens or steps).
        t = tokens_seen if cfg.schedule.unit == "tokens" else step
        lr = peak * float(optim.lr_scale(cfg.schedule, t))
        rows = next(it)
        batch = sharding.global_batch(batches.stack_micro(rows, cfg.accumulation), mesh, row_axis=1)
        with jax.set_mesh(mesh):  # the attention kernels run on each device's own rows (`per_device_rows`)
            state, metrics = train_step(state, batch, np.float32(lr))
        pending.append(metrics)
        step += 1
        if jax.process_count() == 1:  # all rows are here: count on the host, without waiting for the step
            tokens = int((rows["segment_ids"] > 0).sum())
        else:  # the global count, from the step
            tokens = int(metrics["tokens"].addressable_data(0))
        tokens_seen += tokens
        speed.add(tokens)
        stopping = stop.requested
        if jax.process_count() > 1:  # every host must agree, or the next collective would hang
            stopping = bool(multihost_utils.process_allgather(np.int32(stopping)).max())
        logging_now = step % cfg.log_every == 0 or done()
        saving = step % cfg.checkpoint_every == 0 or done() or stopping
        if logging_now or saving:  # the NaN guard reads the flags here, never a state it has not checked
            m = check()
            if m is None:
                status = NONFINITE_STATUS
                break
        if logging_now:
            rate = speed.read()
            values = {"loss": float(m["loss"]), "lr": lr, "tokens_per_s": rate, "tokens": tokens_seen,
                      "grad_norm": float(m["grad_norm"]), "masked_tokens": int(m["masked_tokens"]),
                      "dropped": int(m["dropped"])}
            metrics_log.write(step, values)
            bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:.0f}")
        bar.update(1)
        if saving:
            run_checkpoints.save(step, state, {"step": step, "tokens": tokens_seen}, it)
        if stopping and not done():
            status = RESUMABLE_STATUS
            break
    bar.close()
    run_checkpoints.close()  # waits for the last save to be committed
    metrics_log.close()
    stop.uninstall()
    if status == RESUMABLE_STATUS:
        print(f"stopped by {stop.name if stop.requested else 'another process of the job'} at step {step}: "
              f"checkpoint saved in {run_dir / 'checkpoints'}; run the same command to continue "
              f"(exit status {RESUMABLE_STATUS})", file=sys.stderr, flush=True)

    # 7. Export the final weights for PyTorch.
    if status == 0 and done() and cfg.export_hf and main_process:
        from bcmb_jax.weights.export import to_hf

        to_hf(run_dir, run_dir / "hf", overwrite=True)
        log.info("exported %s", run_dir / "hf")
    return status


if __name__ == "__main__":
    run(main)
