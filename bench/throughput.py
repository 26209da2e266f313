"""Throughput of bcmb-jax against Hugging Face transformers (PyTorch): inference and MLM training.

    python bench/throughput.py [--model DIR | --size mini|base|large] [--samples N] [--lengths 512,2048]
        [--backends jax,torch-sdpa,torch-eager,torch-compile,torch-fa2] [--dtype float32|bfloat16]
        [--train-lengths 512] [--out bench/out]

Inference protocol (after the ModernBERT / BioClinical ModernBERT benchmark): for every length L a
`fixed_L` set (N samples of L tokens) and a `variable_L` set (lengths ~ Normal(L/2, L/8), clamped
to [16, L]); token ids ~ randint[100, 16000); the same random weights in every framework (a random
HF `ModernBertForMaskedLM` is saved once and loaded by transformers and by `bcmb_jax.from_pretrained`).
One pass = the whole set in batches of `--batch-tokens` tokens; the first pass is a warm-up
(compilation) and is not timed; the figure is the median of `--repeats` timed passes, in real
(non-pad) tokens per second. JAX packs documents into rows of L tokens (`bcmb_jax.encode`); torch
pads every batch on the right to its longest sample, as a transformers data collator does.

Training: MLM steps of StableAdamW (bcmb_jax.optim vs torch-optimi) on the same batch of
`fixed_L` samples with 30% masking (80/10/10). JAX runs `train.py`'s step (the head on the
masked positions only); torch runs `ModernBertForMaskedLM(labels=...)` as shipped (dense logits).

Every case runs in its own subprocess, so memory is per case: peak resident set size on CPU
(VmHWM, reset at the start of the timed part) and peak device memory on GPU. MFU = model FLOPs
(matmuls plus attention over the keys each token really attends to; x3 for training) per second
over the matmul peak of the same framework and dtype, measured in the same process with a large GEMM.

Writes results.json, results.md and two PNG plots to `--out`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bcmb_jax import cli  # noqa: E402 - the checkout's package, via the line above
from bcmb_jax.config import ConfigError  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIZES = {  # transformers ModernBertConfig overrides; base/large are the released shapes
    "mini": dict(hidden_size=256, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4),
    "base": dict(),
    "large": dict(hidden_size=1024, intermediate_size=2624, num_hidden_layers=28, num_attention_heads=16),
}
BACKENDS = ("jax", "torch-sdpa", "torch-eager", "torch-compile", "torch-fa2")
TORCH_IMPL = {"torch-sdpa": "sdpa", "torch-eager": "eager", "torch-compile": "sdpa", "torch-fa2": "flash_attention_2"}
MASK_RATE = 0.30
SEED = 42


# ---------------------------------------------------------------------------------------------
# Data and FLOPs


def id_range(vocab: int) -> tuple[int, int]:
    """The paper's randint[100, 16000), shrunk to fit small vocabularies."""
    return min(100, vocab // 10), min(16000, vocab)


def make_set(kind: str, L: int, samples: int, vocab: int) -> list[np.ndarray]:
    """`samples` documents of token ids: all of length L ("fixed") or ~Normal(L/2, L/8) ("variable")."""
    rng = np.random.default_rng(SEED + L)
    if kind == "fixed":
        lengths = np.full(samples, L)
    else:
        lengths = np.clip(rng.normal(L / 2, L / 8, samples).astype(int), 16, L)
    lo, hi = id_range(vocab)
    return [rng.integers(lo, hi, int(n)).astype(np.int32) for n in lengths]


def mlm_batch(L: int, rows: int, vocab: int, mask_id: int) -> dict[str, np.ndarray]:
    """A fixed-length MLM batch: 30% of tokens are targets; of those 80% -> [MASK], 10% random, 10% kept."""
    rng = np.random.default_rng(SEED)
    lo, hi = id_range(vocab)
    ids = rng.integers(lo, hi, (rows, L)).astype(np.int32)
    target = rng.random((rows, L)) < MASK_RATE
    u = rng.random((rows, L))
    inputs = np.where(target & (u < 0.8), mask_id, ids)
    inputs = np.where(target & (u >= 0.8) & (u < 0.9), rng.integers(lo, hi, (rows, L)), inputs).astype(np.int32)
    return {"input_ids": inputs, "labels": np.where(target, ids, -100).astype(np.int32)}


def keys_attended(n: int, window: int | None) -> int:
    """Sum over the n queries of a document of the keys each one attends to."""
    if window is None or window >= n - 1:
        return n * n
    i = np.arange(n)
    return int((np.minimum(i + window, n - 1) - np.maximum(i - window, 0) + 1).sum())


def forward_flops(cfg: dict[str, Any], n: int, head_tokens: int = 0) -> float:
    """Model FLOPs of one forward pass over one document of n tokens (multiply-add = 2).

    Matmuls of every layer (Wqkv, Wo, Wi, Wo_mlp) plus attention scores and values over the keys
    each query really attends to (the window on local layers); `head_tokens` positions also go
    through the MLM head (dense H x H, decoder H x V).
    """
    H, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    linear = 2 * n * (H * 3 * H + H * H + H * 2 * F + F * H)
    total = 0.0
    for kind in cfg["layer_types"]:
        window = None if kind == "full_attention" else cfg["local_attention"] // 2
        total += linear + 4 * H * keys_attended(n, window)
    return total + 2 * head_tokens * (H * H + H * V)


# ---------------------------------------------------------------------------------------------
# Measurement helpers (run inside the worker processes)


class PeakMemory:
    """Peak memory of the enclosed block in MB: device memory on GPU, resident set size on CPU."""

    def __init__(self, framework: str, device_kind: str):
        self.framework, self.gpu = framework, device_kind == "gpu"
        self.mb: float | None = None
        self.how = ""

    def __enter__(self):
        if self.gpu and self.framework == "torch":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif not self.gpu:
            release_free_memory()
            try:  # Linux: "5" resets the peak RSS (VmHWM) of this process
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.gpu and self.framework == "torch":
            import torch

            self.mb, self.how = torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated"
        elif self.gpu:
            import jax

            stats = jax.local_devices()[0].memory_stats() or {}
            self.mb, self.how = stats.get("peak_bytes_in_use", 0) / 2**20, "jax memory_stats peak_bytes_in_use"
        else:
            status = Path("/proc/self/status")
            if status.exists():
                kb = next(int(line.split()[1]) for line in status.read_text().splitlines()
                          if line.startswith("VmHWM"))
                self.mb, self.how = kb / 1024, "peak RSS (VmHWM, reset before the timed passes)"
            else:
                import resource

                self.mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                self.how = "peak RSS of the process (ru_maxrss)"
        return False


def release_free_memory() -> None:
    """Returns memory freed by earlier phases (model loading, compilation) to the OS (glibc), so that
    the peak RSS of the timed part counts what it keeps alive, not what the allocator cached before."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def timed(fn, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def timed_steps(run, framework: str, job: dict) -> dict:
    """Training timing: the first step (compilation) alone, then warm-up and timed steps under PeakMemory."""
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    with PeakMemory(framework, job["device_kind"]) as mem:
        times = timed(run, job["warmup"] - 1, job["repeats"])
    return {"times_s": times, "peak_mem_mb": mem.mb, "memory": mem.how, "first_step_s": first}


def device_name(framework: str) -> tuple[str, str]:
    """(kind "cpu" | "gpu", readable name)."""
    if framework == "jax":
        import jax

        d = jax.devices()[0]
        if d.platform == "gpu":
            return "gpu", d.device_kind
    else:
        import torch

        if torch.cuda.is_available():
            return "gpu", torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return "cpu", f"{cpu} ({os.cpu_count()} cores)"


def gemm_peak(framework: str, gpu: bool, dtype: str = "float32") -> float:
    """Matmul FLOP/s of a large square GEMM in `dtype` (median of 5 after a warm-up)."""
    n = 8192 if gpu else 2048
    if framework == "jax":
        import jax
        import jax.numpy as jnp

        a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.dtype(dtype))
        f = jax.jit(lambda a: jnp.dot(a, a, precision="highest"))
        run = lambda: f(a).block_until_ready()  # noqa: E731
    else:
        import torch

        a = torch.randn(n, n, dtype=getattr(torch, dtype), device="cuda" if gpu else "cpu")

        def run():
            torch.mm(a, a)
            if gpu:
                torch.cuda.synchronize()
    return 2 * n**3 / statistics.median(timed(run, 1, 5))


# ---------------------------------------------------------------------------------------------
# JAX


def jax_attention(job: dict) -> str:
    """The `gpu` attention backend (Pallas kernel for global and local layers) on GPU, else `blocked`."""
    return "gpu" if job["device_kind"] == "gpu" else "blocked"


def jax_infer(job: dict, docs: list[np.ndarray]) -> dict:
    import jax.numpy as jnp

    import bcmb_jax

    model = bcmb_jax.from_pretrained(job["model_dir"], task="base", dtype=jnp.dtype(job["dtype"]),
                                     runtime=jax_attention(job))
    L = job["length"]

    def run():
        bcmb_jax.encode(model, docs, row_len=L, batch_tokens=job["batch_rows"] * L, output="hidden")

    run()  # warm-up: compiles every shape the pass uses
    with PeakMemory("jax", job["device_kind"]) as mem:
        times = timed(run, 0, job["repeats"])
    return {"times_s": times, "peak_mem_mb": mem.mb, "memory": mem.how,
            "rows_per_call": job["batch_rows"], "attention": model.runtime.attention_backend}


def jax_train(job: dict, batch: dict[str, np.ndarray]) -> dict:
    """`train.py`'s own step (`trainer.make_train_step`): sparse MLM head, StableAdamW of the recipe."""
    import jax
    import jax.numpy as jnp

    import bcmb_jax
    from bcmb_jax import optim, trainer

    model = bcmb_jax.from_pretrained(job["model_dir"], task="mlm", dtype=jnp.dtype(job["dtype"]),
                                     remat=bool(job.get("remat")), runtime=jax_attention(job))
    graphdef, params, rest = trainer.split_model(model)
    del model
    B, T = batch["input_ids"].shape
    cap = trainer.masked_cap(T, MASK_RATE, trainer.TrainConfig.masked_cap_sigmas)
    jb = {"input_ids": batch["input_ids"], "labels": batch["labels"], "segment_ids": np.ones((B, T), np.int32),
          "position_ids": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))}
    jb = {k: jnp.asarray(v) for k, v in jb.items()}
    if job["kind"] == "fwdbwd":  # loss and gradients only: no optimizer state, no update
        from flax import nnx

        def loss(p):
            total, count, _ = trainer.mlm_loss_sum(nnx.merge(graphdef, p, rest), jb, cap)
            return total / count

        grad = jax.jit(jax.value_and_grad(loss))

        def run():
            value, _ = grad(params)
            float(value)
    else:
        tx = optim.make_optimizer(optim.OptimConfig())  # lr 3e-4, betas (0.9, 0.98), eps 1e-6, wd 1e-5
        step = jax.jit(trainer.make_train_step(graphdef, rest, tx, cap, SEED), donate_argnums=(0,))
        box = {"state": trainer.init_state(params, tx)}
        del params
        jb = {k: v[None] for k, v in jb.items()}  # one micro-batch
        lr = jnp.float32(3e-4)

        def run():
            box["state"], metrics = step(box["state"], jb, lr)
            float(metrics["loss"])

    what = "loss and gradients" if job["kind"] == "fwdbwd" else "train.py's step"
    return {**timed_steps(run, "jax", job), "masked_cap_per_row": cap,
            "loss": f"{what}: sparse MLM head, mean CE over masked tokens"}


