"""Weight loading: every HF file layout, task inference, head handling, and clear errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import TINY, hf_model, rng_ids, save_hf
from flax import nnx

import bcmb_jax
from bcmb_jax.errors import WeightsError
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.weights import directories, hf_files, keymap, pretrained, trees


def logits(model, ids):
    return np.asarray(model(ids, attention_mask=np.ones_like(ids)).logits)


def torch_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor(ids)).logits.numpy()


def param_tree(model) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def saved_params(directory) -> dict:
    """The parameter tree of a JAX directory / run / step as stored (numpy, saved dtypes)."""
    where = directories.locate(directory)
    cfg, raw = directories.read_config(where)
    _, abstract, _ = pretrained.abstract_model(cfg, pretrained.infer_task(raw, None))
    tree, missing, unexpected = trees.restore_tree(where.params, abstract, stored_dtype=True)
    assert not missing and not unexpected
    return tree


def flat_names(tree, prefix=""):
    out = set()
    for k, v in tree.items():
        out |= flat_names(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


def test_key_map_covers_the_hf_state_dict_exactly():
    for task, overrides in [("mlm", {}), ("token", {"num_labels": 3}), ("sequence", {"num_labels": 2}),
                            ("base", {}), ("mlm", dict(attention_bias=True, mlp_bias=True, norm_bias=True,
                                                       classifier_bias=True))]:
        hf = hf_model(task, **overrides)
        cfg = ModelConfig.from_hf_dict(hf.config.to_dict())
        names = {("model." + k if task == "base" else k) for k in hf.state_dict()} - {keymap.TIED_DECODER}
        assert {e.hf for e in keymap.key_map(cfg, task)} == names, task
        model = bcmb_jax.build(cfg, task)
        assert {".".join(map(str, e.path)) for e in keymap.key_map(cfg, task)} == flat_names(param_tree(model)), task


@pytest.mark.parametrize("layout", ["sharded", "bin", "bare_backbone"])
def test_file_layouts(tmp_path, layout):
    hf = hf_model("base" if layout == "bare_backbone" else "mlm")
    ids = rng_ids((2, 30))
    if layout == "sharded":
        save_hf(hf, tmp_path, max_shard_size="20KB")
        assert (tmp_path / "model.safetensors.index.json").exists()
    elif layout == "bin":
        hf.config.save_pretrained(tmp_path)
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    else:
        save_hf(hf, tmp_path)
    model = bcmb_jax.from_pretrained(tmp_path)
    if layout == "bare_backbone":
        assert model.task == "base"
        with torch.no_grad():
            ref = hf(torch.tensor(ids)).last_hidden_state.numpy()
        assert np.abs(np.asarray(model(ids).last_hidden_state) - ref).max() <= 1e-4
    else:
        assert np.abs(logits(model, ids) - torch_logits(hf, ids)).max() <= 1e-4


def test_mlm_checkpoint_for_a_task_keeps_the_head_and_adds_a_classifier(tmp_path):
    hf = hf_model("mlm")
    save_hf(hf, tmp_path)
    model, info = bcmb_jax.from_pretrained(tmp_path, task="token", num_labels=7, seed=3, output_loading_info=True)
    assert model.task == "token" and model.cfg.num_labels == 7
    assert sorted(info.missing) == ["classifier.bias", "classifier.weight"]
    assert info.unexpected == ["decoder.bias"]
    assert not hasattr(model, "load_report")
    np.testing.assert_array_equal(np.asarray(model.head.dense.kernel[...]),
                                  hf.head.dense.weight.detach().numpy().T)
    with pytest.raises(WeightsError, match="classifier.weight"):
        bcmb_jax.from_pretrained(tmp_path, task="token", num_labels=7, strict=True)


def test_jax_directory_round_trip(tmp_path):
    hf = hf_model("token", num_labels=5)
    model = bcmb_jax.from_pretrained(save_hf(hf, tmp_path / "hf"))
    out = bcmb_jax.save_jax(model, tmp_path / "jax")
    again = bcmb_jax.from_pretrained(out)
    assert again.task == "token" and again.cfg == model.cfg
    tree = saved_params(out)
    np.testing.assert_array_equal(tree["model"]["layers"][2]["attn"]["Wqkv"]["kernel"],
                                  hf.model.layers[2].attn.Wqkv.weight.detach().numpy().T)
    ids = rng_ids((2, 20))
    np.testing.assert_array_equal(logits(again, ids), logits(model, ids))
    with pytest.raises(FileExistsError, match="already exists"):
        bcmb_jax.save_jax(model, out)


def test_shape_mismatch_is_named(tmp_path):
    hf = hf_model("mlm")
    save_hf(hf, tmp_path)
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(cfg_path.read_text().replace('"intermediate_size": 96', '"intermediate_size": 80'))
    with pytest.raises(WeightsError, match=r"model.layers.0.mlp.Wi.weight` has shape \[192, 64\], "
                                             r"expected \[160, 64\]"):
        bcmb_jax.from_pretrained(tmp_path)


def test_missing_backbone_weight_is_named(tmp_path):
    hf = hf_model("mlm")
    sd = {k: v for k, v in hf.state_dict().items() if k != "model.layers.1.mlp_norm.weight"}
    hf.config.save_pretrained(tmp_path)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="model.layers.1.mlp_norm.weight"):
        bcmb_jax.from_pretrained(tmp_path)


def test_untied_decoder_is_refused(tmp_path):
    hf = hf_model("mlm")
    sd = {k: v.clone() for k, v in hf.state_dict().items()}
    sd["decoder.weight"] = sd["decoder.weight"] + 1
    hf.config.save_pretrained(tmp_path)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="decoder.weight` differs"):
        bcmb_jax.from_pretrained(tmp_path)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    hf_model("mlm").config.save_pretrained(tmp_path)
    torch.save({"model.embeddings.norm.weight": torch.ones(64), "x": payload}, tmp_path / "pytorch_model.bin",
               pickle_protocol=2)
    with pytest.raises(WeightsError, match="refused to unpickle.*nothing in it was executed"):
        bcmb_jax.from_pretrained(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate_safetensors", "garbage_bin"])
def test_corrupt_files_give_one_line(tmp_path, damage):
    hf = hf_model("mlm")
    if damage == "truncate_safetensors":
        save_hf(hf, tmp_path)
        f = tmp_path / "model.safetensors"
        f.write_bytes(f.read_bytes()[:5000])
    else:
        hf.config.save_pretrained(tmp_path)
        (tmp_path / "pytorch_model.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError, match="truncated or corrupt") as e:
        bcmb_jax.from_pretrained(tmp_path)
    assert "\n" not in str(e.value)


def test_unknown_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="could not be fetched from the hub"):
        bcmb_jax.from_pretrained("no-such-org/no-such-model")
    with pytest.raises(WeightsError, match="no such directory"):
        bcmb_jax.from_pretrained("/definitely/not/here")


def test_config_without_head_keys_defaults_to_mlm(tmp_path):
    cfg = ModelConfig.from_hf_dict(TINY)
    model = bcmb_jax.build(cfg, "mlm", seed=1)
    sd = keymap.nnx_to_hf(param_tree(model), cfg, "mlm")
    assert "decoder.weight" not in sd and "decoder.bias" in sd
    hf_files.write_safetensors(sd, tmp_path / "model.safetensors")
    raw = cfg.to_hf_dict()
    (tmp_path / "config.json").write_text(json.dumps(raw))
    again = bcmb_jax.from_pretrained(tmp_path)
    assert again.task == "mlm"
    ids = rng_ids((1, 12))
    np.testing.assert_array_equal(logits(again, ids), logits(model, ids))
