"""Parameter trees on disk: orbax save and restore of nested dicts of arrays, onto any mesh.

Parameters are nested pure dicts keyed by NNX path (layer indices as ints); orbax stores every key as a
string, and `restore_tree` reads a saved tree into an abstract tree of the same form (shapes checked,
sharded where the abstract leaves carry a sharding). Unreadable files are a `DamagedCheckpoint`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from bcmb_jax.errors import DamagedCheckpoint, WeightsError

# What orbax / tensorstore / grain raise for files that are missing, cut short or not what they should be
# (tensorstore's errors are ValueErrors; JSON decoding too). Anything else is a bug and propagates.
READ_ERRORS = (ValueError, OSError, EOFError)


# ---------------------------------------------------------------------------------------------
# Parameter trees


def param_name(path: tuple) -> str:
    return ".".join(map(str, path))


def read_error_reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}{' ...' if len(text) > 300 else ''}"


def drop_failed_tasks() -> None:
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
        raise DamagedCheckpoint(f"{path}: cannot read orbax checkpoint metadata ({read_error_reason(e)}); "
                                "truncated or corrupt?") from None
    finally:
        absl.setLevel(level)
    if meta is None or getattr(meta, "tree", None) is None:
        drop_failed_tasks()
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
            raise WeightsError(f"{source}: parameter {param_name(p)} has shape {list(meta.shape)} in the checkpoint, "
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
        error = read_error_reason(e)
        drop_failed_tasks()
        raise DamagedCheckpoint(f"{path}: cannot restore orbax checkpoint ({error}); truncated or corrupt?") from None
    return tree, missing, unexpected


def save_tree(path: str | Path, tree: dict) -> None:
    """Saves a tree of arrays with orbax at `path` (which must not exist)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(Path(path).absolute(), tree)
