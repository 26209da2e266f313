"""Result files of fine-tuning runs and the tables made from them (Table 2 beside the paper's, Table 6).

`<results_dir>/<name>/<backend>/<task>.json` holds every seed's metrics, the hyper-parameters used and where
each came from; `<results_dir>/table.md` summarizes every result file under `<results_dir>`, with the
paper's Table 2 row under each model the paper reports (by name, or the `paper_row` a run recorded).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bcmb_jax.atomic import write_text
from bcmb_jax.evaluation import metrics, paper


def default_name(model_path: str | Path) -> str:
    p = Path(model_path).resolve()
    name = f"{p.parent.parent.name}-step{p.name}" if p.name.isdigit() and p.parent.name == "checkpoints" else p.name
    return safe_name(name)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "model"


def result_paths(results_dir: str | Path, name: str, backend: str, task: str) -> tuple[Path, Path]:
    """(<results_dir>/<name>/<backend>/<task>.json, the folder of its per-seed predictions)."""
    base = Path(results_dir) / name / backend
    return base / f"{task}.json", base / task


def summary(per_seed: dict[str, dict]) -> dict[str, dict[str, float]]:
    """{"median"|"mean"|"min"|"max": {metric: value}} over the seeds' test metrics."""
    s = metrics.summarize({k: v["test"] for k, v in per_seed.items()})
    return {stat: {m: s[m][stat] for m in s} for stat in ("median", "mean", "min", "max")}


def write_result(path: Path, pred_dir: Path, header: dict, per_seed: dict[str, dict],
                 predictions: dict[str, list[dict]]) -> dict:
    """Writes the task's JSON (and the new seeds' predictions), atomically; returns the JSON object."""
    for seed, records in predictions.items():
        write_text(pred_dir / f"seed{seed}" / "test_predictions.jsonl",
                     "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    obj = {**header, "seeds": per_seed, **summary(per_seed)}
    write_text(path, json.dumps(obj, indent=1) + "\n")
    return obj


def read_results(results_dir: str | Path) -> list[dict]:
    """Every result object under `<results_dir>/<name>/<backend>/<task>.json` (others are skipped), each
    with "_name" and "_backend" from its path."""
    out = []
    for path in sorted(Path(results_dir).glob("*/*/*.json")):
        try:
            obj = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError, UnicodeDecodeError):
            continue
        if isinstance(obj, dict) and {"task", "backend", "seeds"} <= set(obj):
            out.append({**obj, "_name": path.parent.parent.name, "_backend": path.parent.name})
    return out


def median_score(obj: dict) -> float | None:
    """The median main test metric x 100 of a result object."""
    med = obj.get("median", {}).get(obj.get("main_metric", "f1"))
    return None if med is None else 100 * med


def _cell(obj: dict) -> str:
    main = obj.get("main_metric", "f1")
    med, lo, hi = (obj.get(s, {}).get(main) for s in ("median", "min", "max"))
    if med is None:
        return ""
    return f"{100 * med:.1f} ({100 * lo:.1f}–{100 * hi:.1f})"


def write_table(results_dir: str | Path) -> Path:
    """Regenerates <results_dir>/table.md: rows = models x backends, columns = tasks, cells = median main
    metric x 100 (min–max over seeds); under a model the paper reports, its Table 2 row and our difference."""
    root = Path(results_dir)
    rows: dict[tuple[str, str], dict[str, dict]] = {}
    paper_rows: dict[str, str] = {}
    for obj in read_results(root):
        rows.setdefault((obj["_name"], obj["_backend"]), {})[obj["task"]] = obj
        row = (obj.get("config") or {}).get("paper_row") or paper.table2_row(obj["_name"])
        if row in paper.TABLE2:
            paper_rows[obj["_name"]] = row
    found = {t for cells in rows.values() for t in cells}
    cols = [t for t in paper.TASKS if t in found] + sorted(found - set(paper.TASKS))
    lines = ["# Fine-tuning results", "",
             "Median over seeds of the main test metric x 100 (min–max): entity-level micro F1 (seqeval) for NER, "
             "weighted F1 (sklearn) for classification. Rows marked *paper* are the paper's Table 2 (median of "
             "5 seeds); *Δ* is ours minus the paper's.", "",
             "| model | backend | seeds | " + " | ".join(cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for name in sorted({n for n, _ in rows}):
        for (n, backend), cells in sorted(rows.items()):
            if n != name:
                continue
            seeds = "/".join(str(x) for x in sorted({len(o["seeds"]) for o in cells.values()}))
            lines.append(f"| {name} | {backend} | {seeds} | "
                         + " | ".join(_cell(cells[c]) if c in cells else "" for c in cols) + " |")
            if name in paper_rows:
                ref = dict(zip(paper.TASKS, paper.TABLE2[paper_rows[name]]))
                diff = [f"{median_score(cells[c]) - ref[c]:+.1f}" if c in cells and c in ref else "" for c in cols]
                lines.append(f"| *Δ vs paper* | {backend} | | " + " | ".join(diff) + " |")
        if name in paper_rows:
            ref = dict(zip(paper.TASKS, paper.TABLE2[paper_rows[name]]))
            lines.append(f"| *paper: {paper_rows[name]}* | | 5 | "
                         + " | ".join(f"{ref[c]:.1f}" if c in ref else "" for c in cols) + " |")
    out = root / "table.md"
    write_text(out, "\n".join(lines) + "\n")
    return out


def table6(rows: dict[str, dict]) -> str:
    """Markdown Table 6 of `{task: {"classes", "examples": {split: n}, "avg_tokens": {split: x}}}`, each task
    followed by the paper's row when the paper has one."""
    head = ("| dataset | classes / entities | train | val | test | avg tok train | val | test |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [head]
    for task, r in rows.items():
        n, avg = r["examples"], r["avg_tokens"]
        lines.append(f"| {task} (ours) | {r['classes']} | " + " | ".join(f"{n[s]:,}" for s in ("train", "val", "test"))
                     + " | " + " | ".join(f"{avg[s]:,.1f}" for s in ("train", "val", "test")) + " |")
        if task in paper.TABLE6:
            c, pn, pavg = paper.TABLE6[task]
            lines.append(f"| {task} (paper) | {c} | " + " | ".join(f"{x:,}" for x in pn) + " | "
                         + " | ".join(f"{x:,.1f}" for x in pavg) + " |")
    return "\n".join(lines) + "\n"
