"""Shared helpers of the task builder tests: real-data lookup, fixture files, tag views."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _data(*parts: str) -> Path:
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _by_id(task) -> dict[str, dict]:
    return {ex["id"]: ex for rows in task.splits().values() for ex in rows}


def _tags(task, ex) -> list[str]:
    return [task.labels[t] for t in ex["tags"]]