# ---------------------------------------------------------------------------------------------
# PyTorch


def torch_model(job: dict, masked_lm: bool):
    import torch
    import transformers as tf

    cls = tf.AutoModelForMaskedLM if masked_lm else tf.AutoModel
    dtype = getattr(torch, job["dtype"])
    model = cls.from_pretrained(job["model_dir"], attn_implementation=TORCH_IMPL[job["backend"]], dtype=dtype)
    if job["device_kind"] == "gpu":
        model = model.cuda()
    impl = getattr(model.config, "_attn_implementation", TORCH_IMPL[job["backend"]])
    return model, impl


def torch_infer(job: dict, docs: list[np.ndarray]) -> dict:
    import torch

    model, impl = torch_model(job, masked_lm=False)
    model.eval()
    fwd = torch.compile(model) if job["backend"] == "torch-compile" else model
    dev = "cuda" if job["device_kind"] == "gpu" else "cpu"
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    rows = job["batch_rows"]
    batches = []
    for s in range(0, len(docs), rows):
        chunk = docs[s:s + rows]
        T = max(len(d) for d in chunk)
        ids = np.full((len(chunk), T), pad, np.int64)
        mask = np.zeros((len(chunk), T), np.int64)
        for r, d in enumerate(chunk):
            ids[r, :len(d)], mask[r, :len(d)] = d, 1
        batches.append((torch.from_numpy(ids), torch.from_numpy(mask)))

    def run():
        with torch.inference_mode():
            for ids, mask in batches:
                fwd(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state.cpu()

    run()  # warm-up (and compilation for torch-compile)
    with PeakMemory("torch", job["device_kind"]) as mem:
        times = timed(run, 0, job["repeats"])
    padded = sum(int(m.numel()) for _, m in batches)
    return {"times_s": times, "peak_mem_mb": mem.mb, "memory": mem.how, "attn_implementation": impl,
            "padded_tokens": padded, "rows_per_call": rows}


def torch_train(job: dict, batch: dict[str, np.ndarray]) -> dict:
    import optimi
    import torch

    model, impl = torch_model(job, masked_lm=True)
    model.train()
    if job.get("remat"):
        model.gradient_checkpointing_enable()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = optimi.StableAdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=3e-4,
                             betas=(0.9, 0.98), eps=1e-6, weight_decay=1e-5, decouple_lr=True)
    fwd = torch.compile(model) if job["backend"] == "torch-compile" else model
    dev = "cuda" if job["device_kind"] == "gpu" else "cpu"
    ids = torch.from_numpy(batch["input_ids"].astype(np.int64)).to(dev)
    labels = torch.from_numpy(batch["labels"].astype(np.int64)).to(dev)
    mask = torch.ones_like(ids)

    def run():
        loss = fwd(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        if job["kind"] != "fwdbwd":  # fwdbwd: loss and gradients only
            opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss)

    return {**timed_steps(run, "torch", job), "attn_implementation": impl,
            "loss": "HF ModernBertForMaskedLM(labels=...), dense logits"}


