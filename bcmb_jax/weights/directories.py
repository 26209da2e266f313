"""Checkpoint directories on disk: which layout a path is, where its pieces are, JAX directories.

    JAX directory    config.json (HF keys + "bcmb_jax": {task, dtype, ...}), params/, tokenizer files,
                     optionally optimizer/ ({count, mu, nu}, trees like params/) and optimizer.json
    run directory    config.json, train_config.yaml, tokenizer/, metrics.jsonl, tensorboard/,
                     checkpoints/<step>/{params, opt_state, meta, data}   (`training.checkpoints`)
    step directory   RUN_DIR/checkpoints/<step>: one step of a run, its config in RUN_DIR
    HF directory     config.json + model.safetensors / sharded safetensors / pytorch_model.bin

`locate` tells them apart; parameter trees are read and written by `trees.py`. Writes go through
`atomic.py` (a temporary sibling renamed into place).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bcmb_jax.atomic import read_json
from bcmb_jax.errors import ConfigError, WeightsError
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.weights.hf_files import BIN_NAMES, HF_INDEXES, SAFE_NAMES
from bcmb_jax.weights.trees import param_name, restore_tree, save_tree

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json")


# ---------------------------------------------------------------------------------------------
# Locating


@dataclass(frozen=True)
class Located:
    """Where the pieces of a checkpoint are."""

    kind: str  # "hf" | "jax" | "run" (a train run: its latest step) | "step" (one step of a run)
    root: Path  # the directory the user named
    config: Path  # config.json
    params: Path | None  # orbax parameter tree (None for HF directories)
    tokenizer: Path | None  # directory holding tokenizer files, if any
    step: int | None = None  # the training step of a run/step checkpoint


def run_steps(run_dir: str | Path) -> list[int]:
    """Complete step directories under RUN_DIR/checkpoints (digit names holding params/), ascending."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(int(s.name) for s in d.iterdir() if s.is_dir() and s.name.isdigit() and (s / "params").is_dir())


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "checkpoints").is_dir() and (Path(path) / "config.json").is_file()


def _tokenizer_dir(*candidates: Path) -> Path | None:
    return next((d for d in candidates if d.is_dir() and tokenizer_files(d)), None)


def locate(path: str | Path) -> Located:
    """Finds config.json, params/ and the tokenizer of a local checkpoint directory of any form (see above)."""
    d = Path(path)
    if not d.is_dir():
        raise WeightsError(f"{d}: no such directory")
    if (d / "params").is_dir() and (d / "config.json").is_file():
        return Located("jax", d, d / "config.json", d / "params", _tokenizer_dir(d))
    if (d / "params").is_dir() and d.name.isdigit() and d.parent.name == "checkpoints":
        run = d.parent.parent
        if not (run / "config.json").is_file():
            raise WeightsError(f"{d}: a step checkpoint, but its run directory {run} has no config.json")
        return Located("step", d, run / "config.json", d / "params", _tokenizer_dir(run / "tokenizer", run),
                       int(d.name))
    has_weights = any((d / n).is_file() for n in SAFE_NAMES + BIN_NAMES + HF_INDEXES)
    if is_run_dir(d) and not has_weights:
        steps = run_steps(d)
        if not steps:
            raise WeightsError(f"{d}: a run directory, but {d / 'checkpoints'} holds no complete step "
                               "(a <step>/params/ directory)")
        return Located("run", d, d / "config.json", d / "checkpoints" / str(steps[-1]) / "params",
                       _tokenizer_dir(d / "tokenizer", d), steps[-1])
    if (d / "config.json").is_file():
        return Located("hf", d, d / "config.json", None, _tokenizer_dir(d))
    raise WeightsError(f"{d}: not a checkpoint directory (no config.json; expected an HF model, a JAX "
                       "checkpoint, a train run directory or RUN_DIR/checkpoints/<step>)")


def read_config(where: Located) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, the raw config.json dict) of a located checkpoint."""
    raw = read_json(where.config, ConfigError, "an HF config.json")
    return ModelConfig.from_hf_dict(raw, source=str(where.config)), raw


def tokenizer_files(directory: str | Path) -> dict[str, Path]:
    """{name: path} of the tokenizer files (`TOKENIZER_FILES`) a directory holds."""
    d = Path(directory)
    return {n: d / n for n in TOKENIZER_FILES if (d / n).is_file()}


def tokenizer_texts(directory: str | Path) -> dict[str, str]:
    """{name: text} of the tokenizer files a directory holds (what `write_jax_dir` writes beside params/)."""
    return {n: p.read_text(encoding="utf-8") for n, p in tokenizer_files(directory).items()}


def copy_tokenizer(directory: str | Path, out: str | Path) -> list[str]:
    """Copies the tokenizer files of `directory` into the directory `out` (which exists); returns their names."""
    files = tokenizer_files(directory)
    for name, src in files.items():
        (Path(out) / name).write_bytes(src.read_bytes())
    return sorted(files)


# ---------------------------------------------------------------------------------------------
# JAX checkpoint directories


def write_jax_dir(out: Path, tree: dict, config: dict, *, texts: dict[str, str] | None = None,
                  moments: tuple[int, dict, dict, dict] | None = None) -> None:
    """Writes a JAX checkpoint directory at `out` (which must not exist; use inside `atomic`).

    config: the config.json dict; texts: extra files by name (tokenizer files); moments:
    (step, mu, nu, info) optimizer moments in the tree's form, written as optimizer/ and optimizer.json.
    """
    out.mkdir(parents=True)
    save_tree(out / "params", tree)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name, text in (texts or {}).items():
        (out / name).write_text(text, encoding="utf-8")
    if moments is not None:
        step, mu, nu, info = moments
        save_tree(out / "optimizer", {"count": np.asarray(step, np.int64), "mu": mu, "nu": nu})
        (out / "optimizer.json").write_text(json.dumps(info, indent=2) + "\n")


def load_moments(directory: str | Path, params_abstract: dict) -> tuple[int, dict, dict, dict[str, Any]]:
    """(step, mu, nu, info) of a JAX directory's optimizer/ (float32 trees shaped like `params_abstract`)."""
    d = Path(directory)
    if not (d / "optimizer").is_dir():
        raise WeightsError(f"{d}: no optimizer/ (convert the Composer checkpoint with --optimizer-state)")
    f32 = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, np.float32), params_abstract)
    want = {"count": jax.ShapeDtypeStruct((), np.int64), "mu": f32, "nu": f32}
    tree, missing, _ = restore_tree(d / "optimizer", want)
    if missing:
        raise WeightsError(f"{d / 'optimizer'}: lacks moments of {', '.join(param_name(p) for p in missing[:5])}")
    info = read_json(d / "optimizer.json", WeightsError) if (d / "optimizer.json").is_file() else {}
    return int(tree["count"]), tree["mu"], tree["nu"], info


__all__ = ["locate", "Located", "read_config", "tokenizer_files", "tokenizer_texts", "copy_tokenizer", "run_steps",
           "is_run_dir", "write_jax_dir", "load_moments"]
