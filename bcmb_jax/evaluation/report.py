"""The report of a `reproduce.py` run: timings, held-out MLM loss, loss curves, Table 2 and Table 3 beside
the paper's numbers, the fine-tuning hyper-parameters used. Reads only what the stages wrote."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from bcmb_jax.atomic import atomic, write_text
from bcmb_jax.evaluation import paper
from bcmb_jax.evaluation.results import median_score, read_results
from bcmb_jax.modeling.heads import IGNORE


def heldout_texts(source: str, n: int) -> list[str]:
    """n held-out documents: `demo` = notes the embedded corpus never holds, else the lines of a file."""
    if source == "demo":
        from bcmb_jax.data import demo_corpus

        return [text for _, text in demo_corpus.generate_notes(n, seed=12345)]
    lines = [line.strip() for line in Path(source).read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[-n:]


def heldout_mlm_loss(model_dir: Path, texts: list[str]) -> float:
    """`mlm_loss` of an HF directory, loaded with transformers."""
    import transformers as tf

    return mlm_loss(tf.AutoTokenizer.from_pretrained(model_dir),
                    tf.AutoModelForMaskedLM.from_pretrained(model_dir).eval(), texts)


def mlm_loss(tok, model, texts: list[str], rate: float = 0.15, max_length: int = 256) -> float:
    """transformers' own MLM loss of `model` on `texts`, `rate` of the non-special tokens replaced by [MASK]
    (a fixed seed, so every model sees the same masks)."""
    import torch

    enc = tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    gen = torch.Generator().manual_seed(0)
    special = torch.isin(enc["input_ids"], torch.tensor(tok.all_special_ids))
    pick = (torch.rand(enc["input_ids"].shape, generator=gen) < rate) & (enc["attention_mask"] == 1) & ~special
    labels = torch.where(pick, enc["input_ids"], IGNORE)
    ids = torch.where(pick, tok.mask_token_id, enc["input_ids"])
    with torch.no_grad():
        return float(model(input_ids=ids, attention_mask=enc["attention_mask"], labels=labels).loss)


def loss_curves(out: Path, png: Path) -> list[str]:
    """Plots the training loss of phase 1 and phase 2 (metrics.jsonl) against the step; returns notes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    notes = []
    offset = 0
    for phase in ("phase1", "phase2"):
        path = out / phase / "metrics.jsonl"
        if not path.is_file():
            notes.append(f"{phase}: no metrics.jsonl")
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "loss" in r and "step" in r]
        if not rows:
            continue
        ax.plot([offset + r["step"] for r in rows], [r["loss"] for r in rows], label=phase)
        notes.append(f"{phase}: training MLM loss {rows[0]['loss']:.3f} (step {rows[0]['step']}) -> "
                     f"{rows[-1]['loss']:.3f} (step {rows[-1]['step']})")
        offset += rows[-1]["step"]
    ax.set_xlabel("optimizer step (phase 2 after phase 1)")
    ax.set_ylabel("training MLM loss")
    ax.legend()
    fig.tight_layout()
    with atomic(png, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return notes


def table2(results_dir: Path, row: str) -> tuple[list[str], dict]:
    """Markdown lines of our medians per task and backend beside the paper's `row`, and the numbers."""
    objs = read_results(results_dir)
    tasks = [t for t in paper.TASKS if any(o["task"] == t for o in objs)]
    tasks += sorted({o["task"] for o in objs} - set(tasks))
    ref = dict(zip(paper.TASKS, paper.TABLE2.get(row, ())))
    numbers: dict[str, dict[str, float | None]] = {}
    lines = ["| | " + " | ".join(paper.TASK_TITLES.get(t, t) for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
    for backend in sorted({o["_backend"] for o in objs}):
        cells = {o["task"]: o for o in objs if o["_backend"] == backend}
        numbers[backend] = {t: median_score(cells[t]) if t in cells else None for t in tasks}
        lines.append(f"| ours ({backend}) | " + " | ".join(
            "" if numbers[backend][t] is None else f"{numbers[backend][t]:.1f}" for t in tasks) + " |")
    if ref:
        lines.append(f"| paper: {row} | " + " | ".join(f"{ref[t]:.1f}" if t in ref else "" for t in tasks) + " |")
    return lines, numbers


def hyperparameters(results_dir: Path) -> list[str]:
    """One line per task and backend: the protocol values used and where each came from."""
    keys = ("lr", "weight_decay", "epochs", "batch_size", "max_length", "seeds")
    lines = ["| task | backend | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for o in read_results(results_dir):
        c, s = o.get("config", {}), o.get("sources", {})

        vals = {k: ",".join(map(str, c.get(k, []))) if k == "seeds" else c.get(k) for k in keys}
        lines.append(f"| {o['task']} | {o['_backend']} | "
                     + " | ".join(f"{vals[k]} ({s.get(k, '?')})" for k in keys) + " |")
    return lines


def table3(bench_dir: Path, size: str) -> tuple[list[str], set[str]]:
    """Markdown lines of the throughput sets (thousand real tokens/s) per backend, the paper's beside."""
    path = bench_dir / "results.json"
    if not path.is_file():
        return ["(no throughput results)"], set()
    rows = [r for r in json.loads(path.read_text()) if "error" not in r]
    sets = sorted({r["set"] for r in rows}, key=lambda s: (s.split("_")[0] == "train", s))
    lines = ["| backend | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    backends = sorted({r["backend"] for r in rows})
    for b in backends:
        got = {r["set"]: r["tokens_per_s"] / 1000 for r in rows if r["backend"] == b}
        lines.append(f"| {b} | " + " | ".join(f"{got[s]:.2f}" if s in got else "" for s in sets) + " |")
    key = next(k for k in paper.TABLE3 if size in k.split("/")[0].lower())
    lines += ["", f"The paper (one A100, kTok/s), {key}: "
              + ", ".join(f"{n} {v}" for n, v in zip(paper.TABLE3_SETS, paper.TABLE3[key]))]
    return lines, set(backends)


def write_report(out: Path, size: str, row: str, timings: dict, notes: list[str], heldout: str,
                 heldout_docs: int) -> Path:
    """Writes OUT/report/report.md (+ loss_curves.png) and OUT/report/summary.json."""
    rep = out / "report"
    texts = heldout_texts(heldout, heldout_docs)
    losses = {name: heldout_mlm_loss(d, texts) for name, d in
              (("initial", out / "init_hf"), ("phase 1", out / "phase1" / "hf"), ("phase 2", out / "phase2" / "hf"))
              if (d / "config.json").is_file()}
    curve_notes = loss_curves(out, rep / "loss_curves.png")
    t2, numbers = table2(out / "results", row)
    t3, frameworks = table3(out / "throughput", size)
    total = sum(t.get("seconds", 0.0) for t in timings.values())
    lines = [f"# Reproduction report ({size})", "",
             f"Written {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}.", "",
             "## Wall time per stage", "", "| stage | seconds | status |", "|---|---|---|"]
    lines += [f"| {k} | {v.get('seconds', 0):.1f} | {v.get('status', '')} |" for k, v in timings.items()]
    lines += [f"| total | {total:.1f} | |", "",
              "## Held-out MLM loss", "",
              f"transformers' loss on {len(texts)} held-out documents ({heldout}), 15% of the tokens masked "
              "with a fixed seed:", ""]
    lines += [f"- {k}: {v:.4f}" for k, v in losses.items()]
    lines += ["", "![loss curves](loss_curves.png)", ""] + [f"- {n}" for n in curve_notes]
    lines += ["", "## Table 2: fine-tuning (median test score x 100 over seeds)", ""] + t2
    lines += [""] + [f"- {n}" for n in notes]
    lines += ["", "Hyper-parameters used (and where each came from):", ""] + hyperparameters(out / "results")
    lines += ["", "## Table 3: throughput (thousand real tokens / s on this machine)", ""] + t3
    lines += ["", "Plots: ../throughput/throughput_bars.png, ../throughput/throughput_vs_length.png", ""]
    write_text(rep / "report.md", "\n".join(lines))
    summary = {"heldout_mlm_loss": losses, "table2": numbers, "throughput_frameworks": sorted(frameworks),
               "skipped": notes, "timings": timings}
    write_text(rep / "summary.json", json.dumps(summary, indent=1) + "\n")
    return rep / "report.md"
