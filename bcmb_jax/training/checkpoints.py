"""Run checkpoints: RUN_DIR/checkpoints/<step>/{params, opt_state, meta, data} with orbax's CheckpointManager.

Saves are asynchronous and count once orbax committed them. A checkpoint that cannot be read is moved
aside (`checkpoints/unrestorable-<step>-<time>`), never deleted, and the newest one that restores is used.
`truncate_metrics` drops the metrics.jsonl lines logged after the step a run resumes from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bcmb_jax.atomic import write_text
from bcmb_jax.errors import ConfigError, DamagedCheckpoint, WeightsError
from bcmb_jax.weights.trees import READ_ERRORS, drop_failed_tasks, param_name, read_error_reason, restore_tree

log = logging.getLogger(__name__)

ASIDE = "unrestorable-"  # prefix of run checkpoints moved aside because they could not be restored


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

        A checkpoint whose files cannot be read is moved aside (renamed `unrestorable-<step>-<time>`) with a
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
                              f"{[param_name(p) for p in missing][:5] or 'none'}; unexpected "
                              f"{['.'.join(p) for p in unexpected][:5] or 'none'}")
        opt_like = _abstract({"opt_state": like["opt_state"], "step": like["step"]})
        try:
            out = self.mgr.restore(step, args=ocp.args.Composite(
                opt_state=ocp.args.StandardRestore(opt_like), meta=ocp.args.JsonRestore(),
                data=grain.checkpoint.CheckpointRestore(data_iter)))
        except (ConfigError, WeightsError):
            raise
        except READ_ERRORS as e:
            error = read_error_reason(e)
            drop_failed_tasks()
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
