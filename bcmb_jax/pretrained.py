"""Loading and saving whole models: HF directories / hub ids, JAX checkpoint directories, train runs.

A JAX checkpoint directory (written by `save_jax` and `convert_weights.py to-jax`):

    config.json    HF-format model config, plus a "bcmb_jax" entry {"task", "dtype", ...}
    params/        orbax checkpoint of the NNX parameter tree (nested dict, layer indices as "0", "1", ...)
    optimizer/, optimizer.json   StableAdamW moments (optional; from a Composer checkpoint)
    tokenizer files (optional)

A train run directory (written by `train.py`) holds the same pieces spread out:

    RUN_DIR/config.json                      as above
    RUN_DIR/checkpoints/<step>/params/       one parameter tree per saved step
    RUN_DIR/tokenizer/                       tokenizer files (optional)

`locate` finds (config.json, params/, tokenizer dir) for every form: an HF directory, a JAX
directory, RUN_DIR (its latest step) or RUN_DIR/checkpoints/<step>. `from_pretrained` and every
tool go through it, so they all accept all of them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from bcmb_jax import params as P
from bcmb_jax.config import ConfigError, ModelConfig
from bcmb_jax.model import ARCHITECTURES, TASKS, build

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json")
HF_ARCHITECTURE = {v: k for k, v in ARCHITECTURES.items()}


def is_jax_dir(path: str | Path) -> bool:
    return (Path(path) / "params").is_dir() and (Path(path) / "config.json").is_file()


@dataclass(frozen=True)
class Located:
    """Where the pieces of a checkpoint are."""

    kind: str  # "hf" | "jax" | "run" (a train run: its latest step) | "step" (one step of a run)
    root: Path  # the directory the user named
    config: Path  # config.json
    params: Path | None  # orbax parameter tree (None for HF directories)
    tokenizer: Path | None  # directory holding tokenizer files, if any
    step: int | None = None  # the training step of a run/step checkpoint


def _steps(checkpoints: Path) -> list[int]:
    """Complete step directories under RUN_DIR/checkpoints (digit names holding params/), ascending."""
    if not checkpoints.is_dir():
        return []
    return sorted(int(d.name) for d in checkpoints.iterdir()
                  if d.is_dir() and d.name.isdigit() and (d / "params").is_dir())


def _tokenizer_dir(*candidates: Path) -> Path | None:
    return next((d for d in candidates if d.is_dir() and tokenizer_files(d)), None)


def locate(path: str | Path) -> Located:
    """Finds config.json, params/ and the tokenizer of a local checkpoint directory of any form.

    Forms: a JAX directory (config.json + params/), a train run RUN_DIR (config.json +
    checkpoints/<step>/params/; the latest step is used), a step directory
    RUN_DIR/checkpoints/<step> (its config is RUN_DIR/config.json), or an HF directory
    (config.json + weight files; `params` is None).
    """
    d = Path(path)
    if not d.is_dir():
        raise P.WeightsError(f"{d}: no such directory")
    if (d / "params").is_dir() and (d / "config.json").is_file():
        return Located("jax", d, d / "config.json", d / "params", _tokenizer_dir(d))
    if (d / "params").is_dir() and d.name.isdigit() and d.parent.name == "checkpoints":
        run = d.parent.parent
        if not (run / "config.json").is_file():
            raise P.WeightsError(f"{d}: a step checkpoint, but its run directory {run} has no config.json")
        return Located("step", d, run / "config.json", d / "params", _tokenizer_dir(run / "tokenizer", run),
                       int(d.name))
    has_weights = any((d / n).is_file() for n in P.SAFE_NAMES + P.BIN_NAMES + (
        "model.safetensors.index.json", "pytorch_model.bin.index.json"))
    if (d / "config.json").is_file() and (d / "checkpoints").is_dir() and not has_weights:
        steps = _steps(d / "checkpoints")
        if not steps:
            raise P.WeightsError(f"{d}: a run directory, but {d / 'checkpoints'} holds no complete step "
                                 "(a <step>/params/ directory)")
        step = steps[-1]
        return Located("run", d, d / "config.json", d / "checkpoints" / str(step) / "params",
                       _tokenizer_dir(d / "tokenizer", d), step)
    if (d / "config.json").is_file():
        return Located("hf", d, d / "config.json", None, _tokenizer_dir(d))
    raise P.WeightsError(f"{d}: not a checkpoint directory (no config.json; expected an HF model, a JAX "
                         "checkpoint, a train run directory or RUN_DIR/checkpoints/<step>)")


def resolve(path_or_id: str | Path) -> Path:
    """A local directory as is; otherwise an HF hub id downloaded (honours HF_HUB_OFFLINE)."""
    p = Path(path_or_id)
    if p.is_dir():
        return p
    if p.exists():
        raise P.WeightsError(f"{p}: expected a directory (HF model or JAX checkpoint), got a file")
    name = str(path_or_id)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise P.WeightsError(f"{name}: no such directory, and not a hub id of the form org/name")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.bin"]))
    except Exception as e:  # noqa: BLE001 - network/offline/auth errors all end here
        raise P.WeightsError(f"{name}: not a local directory and could not be fetched from the hub "
                             f"({type(e).__name__}: {e})") from None


def read_config(directory: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, the raw config.json dict) of any checkpoint directory form (see `locate`)."""
    d = Path(directory)
    path = locate(d).config if d.is_dir() and not (d / "config.json").is_file() else d / "config.json"
    cfg = ModelConfig.from_json(path)
    return cfg, json.loads(path.read_text())


