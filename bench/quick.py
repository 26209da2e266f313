"""Quick speed check: JAX forward vs Hugging Face torch (sdpa) on the same random base-size weights.

    python bench/quick.py [--shapes 8x512,1x8192] [--repeats 3] [--size base|tiny]

Prints real tokens/s per backend and shape, and the JAX/torch ratio. Warm-up (compilation) is
excluded; each figure is the median of `--repeats` timed forward passes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed(fn, repeats: int) -> float:
    fn()  # warm-up / compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="8x512,1x8192", help="batch x length pairs, comma separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", default="base", choices=["base", "tiny"])
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    args = ap.parse_args(argv)

    import jax
    import numpy as np
    import torch
    import transformers as tf

    import bcmb_jax

    torch.set_num_threads(args.threads)
    kw = {} if args.size == "base" else dict(hidden_size=128, intermediate_size=192, num_hidden_layers=4,
                                              num_attention_heads=2)
    cfg = tf.ModernBertConfig(**kw)
    torch.manual_seed(0)
    hf = tf.ModernBertModel(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = bcmb_jax.from_pretrained(d)
    print(f"model: {args.size} ({sum(p.numel() for p in hf.parameters()) / 1e6:.1f}M params), "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), fp32")
    print(f"{'shape':>8} {'jax tok/s':>10} {'torch tok/s':>12} {'ratio':>6}")
    for shape in args.shapes.split(","):
        B, T = map(int, shape.split("x"))
        ids = np.random.default_rng(0).integers(100, 16000, size=(B, T))
        mask = np.ones_like(ids)

        def run_jax(ids=ids, mask=mask):
            model(ids, attention_mask=mask).last_hidden_state.block_until_ready()

        def run_torch(ids=ids, mask=mask):
            with torch.inference_mode():
                hf(torch.tensor(ids), attention_mask=torch.tensor(mask))

        tj, tt = timed(run_jax, args.repeats), timed(run_torch, args.repeats)
        print(f"{shape:>8} {B * T / tj:>10.0f} {B * T / tt:>12.0f} {tt / tj:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
