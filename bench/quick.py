"""Quick speed check: a preset of `bench/throughput.py` (JAX forward vs torch sdpa, fixed sets, in one process).

    python bench/quick.py [--shapes 8x512,1x8192] [--repeats 3] [--size base|mini] [--out bench/out/quick]

Each shape RxL is the `fixed_L` set of R documents, one forward call; no training. Prints tokens/s
per backend and shape and the JAX/torch ratio (the table of `throughput.py`).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bcmb_jax import cli
from bench import throughput  # noqa: E402


def argv_for(shapes: str, repeats: int, size: str, out: str) -> list[str]:
    """The `throughput.py` arguments of the preset."""
    pairs = [tuple(int(x) for x in s.split("x")) for s in shapes.split(",") if s]
    if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
        raise ValueError(shapes)
    lengths, samples = [str(L) for _, L in pairs], [str(R) for R, _ in pairs]
    batch = max(R * L for R, L in pairs)
    return ["--size", size, "--sets", "fixed", "--lengths", ",".join(lengths), "--samples", ",".join(samples),
            "--batch-tokens", str(batch), "--repeats", str(repeats), "--train-lengths", "", "--in-process",
            "--out", out]


@cli.command
def main(argv=None) -> int:
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--shapes", default="8x512,1x8192", help="rows x length pairs, comma separated")
    ap.add_argument("--repeats", type=cli.count(), default=3)
    ap.add_argument("--size", default="base", choices=sorted(throughput.SIZES))
    ap.add_argument("--out", default=str(throughput.ROOT / "bench" / "out" / "quick"))
    args = ap.parse_args(argv)
    try:
        preset = argv_for(args.shapes, args.repeats, args.size, args.out)
    except ValueError:
        ap.error(f"--shapes takes ROWSxLENGTH pairs of positive integers such as 8x512,1x8192, got {args.shapes!r}")
    return throughput.main(preset)


if __name__ == "__main__":
    cli.run(main)
