"""weights/directories.py and trees.py: locating checkpoints, restoring into an abstract tree, killed writes,
run checkpoints that cannot be read, metrics after a resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from conftest import hf_model, rng_ids, save_hf
from convert_helpers import cli, tensors, tiny_tokenizer

import bcmb_jax
from bcmb_jax import atomic, errors
from bcmb_jax.weights import directories, pretrained, trees

pytestmark = [pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


def saved_params(directory) -> dict:
    where = directories.locate(directory)
    cfg, raw = directories.read_config(where)
    _, abstract, _ = pretrained.abstract_model(cfg, pretrained.infer_task(raw, None))
    return trees.restore_tree(where.params, abstract, stored_dtype=True)[0]


def test_run_and_step_directories(tmp_path):
    import transformers as tf

    hf = hf_model("mlm", seed=6)
    save_hf(hf, tmp_path / "hf")
    assert cli("to-jax", tmp_path / "hf", tmp_path / "jax") == 0
    tree = saved_params(tmp_path / "jax")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_bytes((tmp_path / "jax" / "config.json").read_bytes())
    tiny_tokenizer(run / "tokenizer")
    saved = {}
    for step, scale in ((5, 1.0), (12, 2.0)):
        t = jax.tree.map(np.asarray, tree)
        t["model"]["final_norm"]["scale"] = t["model"]["final_norm"]["scale"] * np.float32(scale)
        saved[step] = t
        trees.save_tree(run / "checkpoints" / str(step) / "params", t)
    (run / "checkpoints" / "13.orbax-checkpoint-tmp-0" / "params").mkdir(parents=True)  # an unfinished save

    assert directories.locate(run).step == 12 and directories.locate(run / "checkpoints" / "5").kind == "step"
    for src, step in ((run, 12), (run / "checkpoints" / "5", 5)):
        out = tmp_path / f"hf_{step}"
        assert cli("to-hf", src, out) == 0
        got = tensors(out / "model.safetensors")
        np.testing.assert_array_equal(got["model.final_norm.weight"], saved[step]["model"]["final_norm"]["scale"])
        assert (out / "tokenizer.json").is_file()
        assert (f"train run, step {step}" if src == run else f"train step {step}") in (out / "README.md").read_text()
    m = tf.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf_12")
    assert torch.equal(m.model.final_norm.weight, 2 * hf.model.final_norm.weight)
    ids = rng_ids((1, 9))
    np.testing.assert_array_equal(np.asarray(bcmb_jax.from_pretrained(run)(ids).logits),
                                  np.asarray(bcmb_jax.from_pretrained(tmp_path / "hf_12")(ids).logits))


# ---------------------------------------------------------------------------------------------
# Composer checkpoints




def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_writes_are_removed_at_the_next_start(tmp_path):
    """`.NAME.tmp-<pid>-*` of a dead process are removed by the next write of NAME; an overwrite killed
    between its two renames gets its old directory back; a live writer's temporary is left alone."""
    save_hf(hf_model("mlm"), tmp_path / "hf")
    out = tmp_path / "out"
    pid = dead_pid()
    stale = [tmp_path / f".out.tmp-{pid}-00aa", tmp_path / f".out.tmp-{pid}-00bb"]
    stale[0].mkdir()
    (stale[0] / "params").mkdir()
    stale[1].write_bytes(b"half a file")
    live = tmp_path / f".out.tmp-{os.getppid()}-00cc"  # a running process (pytest's parent)
    live.mkdir()
    other = tmp_path / f".other.tmp-{pid}-00dd"  # another output's leftover: not this write's business
    other.mkdir()
    assert cli("to-jax", tmp_path / "hf", out, "--overwrite") == 0
    assert directories.locate(out).kind == "jax"
    assert not any(p.exists() for p in stale) and live.exists() and other.exists()

    # Killed between `out -> .out.old-*` and `.out.tmp-* -> out`: the old output comes back, the
    # unfinished new one goes, and the next write proceeds as usual.
    old = tmp_path / f".out.old-{pid}-00ee"
    os.replace(out, old)
    (tmp_path / f".out.tmp-{pid}-00ff").mkdir()
    assert atomic.remove_stale_temps(tmp_path, "out")
    assert directories.locate(out).kind == "jax" and not old.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")) == [live.name]


def test_config_that_disagrees_with_the_parameters_is_named(tmp_path, capsys):
    """to-hf (and from_pretrained) of a directory whose config.json does not fit its parameters: one line
    naming the parameter and both shapes; nothing written."""
    save_hf(hf_model("mlm"), tmp_path / "hf")
    assert cli("to-jax", tmp_path / "hf", tmp_path / "jax") == 0
    config = tmp_path / "jax" / "config.json"
    config.write_text(config.read_text().replace('"intermediate_size": 96', '"intermediate_size": 80'))
    capsys.readouterr()
    assert cli("to-hf", tmp_path / "jax", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.layers.0.mlp.Wi.kernel has shape [64, 192]" in err and "[64, 160]" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    with pytest.raises(errors.WeightsError, match="mlp.Wi.kernel has shape"):
        bcmb_jax.from_pretrained(tmp_path / "jax")


def test_restore_into_an_abstract_tree_casts_and_reports(tmp_path):
    """Parameters restore into the model's abstract tree (int layer keys), cast to its dtype or kept as
    stored; parameters the checkpoint lacks or has beyond the model are listed, not read."""
    hf = hf_model("mlm").to(torch.bfloat16)
    save_hf(hf, tmp_path / "hf")
    assert cli("to-jax", tmp_path / "hf", tmp_path / "jax") == 0
    where = directories.locate(tmp_path / "jax")
    cfg, _ = directories.read_config(where)
    _, abstract, _ = pretrained.abstract_model(cfg, "token")
    tree, missing, unexpected = trees.restore_tree(where.params, abstract)
    assert sorted(missing) == [("classifier", "bias"), ("classifier", "kernel")]
    assert unexpected == [("decoder_bias",)]
    kernel = tree["model"]["layers"][2]["attn"]["Wqkv"]["kernel"]
    assert kernel.dtype == np.float32
    np.testing.assert_array_equal(kernel, hf.model.layers[2].attn.Wqkv.weight.detach().float().numpy().T)
    stored = trees.restore_tree(where.params, abstract, stored_dtype=True)[0]
    assert str(stored["model"]["layers"][2]["attn"]["Wqkv"]["kernel"].dtype) == "bfloat16"
    model, info = bcmb_jax.from_pretrained(tmp_path / "jax", task="token", num_labels=2, output_loading_info=True)
    assert info.missing == ["classifier.bias", "classifier.weight"] and info.unexpected == ["decoder.bias"]
    ids = rng_ids((1, 9))
    assert model(ids).logits.shape == (1, 9, 2)
    assert json.loads((tmp_path / "jax" / "config.json").read_text())["bcmb_jax"]["dtype"] == "bfloat16"
