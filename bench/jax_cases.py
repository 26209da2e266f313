"""The JAX cases: packed inference (`bcmb_jax.encode`) and `train.py`'s MLM step, timed in this process."""

from __future__ import annotations

import numpy as np

from bench.measure import PeakMemory, fit_rows, timed, timed_steps
from bench.workload import MASK_RATE, SEED


def attention_option(job: dict) -> dict:
    """The `gpu` attention backend (the Pallas kernel) on GPU, else the default run-time option."""
    return {"runtime": "gpu"} if job["device_kind"] == "gpu" else {}


def load(job: dict, task: str, remat: bool = False):
    import jax.numpy as jnp

    import bcmb_jax

    model = bcmb_jax.from_pretrained(job["model_dir"], task=task, dtype=jnp.dtype(job["dtype"]), remat=remat,
                                     **attention_option(job))
    return model


def infer(job: dict, docs: list[np.ndarray]) -> dict:
    """One pass = `encode` over the whole set; a warm-up pass compiles every shape it uses."""
    import bcmb_jax
    from bcmb_jax.modeling.infer import attention_backend_of, plan_rows

    model = load(job, "base")
    batch_tokens = job["batch_rows"] * job["length"]
    plan = plan_rows(model, [len(d) for d in docs], batch_tokens=batch_tokens)

    def run():
        bcmb_jax.encode(model, docs, batch_tokens=batch_tokens, output="hidden")

    run()
    with PeakMemory("jax", job["device_kind"]) as mem:
        times = timed(run, 0, job["repeats"])
    return {"times_s": times, "peak_mem_mb": mem.mb, "memory": mem.how, "attention": attention_backend_of(model),
            "packing_efficiency": plan.efficiency, "row_shapes": plan.shapes}


def train(job: dict, make_batch, rows: int) -> dict:
    """`train.py`'s own step (`mlm_step.make_train_step`): sparse MLM head, StableAdamW of the recipe;
    or, for kind "fwdbwd", loss and gradients only. `make_batch(rows)` gives the MLM batch."""
    import jax
    import jax.numpy as jnp

    from bcmb_jax.modeling.state import split_model
    from bcmb_jax.training import config, mlm_step, optim

    model = load(job, "mlm", remat=bool(job.get("remat")))
    graphdef, params, rest = split_model(model, training=True)
    del model
    T = job["length"]

    def attempt(rows: int) -> dict:
        # one device: the rows are one group, as train.py groups each device's rows
        cap = mlm_step.masked_cap(rows * T, MASK_RATE, config.TrainConfig.masked_cap_sigmas)
        batch = make_batch(rows)
        jb = {"input_ids": batch["input_ids"], "labels": batch["labels"],
              "segment_ids": np.ones((rows, T), np.int32),
              "position_ids": np.broadcast_to(np.arange(T, dtype=np.int32), (rows, T))}
        jb = {k: jnp.asarray(v) for k, v in jb.items()}
        if job["kind"] == "fwdbwd":  # loss and gradients only: no optimizer state, no update
            from flax import nnx

            def loss(p):
                total, count, _ = mlm_step.mlm_loss_sum(nnx.merge(graphdef, p, rest), jb, cap, groups=1)
                return total / count

            grad = jax.jit(jax.value_and_grad(loss))

            def run():
                value, _ = grad(params)
                float(value)
        else:
            tx = optim.make_optimizer(optim.OptimConfig())  # lr 3e-4, betas (0.9, 0.98), eps 1e-6, wd 1e-5
            step = jax.jit(mlm_step.make_train_step(graphdef, rest, tx, cap, SEED, groups=1), donate_argnums=(0,))
            box = {"state": mlm_step.init_state(jax.tree.map(jnp.copy, params), tx)}
            mb = {k: v[None] for k, v in jb.items()}  # one micro-batch
            lr = jnp.float32(3e-4)

            def run():
                box["state"], metrics = step(box["state"], mb, lr)
                float(metrics["loss"])

        return {**timed_steps(run, "jax", job), "rows": rows, "labels": batch["labels"], "masked_slots": cap}

    what = "loss and gradients" if job["kind"] == "fwdbwd" else "train.py's step"
    res = fit_rows(attempt, rows, cleanup=lambda: None)
    return {**res, "loss": f"{what}: sparse MLM head, mean CE over masked tokens"}
