"""Continued MLM pretraining of ModernBERT in JAX, as in BioClinical ModernBERT.

    python train.py --config configs/bioclinical_base_phase1.yaml [key=value ...]
    python train.py --config configs/demo.yaml run_dir=runs/try max_steps=50
    python train.py --help          # every config key and its meaning

A run directory that already holds checkpoints resumes from the latest one that restores: weights,
optimizer state, step, token count and the data iterator, so the run continues with exactly the
batches and masks it would have seen (a checkpoint that cannot be read is moved aside, never
deleted). Nothing in an existing run is rewritten before the restore has succeeded.
SIGTERM/SIGINT (preemption) save a checkpoint and exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
from pathlib import Path

import yaml

from bcmb_jax.cli import command, run
from bcmb_jax.errors import ConfigError
from bcmb_jax.runconfig import help_text, load, to_dict
from bcmb_jax.training.config import TrainConfig

log = logging.getLogger("train")


def parse_args(argv: list[str] | None) -> TrainConfig:
    ap = argparse.ArgumentParser(
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

    import jax
    import numpy as np
    import optax
    from jax.experimental import multihost_utils
    from tqdm import tqdm

    from bcmb_jax import atomic
    from bcmb_jax.training import batches, checkpoints, mlm_step, optim, preflight, progress, sharding, start
    from bcmb_jax.weights import directories, keymap, pretrained

    # 0. Every check that needs no work (positions, vocabulary, sources, a resume's settings), before any write.
    preflight.check_run(cfg, start.model_config(cfg))
    sharding.init_distributed(cfg.distributed)
    main_process = jax.process_index() == 0
    run_dir = Path(cfg.run_dir)
    mesh = sharding.make_mesh(cfg.mesh)
    if cfg.micro_batch % mesh.size:
        raise ConfigError(f"micro_batch ({cfg.micro_batch}) must be a multiple of the device count ({mesh.size})")
    log.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), jax.device_count(), jax.process_count())

    # 1. The model, as a graph definition plus a sharded parameter tree (nothing is written yet).
    mcfg = start.model_config(cfg)
    model = start.init_model(cfg, mcfg)
    graphdef, host_params, rest = mlm_step.split_model(model)
    param_sh = sharding.param_shardings(host_params, keymap.axes_tree(mcfg, "mlm"), mesh, cfg.mesh.rules)
    state_params = jax.jit(lambda p: p, out_shardings=param_sh)(host_params)

    # 2. The optimizer (moments seeded from a converted Composer checkpoint when there are some).
    tx = optim.make_optimizer(cfg.optim)
    moments = start.initial_moments(cfg, host_params)
    abstract = jax.eval_shape(lambda p: mlm_step.init_state(p, tx, None), state_params)
    state_sh = {"params": param_sh, "step": sharding.replicated(mesh),
                "opt_state": optax.tree_map_params(tx, lambda _, s: s, abstract["opt_state"], param_sh,
                                                   transform_non_params=lambda _: sharding.replicated(mesh))}
    state = jax.jit(lambda p: mlm_step.init_state(p, tx, moments), out_shardings=state_sh)(state_params)
    state = start.restore_init_optimizer(cfg, state)
    del host_params, state_params, model

    # 3. The data: this process's rows of every global batch.
    it = batches.make_batches(cfg, jax.process_index(), jax.process_count())
    cap = mlm_step.masked_cap(cfg.data.seq_len, cfg.data.mlm_probability, cfg.masked_cap_sigmas)

    # 4. Resume from the newest checkpoint of this run that restores, if any. Unfinished saves of a
    #    killed run are removed, unreadable checkpoints moved aside; nothing else is touched before
    #    the restore succeeded.
    ckpt = checkpoints.Checkpoints(run_dir, cfg.keep_checkpoints)
    tokens_seen, step = 0, 0
    if (restored := ckpt.restore_latest(state, it)) is not None:
        state, meta, step = restored
        tokens_seen = int(meta["tokens"])
        log.info("resumed from step %d (%d tokens seen)", step, tokens_seen)
    if main_process:
        atomic.remove_stale_temps(run_dir)
        atomic.write_text(run_dir / "config.json", json.dumps(pretrained.jax_config(mcfg, "mlm", "float32"),
                                                                    indent=2) + "\n")
        atomic.write_text(run_dir / "train_config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        if cfg.data.tokenizer:
            tok_src = Path(cfg.data.tokenizer)
            files = directories.tokenizer_files(tok_src if tok_src.is_dir() else tok_src.parent)
            with atomic.atomic(run_dir / "tokenizer", overwrite=True) as tmp:
                tmp.mkdir()
                for name, src in files.items():
                    (tmp / name).write_bytes(src.read_bytes())

    train_step = jax.jit(mlm_step.make_train_step(graphdef, rest, tx, cap, cfg.seed), donate_argnums=0,
                         out_shardings=(state_sh, sharding.replicated(mesh)))
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

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
                          "(last checkpoint: step %s)", step - len(got) + i + 1, m["loss"], ckpt.latest())
                return None
        return got[-1]

    while not done():
        # The schedule's time is what was consumed before this update (tokens or steps).
        t = tokens_seen if cfg.schedule.unit == "tokens" else step
        lr = peak * float(optim.lr_scale(cfg.schedule, t))
        rows = next(it)
        batch = sharding.global_batch(batches.stack_micro(rows, cfg.accumulation), mesh, row_axis=1)
        state, metrics = train_step(state, batch, np.float32(lr))
        pending.append(metrics)
        step += 1
        if jax.process_count() == 1:  # all rows are here: count on the host, without waiting for the step
            tokens = int((rows["segment_ids"] > 0).sum())
        else:  # the global count, from the step
            tokens = int(metrics["tokens"].addressable_data(0))
        tokens_seen += tokens
        speed.add(tokens)
        stopping = stop["signal"] is not None
        if jax.process_count() > 1:  # every host must agree, or the next collective would hang
            stopping = bool(multihost_utils.process_allgather(np.int32(stopping)).max())
        logging_now = step % cfg.log_every == 0 or done()
        saving = step % cfg.checkpoint_every == 0 or done() or stopping
        if logging_now or saving:  # the NaN guard reads the flags here, never a state it has not checked
            m = check()
            if m is None:
                status = 3
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
            ckpt.save(step, state, {"step": step, "tokens": tokens_seen}, it)
        if stopping:
            log.info("signal %s: checkpoint at step %d saved; exiting", stop["signal"], step)
            break
    bar.close()
    ckpt.close()
    metrics_log.close()

    # 5. Export the final weights for PyTorch.
    if status == 0 and done() and cfg.export_hf and main_process:
        from bcmb_jax.weights.export import to_hf

        to_hf(run_dir, run_dir / "hf", overwrite=True)
        log.info("exported %s", run_dir / "hf")
    return status


if __name__ == "__main__":
    run(main)
