"""Result files of fine-tuning runs and the tables made from them (Table 2 beside the paper's, Table 6).

`<results_dir>/<name>/<backend>/<task>.json` holds every seed's metrics, the hyper-parameters used and where
each came from; `<results_dir>/table.md` summarizes every result file under `<results_dir>`, with the
paper's Table 2 row under each model the paper reports (by name, or the `paper_row` a run recorded).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from bcmb_jax.atomic import write_text
from bcmb_jax.errors import ConfigError
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
                 predictions: dict[str, list[dict]], seeds_asked: list[int] | None = None) -> dict:
    """Writes the task's JSON (and the new seeds' predictions), atomically; returns the JSON object.

    `seeds_asked` (default: the seeds present) says which seeds the run was asked for; the object records
    them and whether every one is there (`complete`)."""
    for seed, records in predictions.items():
        write_text(pred_dir / f"seed{seed}" / "test_predictions.jsonl",
                     "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    asked = sorted(seeds_asked if seeds_asked is not None else (int(s) for s in per_seed))
    done = sorted(int(s) for s in per_seed)
    obj = {**header, "seeds_asked": asked, "seeds_done": done, "complete": set(asked) <= set(done),
           "seeds": per_seed, **summary(per_seed)}
    write_text(path, json.dumps(obj, indent=1) + "\n")
    return obj


def settings_id(settings: dict) -> str:
    """A short fingerprint of the settings a result was computed with (the seeds left out)."""
    text = json.dumps({k: v for k, v in settings.items() if k != "seeds"}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _differences(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if k != "seeds" and old.get(k) != new.get(k))
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4]) + (" ..." if len(keys) > 4 else "")


class ResultRun:
    """One task's result file, written seed by seed, that an interruption never turns into a wrong one.

    - No result yet: seeds are added to `<task>.json` as they finish, marked incomplete until all are in.
    - A result with the same settings: its seeds are kept and only the missing ones run (`todo`); when it
      already holds every seed asked, there is nothing to do (`overwrite` reruns them all).
    - A complete result with other settings is refused without `overwrite`; with it (or `overwrite` of the
      same settings), the new run writes `<task>.partial.json` and `<task>.partial/` beside the complete one
      and replaces it only once complete.
    - An incomplete result with other settings, and its predictions, are replaced.
    Predictions of one run live in one folder (`<task>/seed<N>/`), never mixed with another run's.
    """

    def __init__(self, results_dir: str | Path, name: str, backend: str, task: str, header: dict,
                 seeds: list[int], overwrite: bool = False):
        self.final, self.final_preds = result_paths(results_dir, name, backend, task)
        self.header = {**header, "settings_id": settings_id(header.get("config", {}))}
        self.path, self.pred_dir = self.final, self.final_preds
        self.per_seed: dict[str, dict] = {}
        old = _read_object(self.final)
        if old is not None:
            same = old.get("settings_id") == self.header["settings_id"]
            complete = bool(old.get("complete", True))
            if same and not overwrite:
                self.per_seed = dict(old.get("seeds") or {})
            elif complete and not overwrite:
                raise ConfigError(f"{self.final}: holds a complete result computed with other settings "
                                  f"({_differences(old.get('config', {}), header.get('config', {}))}); pass "
                                  "--overwrite to replace it once the new run is complete, or name=OTHER to "
                                  "write beside it")
            elif complete:
                self.path = self.final.with_name(f"{task}.partial.json")
                self.pred_dir = self.final_preds.with_name(f"{task}.partial")
                _remove_tree(self.pred_dir)
            else:
                _remove_tree(self.final_preds)  # an unfinished run of other settings: nothing of it is kept
        self.seeds = sorted(set(seeds) | {int(s) for s in self.per_seed})
        self.todo = [s for s in seeds if str(s) not in self.per_seed]

    def add(self, seed: int, result: dict, predictions: list[dict] | None) -> dict:
        """Records one finished seed; returns the result object as written."""
        self.per_seed[str(seed)] = result
        obj = write_result(self.path, self.pred_dir, self.header, self.per_seed,
                           {str(seed): predictions} if predictions is not None else {}, self.seeds)
        if obj["complete"] and self.path != self.final:  # the new result replaces the old one only now
            old_preds = self.final_preds.with_name(f".{self.final_preds.name}.replaced")
            _remove_tree(old_preds)
            if self.final_preds.exists():
                os.replace(self.final_preds, old_preds)
            if self.pred_dir.exists():
                os.replace(self.pred_dir, self.final_preds)
            os.replace(self.path, self.final)
            _remove_tree(old_preds)
            self.path, self.pred_dir = self.final, self.final_preds
        return obj

    def current(self) -> dict | None:
        """The result object as it stands (None before any seed)."""
        return _read_object(self.path)


def _read_object(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) and "seeds" in obj else None


def _remove_tree(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)


def read_results(results_dir: str | Path) -> list[dict]:
    """Every result object under `<results_dir>/<name>/<backend>/<task>.json` (others are skipped), each
    with "_name" and "_backend" from its path."""
    out = []
    for path in sorted(Path(results_dir).glob("*/*/*.json")):
        if path.name.endswith(".partial.json"):
            continue  # a rerun with other settings, still running beside the complete result it will replace
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
    partial = "" if obj.get("complete", True) else f" †{len(obj['seeds'])}/{len(obj.get('seeds_asked', []))}"
    return f"{100 * med:.1f} ({100 * lo:.1f}–{100 * hi:.1f}){partial}"


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
             "5 seeds); *Δ* is ours minus the paper's. † k/n: an incomplete result, k of the n seeds asked "
             "(interrupted or still running).", "",
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
