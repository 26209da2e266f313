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
(non-pad) tokens per second. JAX packs documents into rows (`bcmb_jax.encode`: rows grow past L
until 97% of their tokens are real, with the blocked kernels on CPU and the gpu kernel on a GPU); torch
pads every batch on the right to its longest sample, as a transformers data collator does. Packing
efficiency = real tokens / tokens computed.

Training: MLM steps of StableAdamW (bcmb_jax.training.optim vs torch-optimi) on the same batch of
`fixed_L` samples with 30% masking (80/10/10). JAX runs `train.py`'s step (the head on the
masked positions only); torch runs `ModernBertForMaskedLM(labels=...)` as shipped (dense logits).

Every case runs in its own subprocess, so memory is per case: peak resident set size on CPU
(VmHWM, reset at the start of the timed part) and peak device memory on GPU. MFU = model FLOPs
(matmuls plus attention over the keys each token really attends to; x3 for training) per second
over the matmul peak of the same framework and dtype, measured in the same process with a large GEMM.

Writes results.json, results.md and two PNG plots to `--out`. Modules: `measure` (timer, memory,
GEMM peak), `flops`, `workload` (sets, MLM batch), `jax_cases`, `torch_cases`, `runner`
(subprocesses), `report` (table, plots); `quick.py` and `gpu.py` are presets of this command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bcmb_jax import cli  # noqa: E402 - the checkout's package, via the line above
from bcmb_jax.errors import ConfigError  # noqa: E402
from bench import report, runner  # noqa: E402
from bench.report import BENCH_BACKENDS  # noqa: E402

SIZES = {  # transformers ModernBertConfig overrides; base/large are the released shapes
    "mini": dict(hidden_size=256, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4),
    "base": dict(),
    "large": dict(hidden_size=1024, intermediate_size=2624, num_hidden_layers=28, num_attention_heads=16),
}