def infer_task(raw: dict[str, Any], task: str | None) -> str:
    if task is not None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
        return task
    if "bcmb_jax" in raw:
        return raw["bcmb_jax"]["task"]
    for arch in raw.get("architectures") or []:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    return "mlm"


def from_pretrained(path: str | Path, task: str | None = None, dtype: Any = jnp.float32, *,
                    num_labels: int | None = None, config_overrides: dict[str, Any] | None = None,
                    strict: bool = False, seed: int = 0, remat: bool = False, runtime=None):
    """Loads an HF directory, hub id, JAX checkpoint directory or train run/step as an NNX model (eval mode).

    task: "mlm" | "sequence" | "token" | "base"; default from `config.architectures` (HF) or the
    saved task (JAX). Heads the checkpoint lacks (e.g. `classifier.*` when an MLM checkpoint is
    loaded for a task) are freshly initialised from `seed`; `strict=True` makes that an error.
    `dtype` is the compute dtype; parameters are kept in float32. `runtime`: how the model computes
    (`runtime.Runtime` or an attention backend name: "blocked" | "gpu" | "reference").
    """
    where = locate(resolve(path))
    cfg, raw = read_config(where.config.parent)
    task = infer_task(raw, task)
    if num_labels is not None and num_labels != cfg.num_labels:
        cfg = cfg.replace(num_labels=num_labels, id2label=())
    if config_overrides:
        cfg = cfg.replace(**config_overrides)
    if where.params is not None:
        tree, source = restore_tree(where.params), str(where.params)
        sd = P.nnx_to_hf(tree, cfg.replace(num_labels=_saved_labels(tree, cfg)),
                         raw.get("bcmb_jax", {}).get("task", task))
    else:
        sd, source = P.read_hf_weights(where.root), str(where.root)
    model = build(cfg, task, seed=seed, dtype=dtype, remat=remat, runtime=runtime)
    tree, report = P.hf_to_nnx(sd, cfg, task, source=source)
    allow = () if strict else ("classifier.", "head.", "decoder.")
    report.raise_if(source, allow_missing=allow) if strict else _check_backbone(report, source, allow)
    P.assign(model, tree)
    model.eval()
    model.load_report = report
    return model


def _saved_labels(tree: dict, cfg: ModelConfig) -> int:
    if "classifier" in tree:
        return int(np.asarray(tree["classifier"]["bias"]).shape[0])
    return cfg.num_labels


