"""The report: a markdown table (tokens/s, ratios, MFU, packing, memory per backend) and two plots."""

from __future__ import annotations

from pathlib import Path

BENCH_BACKENDS = ("jax", "torch-sdpa", "torch-eager", "torch-compile", "torch-fa2")


def write_atomic(path: Path, data: str | bytes) -> None:
    """Writes `path` through a temporary file and a rename (`bcmb_jax.atomic`): never half written."""
    from bcmb_jax.atomic import atomic

    with atomic(path, overwrite=True) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def _fmt(x, f: str) -> str:
    return "-" if x is None else f.format(x)


def table(results: list[dict]) -> list[str]:
    """Markdown table lines: one row per set, columns per backend."""
    backends = [b for b in BENCH_BACKENDS if any(r["backend"] == b for r in results)]
    torch_b = [b for b in backends if b != "jax"]
    sets = list(dict.fromkeys(r["set"] for r in results))
    get = {(r["set"], r["backend"]): r for r in results}
    packing = any(r.get("packing_efficiency") is not None for r in results)
    rows = any(r.get("kind") != "infer" for r in results)
    head = (["set"] + [f"{b} tok/s" for b in backends] + ([f"jax / {b}" for b in torch_b] if "jax" in backends else [])
            + [f"MFU {b}" for b in backends] + ([f"packing {b}" for b in backends] if packing else [])
            + ([f"rows {b}" for b in backends] if rows else []) + [f"mem MB {b}" for b in backends])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in sets:
        val = lambda b, k, s=s: get.get((s, b), {}).get(k)  # noqa: E731
        row = [s] + [_fmt(val(b, "tokens_per_s"), "{:.1f}") for b in backends]
        if "jax" in backends:
            row += [ratio(get.get((s, "jax")), get.get((s, b))) for b in torch_b]
        row += [_fmt(100 * m if (m := val(b, "mfu")) is not None else None, "{:.0f}%") for b in backends]
        if packing:
            row += [_fmt(val(b, "packing_efficiency"), "{:.3f}") for b in backends]
        if rows:
            row += [_fmt(val(b, "batch_rows") if val(b, "kind") != "infer" else None, "{}") for b in backends]
        row += [_fmt(val(b, "peak_mem_mb"), "{:.0f}") for b in backends]
        lines.append("| " + " | ".join(row) + " |")
    failed = [r for r in results if r.get("error")]
    lines += [""] + [f"- {r['set']} {r['backend']}: failed: {r['error']}" for r in failed]
    return lines


def ratio(jax: dict | None, other: dict | None) -> str:
    """jax / other in tokens/s (medians), with the range over the repeats timed in turns ("1.21x (1.15-1.30)")."""
    if not (jax and other and jax.get("tokens_per_s") and other.get("tokens_per_s")):
        return "-"
    text = f"{jax['tokens_per_s'] / other['tokens_per_s']:.2f}x"
    a, b = jax.get("times_s"), other.get("times_s")
    if a and b and len(a) == len(b) and len(a) > 1:  # interleaved: repeat i of each ran back to back
        pairs = [(jax["tokens"] / x) / (other["tokens"] / y) for x, y in zip(a, b)]
        text += f" ({min(pairs):.2f}-{max(pairs):.2f})"
    return text


def markdown(results: list[dict], meta: dict) -> str:
    """The whole results.md: protocol, table, how memory and MFU were measured, device and versions."""
    lines = [f"# Throughput ({meta['date']})", "", f"{meta['protocol']}", "", *table(results), "",
             "Memory: " + meta["memory"],
             f"MFU: model FLOPs (x3 for training) / measured {meta['dtype']} GEMM peak of the same framework: "
             + ", ".join(f"{b} {p / 1e9:.0f} GFLOP/s" for b, p in meta["peaks"].items()),
             "Packing: real tokens / tokens computed (JAX: packed rows; torch: batches padded to their longest)",
             "Ratios: medians; in brackets the range of the per-repeat ratios (the frameworks' repeats of a set "
             "alternate: jax, torch, jax, torch, ...)",
             *([f"Workers: GLIBC_TUNABLES={meta['malloc']}"] if meta.get("malloc") else []),
             f"Device: {meta['device']}; versions: {meta['versions']}", ""]
    return "\n".join(lines)


def meta_of(results: list[dict], protocol: str, dtype: str, date: str) -> dict:
    ok = [r for r in results if not r.get("error")]
    return {"date": date, "dtype": dtype, "protocol": protocol,
            "memory": "; ".join(sorted({r["memory"] for r in ok})) or "-",
            "peaks": {r["backend"]: r["gemm_peak_flops"] for r in ok},
            "device": ok[0]["device"] if ok else "-",
            "malloc": "; ".join(sorted({r.get("malloc", "") for r in ok} - {""})),
            "versions": {k: v for r in ok for k, v in r["versions"].items()}}


def plots(results: list[dict], out: Path) -> None:
    """throughput_bars.png (tokens/s per set and backend) and throughput_vs_length.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.get("tokens_per_s")]
    backends = [b for b in BENCH_BACKENDS if any(r["backend"] == b for r in ok)]
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
    _save(fig, out / "throughput_bars.png")
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
    _save(fig, out / "throughput_vs_length.png")


def _save(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())
