"""Shared helpers of the task tests: real-data lookup, fixture files, tag views, small synthetic tasks."""

from __future__ import annotations

import csv
import random
from pathlib import Path

WORDS = ("patient reports denies history of pain fever cough nausea with without mild severe since yesterday today "
         "left right chest abdomen").split()
ENTITIES = {"DRUG": [["aspirin"], ["heparin"], ["metoprolol"], ["insulin", "glargine"]],
            "DIS": [["pneumonia"], ["heart", "failure"], ["sepsis"], ["atrial", "fibrillation"]]}
KEYWORD = {"cardiac": "chest", "infection": "fever", "other": "today"}
SPLITS = {"train": 40, "dev": 16, "test": 16}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _by_id(task) -> dict[str, dict]:
    return {ex["id"]: ex for rows in task.splits().values() for ex in rows}


def _tags(task, ex) -> list[str]:
    return [task.labels[t] for t in ex["tags"]]


def write_csv_task(d: Path, multilabel: bool = False, seed: int = 0) -> Path:
    """Keyword-determined labels ("a;b" cells when multi-label)."""
    rng = random.Random(seed)
    d.mkdir(parents=True)
    for split, n in SPLITS.items():
        with open(d / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for _ in range(n):
                labels = rng.sample(sorted(KEYWORD), rng.randint(1, 2) if multilabel else 1)
                words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
                for lab in labels:
                    words.insert(rng.randrange(len(words)), KEYWORD[lab])
                w.writerow([" ".join(words), ";".join(labels)])
    return d


def write_conll_task(d: Path, seed: int = 0) -> Path:
    rng = random.Random(seed)
    d.mkdir(parents=True)
    for split, n in SPLITS.items():
        lines = []
        for _ in range(n):
            for _ in range(rng.randint(2, 5)):
                lines += [f"{rng.choice(WORDS)}\tO" for _ in range(rng.randint(1, 4))]
                if rng.random() < 0.6:
                    typ = rng.choice(sorted(ENTITIES))
                    ent = rng.choice(ENTITIES[typ])
                    lines += [f"{w}\t{'B' if k == 0 else 'I'}-{typ}" for k, w in enumerate(ent)]
            lines.append("")
        (d / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return d
