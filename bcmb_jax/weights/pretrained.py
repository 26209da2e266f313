"""Loading and saving whole models: `from_pretrained` and `save_jax`.

`from_pretrained` accepts every checkpoint form `checkpoint.locate` knows (an HF directory or hub
id, a JAX checkpoint directory, a train run or one of its steps): it reads the config, builds the
model abstractly (`nnx.eval_shape`), restores the parameters into that shape (JAX forms) or converts
the HF tensors through the key map, initialises only what the checkpoint lacks (a new task head),
and merges. The parameters are the model's pure dict (`nnx.to_pure_dict`), the project's one form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from bcmb_jax.atomic import atomic
from bcmb_jax.errors import ConfigError, WeightsError
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.heads import BY_ARCHITECTURE, HEADS
from bcmb_jax.modeling.model import build
from bcmb_jax.modeling.state import split_model
from bcmb_jax.weights import directories, hf_files, keymap, trees


def local_directory(path_or_id: str | Path) -> Path:
    """A local directory as is; otherwise an HF hub id downloaded (honours HF_HUB_OFFLINE)."""
    p = Path(path_or_id)
    if p.is_dir():
        return p
    if p.exists():
        raise WeightsError(f"{p}: expected a directory (HF model or JAX checkpoint), got a file")
    name = str(path_or_id)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise WeightsError(f"{name}: no such directory, and not a hub id of the form org/name")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.bin"]))
    except Exception as e:  # noqa: BLE001 - network/offline/auth errors all end here
        raise WeightsError(f"{name}: not a local directory and could not be fetched from the hub "
                             f"({type(e).__name__}: {e})") from None


def infer_task(raw: dict[str, Any], task: str | None) -> str:
    if task is not None:
        if task not in HEADS:
            raise ConfigError(f"unknown task {task!r}; expected one of {sorted(HEADS)}")
        return task
    if "bcmb_jax" in raw:
        return raw["bcmb_jax"]["task"]
    for arch in raw.get("architectures") or []:
        if arch in BY_ARCHITECTURE:
            return BY_ARCHITECTURE[arch].name
    return "mlm"


def read_model_config(path: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, raw config.json) of any checkpoint form or hub id."""
    return directories.read_config(directories.locate(local_directory(path)))


def abstract_model(cfg: ModelConfig, task: str, **build_kwargs) -> tuple[nnx.GraphDef, dict, nnx.State]:
    """(graphdef, parameters as a pure dict of ShapeDtypeStructs, abstract other state) without computing."""
    return split_model(nnx.eval_shape(lambda: build(cfg, task, **build_kwargs)))


def fresh_state(cfg: ModelConfig, task: str, paths: list[tuple], **build_kwargs) -> tuple[dict, nnx.State]:
    """(the freshly initialised parameters at `paths`, the RNG streams) of `build(cfg, task, ...)`.

    Jitted, so only what is returned is computed (not the whole random init).
    """
    def init():
        _, params, rest = split_model(build(cfg, task, **build_kwargs))
        flat = flatten_dict(params)
        return unflatten_dict({p: flat[p] for p in paths}), rest

    return jax.jit(init)()


