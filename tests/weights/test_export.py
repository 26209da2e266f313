"""convert_weights.py / weights/export.py: exact HF <-> JAX round trips, task and dtype options, damaged inputs,
atomic/refused outputs, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import hf_model, rng_ids, save_hf
from convert_helpers import (
    AUTO,
    REPO,
    assert_bit_identical,
    cli,
    convert_weights,
    digest,
    tensors,
    tiny_tokenizer,
    torch_out,
)

import bcmb_jax
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.heads import HEADS
from bcmb_jax.weights import directories, hf_files, keymap

pytestmark = [
    # orbax's tensorstore callbacks of the deliberately failed restore may land during a later test
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


# ---------------------------------------------------------------------------------------------
# HF -> JAX -> HF


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("task", ["mlm", "sequence", "token", "base"])
def test_round_trip_is_bit_identical(tmp_path, task, dtype):
    import transformers as tf

    overrides = {"num_labels": 3} if task in ("sequence", "token") else {}
    if task == "sequence":
        overrides["classifier_pooling"] = "mean"
    hf = hf_model(task, seed=1, **overrides).to(getattr(torch, dtype))
    save_hf(hf, tmp_path / "hf")
    assert cli("to-jax", tmp_path / "hf", tmp_path / "jax") == 0
    saved = json.loads((tmp_path / "jax" / "config.json").read_text())["bcmb_jax"]
    assert saved["task"] == task and saved["dtype"] == dtype  # default: the source dtype, stored as is
    assert cli("to-hf", tmp_path / "jax", tmp_path / "back") == 0
    assert_bit_identical(tensors(tmp_path / "hf" / "model.safetensors"),
                         tensors(tmp_path / "back" / "model.safetensors"))
    assert (tmp_path / "back" / "README.md").read_text().count(HEADS[task].hf_architecture) >= 2

    # The original and the re-exported directory, loaded alike (`.to(bf16)` on a live model would also
    # round its RoPE buffers, which loading in bf16 does not), give the same outputs exactly.
    auto = getattr(tf, AUTO[task])
    orig = auto.from_pretrained(tmp_path / "hf", dtype=getattr(torch, dtype)).eval()
    again = auto.from_pretrained(tmp_path / "back", dtype=getattr(torch, dtype)).eval()
    assert next(again.parameters()).dtype == getattr(torch, dtype)
    ids = rng_ids((2, 23), seed=4)
    assert torch.equal(torch_out(again, ids), torch_out(orig, ids))


def test_mlm_export_with_tokenizer_runs_fill_mask_and_bcmb_jax(tmp_path):
    from transformers import pipeline

    hf = hf_model("mlm", seed=2)
    save_hf(hf, tmp_path / "hf")
    tiny_tokenizer(tmp_path / "hf")
    assert cli("to-jax", tmp_path / "hf", tmp_path / "jax", "--dtype", "float32") == 0
    assert (tmp_path / "jax" / "tokenizer.json").is_file()
    assert cli("to-hf", tmp_path / "jax", tmp_path / "back") == 0
    fill = pipeline("fill-mask", model=str(tmp_path / "back"), tokenizer=str(tmp_path / "back"))
    got = fill("the patient was given [MASK] .", top_k=3)
    ref = pipeline("fill-mask", model=hf, tokenizer=str(tmp_path / "hf"))("the patient was given [MASK] .", top_k=3)
    assert [r["token"] for r in got] == [r["token"] for r in ref] and [r["score"] for r in got] == [
        r["score"] for r in ref]
    # Both directories load in bcmb_jax as the same model.
    ids = rng_ids((2, 17), seed=5)
    a = bcmb_jax.from_pretrained(tmp_path / "jax")(ids).logits
    b = bcmb_jax.from_pretrained(tmp_path / "back")(ids).logits
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(a), torch_out(hf, ids).numpy(), atol=1e-4, rtol=0)


def test_base_size_round_trip(tmp_path):
    """Base-size (149.7M parameters) HF -> JAX -> HF, float32, from numpy-random weights (no torch init)."""
    cfg = ModelConfig()
    rng = np.random.default_rng(0)
    sd = {}
    for e in keymap.module_order(cfg, "mlm"):
        shape = keymap.expected_shape(e, cfg)
        sd[e.hf] = rng.standard_normal(shape[::-1] if e.transpose else shape, dtype=np.float32)
    assert sum(x.size for x in sd.values()) == 149_655_232
    (tmp_path / "hf").mkdir()
    hf_files.write_safetensors(sd, tmp_path / "hf" / "model.safetensors")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg.to_hf_dict("ModernBertForMaskedLM")))
    assert cli("to-jax", tmp_path / "hf", tmp_path / "jax", "--no-progress") == 0
    assert cli("to-hf", tmp_path / "jax", tmp_path / "back", "--no-progress") == 0
    assert_bit_identical(sd, tensors(tmp_path / "back" / "model.safetensors"))


def test_task_change_and_dtype_options(tmp_path, capsys):
    hf = hf_model("mlm", seed=3)
    save_hf(hf, tmp_path / "hf")
    # An MLM checkpoint converted as a bare backbone: the head tensors are left out and listed.
    assert cli("to-jax", tmp_path / "hf", tmp_path / "base", "--task", "base") == 0
    assert "not converted: decoder.bias, head.dense.weight, head.norm.weight" in capsys.readouterr().out
    # A classification task needs a classifier the MLM checkpoint does not have: named, nothing written.
    assert cli("to-jax", tmp_path / "hf", tmp_path / "tok", "--task", "token") == 2
    assert "classifier.bias" in capsys.readouterr().err and not (tmp_path / "tok").exists()
    # fp32 stored as bf16 and exported back: the bf16 rounding of the fp32 weights, as torch does it.
    assert cli("to-jax", tmp_path / "hf", tmp_path / "b16", "--dtype", "bfloat16") == 0
    assert cli("to-hf", tmp_path / "b16", tmp_path / "b16_f32", "--dtype", "float32") == 0
    ref = {k: v.to(torch.bfloat16).float().numpy() for k, v in hf.state_dict().items() if k != keymap.TIED_DECODER}
    assert_bit_identical(ref, tensors(tmp_path / "b16_f32" / "model.safetensors"))
    # A JAX MLM export as a bare encoder loads in transformers' AutoModel.
    assert cli("to-hf", tmp_path / "b16", tmp_path / "enc", "--task", "base") == 0
    assert json.loads((tmp_path / "enc" / "config.json").read_text())["architectures"] == ["ModernBertModel"]


# ---------------------------------------------------------------------------------------------
# Damaged inputs, refused outputs, the CLI


@pytest.mark.parametrize("damage", ["truncated_pt", "truncated_safetensors", "damaged_orbax"])
def test_damaged_inputs_give_one_line(tmp_path, damage, capsys):
    hf = hf_model("mlm")
    save_hf(hf, tmp_path / "hf")
    if damage == "truncated_pt":
        src = tmp_path / "ck.pt"
        torch.save({"state": {"model": hf.state_dict()}}, src)
        src.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        args = ["to-jax", src, tmp_path / "out"]
    elif damage == "truncated_safetensors":
        f = tmp_path / "hf" / "model.safetensors"
        f.write_bytes(f.read_bytes()[:4000])
        src = tmp_path / "hf"
        args = ["to-jax", src, tmp_path / "out"]
    else:
        assert cli("to-jax", tmp_path / "hf", tmp_path / "jax") == 0
        for f in (tmp_path / "jax" / "params").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(f.read_bytes()[:10])
        src = tmp_path / "jax"
        args = ["to-hf", src, tmp_path / "out"]
    capsys.readouterr()
    assert cli(*args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(src) in err
    assert "truncated or corrupt" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_existing_output_is_refused_untouched_unless_overwrite(tmp_path, capsys):
    save_hf(hf_model("mlm"), tmp_path / "hf")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = digest(out)
    assert cli("to-jax", tmp_path / "hf", out) == 2
    assert "already exists" in capsys.readouterr().err and digest(out) == before
    assert cli("to-jax", tmp_path / "hf", out, "--overwrite") == 0
    assert not (out / "keep.txt").exists() and directories.locate(out).kind == "jax"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_cli_help_and_exit_codes(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, str(REPO / "convert_weights.py"), "to-jax", "--help"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "examples:" in run.stdout and "--optimizer-state" in run.stdout
    assert "to-hf SRC OUT" in run.stdout
    # A damaged orbax tree: one line on stderr, no traceback, not even orbax's background-task noise.
    save_hf(hf_model("mlm"), tmp_path / "hf")
    assert cli("to-jax", tmp_path / "hf", tmp_path / "jax") == 0
    for f in (tmp_path / "jax" / "params" / "d").iterdir():
        f.write_bytes(f.read_bytes()[:10])
    run = subprocess.run([sys.executable, str(REPO / "convert_weights.py"), "to-hf", str(tmp_path / "jax"),
                          str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("error: ") and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1 and "truncated or corrupt" in run.stderr and run.stdout == ""
    assert convert_weights.main(["sideways", "a", "b"]) == 2  # one `error:` line, not argparse's usage block
    assert cli("to-jax", tmp_path / "missing", tmp_path / "out") == 2
