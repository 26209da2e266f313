"""Checks of a training run made before any work and before anything is written.

`check_run` is what train.py calls first: the sequence length fits the model's positions, the
model's vocabulary covers the tokenizer and its special ids, every source path exists, and a run
directory that already holds checkpoints is resumed only with the model and data settings it was
started with (`resume_differences` lists the keys that differ). Every failure is a ConfigError or
DataError naming the key or file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bcmb_jax.atomic import check_writable_dir, read_json
from bcmb_jax.data.sources import expand_paths
from bcmb_jax.errors import ConfigError, DataError
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.runconfig import to_dict

if TYPE_CHECKING:
    from bcmb_jax.data.tokenizer import TokenizerInfo
    from bcmb_jax.training.config import TrainConfig

MIN_SEQ_LEN = 4  # [CLS] + at least two tokens + [SEP]
# Data keys that change how fast batches are made, not which: they may differ on resume.
RESUME_FREE_DATA_KEYS = ("num_threads", "worker_count", "prefetch", "cache_dir", "tokenizer", "prepare_workers")
# HF config keys that describe the file, not the model.
IGNORED_MODEL_KEYS = ("architectures", "bcmb_jax", "dtype", "torch_dtype", "transformers_version")


def check_seq_len(seq_len: int, model_cfg: ModelConfig, where: str = "data.seq_len") -> None:
    """MIN_SEQ_LEN <= seq_len <= the model's max_position_embeddings."""
    if seq_len < MIN_SEQ_LEN:
        raise ConfigError(f"{where}: must be >= {MIN_SEQ_LEN} ([CLS] + tokens + [SEP]), got {seq_len}")
    if seq_len > model_cfg.max_position_embeddings:
        raise ConfigError(f"{where}: {seq_len} is longer than the model's max_position_embeddings "
                          f"({model_cfg.max_position_embeddings}); expected at most that many tokens per row")


def check_vocabulary(model_cfg: ModelConfig, tok: TokenizerInfo, tokenizer: str | Path,
                     random_token_high: int | None = None) -> None:
    """The model's embedding table holds every tokenizer id, the special ones and the random-token range."""
    if tok.vocab_size > model_cfg.vocab_size:
        raise ConfigError(f"{tokenizer}: the tokenizer has {tok.vocab_size} tokens but the model's vocab_size "
                          f"is {model_cfg.vocab_size}; expected vocab_size >= {tok.vocab_size} "
                          "(model.overrides.vocab_size)")
    named = {"[CLS]": tok.cls_id, "[SEP]": tok.sep_id, "[PAD]": tok.pad_id, "[MASK]": tok.mask_id}
    outside = {k: v for k, v in named.items() if not 0 <= v < model_cfg.vocab_size}
    if outside:
        raise ConfigError(f"{tokenizer}: special token id(s) {outside} are outside the model's vocabulary "
                          f"[0, {model_cfg.vocab_size})")
    if random_token_high is not None and random_token_high > model_cfg.vocab_size:
        raise ConfigError(f"data.random_token_high: {random_token_high} exceeds the model's vocab_size "
                          f"({model_cfg.vocab_size})")


def _model_settings(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """An HF config dict in one canonical layout, without the keys that describe the file."""
    canonical = ModelConfig.from_hf_dict(hf, source=source).to_hf_dict()
    return {k: v for k, v in canonical.items() if k not in IGNORED_MODEL_KEYS}


def resume_differences(saved_model: dict[str, Any], new_model: dict[str, Any], saved_data: dict[str, Any] | None,
                       new_data: dict[str, Any]) -> list[str]:
    """`key: run has X, now Y` for every model (HF config) or data setting that differs between a run and a resume.

    Pure: the inputs are the run's config.json and `data` section of train_config.yaml, and the new
    ones. Data keys missing on either side (older runs) and RESUME_FREE_DATA_KEYS are not compared.
    """
    out = []
    for key in sorted(set(saved_model) | set(new_model)):
        if key not in IGNORED_MODEL_KEYS and saved_model.get(key) != new_model.get(key):
            out.append(f"model {key}: run has {saved_model.get(key)!r}, now {new_model.get(key)!r}")
    for key in sorted(set(saved_data or {}) & set(new_data)):
        if key not in RESUME_FREE_DATA_KEYS and saved_data[key] != new_data[key]:
            out.append(f"data.{key}: run has {saved_data[key]!r}, now {new_data[key]!r}")
    return out


def has_checkpoints(run_dir: Path) -> bool:
    d = run_dir / "checkpoints"
    return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())


