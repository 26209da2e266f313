"""bench/throughput.py: its FLOP counts and data sets, and complete runs on tiny models (output schema)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "bench" / "throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_attended_keys_and_flops(bench):
    for n, w in ((1, 64), (50, 64), (300, 64), (300, 8), (40, None)):
        brute = sum(1 for i in range(n) for j in range(n) if w is None or abs(i - j) <= w)
        assert bench.keys_attended(n, w) == brute
    cfg = {"hidden_size": 8, "intermediate_size": 12, "vocab_size": 100, "local_attention": 4,
           "layer_types": ["full_attention", "sliding_attention"]}
    linear = 2 * 10 * (8 * 24 + 8 * 8 + 8 * 24 + 12 * 8)
    assert bench.forward_flops(cfg, 10) == 2 * linear + 4 * 8 * (100 + bench.keys_attended(10, 2))
    assert bench.forward_flops(cfg, 10, head_tokens=3) == bench.forward_flops(cfg, 10) + 2 * 3 * (64 + 800)


def test_sets_and_mlm_batch(bench):
    fixed = bench.make_set("fixed", 64, 5, 50368)
    assert [len(d) for d in fixed] == [64] * 5
    assert all(d.min() >= 100 and d.max() < 16000 for d in fixed)
    var = bench.make_set("variable", 512, 400, 50368)
    lengths = np.array([len(d) for d in var])
    assert lengths.min() >= 16 and lengths.max() <= 512 and abs(lengths.mean() - 256) < 15
    assert [d.tolist() for d in var] == [d.tolist() for d in bench.make_set("variable", 512, 400, 50368)]
    b = bench.mlm_batch(128, 8, 50368, mask_id=50284)
    target = b["labels"] >= 0
    assert abs(target.mean() - 0.30) < 0.03
    assert (b["input_ids"][target] == 50284).mean() > 0.7  # 80% of the targets are [MASK]
    assert (b["input_ids"][~target] != 50284).all()


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


def test_modernbert_jax_and_torch(bench, tmp_path):
    """Both frameworks on the mini model: inference sets and MLM training, all in this process."""
    out = tmp_path / "out"
    bench.main(["--size", "mini", "--samples", "3", "--lengths", "64", "--repeats", "2", "--train-lengths", "32",
                "--train-batch-tokens", "64", "--train-steps", "1", "--train-warmup", "1", "--in-process",
                "--out", str(out)])
    results = check_outputs(out, {"jax", "torch-sdpa"}, {"fixed_64", "variable_64", "train_32"})
    by = {(r["set"], r["backend"]): r for r in results}
    lengths = [len(d) for d in bench.make_set("variable", 64, 3, 50368)]
    assert by["fixed_64", "jax"]["tokens"] == 3 * 64 and by["variable_64", "torch-sdpa"]["tokens"] == sum(lengths)
    assert by["variable_64", "torch-sdpa"]["padded_tokens"] == 3 * max(lengths)
    assert by["train_32", "jax"]["tokens"] == 64 and by["train_32", "jax"]["masked_cap_per_row"] > 0.3 * 32
    assert by["fixed_64", "torch-sdpa"]["attn_implementation"] == "sdpa"
    assert "jax / torch-sdpa" in (out / "results.md").read_text()


def test_other_encoder_torch_only(bench, tmp_path):
    """--model may name any HF encoder: a tiny BERT runs on torch; jax and over-long lengths are skipped."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    tf.BertModel(cfg).save_pretrained(tmp_path / "bert")
    out = tmp_path / "out"
    bench.main(["--model", str(tmp_path / "bert"), "--samples", "2", "--lengths", "64,256", "--repeats", "1",
                "--backends", "jax,torch-sdpa", "--train-lengths", "", "--in-process", "--out", str(out)])
    results = check_outputs(out, {"torch-sdpa"}, {"fixed_64", "variable_64"})
    assert all(r["mfu"] is None for r in results)


def test_subprocess_worker(bench, tmp_path):
    """The default mode: one fresh process per case, results collected from its JSON file."""
    out = tmp_path / "out"
    bench.main(["--size", "mini", "--samples", "2", "--lengths", "32", "--sets", "fixed", "--repeats", "1",
                "--backends", "jax", "--train-lengths", "", "--out", str(out)])
    (r,) = check_outputs(out, {"jax"}, {"fixed_32"})
    assert r["memory"].startswith("peak RSS") and r["peak_mem_mb"] > 100  # a whole process: python + jax
