"""bench/: the timer, FLOP model and workloads, the report, and complete runs on tiny models (output schema)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from bench import flops, measure, quick, report, runner, throughput, workload


def test_timer_counts_warmup_apart():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01)

    times = measure.timed(fn, warmup=2, repeats=3)
    assert len(calls) == 5 and len(times) == 3 and all(0.009 < t < 1 for t in times)


def test_fit_rows_halves_on_out_of_memory_only():
    tried = []

    def attempt(rows):
        tried.append(rows)
        if rows > 3:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        return {"rows": rows}

    assert measure.fit_rows(attempt, 16, cleanup=lambda: None) == {"rows": 2} and tried == [16, 8, 4, 2]
    with pytest.raises(ValueError):
        measure.fit_rows(lambda rows: (_ for _ in ()).throw(ValueError("bad")), 8, cleanup=lambda: None)


def test_auto_rows_fill_a_share_of_free_memory(monkeypatch):
    cfg = {"hidden_size": 768, "vocab_size": 50368, "layer_types": ["x"] * 22}
    monkeypatch.setattr(measure, "free_memory_bytes", lambda framework, gpu: 100 * 2**30)
    job = {"cfg": cfg, "dtype": "bfloat16", "device_kind": "gpu", "length": 8192, "max_rows": 256}
    jax_rows, torch_rows = runner.auto_rows(job, "jax"), runner.auto_rows(job, "torch")
    assert jax_rows == int(0.7 * 100 * 2**30 // (2 * 20 * 768 * 22 * 8192)) and 1 <= torch_rows < jax_rows
    assert runner.auto_rows({**job, "max_rows": 3}, "jax") == 3
    assert runner.auto_rows({**job, "length": 2**30}, "torch") == 1


def test_attended_keys_and_flops():
    for n, w in ((1, 64), (50, 64), (300, 64), (300, 8), (40, None)):
        brute = sum(1 for i in range(n) for j in range(n) if w is None or abs(i - j) <= w)
        assert flops.keys_attended(n, w) == brute
    cfg = {"hidden_size": 8, "intermediate_size": 12, "vocab_size": 100, "local_attention": 4,
           "layer_types": ["full_attention", "sliding_attention"]}
    linear = 2 * 10 * (8 * 24 + 8 * 8 + 8 * 24 + 12 * 8)
    assert flops.forward_flops(cfg, 10) == 2 * linear + 4 * 8 * (100 + flops.keys_attended(10, 2))
    assert flops.forward_flops(cfg, 10, head_tokens=3) == flops.forward_flops(cfg, 10) + 2 * 3 * (64 + 800)
    assert flops.train_flops(cfg, 4, 10, 12) == 3 * 4 * flops.forward_flops(cfg, 10, head_tokens=3)


def test_sets_and_mlm_batch():
    fixed = workload.make_set("fixed", 64, 5, 50368)
    assert [len(d) for d in fixed] == [64] * 5
    assert all(d.min() >= 100 and d.max() < 16000 for d in fixed)
    var = workload.make_set("variable", 512, 400, 50368)
    lengths = np.array([len(d) for d in var])
    assert lengths.min() >= 16 and lengths.max() <= 512 and abs(lengths.mean() - 256) < 15
    assert [d.tolist() for d in var] == [d.tolist() for d in workload.make_set("variable", 512, 400, 50368)]
    b = workload.mlm_batch(128, 8, 50368, mask_id=50284)
    target = b["labels"] >= 0
    assert abs(target.mean() - 0.30) < 0.03
    assert (b["input_ids"][target] == 50284).mean() > 0.7  # 80% of the targets are [MASK]
    assert (b["input_ids"][~target] != 50284).all()


def test_report_table_ratios_and_failures():
    rec = lambda s, b, tps, **kw: {"set": s, "backend": b, "kind": "infer", "tokens_per_s": tps,  # noqa: E731
                                   "mfu": 0.5, "peak_mem_mb": 100.0, **kw}
    lines = report.table([rec("fixed_8", "jax", 300.0, packing_efficiency=0.98),
                          rec("fixed_8", "torch-sdpa", 100.0, packing_efficiency=0.5),
                          {**rec("variable_8", "jax", None), "error": "timed out after 9 s"}])
    assert "jax / torch-sdpa" in lines[0] and "packing jax" in lines[0]
    row = lines[2].split(" | ")
    assert "3.00x" in row and "0.980" in row and "0.500" in row
    assert "- variable_8 jax: failed: timed out after 9 s" in lines


def test_quick_is_a_preset_of_throughput():
    argv = quick.argv_for("8x512,1x8192", 2, "mini", "o")
    args = throughput.parser().parse_args(argv)
    assert (args.lengths, args.samples, args.sets, args.train_lengths) == ("512,8192", "8,1", "fixed", "")
    assert args.batch_tokens == 8192 and args.in_process and args.repeats == 2


def check_outputs(out: Path, backends: set[str], sets: set[str]):
    results = json.loads((out / "results.json").read_text())
    assert {r["backend"] for r in results} == backends
    assert {r["set"] for r in results} == sets
    for r in results:
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and r["peak_mem_mb"] > 0 and r["repeats"] == len(r["times_s"])
        assert r["median_s"] == pytest.approx(float(np.median(r["times_s"])))
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["median_s"])
        assert r["mfu"] is None or 0 < r["mfu"] < 1
        assert {"device", "versions", "date", "dtype"} <= set(r)
    md = (out / "results.md").read_text()
    assert all(s in md for s in sets)
    for png in ("throughput_bars.png", "throughput_vs_length.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return results


def test_modernbert_jax_and_torch(tmp_path):
    """Both frameworks on the mini model: inference sets and MLM training, all in this process."""
    out = tmp_path / "out"
    throughput.main(["--size", "mini", "--samples", "3", "--lengths", "64", "--repeats", "2", "--train-lengths",
                     "32", "--train-batch-tokens", "64", "--train-steps", "1", "--train-warmup", "1", "--in-process",
                     "--out", str(out)])
    results = check_outputs(out, {"jax", "torch-sdpa"}, {"fixed_64", "variable_64", "train_32"})
    by = {(r["set"], r["backend"]): r for r in results}
    lengths = [len(d) for d in workload.make_set("variable", 64, 3, 50368)]
    assert by["fixed_64", "jax"]["tokens"] == 3 * 64 and by["variable_64", "torch-sdpa"]["tokens"] == sum(lengths)
    assert by["variable_64", "torch-sdpa"]["padded_tokens"] == 3 * max(lengths)
    assert by["variable_64", "torch-sdpa"]["packing_efficiency"] == pytest.approx(sum(lengths) / (3 * max(lengths)))
    one_row = -(-sum(lengths) // 64) * 64  # the documents in one row, a multiple of 64 long
    assert by["variable_64", "jax"]["packing_efficiency"] == pytest.approx(sum(lengths) / one_row)
    assert by["fixed_64", "jax"]["packing_efficiency"] == 1.0
    assert by["train_32", "jax"]["tokens"] == 64 and by["train_32", "jax"]["masked_slots"] > 0.3 * 64
    assert by["train_32", "torch-sdpa"]["batch_rows"] == 2
    assert by["fixed_64", "torch-sdpa"]["attn_implementation"] == "sdpa"
    md = (out / "results.md").read_text()
    assert "jax / torch-sdpa" in md and "packing jax" in md


def test_other_encoder_torch_only(tmp_path):
    """--model may name any HF encoder: a tiny BERT runs on torch; jax and over-long lengths are skipped."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    tf.BertModel(cfg).save_pretrained(tmp_path / "bert")
    out = tmp_path / "out"
    throughput.main(["--model", str(tmp_path / "bert"), "--samples", "2", "--lengths", "64,256", "--repeats", "1",
                     "--backends", "jax,torch-sdpa", "--train-lengths", "", "--in-process", "--out", str(out)])
    results = check_outputs(out, {"torch-sdpa"}, {"fixed_64", "variable_64"})
    assert all(r["mfu"] is None for r in results)