def _check_backbone(report: P.LoadReport, source: str, allow: tuple[str, ...]) -> None:
    missing = [k for k in report.missing if not k.startswith(allow)]
    if missing:
        raise P.WeightsError(f"{source}: checkpoint lacks backbone weights: {missing}")


# ---------------------------------------------------------------------------------------------
# JAX checkpoint directories


def _str_keys(tree):
    return {str(k): _str_keys(v) for k, v in tree.items()} if isinstance(tree, dict) else np.asarray(tree)


def _int_keys(tree):
    if not isinstance(tree, dict):
        return tree
    return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()}


def load_jax_tree(directory: str | Path) -> dict:
    """The nested parameter dict (numpy, saved dtypes) of a JAX directory, train run or step (see `locate`)."""
    where = locate(directory)
    if where.params is None:
        raise P.WeightsError(f"{directory}: an HF directory, not a JAX checkpoint (no params/)")
    return restore_tree(where.params)


def restore_tree(path: str | Path) -> dict:
    """An orbax StandardSave tree of numpy arrays, with digit keys turned back into ints."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    try:
        with ocp.StandardCheckpointer() as ckpt:
            tree = ckpt.restore(path)
        return _int_keys(tree)
    except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged checkpoints
        text = " ".join(str(e).split())
        error = f"{type(e).__name__}: {text[:300]}{' ...' if len(text) > 300 else ''}"
    _drop_failed_tasks()
    raise P.WeightsError(f"{path}: cannot restore orbax checkpoint ({error}); truncated or corrupt?")


def _drop_failed_tasks() -> None:
    """Collects orbax's leftover asyncio tasks of a failed restore without their 'never retrieved' log spam."""
    import gc
    import logging

    log = logging.getLogger("asyncio")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        gc.collect()
    finally:
        log.setLevel(level)


def write_jax_dir(out: Path, tree: dict, cfg: ModelConfig, task: str, dtype: str,
                  extra_files: dict[str, Path] | None = None, extra_config: dict | None = None) -> None:
    """Writes a JAX checkpoint directory at `out` (which must not exist yet)."""
    import orbax.checkpoint as ocp

    out.mkdir(parents=True)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save((out / "params").absolute(), _str_keys(tree))
    config = cfg.to_hf_dict(HF_ARCHITECTURE[task])
    config["bcmb_jax"] = {"task": task, "dtype": dtype, **(extra_config or {})}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name, src in (extra_files or {}).items():
        shutil.copy2(src, out / name)


def save_jax(model, out: str | Path, *, dtype: str = "float32", tokenizer_dir: str | Path | None = None,
             overwrite: bool = False) -> Path:
    """Saves an NNX model as a JAX checkpoint directory, atomically (temp sibling, then rename)."""
    tree = jax_tree_as(P.model_tree(model), dtype)
    files = tokenizer_files(tokenizer_dir) if tokenizer_dir else {}
    return atomic_dir(Path(out), overwrite,
                      lambda tmp: write_jax_dir(tmp, tree, model.cfg, model.task, dtype, files))


def jax_tree_as(tree: dict, dtype: str) -> dict:
    import jax

    return jax.tree.map(lambda x: np.asarray(jnp.asarray(x, jnp.dtype(dtype))), tree)


def tokenizer_files(directory: str | Path) -> dict[str, Path]:
    d = Path(directory)
    return {n: d / n for n in TOKENIZER_FILES if (d / n).is_file()}


def atomic_dir(out: Path, overwrite: bool, write) -> Path:
    """Runs `write(tmp)` on a temporary sibling of `out`, then renames it into place.

    An existing non-empty `out` is refused unless `overwrite`; it is only replaced once the new
    directory is complete, so an interrupted write never leaves a half-written `out`.
    """
    out = Path(out)
    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.rmdir()
        write(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            old.rmdir()
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = ["from_pretrained", "save_jax", "load_jax_tree", "restore_tree", "write_jax_dir", "read_config",
           "resolve", "locate", "Located", "is_jax_dir", "atomic_dir", "ConfigError"]
