"""evaluation/results.py and paper.py: result files, table.md beside the paper's Table 2, Table 6 markdown."""

from __future__ import annotations

import json

import pytest

from bcmb_jax.evaluation import paper, results


def _result(root, name, backend, task, scores, main="f1", row=None):
    path, pred_dir = results.result_paths(root, name, backend, task)
    seeds = {str(42 + i): {"test": {main: s}} for i, s in enumerate(scores)}
    header = {"task": task, "backend": backend, "main_metric": main, "config": {"paper_row": row}}
    return results.write_result(path, pred_dir, header, seeds, {})


def test_table_md_puts_the_paper_row_and_the_difference_under_a_known_model(tmp_path):
    obj = _result(tmp_path, "BioClinical-ModernBERT-base", "jax", "cos", [0.95, 0.96, 0.94])
    assert obj["median"]["f1"] == pytest.approx(0.95)
    _result(tmp_path, "BioClinical-ModernBERT-base", "jax", "chemprot", [0.9, 0.89, 0.91], main="weighted_f1")
    _result(tmp_path, "mine", "torch", "cos", [0.9], row="ModernBERT-base")
    _result(tmp_path, "other", "jax", "cos", [0.5])
    lines = results.write_table(tmp_path).read_text().splitlines()
    header = next(line for line in lines if line.startswith("| model |"))
    assert header == "| model | backend | seeds | chemprot | cos |"
    assert "| BioClinical-ModernBERT-base | jax | 3 | 90.0 (89.0–91.0) | 95.0 (94.0–96.0) |" in lines
    assert "| *Δ vs paper* | jax | | +0.1 | -0.1 |" in lines  # ours - paper: 90.0 - 89.9, 95.0 - 95.1
    assert "| *paper: BioClinical ModernBERT-base* | | 5 | 89.9 | 95.1 |" in lines
    assert "| *paper: ModernBERT-base* | | 5 | 89.5 | 94.0 |" in lines  # by the recorded paper_row
    assert "| *Δ vs paper* | torch | |  | -4.0 |" in lines
    assert not any("paper" in line and "other" in line for line in lines)


def test_paper_defaults_and_rows():
    assert paper.default_lr("cos", "base") == (1e-4, "paper Table 5 (cos, base)")
    assert paper.default_lr("social_history", "large")[0] == 2e-4
    assert paper.default_lr("deid", None) == (2e-5, "fallback 2e-05 (model size is neither base nor large)")
    assert paper.size_of(768) == "base" and paper.size_of(1024) == "large" and paper.size_of(128) is None
    assert paper.table2_row("runs/bioclinical_modernbert_large") == "BioClinical ModernBERT-large"
    assert paper.table2_row("clinical-longformer") == "Clinical-Longformer" and paper.table2_row("mine") is None
    assert len(paper.TABLE5_LR) == 10 and all(lr > 0 for lr in paper.TABLE5_LR.values())


def test_table6_markdown_has_ours_and_the_papers_row():
    row = {"classes": 11, "examples": {"train": 705, "val": 151, "test": 152},
           "avg_tokens": {"train": 24.51, "val": 24.0, "test": 23.4}}
    text = results.table6({"cos": row, "csv": {**row, "classes": 3}})
    assert "| cos (ours) | 11 | 705 | 151 | 152 | 24.5 | 24.0 | 23.4 |" in text
    assert "| cos (paper) | 11 | 705 | 151 | 152 | 24.5 | 24.0 | 23.4 |" in text
    assert "csv (paper)" not in text and "| csv (ours) | 3 |" in text
    json.dumps(row)


def _header(lr: float) -> dict:
    return {"task": "cos", "backend": "jax", "main_metric": "f1", "config": {"lr": lr, "epochs": 3}}


def _seed(score: float) -> dict:
    return {"test": {"f1": score}}


def test_an_interrupted_rerun_never_rewrites_a_complete_result(tmp_path):
    """Seeds go in one by one; a rerun with the same settings runs only the missing ones; a complete result
    with other settings is refused, or (--overwrite) replaced only once the new run is complete, and the
    predictions of two runs never share a folder."""
    first = results.ResultRun(tmp_path, "m", "jax", "cos", _header(1e-4), [42, 43, 44])
    assert first.todo == [42, 43, 44]
    obj = first.add(42, _seed(0.5), [{"id": "a", "seed": 42}])
    assert obj["complete"] is False and obj["seeds_asked"] == [42, 43, 44] and obj["seeds_done"] == [42]
    assert "50.0 (50.0–50.0) †1/3" in results.write_table(tmp_path).read_text()  # an incomplete result is marked
    # Interrupted here; the same command again continues with the missing seeds.
    again = results.ResultRun(tmp_path, "m", "jax", "cos", _header(1e-4), [42, 43, 44])
    assert again.todo == [43, 44]
    for seed in again.todo:
        obj = again.add(seed, _seed(0.6), [{"id": "a", "seed": seed}])
    assert obj["complete"] and obj["seeds_done"] == [42, 43, 44]
    assert "| m | jax | 3 | 60.0 (50.0–60.0) |" in results.write_table(tmp_path).read_text().splitlines()
    assert results.ResultRun(tmp_path, "m", "jax", "cos", _header(1e-4), [42, 43]).todo == []
    path, preds = results.result_paths(tmp_path, "m", "jax", "cos")
    complete = path.read_bytes()
    # Other settings: refused without --overwrite, nothing touched.
    with pytest.raises(results.ConfigError, match=r"other settings \(lr 0.0001 -> 0.0002\).*--overwrite"):
        results.ResultRun(tmp_path, "m", "jax", "cos", _header(2e-4), [42, 43, 44])
    # --overwrite: interrupted after one seed, the complete result and its predictions are as they were.
    new = results.ResultRun(tmp_path, "m", "jax", "cos", _header(2e-4), [42, 43], overwrite=True)
    assert new.todo == [42, 43]
    new.add(42, _seed(0.9), [{"id": "a", "seed": 42, "new": True}])
    assert path.read_bytes() == complete and sorted(p.name for p in preds.iterdir()) == ["seed42", "seed43", "seed44"]
    assert all("new" not in line for line in (preds / "seed42" / "test_predictions.jsonl").read_text().splitlines())
    assert [o["task"] for o in results.read_results(tmp_path)] == ["cos"]  # the partial one is not a result yet
    # A complete new result replaces the old one, with only its own predictions.
    obj = new.add(43, _seed(0.8), [{"id": "a", "seed": 43, "new": True}])
    assert obj["complete"] and json.loads(path.read_text())["config"]["lr"] == 2e-4
    assert sorted(p.name for p in preds.iterdir()) == ["seed42", "seed43"]
    assert '"new": true' in (preds / "seed42" / "test_predictions.jsonl").read_text()
    assert not list(tmp_path.glob("m/jax/*partial*")) and not list(tmp_path.glob("m/jax/.cos*"))