def test_subprocess_worker_and_rows_that_fit(tmp_path):
    """The default mode, one fresh process per case; training with as many rows as fit (capped)."""
    out = tmp_path / "out"
    throughput.main(["--size", "mini", "--samples", "2", "--lengths", "32", "--sets", "fixed", "--repeats", "1",
                     "--backends", "jax", "--train-lengths", "32", "--train-backends", "jax", "--train-batch-tokens",
                     "0", "--train-max-rows", "3", "--train-steps", "1", "--train-warmup", "1", "--out", str(out)])
    infer, train = check_outputs(out, {"jax"}, {"fixed_32", "train_32"})
    assert infer["memory"].startswith("peak RSS") and infer["peak_mem_mb"] > 100  # a whole process: python + jax
    assert train["batch_rows"] == 3 and train["tokens"] == 3 * 32


def test_a_failing_case_is_reported_and_the_others_run(tmp_path):
    """A worker whose case raises records the error; a timed-out process records the cases it did not finish."""
    model_dir, cfg = throughput.prepare_model(throughput.parser().parse_args(["--size", "mini"]), tmp_path)
    args = throughput.parser().parse_args(["--size", "mini", "--lengths", "32", "--samples", "2", "--sets", "fixed",
                                           "--backends", "jax", "--train-lengths", "", "--repeats", "1"])
    (job,), _ = throughput.make_jobs(args, model_dir, cfg)
    bad = {**job, "model_dir": str(tmp_path / "missing"), "set": "fixed_bad"}
    recs = runner.run_cases([bad, job], tmp_path, timeout=300)
    assert recs[0]["set"] == "fixed_bad" and recs[0]["error"] and recs[1].get("error") is None
    late = runner.run_cases([job], tmp_path, timeout=0.5, name="late")
    assert late[0]["error"] == "timed out after 0 s" or late[0]["error"].startswith("timed out")


def test_the_frameworks_of_a_set_take_turns(tmp_path, monkeypatch):
    """jax and torch on one set in two processes at once, their repeats alternating; a case that fails drops out
    of the rotation and the other still finishes; the ratio column gives the per-repeat range."""
    model_dir, cfg = throughput.prepare_model(throughput.parser().parse_args(["--size", "mini"]), tmp_path)
    args = throughput.parser().parse_args(["--size", "mini", "--lengths", "32", "--samples", "2", "--sets", "fixed",
                                           "--backends", "jax,torch-sdpa", "--train-lengths", "", "--repeats", "3"])
    jobs, _ = throughput.make_jobs(args, model_dir, cfg)
    (group,) = throughput.by_set(jobs)
    assert [j["backend"] for j in group] == ["jax", "torch-sdpa"]
    recs = runner.run_interleaved(group, tmp_path, timeout=300)
    assert [r.get("error") for r in recs] == [None, None] and all(len(r["times_s"]) == 3 for r in recs)
    assert all(r["spread"] >= 0 for r in recs)
    assert re.fullmatch(r"\d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\)", report.ratio(recs[0], recs[1]))
    bad = {**group[0], "model_dir": str(tmp_path / "missing")}
    recs = runner.run_interleaved([bad, group[1]], tmp_path, timeout=300)
    assert recs[0]["error"] and recs[1].get("error") is None and len(recs[1]["times_s"]) == 3
