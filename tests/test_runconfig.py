"""Run configs: YAML, key=value overrides, type checks and --help text."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import yaml

from bcmb_jax.errors import ConfigError
from bcmb_jax.runconfig import help_text, load, opt


@dataclass
class Inner:
    rate: float = opt(0.3, "masking rate")
    names: list[str] = opt(["a"], "names")


@dataclass
class Outer:
    seed: int = opt(17, "random seed")
    data: Inner = opt(Inner(), "data section")


def test_run_config_yaml_overrides_and_help(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("seed: 3\ndata:\n  rate: 0.15\n")
    cfg = load(Outer, y, ["data.names=x,y", "seed=5"])
    assert cfg.seed == 5 and cfg.data.rate == 0.15 and cfg.data.names == ["x", "y"]
    with pytest.raises(ConfigError, match="data.bogus"):
        load(Outer, y, ["data.bogus=1"])
    with pytest.raises(ConfigError, match="`seed` must be int"):
        load(Outer, y, ["seed=abc"])
    text = help_text(Outer)
    assert "data.rate" in text and "masking rate" in text and "random seed" in text


def test_duplicate_keys_are_refused_but_merge_keys_may_be_overridden(tmp_path):
    from bcmb_jax.runconfig import _UniqueKeyLoader
    from bcmb_jax.training.config import TrainConfig

    merged = "defaults: &d {lr: 1}\nphase1: {optim: &o {<<: *d, lr: 2}}\noptim: {<<: *o}\n"
    assert yaml.load(merged, Loader=_UniqueKeyLoader)["optim"] == {"lr": 2}
    (tmp_path / "c.yaml").write_text("max_steps: 3\nseed: 1\nmax_steps: 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3: invalid YAML: duplicate key 'max_steps'"):
        load(TrainConfig, tmp_path / "c.yaml")