# ---------------------------------------------------------------------------------------------
# Worker: one (backend, case) per process


def worker(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    Path(job["result"]).write_text(json.dumps(run_job(job)))


def run_job(job: dict) -> dict:
    """Runs one case (a backend on one set, or training at one length); the result record."""
    framework = "jax" if job["backend"] == "jax" else "torch"
    if framework == "jax":
        import jax

        if job["dtype"] == "float32":
            jax.config.update("jax_default_matmul_precision", "highest")  # no TF32 on GPU
        versions = {"jax": jax.__version__}
    else:
        import torch
        import transformers

        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        if job.get("threads"):
            torch.set_num_threads(job["threads"])
        versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                    "torch_threads": torch.get_num_threads()}
    job["device_kind"], device = device_name(framework)
    cfg = job["cfg"]
    if job["kind"] == "infer":
        docs = make_set(job["set_kind"], job["length"], job["samples"], cfg["vocab_size"])
        res = (jax_infer if framework == "jax" else torch_infer)(job, docs)
        tokens = sum(len(d) for d in docs)
        flops = sum(forward_flops(cfg, len(d)) for d in docs) if cfg.get("layer_types") else None
    else:
        batch = mlm_batch(job["length"], job["batch_rows"], cfg["vocab_size"], cfg["mask_token_id"])
        res = (jax_train if framework == "jax" else torch_train)(job, batch)
        tokens = batch["input_ids"].size
        masked = int((batch["labels"] >= 0).sum())
        flops = 3 * job["batch_rows"] * forward_flops(cfg, job["length"], masked / job["batch_rows"])
    med = statistics.median(res["times_s"])
    peak = gemm_peak(framework, job["device_kind"] == "gpu", job["dtype"])
    return {"set": job["set"], "backend": job["backend"], "kind": job["kind"], "tokens_per_s": tokens / med,
            "peak_mem_mb": res.pop("peak_mem_mb"), "mfu": (flops / med / peak) if flops else None,
            "tokens": tokens, "batch_rows": job["batch_rows"], "repeats": job["repeats"],
            "median_s": med, **res, "model_flops": flops, "gemm_peak_flops": peak, "device": device,
            "dtype": job["dtype"], "versions": versions}


