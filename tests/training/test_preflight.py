"""training/preflight.py: the checks train.py makes before it reads or writes anything (their command-line
faces are cases of tests/test_errors.py)."""

from __future__ import annotations

import pytest
from conftest import TINY_RUN_MODEL


def test_resume_differences_lists_model_and_data_keys():
    from bcmb_jax.modeling.config import ModelConfig
    from bcmb_jax.training import preflight

    old = ModelConfig.from_hf_dict(TINY_RUN_MODEL).to_hf_dict("ModernBertForMaskedLM")
    new = ModelConfig.from_hf_dict({**TINY_RUN_MODEL, "num_hidden_layers": 6}).to_hf_dict()
    data = {"seq_len": 64, "mlm_probability": 0.3, "num_threads": 1, "tokenizer": "a"}
    assert preflight.resume_differences(old, old, data, {**data, "num_threads": 4, "tokenizer": "b"}) == []
    diffs = preflight.resume_differences(old, new, data, {**data, "mlm_probability": 0.15})
    assert diffs[-1] == "data.mlm_probability: run has 0.3, now 0.15"
    assert "model num_hidden_layers: run has 3, now 6" in diffs
    assert any(d.startswith("model layer_types") for d in diffs)


def test_seq_len_and_vocabulary_checks():
    from types import SimpleNamespace as NS

    from bcmb_jax.errors import ConfigError
    from bcmb_jax.modeling.config import ModelConfig
    from bcmb_jax.training import preflight

    mcfg = ModelConfig.from_hf_dict(TINY_RUN_MODEL)
    preflight.check_seq_len(256, mcfg)
    for bad, words in ((3, ">= 4"), (257, "max_position_embeddings (256)")):
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            preflight.check_seq_len(bad, mcfg)
    tok = NS(vocab_size=512, cls_id=1, sep_id=2, pad_id=3, mask_id=4)
    preflight.check_vocabulary(mcfg, tok, "tok")
    with pytest.raises(ConfigError, match=r"special token id\(s\) \{'\[MASK\]': 600\}"):
        preflight.check_vocabulary(mcfg, NS(**{**vars(tok), "vocab_size": 300, "mask_id": 600}), "tok")
    with pytest.raises(ConfigError, match="random_token_high"):
        preflight.check_vocabulary(mcfg, tok, "tok", random_token_high=513)


def test_run_dir_may_hold_a_jobs_log_but_not_another_tools_files(tmp_path):
    """A scheduler's or shell's log written before train.py starts is fine; a model directory is not."""
    from bcmb_jax.errors import ConfigError
    from bcmb_jax.training import preflight

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "slurm-123.out").write_text("starting\n")
    preflight.check_run_dir(str(tmp_path / "logs"))
    preflight.check_run_dir(str(tmp_path / "new"))  # not there yet
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds config.json but is not a training run"):
        preflight.check_run_dir(str(tmp_path / "model"))
    (tmp_path / "model" / "train_config.yaml").write_text("{}")  # an earlier run's own config.json
    preflight.check_run_dir(str(tmp_path / "model"))
    with pytest.raises(ConfigError, match="`run_dir` is empty"):
        preflight.check_run_dir("")


def test_model_overrides_take_yaml_numbers_and_every_config_key():
    """`1e-6` (a string in YAML 1.1) is a number; global_attn_every_n_layers is a key also with custom layer
    types; an unknown key and a non-finite layer count are refused."""
    from types import SimpleNamespace as NS

    from bcmb_jax.errors import ConfigError
    from bcmb_jax.modeling.config import ModelConfig
    from bcmb_jax.training import start

    def model_cfg(overrides):
        return start.run_model_config(NS(model=NS(init=None, config=None, overrides=overrides)))

    cfg = model_cfg({**TINY_RUN_MODEL, "norm_eps": "1e-6", "num_hidden_layers": 6, "global_attn_every_n_layers": 2})
    assert cfg.norm_eps == 1e-6 and cfg.num_hidden_layers == 6 and cfg.is_global(2) and not cfg.is_global(3)
    with pytest.raises(ConfigError, match="model.overrides.hiden_size"):
        model_cfg({"hiden_size": 64})
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        ModelConfig.from_hf_dict({"num_hidden_layers": float("nan")})