RUN_MARKERS = ("train_config.yaml", "checkpoints", "metrics.jsonl", "run.lock")  # what a run writes first
RUN_OUTPUTS = ("config.json", "tokenizer", "hf", "tensorboard")  # what it writes over, besides the markers


def check_run_dir(run_dir: str) -> None:
    """`run_dir` is new, a training run's own directory, or holds nothing the run writes (a job's log may be
    there first): a run never overwrites another tool's config.json, tokenizer/ or hf/."""
    if not str(run_dir).strip():
        raise ConfigError("`run_dir` is empty; expected the directory of this run (e.g. runs/my_run)")
    d = Path(run_dir)
    if d.exists() and not d.is_dir():
        raise ConfigError(f"run_dir {d}: is a file; expected a directory (new, empty or an earlier run's)")
    theirs = [n for n in RUN_OUTPUTS if (d / n).exists()]
    if theirs and not any((d / m).exists() for m in RUN_MARKERS):
        raise ConfigError(f"run_dir {d}: holds {', '.join(theirs)} but is not a training run's directory (none of "
                          f"{', '.join(RUN_MARKERS)}); the run would overwrite them: choose a new directory")


def check_resume(run_dir: Path, cfg: TrainConfig, model_cfg: ModelConfig) -> None:
    """A run directory with checkpoints resumes only with its own model and data settings (and tokenizer)."""

    config = run_dir / "config.json"
    if not has_checkpoints(run_dir):
        return
    if not config.is_file():
        raise ConfigError(f"{config}: missing, but {run_dir / 'checkpoints'} holds checkpoints; cannot check "
                          "that the resumed run is the same model (restore config.json or use a new run_dir)")
    saved = read_json(config, ConfigError, "the run's HF config.json")
    saved_model = _model_settings(saved, str(config))
    new_model = _model_settings(model_cfg.to_hf_dict(), "the new model config")
    saved_data = None
    run_yaml = run_dir / "train_config.yaml"
    if run_yaml.is_file():
        try:
            saved_data = (yaml.safe_load(run_yaml.read_text()) or {}).get("data")
        except yaml.YAMLError as e:
            raise ConfigError(f"{run_yaml}: invalid YAML: {' '.join(str(e).split())}") from None
    diffs = resume_differences(saved_model, new_model, saved_data, to_dict(cfg)["data"])
    tok_dir = run_dir / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file() and cfg.data.tokenizer:
        new = Path(cfg.data.tokenizer)
        new = new / "tokenizer.json" if new.is_dir() else new
        if new.is_file() and new.read_bytes() != (tok_dir / "tokenizer.json").read_bytes():
            diffs.append(f"data.tokenizer: {new} differs from the run's {tok_dir / 'tokenizer.json'}")
    if diffs:
        raise ConfigError(f"{run_dir}: holds checkpoints of another configuration; a resume needs the same model "
                          f"and data settings, but {len(diffs)} differ: {'; '.join(diffs)} (use a new run_dir, "
                          "or the run's own settings from its train_config.yaml)")


def check_run(cfg: TrainConfig, model_cfg: ModelConfig) -> TokenizerInfo | None:
    """Every check train.py makes before it builds, reads or writes anything; returns the tokenizer it loaded."""
    from bcmb_jax.data.tokenizer import load_tokenizer

    check_run_dir(cfg.run_dir)
    check_seq_len(cfg.data.seq_len, model_cfg)
    tok = load_tokenizer(cfg.data.tokenizer, cfg.data.prefix_space, mask_token_id=cfg.data.mask_token_id,
                         pad_token_id=cfg.data.pad_token_id)
    check_vocabulary(model_cfg, tok, cfg.data.tokenizer, cfg.data.random_token_high)
    if not cfg.data.sources:
        raise DataError("data.sources is empty (expected at least one source with `paths`)")
    for src in cfg.data.sources:
        expand_paths(src)
    if cfg.data.cache_dir:
        check_writable_dir(cfg.data.cache_dir, "data.cache_dir", ConfigError)
    check_resume(Path(cfg.run_dir), cfg, model_cfg)
    return tok


__all__ = ["check_run", "check_run_dir", "check_seq_len", "check_vocabulary", "check_resume", "resume_differences"]