def from_pretrained(path: str | Path, task: str | None = None, dtype: Any = jnp.float32, *,
                    num_labels: int | None = None, config_overrides: dict[str, Any] | None = None,
                    strict: bool = False, seed: int = 0, remat: bool = False, output_loading_info: bool = False,
                    runtime=None):
    """Loads an HF directory, hub id, JAX checkpoint directory or train run/step as an NNX model (eval mode).

    task: "mlm" | "sequence" | "token" | "base"; default from `config.architectures` (HF) or the
    saved task (JAX). Heads the checkpoint lacks (e.g. `classifier.*` when an MLM checkpoint is
    loaded for a task) are freshly initialised from `seed`; `strict=True` makes that an error.
    `dtype` is the compute dtype; parameters are kept in float32. With `output_loading_info=True`
    returns (model, LoadReport) - the HF names the checkpoint lacked and those it had unused. `runtime`: how the model
    computes (`runtime.Runtime` or an attention backend name: "blocked" | "gpu" | "reference").
    """
    where = directories.locate(local_directory(path))
    cfg, raw = directories.read_config(where)
    task = infer_task(raw, task)
    if num_labels is not None and num_labels != cfg.num_labels:
        cfg = cfg.replace(num_labels=num_labels, id2label=())
    if config_overrides:
        cfg = cfg.replace(**config_overrides)
    build_kwargs = dict(seed=seed, dtype=dtype, remat=remat, runtime=runtime)
    graphdef, abstract, _ = abstract_model(cfg, task, **build_kwargs)
    hf_of = {e.path: e.hf for e in keymap.key_map(cfg, task)}
    if where.params is not None:
        source = str(where.params)
        tree, missing, unexpected = trees.restore_tree(where.params, abstract, source=source)
        saved_task = raw.get("bcmb_jax", {}).get("task", task)
        saved = {tuple(map(str, e.path)): e.hf for t in {task, saved_task} for e in keymap.key_map(cfg, t)}
        report = keymap.LoadReport(sorted(hf_of[p] for p in missing),
                                   sorted(saved.get(s, ".".join(s)) for s in unexpected))
    else:
        source = str(where.root)
        tree, report = keymap.hf_to_nnx(hf_files.read_hf_weights(where.root), cfg, task, source=source)
        missing = [p for p, hf in hf_of.items() if hf in set(report.missing)]
    allow = () if strict else ("classifier.", "head.", "decoder.")
    report.raise_if(source, allow_missing=allow) if strict else _check_backbone(report, source, allow)
    fresh, rest = fresh_state(cfg, task, missing, **build_kwargs)
    want = flatten_dict(abstract)  # parameters are kept in their float32 master dtype
    flat = {p: jnp.asarray(x, want[p].dtype) for p, x in flatten_dict(tree).items()} | flatten_dict(fresh)
    model = nnx.merge(graphdef, unflatten_dict(flat), rest)
    model.eval()
    return (model, report) if output_loading_info else model


def _check_backbone(report: keymap.LoadReport, source: str, allow: tuple[str, ...]) -> None:
    missing = [k for k in report.missing if not k.startswith(allow)]
    if missing:
        raise WeightsError(f"{source}: checkpoint lacks backbone weights: {missing}")


def params_as(tree: dict, dtype: str) -> dict:
    """A parameter tree as numpy arrays of a storage dtype ("float32" | "bfloat16")."""
    return jax.tree.map(lambda x: np.asarray(jnp.asarray(x, jnp.dtype(dtype))), tree)


def jax_config(cfg: ModelConfig, task: str, dtype: str, **extra) -> dict[str, Any]:
    """The config.json of a JAX checkpoint directory or run: HF keys plus {"bcmb_jax": {task, dtype, ...}}."""
    config = cfg.to_hf_dict(HEADS[task].hf_architecture)
    config["bcmb_jax"] = {"task": task, "dtype": dtype, **extra}
    return config


def save_jax(model, out: str | Path, *, dtype: str = "float32", tokenizer_dir: str | Path | None = None,
             overwrite: bool = False) -> Path:
    """Saves an NNX model as a JAX checkpoint directory, atomically (temp sibling, then rename)."""
    tree = params_as(split_model(model)[1], dtype)
    texts = directories.tokenizer_texts(tokenizer_dir) if tokenizer_dir else {}
    with atomic(out, overwrite) as tmp:
        directories.write_jax_dir(tmp, tree, jax_config(model.cfg, model.task, dtype), texts=texts)
    return Path(out)


__all__ = ["from_pretrained", "save_jax", "read_model_config", "abstract_model", "fresh_state", "local_directory",
           "infer_task", "jax_config", "params_as"]