def parser() -> argparse.ArgumentParser:
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--model", help="a Hugging Face model directory (any encoder for the torch backends; "
                                    "ModernBERT for jax); default: random weights of --size")
    ap.add_argument("--size", default="base", choices=sorted(SIZES))
    ap.add_argument("--samples", default="8,2", help="documents per set (paper: 8192); one number, or one per length")
    ap.add_argument("--lengths", default="512,2048", help="comma-separated L; sets fixed_L and variable_L")
    ap.add_argument("--sets", default="fixed,variable", help="which of fixed,variable to run")
    ap.add_argument("--backends", default="jax,torch-sdpa", help=f"comma-separated, of {','.join(BENCH_BACKENDS)}")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batch-tokens", type=cli.count(), default=16384,
                    help="tokens per forward call (rows = this // L)")
    ap.add_argument("--repeats", type=cli.count(), default=3, help="timed passes (the median is reported)")
    ap.add_argument("--train-lengths", default="512", help="MLM training lengths; '' to skip training")
    ap.add_argument("--train-backends", default="jax,torch-sdpa")
    ap.add_argument("--train-batch-tokens", type=cli.count(0), default=2048,
                    help="tokens per training step; 0: as many rows as fit in memory (at most --train-max-rows)")
    ap.add_argument("--train-max-rows", type=cli.count(), default=256,
                    help="bound of the rows found with --train-batch-tokens 0")
    ap.add_argument("--train-steps", type=cli.count(), default=3, help="timed steps (after --train-warmup)")
    ap.add_argument("--train-warmup", type=cli.count(0), default=2, help="untimed steps (the first compiles)")
    ap.add_argument("--remat", action="store_true",
                    help="training recomputes each layer in the backward pass (JAX remat=True, torch gradient "
                         "checkpointing): less memory, about a third more compute")
    ap.add_argument("--memory-lengths", default="",
                    help="lengths L of a 1 x L forward+backward case (loss and gradients, no optimizer) with "
                         "per-layer recomputation in both frameworks: the memory figure for long documents")
    ap.add_argument("--threads", type=cli.count(0), default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--timeout", type=cli.seconds, default=None, help="seconds per case before it is abandoned")
    ap.add_argument("--in-process", action="store_true",
                    help="run every case in this process (faster start; memory peaks are then less isolated)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap


def check(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Rejects unknown backends and sets, and --samples that match no --lengths (argparse error, exit 2)."""
    for b in args.backends.split(",") + args.train_backends.split(","):
        if b and b not in BENCH_BACKENDS:
            ap.error(f"unknown backend {b!r}; expected one of {', '.join(BENCH_BACKENDS)}")
    if any(k not in ("fixed", "variable") for k in args.sets.split(",") if k):
        ap.error(f"--sets takes fixed and/or variable, got {args.sets!r}")
    lengths = cli.counts("--lengths", args.lengths)
    if len(cli.counts("--samples", args.samples)) not in (1, len(lengths)):
        ap.error(f"--samples takes one number or one per length ({len(lengths)}), got {args.samples!r}")
    cli.counts("--train-lengths", args.train_lengths), cli.counts("--memory-lengths", args.memory_lengths)


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
        from bcmb_jax.modeling.config import GLOBAL, ModelConfig

        mc = ModelConfig.from_hf_dict(raw, source=str(d / "config.json"))
        cfg.update(layer_types=list(mc.layer_types), local_attention=mc.local_attention,
                   n_global=sum(t == GLOBAL for t in mc.layer_types))
    return d, cfg


def make_jobs(args, model_dir: Path, cfg: dict) -> tuple[list[dict], str]:
    """The cases of a run (inference sets, training lengths, memory cases) and its protocol line."""
    backends = [b for b in args.backends.split(",") if b]
    train_backends = [b for b in args.train_backends.split(",") if b]
    if cfg["model_type"] != "modernbert" and "jax" in backends + train_backends:
        print(f"note: {model_dir} is a {cfg['model_type']!r} model; the jax backend runs ModernBERT only")
        backends = [b for b in backends if b != "jax"]
        train_backends = [b for b in train_backends if b != "jax"]
    kinds = [k for k in args.sets.split(",") if k]
    lengths, train_lengths = cli.counts("--lengths", args.lengths), cli.counts("--train-lengths", args.train_lengths)
    memory_lengths, samples = cli.counts("--memory-lengths", args.memory_lengths), cli.counts("--samples", args.samples)
    samples_of = dict(zip(lengths, samples * len(lengths) if len(samples) == 1 else samples))
    too_long = [L for L in lengths + train_lengths + memory_lengths if L > cfg["max_len"]]
    if too_long:
        print(f"note: skipping lengths {too_long} (> max_position_embeddings {cfg['max_len']})")
    fits = lambda L: L <= cfg["max_len"]  # noqa: E731
    base = {"model_dir": str(model_dir), "cfg": cfg, "dtype": args.dtype, "threads": args.threads}
    jobs = [{**base, "kind": "infer", "backend": b, "set": f"{kind}_{L}", "set_kind": kind, "length": L,
             "samples": samples_of[L], "repeats": args.repeats, "batch_rows": max(1, args.batch_tokens // L)}
            for L in lengths if fits(L) for kind in kinds for b in backends]
    rows = lambda L: max(1, args.train_batch_tokens // L) if args.train_batch_tokens else 0  # noqa: E731
    jobs += [{**base, "kind": "train", "backend": b, "set": f"train_{L}" + ("_remat" if args.remat else ""),
              "length": L, "batch_rows": rows(L), "max_rows": args.train_max_rows, "repeats": args.train_steps,
              "warmup": max(1, args.train_warmup), "remat": args.remat}
             for L in train_lengths if fits(L) for b in train_backends]
    jobs += [{**base, "kind": "fwdbwd", "backend": b, "set": f"fwdbwd_{L}_remat", "length": L, "batch_rows": 1,
              "max_rows": 1, "repeats": 1, "warmup": 1, "remat": True}
             for L in memory_lengths if fits(L) for b in train_backends]
    step = f"{args.train_batch_tokens} tokens" if args.train_batch_tokens else "as many rows as fit"
    protocol = (f"model: {args.model or 'random ModernBERT-' + args.size} ({cfg['model_type']}, hidden "
                f"{cfg['hidden_size']}), {args.dtype}; inference sets {', '.join(kinds)} at L = {lengths}, "
                f"samples {[samples_of[L] for L in lengths]}, {args.batch_tokens} tokens per call, 1 warm-up "
                f"pass + median of {args.repeats}; training at L = {train_lengths}, {step} per step, "
                f"{args.train_warmup} warm-up + median of {args.train_steps} steps, 30% masking, "
                f"StableAdamW{', remat' if args.remat else ''}; "
                + (f"1 x L forward+backward with recomputation (no optimizer) at L = {memory_lengths}; "
                   if memory_lengths else "")
                + f"backends {backends} / train {train_backends}")
    return jobs, protocol


def by_set(jobs: list[dict]) -> list[list[dict]]:
    """The jobs grouped by set, in order (one job per backend in each group)."""
    groups: dict[str, list[dict]] = {}
    for job in jobs:
        groups.setdefault(job["set"], []).append(job)
    return list(groups.values())


def write_results(results: list[dict], out: Path, protocol: str, dtype: str) -> str:
    """results.json, results.md and the plots in `out`; returns the markdown."""
    meta = report.meta_of(results, protocol, dtype, datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    for r in results:
        r.setdefault("date", meta["date"])
    md = report.markdown(results, meta)
    report.write_atomic(out / "results.json", json.dumps(results, indent=1))
    report.write_atomic(out / "results.md", md)
    if any(r.get("tokens_per_s") for r in results):
        report.plots(results, out)
    return md


@cli.command
def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.worker:
        runner.worker(args.worker)
        return 0
    check(ap, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bcmb-bench-") as tmp_s:
        tmp = Path(tmp_s)
        model_dir, cfg = prepare_model(args, tmp)
        jobs, protocol = make_jobs(args, model_dir, cfg)
        print("protocol:", protocol, flush=True)
        results = []
        for group in by_set(jobs):  # the backends of one set time their repeats in turns (jax, torch, ...)
            if len(group) > 1 and not args.in_process:
                records = runner.run_interleaved(group, tmp, args.timeout)
            else:
                records = [r for job in group for r in runner.run_cases([job], tmp, args.timeout, args.in_process)]
            for r in records:
                runner.print_record(r)
            results += records
    md = write_results(results, out, protocol, args.dtype)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'} and plots")
    print(md)
    return 0


if __name__ == "__main__":
    cli.run(main)