# ---------------------------------------------------------------------------------------------
# Orchestration and reports


def prepare_model(args, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """The model directory and its config dict; a random ModernBertForMaskedLM when none is given."""
    if args.model:
        d = Path(args.model)
        if not (d / "config.json").is_file():
            raise ConfigError(f"--model {d}: expected a Hugging Face model directory with a config.json")
        raw = json.loads((d / "config.json").read_text())
    else:
        import torch
        import transformers as tf

        torch.manual_seed(0)
        model = tf.ModernBertForMaskedLM(tf.ModernBertConfig(**SIZES[args.size]))
        d = tmp / f"modernbert-{args.size}"
        model.save_pretrained(d)
        raw = json.loads((d / "config.json").read_text())
    vocab = raw["vocab_size"]
    # [MASK] of the ModernBERT tokenizer when the config does not name one (random weights: any id works)
    mask_id = raw.get("mask_token_id") if raw.get("mask_token_id") is not None else min(50284, vocab - 1)
    cfg = {"model_type": raw.get("model_type"), "vocab_size": vocab, "max_len": raw.get("max_position_embeddings", 512),
           "mask_token_id": mask_id, "hidden_size": raw["hidden_size"], "intermediate_size": raw["intermediate_size"]}
    if raw.get("model_type") == "modernbert":
        from bcmb_jax.config import GLOBAL, ModelConfig

        mc = ModelConfig.from_hf_dict(raw, source=str(d / "config.json"))
        cfg.update(layer_types=list(mc.layer_types), local_attention=mc.local_attention,
                   n_global=sum(t == GLOBAL for t in mc.layer_types))
    return d, cfg


def run_case(job: dict, tmp: Path, timeout: float | None, in_process: bool = False) -> dict:
    """Runs a job in a fresh subprocess (or here, with `in_process`) and prints its line."""
    name = f"{job['backend']}-{job['set']}"
    job = {**job, "result": str(tmp / f"{name}.result.json")}
    print(f"  {job['set']:>14} {job['backend']:<14}", end=" ", flush=True)
    err, r = "", None
    if in_process:
        try:
            r = run_job(job)
        except Exception as e:  # noqa: BLE001 - a failed case is reported and the others still run
            err = f"{type(e).__name__}: {e}"
    else:
        path = tmp / f"{name}.job.json"
        path.write_text(json.dumps(job))
        try:
            p = subprocess.run([sys.executable, __file__, "--worker", str(path)], capture_output=True, text=True,
                               timeout=timeout)
            if p.returncode == 0 and Path(job["result"]).exists():
                r = json.loads(Path(job["result"]).read_text())
            else:
                err = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        except subprocess.TimeoutExpired:
            err = f"timed out after {timeout} s"
    if r is None:
        print(f"FAILED: {err}")
        return {"set": job["set"], "backend": job["backend"], "kind": job["kind"], "tokens_per_s": None,
                "peak_mem_mb": None, "mfu": None, "error": err}
    mfu = f"{100 * r['mfu']:.0f}%" if r["mfu"] is not None else "-"
    extra = f" attn={r['attn_implementation']}" if "attn_implementation" in r else ""
    print(f"{r['tokens_per_s']:10.1f} tok/s  median {r['median_s']:.2f}s  mem {r['peak_mem_mb']:.0f} MB  "
          f"MFU {mfu}{extra}", flush=True)
    return r


def write_atomic(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def markdown(results: list[dict], meta: dict) -> str:
    backends = [b for b in BACKENDS if any(r["backend"] == b for r in results)]
    torch_b = [b for b in backends if b != "jax"]
    sets = list(dict.fromkeys(r["set"] for r in results))
    get = {(r["set"], r["backend"]): r for r in results}
    head = ["set"] + [f"{b} tok/s" for b in backends] + (
        [f"jax / {b}" for b in torch_b] if "jax" in backends else []) + [f"MFU {b}" for b in backends] + [
        f"mem MB {b}" for b in backends]
    lines = [f"# Throughput ({meta['date']})", "", f"{meta['protocol']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(x, f):
        return "-" if x is None else f.format(x)

    for s in sets:
        row = [s] + [fmt(get.get((s, b), {}).get("tokens_per_s"), "{:.1f}") for b in backends]
        if "jax" in backends:
            j = get.get((s, "jax"), {}).get("tokens_per_s")
            for b in torch_b:
                t = get.get((s, b), {}).get("tokens_per_s")
                row.append(fmt(j / t if j and t else None, "{:.2f}x"))
        row += [fmt(100 * m if (m := get.get((s, b), {}).get("mfu")) is not None else None, "{:.0f}%")
                for b in backends]
        row += [fmt(get.get((s, b), {}).get("peak_mem_mb"), "{:.0f}") for b in backends]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Memory: " + meta["memory"],
              f"MFU: model FLOPs (x3 for training) / measured {meta['dtype']} GEMM peak of the same framework: "
              + ", ".join(f"{b} {p / 1e9:.0f} GFLOP/s" for b, p in meta["peaks"].items()),
              f"Device: {meta['device']}; versions: {meta['versions']}", ""]
    return "\n".join(lines)


def plots(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.get("tokens_per_s")]
    backends = [b for b in BACKENDS if any(r["backend"] == b for r in ok)]
    sets = list(dict.fromkeys(r["set"] for r in ok))
    get = {(r["set"], r["backend"]): r["tokens_per_s"] for r in ok}
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(sets) * max(1, len(backends)) / 2), 4))
    width = 0.8 / max(1, len(backends))
    for k, b in enumerate(backends):
        ax.bar([i + k * width for i in range(len(sets))], [get.get((s, b), 0) for s in sets], width, label=b)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sets))], sets, rotation=30, ha="right")
    ax.set_ylabel("real tokens / s")
    ax.legend()
    fig.tight_layout()
    buf = out / "throughput_bars.png.tmp"
    fig.savefig(buf, format="png")
    os.replace(buf, out / "throughput_bars.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for b in backends:
        for kind, style in (("fixed", "-o"), ("variable", "--s"), ("train", ":^")):
            pts = sorted((int(s.split("_")[1]), get[(s, b)]) for s in sets if s.startswith(kind) and (s, b) in get)
            if pts:
                ax.plot(*zip(*pts), style, label=f"{b} {kind}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length")
    ax.set_ylabel("real tokens / s")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = out / "throughput_vs_length.png.tmp"
    fig.savefig(buf, format="png")
    os.replace(buf, out / "throughput_vs_length.png")
    plt.close(fig)


def _ints(flag: str, text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated integers") from None


@cli.command
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a Hugging Face model directory (any encoder for the torch backends; "
                                    "ModernBERT for jax); default: random weights of --size")
    ap.add_argument("--size", default="base", choices=sorted(SIZES))
    ap.add_argument("--samples", default="8,2", help="documents per set (paper: 4096); one number, or one per length")
    ap.add_argument("--lengths", default="512,2048", help="comma-separated L; sets fixed_L and variable_L")
    ap.add_argument("--sets", default="fixed,variable", help="which of fixed,variable to run")
    ap.add_argument("--backends", default="jax,torch-sdpa", help=f"comma-separated, of {','.join(BACKENDS)}")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batch-tokens", type=int, default=16384, help="tokens per forward call (rows = this // L)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes (the median is reported)")
    ap.add_argument("--train-lengths", default="512", help="MLM training lengths; '' to skip training")
    ap.add_argument("--train-backends", default="jax,torch-sdpa")
    ap.add_argument("--train-batch-tokens", type=int, default=2048, help="tokens per training step")
    ap.add_argument("--train-steps", type=int, default=3, help="timed steps (after --train-warmup)")
    ap.add_argument("--train-warmup", type=int, default=2, help="untimed steps (the first compiles)")
    ap.add_argument("--remat", action="store_true",
                    help="training recomputes each layer in the backward pass (JAX remat=True, torch gradient "
                         "checkpointing): less memory, about a third more compute")
    ap.add_argument("--memory-lengths", default="",
                    help="lengths L of a 1 x L forward+backward case (loss and gradients, no optimizer) with "
                         "per-layer recomputation in both frameworks: the memory figure for long documents")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per case before it is abandoned")
    ap.add_argument("--in-process", action="store_true",
                    help="run every case in this process (faster start; memory peaks are then less isolated)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)

    backends = [b for b in args.backends.split(",") if b]
    train_backends = [b for b in args.train_backends.split(",") if b]
    for b in backends + train_backends:
        if b not in BACKENDS:
            ap.error(f"unknown backend {b!r}; expected one of {', '.join(BACKENDS)}")
    kinds = [k for k in args.sets.split(",") if k]
    if any(k not in ("fixed", "variable") for k in kinds):
        ap.error(f"--sets takes fixed and/or variable, got {args.sets!r}")
    lengths, samples = _ints("--lengths", args.lengths), _ints("--samples", args.samples)
    if len(samples) not in (1, len(lengths)):
        ap.error(f"--samples takes one number or one per length ({len(lengths)}), got {args.samples!r}")
    samples_of = dict(zip(lengths, samples * len(lengths) if len(samples) == 1 else samples))
    train_lengths = _ints("--train-lengths", args.train_lengths)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bcmb-bench-") as tmp_s:
        tmp = Path(tmp_s)
        model_dir, cfg = prepare_model(args, tmp)
        if cfg["model_type"] != "modernbert" and ("jax" in backends or "jax" in train_backends):
            print(f"note: {model_dir} is a {cfg['model_type']!r} model; the jax backend runs ModernBERT only")
            backends = [b for b in backends if b != "jax"]
            train_backends = [b for b in train_backends if b != "jax"]
        too_long = [L for L in lengths + train_lengths if L > cfg["max_len"]]
        if too_long:
            print(f"note: skipping lengths {too_long} (> max_position_embeddings {cfg['max_len']})")
        base = {"model_dir": str(model_dir), "cfg": cfg, "dtype": args.dtype, "threads": args.threads}
        jobs = []
        for L in lengths:
            if L <= cfg["max_len"]:
                for kind in kinds:
                    jobs += [{**base, "kind": "infer", "backend": b, "set": f"{kind}_{L}", "set_kind": kind,
                              "length": L, "samples": samples_of[L], "repeats": args.repeats,
                              "batch_rows": max(1, args.batch_tokens // L)} for b in backends]
        for L in train_lengths:
            if L <= cfg["max_len"]:
                name = f"train_{L}" + ("_remat" if args.remat else "")
                jobs += [{**base, "kind": "train", "backend": b, "set": name, "length": L,
                          "batch_rows": max(1, args.train_batch_tokens // L), "repeats": args.train_steps,
                          "warmup": max(1, args.train_warmup), "remat": args.remat} for b in train_backends]
        for L in _ints("--memory-lengths", args.memory_lengths):
            if L <= cfg["max_len"]:
                jobs += [{**base, "kind": "fwdbwd", "backend": b, "set": f"fwdbwd_{L}_remat", "length": L,
                          "batch_rows": 1, "repeats": 1, "warmup": 1, "remat": True} for b in train_backends]
        protocol = (f"model: {args.model or 'random ModernBERT-' + args.size} ({cfg['model_type']}, hidden "
                    f"{cfg['hidden_size']}), {args.dtype}; inference sets {', '.join(kinds)} at L = {lengths}, "
                    f"samples {[samples_of[L] for L in lengths]}, {args.batch_tokens} tokens per call, 1 warm-up "
                    f"pass + median of {args.repeats}; training at L = {train_lengths}, "
                    f"{args.train_batch_tokens} tokens per step, {args.train_warmup} warm-up + median of "
                    f"{args.train_steps} steps, 30% masking, StableAdamW{', remat' if args.remat else ''}; "
                    + (f"1 x L forward+backward with recomputation (no optimizer) at L = {args.memory_lengths}; "
                       if args.memory_lengths else "")
                    + f"backends {backends} / train {train_backends}")
        print("protocol:", protocol, flush=True)
        results = [run_case(job, tmp, args.timeout, args.in_process) for job in jobs]
    ok = [r for r in results if "error" not in r]
    meta = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "dtype": args.dtype,
            "protocol": protocol,
            "memory": "; ".join(sorted({r["memory"] for r in ok})) or "-",
            "peaks": {r["backend"]: r["gemm_peak_flops"] for r in ok},
            "device": ok[0]["device"] if ok else "-",
            "versions": {k: v for r in ok for k, v in r["versions"].items()}}
    for r in results:
        r.setdefault("date", meta["date"])
    write_atomic(out / "results.json", json.dumps(results, indent=1))
    write_atomic(out / "results.md", markdown(results, meta))
    if ok:
        plots(results, out)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'} and plots")
    print(markdown(results, meta))
    return 0


if __name__ == "__main__":
    cli.run(main)
