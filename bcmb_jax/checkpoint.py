"""Every on-disk layout of the project: locating checkpoints, parameter trees, JAX directories, run checkpoints.

Parameters are nested pure dicts keyed by NNX path (layer indices as ints), saved with orbax
(which stores every key as a string) and restored into an abstract tree of the same form, on any
mesh. The layouts:

    JAX directory    config.json (HF keys + "bcmb_jax": {task, dtype, ...}), params/, tokenizer files,
                     optionally optimizer/ ({count, mu, nu}, trees like params/) and optimizer.json
    run directory    config.json, train_config.yaml, tokenizer/, metrics.jsonl, tensorboard/,
                     checkpoints/<step>/{params, opt_state, meta, data}   (orbax CheckpointManager)
    step directory   RUN_DIR/checkpoints/<step>: one step of a run, its config in RUN_DIR
    HF directory     config.json + model.safetensors / sharded safetensors / pytorch_model.bin

Writes go through `atomic.py` (a temporary sibling renamed into place). A run checkpoint that cannot
be read is moved aside (`checkpoints/unrestorable-<step>-<time>`), never deleted, and the newest one
that restores is used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from bcmb_jax.atomic import read_json, write_text
from bcmb_jax.config import ConfigError, ModelConfig
from bcmb_jax.params import BIN_NAMES, SAFE_NAMES, WeightsError

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json")
HF_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
ASIDE = "unrestorable-"  # prefix of run checkpoints moved aside because they could not be restored


class DamagedCheckpoint(WeightsError):
    """A checkpoint whose files cannot be read (truncated, corrupt), as opposed to one of another model."""


# What orbax / tensorstore / grain raise for files that are missing, cut short or not what they should be
# (tensorstore's errors are ValueErrors; JSON decoding too). Anything else is a bug and propagates.
READ_ERRORS = (ValueError, OSError, EOFError)


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
    d = Path(directory)
    return {n: d / n for n in TOKENIZER_FILES if (d / n).is_file()}


# ---------------------------------------------------------------------------------------------
# Parameter trees


def _name(path: tuple) -> str:
    return ".".join(map(str, path))


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}{' ...' if len(text) > 300 else ''}"


def _drop_failed_tasks() -> None:
    """Collects orbax's leftover asyncio tasks of a failed restore without their 'never retrieved' log spam."""
    import gc

    aio = logging.getLogger("asyncio")
    level = aio.level
    aio.setLevel(logging.CRITICAL)
    try:
        gc.collect()
    finally:
        aio.setLevel(level)


def stored_arrays(path: str | Path) -> dict[tuple[str, ...], Any]:
    """{path of string keys: orbax ArrayMetadata (shape, dtype)} of a saved tree, read from its metadata."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    absl = logging.getLogger("absl")  # orbax logs its own warning before failing on a damaged checkpoint
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with ocp.PyTreeCheckpointer() as ckpt:
            meta = ckpt.metadata(path).item_metadata
    except READ_ERRORS as e:
        raise DamagedCheckpoint(f"{path}: cannot read orbax checkpoint metadata ({_reason(e)}); "
                                "truncated or corrupt?") from None
    finally:
        absl.setLevel(level)
    if meta is None or getattr(meta, "tree", None) is None:
        raise DamagedCheckpoint(f"{path}: no readable orbax checkpoint metadata; truncated or corrupt?")
    tree = meta.tree
    return flatten_dict(tree)


def restore_tree(path: str | Path, abstract: dict, *, stored_dtype: bool = False, source: str | None = None
                 ) -> tuple[dict, list[tuple], list[tuple]]:
    """Restores the arrays of `abstract` (a tree of ShapeDtypeStructs/arrays) found in an orbax tree.

    Returns (tree, missing, unexpected): `tree` holds every abstract path the checkpoint has,
    as numpy arrays (or sharded jax.Arrays where the abstract leaf has a sharding) of the abstract
    dtype (`stored_dtype`: the saved one); `missing` the abstract paths it lacks, `unexpected` the
    saved paths `abstract` does not have (not read). A shape that differs from the abstract one is a
    `WeightsError` naming the parameter; unreadable files a `DamagedCheckpoint`.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    source = source or str(path)
    stored = stored_arrays(path)
    want = flatten_dict(abstract)
    by_name = {tuple(map(str, p)): p for p in want}
    missing = [p for s, p in by_name.items() if s not in stored]
    unexpected = [s for s in stored if s not in by_name]
    for s, meta in stored.items():
        p = by_name.get(s)
        if p is not None and tuple(meta.shape) != tuple(want[p].shape):
            raise WeightsError(f"{source}: parameter {_name(p)} has shape {list(meta.shape)} in the checkpoint, "
                               f"the model config expects {list(want[p].shape)}")
    present = {p: v for p, v in want.items() if p not in missing}
    if not present:
        return {}, missing, unexpected

    def args(p, leaf):
        dtype = None if stored_dtype else leaf.dtype
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None and not isinstance(leaf, np.ndarray):
            return ocp.ArrayRestoreArgs(sharding=sharding, dtype=dtype, global_shape=leaf.shape)
        return ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype)

    item = unflatten_dict(present)
    restore_args = unflatten_dict({p: args(p, v) for p, v in present.items()})
    try:
        with ocp.PyTreeCheckpointer() as ckpt:
            tree = ckpt.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                                                  partial_restore=True))
    except READ_ERRORS as e:
        error = _reason(e)
        _drop_failed_tasks()
        raise DamagedCheckpoint(f"{path}: cannot restore orbax checkpoint ({error}); truncated or corrupt?") from None
    return tree, missing, unexpected


def save_tree(path: str | Path, tree: dict) -> None:
    """Saves a tree of arrays with orbax at `path` (which must not exist)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(Path(path).absolute(), tree)


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
        raise WeightsError(f"{d / 'optimizer'}: lacks moments of {', '.join(_name(p) for p in missing[:5])}")
    info = read_json(d / "optimizer.json", WeightsError) if (d / "optimizer.json").is_file() else {}
    return int(tree["count"]), tree["mu"], tree["nu"], info


# ---------------------------------------------------------------------------------------------
# Run directories


class Checkpoints:
    """orbax CheckpointManager over RUN_DIR/checkpoints/<step>/{params, opt_state, meta, data}.

    Saves are asynchronous (the arrays are copied to host before `save` returns); a checkpoint
    counts only once orbax has committed it, so a process killed mid-save leaves the previous one
    as the latest, and its unfinished directory is removed when the run starts again.
    """

    ITEMS = ("params", "opt_state", "meta", "data")

    def __init__(self, run_dir: Path, keep: int, read_only: bool = False):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.dir = (Path(run_dir) / "checkpoints").absolute()
        self.mgr = ocp.CheckpointManager(self.dir, item_names=self.ITEMS, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=True, create=not read_only, read_only=read_only,
            cleanup_tmp_directories=not read_only))

    def latest(self) -> int | None:
        return self.mgr.latest_step()

    def save(self, step: int, state: dict, meta: dict, data_iter) -> None:
        import grain

        ocp = self.ocp
        self.mgr.save(step, force=True, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state["params"]),
            opt_state=ocp.args.StandardSave({"opt_state": state["opt_state"], "step": state["step"]}),
            meta=ocp.args.JsonSave(meta),
            data=grain.checkpoint.CheckpointSave(data_iter)))

    def restore_latest(self, like: dict, data_iter) -> tuple[dict, dict, int] | None:
        """(state, meta, step) of the newest checkpoint that restores onto the shardings of `like`.

        A checkpoint whose files cannot be read is moved aside (renamed `unrestorable-<step>`) with a
        warning, and the next older one is tried. One of another model (different shapes) is an error.
        """
        for step in sorted(self.mgr.all_steps(), reverse=True):
            try:
                state, meta = self._restore(step, like, data_iter)
            except DamagedCheckpoint as e:
                aside = self.dir / f"{ASIDE}{step}-{time.strftime('%Y%m%d-%H%M%S')}"
                with contextlib.suppress(FileNotFoundError):  # another process of the run moved it first
                    os.replace(self.dir / str(step), aside)
                self.mgr.reload()
                log.warning("checkpoint %d cannot be restored (%s); moved to %s, trying the previous one",
                            step, e, aside)
                continue
            return state, meta, step
        return None

    def _restore(self, step: int, like: dict, data_iter) -> tuple[dict, dict]:
        import grain

        ocp = self.ocp
        step_dir = self.dir / str(step)
        # Shapes first (a config mismatch is an error, not damage), then the read itself.
        params, missing, unexpected = restore_tree(step_dir / "params", _abstract(like["params"]),
                                                   source=str(step_dir))
        if missing or unexpected:
            raise ConfigError(f"{step_dir}: the checkpoint's parameters differ from this run's model: missing "
                              f"{[_name(p) for p in missing][:5] or 'none'}; unexpected "
                              f"{['.'.join(p) for p in unexpected][:5] or 'none'}")
        opt_like = _abstract({"opt_state": like["opt_state"], "step": like["step"]})
        try:
            out = self.mgr.restore(step, args=ocp.args.Composite(
                opt_state=ocp.args.StandardRestore(opt_like), meta=ocp.args.JsonRestore(),
                data=grain.checkpoint.CheckpointRestore(data_iter)))
        except (ConfigError, WeightsError):
            raise
        except READ_ERRORS as e:
            error = _reason(e)
            _drop_failed_tasks()
            raise DamagedCheckpoint(f"{step_dir}: {error}") from None
        if not isinstance(out["meta"], dict) or "tokens" not in out["meta"]:
            raise DamagedCheckpoint(f"{step_dir}: meta has no token count")
        state = {"params": params, "opt_state": out["opt_state"]["opt_state"], "step": out["opt_state"]["step"]}
        return state, out["meta"]

    def restore_optimizer(self, step: int, like_opt_state) -> Any:
        """Only the optimizer state of a checkpoint (to start a new phase with the old moments)."""
        ocp = self.ocp
        out = self.mgr.restore(step, args=ocp.args.Composite(opt_state=ocp.args.StandardRestore(
            _abstract({"opt_state": like_opt_state, "step": jax.ShapeDtypeStruct((), np.int32)}))))
        return out["opt_state"]["opt_state"]

    def close(self) -> None:
        self.mgr.wait_until_finished()
        self.mgr.close()


def _abstract(tree):
    import orbax.checkpoint as ocp

    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def truncate_metrics(path: Path, step: int) -> int:
    """Drops the lines of a metrics.jsonl logged after `step` (atomically); returns how many were dropped."""
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row_step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            dropped += 1  # a line cut by a kill
            continue
        if row_step <= step:
            keep.append(line)
        else:
            dropped += 1
    if dropped:
        write_text(path, "".join(line + "\n" for line in keep))
    return dropped


__all__ = ["locate", "Located", "read_config", "tokenizer_files", "run_steps", "is_run_dir", "restore_tree",
           "save_tree", "stored_arrays", "write_jax_dir", "load_moments", "Checkpoints", "truncate_metrics",
           "DamagedCheckpoint"]
