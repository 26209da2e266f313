"""Checkpoint conversion: `to_jax` (HF directory / hub id / Composer .pt -> JAX directory) and `to_hf`
(JAX directory / train run / step -> HF directory with a model card).

Both go through `keymap.KEY_MAP` and never change a value: float32 -> float32 and bfloat16 ->
bfloat16 are copies (transposes for Linear weights), so HF -> JAX -> HF is bit-identical. Outputs
are written to a temporary sibling and renamed at the end (`atomic.atomic`).
"""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bcmb_jax.atomic import atomic, read_json
from bcmb_jax.errors import ConversionError, WeightsError
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.heads import HEADS
from bcmb_jax.weights import composer, directories, hf_files, keymap, model_card, pretrained, trees

DTYPES = ("float32", "bfloat16")
PROGRESS_BYTES = 64 << 20  # show a progress bar from this checkpoint size on
HEAD_PREFIXES = ("head.", "decoder.", "classifier.")


@dataclass
class Result:
    """What a conversion did, for the CLI to print."""

    source: str
    source_kind: str
    out: Path
    task: str
    dtype: str
    cfg: ModelConfig
    num_tensors: int
    num_params: int
    tokenizer: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # source entries not converted (other heads, buffers)
    optimizer: dict[str, Any] | None = None
    seconds: float = 0.0

    def lines(self) -> list[str]:
        c = self.cfg
        out = [f"{self.source} ({self.source_kind}) -> {self.out}",
               f"  task {self.task} ({HEADS[self.task].hf_architecture}): {c.num_hidden_layers} layers, hidden "
               f"{c.hidden_size}, heads {c.num_attention_heads}, vocab {c.vocab_size}",
               f"  {self.num_params:,} parameters in {self.num_tensors} tensors, {self.dtype}",
               f"  tokenizer: {', '.join(self.tokenizer) if self.tokenizer else 'none'}"]
        if self.dropped:
            shown = ", ".join(self.dropped[:6]) + (f", ... ({len(self.dropped)} in all)" if len(self.dropped) > 6
                                                   else "")
            out.append(f"  not converted: {shown}")
        if self.optimizer is not None:
            o = self.optimizer
            hp = ", ".join(f"{k} {o[k]}" for k in ("lr", "betas", "eps", "weight_decay", "max_lr") if k in o)
            out.append(f"  optimizer: {o.get('optimizer')} at step {o.get('step')} ({hp})"
                       + (f"; {len(o['missing_state'])} parameters had no state" if o.get("missing_state") else ""))
        out.append(f"  done in {self.seconds:.1f} s")
        return out


def _progress(items: list, total_bytes: int, desc: str, enabled: bool):
    if not enabled or total_bytes < PROGRESS_BYTES:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="tensor", leave=False)


def _materialize(sd: dict[str, np.ndarray], desc: str, progress: bool) -> dict[str, np.ndarray]:
    """Reads every (possibly memory-mapped) array into memory, with a progress bar on big checkpoints."""
    total = sum(np.asarray(v).nbytes for v in sd.values())
    return {k: np.array(sd[k]) for k in _progress(list(sd), total, desc, progress)}


def _cast(tree, dtype: str):
    import ml_dtypes

    target = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    if isinstance(tree, dict):
        return {k: _cast(v, dtype) for k, v in tree.items()}
    x = np.asarray(tree)
    return x if x.dtype == target else x.astype(target)


def _dtype_of(arrays) -> str:
    """The storage dtype name of a set of float arrays: bfloat16 if all are, else float32."""
    kinds = {str(np.asarray(a).dtype) for a in arrays}
    return "bfloat16" if kinds == {"bfloat16"} else "float32"


def _check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"--dtype must be one of {DTYPES}, got {dtype!r}")


def _moment_tree(sd: dict[str, np.ndarray], cfg: ModelConfig, task: str, name: str) -> dict:
    """HF-named optimizer moments -> a float32 tree in the parameters' form."""
    tree, report = keymap.hf_to_nnx(sd, cfg, task, source=f"optimizer {name}")
    report.raise_if(f"optimizer {name}")
    return _cast(tree, "float32")


def _num_params(tree) -> int:
    return sum(int(np.asarray(x).size) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------
# HF / Composer -> JAX


@dataclass
class _Source:
    """What a reader found: HF-named tensors, the config, the tokenizer and (Composer) the moments."""

    kind: str  # "Composer checkpoint" | "HF directory" | "HF hub"
    cfg: ModelConfig
    task: str  # the head the source carries
    state_dict: dict[str, np.ndarray]
    dropped: list[str]
    tokenizer: dict[str, str]
    info: dict[str, Any]  # recorded in config.json's "bcmb_jax" source entry
    moments: composer.Moments | None = None


def _tokenizer_option(tokenizer: str | Path | None) -> dict[str, str] | None:
    """The files of `--tokenizer DIR`, which must hold a tokenizer.json; None when not given."""
    if tokenizer is None:
        return None
    texts = directories.tokenizer_texts(Path(tokenizer))
    if "tokenizer.json" not in texts:
        raise ConversionError(f"{tokenizer}: --tokenizer holds no tokenizer.json (found: {sorted(texts) or 'no files'}"
                              "); expected a tokenizer directory as transformers saves it")
    return texts


def _read_composer(path: Path, override: dict, tokenizer: dict[str, str] | None, optimizer_state: bool,
                   task: str | None) -> _Source:
    ck = composer.read_checkpoint(path)
    texts = ck.tokenizer if tokenizer is None else tokenizer
    if ck.flex_config is None and not override:
        raise ConversionError(f"{path}: has no embedded model config (state['integrations']['huggingface']); "
                              "pass one with --config CONFIG.json")
    ids = composer.special_ids_from_tokenizer(texts)
    raw = ids if ck.flex_config is None else composer.hf_config_from_flexbert(
        ck.flex_config, source=f"{path} (embedded FlexBERT config)", special_ids=ids or None)
    cfg = ModelConfig.from_hf_dict({**raw, **override},
                                   source=f"{path} (embedded config{' + --config' if override else ''})")
    moments = None
    if optimizer_state:
        if ck.optimizer is None:
            raise ConversionError(f"{path}: --optimizer-state, but the checkpoint has no optimizer state")
        if (task or "mlm") != "mlm":
            raise ConversionError("--optimizer-state needs --task mlm (the pretraining model's parameters)")
        moments = composer.moments_from_optimizer(ck.optimizer, cfg, "mlm", f"{path} optimizer", ck.optimizer_name)
    info = {"path": str(path), "kind": "composer", "run_name": ck.run_name, "timestamp": ck.timestamp}
    return _Source("Composer checkpoint", cfg, "mlm", ck.state_dict, list(ck.dropped), texts, info, moments)


def _read_hf(src: str | Path, override: dict, tokenizer: dict[str, str] | None, optimizer_state: bool) -> _Source:
    if optimizer_state:
        raise ConversionError("--optimizer-state: only Composer checkpoints (.pt) carry optimizer state")
    directory = pretrained.local_directory(src)
    if list(directory.glob("*.distcp")):
        raise ConversionError(f"{directory}: a sharded (torch.distributed) Composer checkpoint; save or "
                              "consolidate a monolithic .pt checkpoint and convert that")
    where = directories.locate(directory)
    if where.params is not None:
        raise ConversionError(f"{directory}: already a JAX checkpoint ({where.kind}); use to-hf, or "
                              "bcmb_jax.from_pretrained to load it")
    raw = {**read_json(where.config, ConversionError, "an HF config.json"), **override}
    cfg = ModelConfig.from_hf_dict(raw, source=str(where.config) + (" + --config" if override else ""))
    local = Path(src).is_dir()
    texts = directories.tokenizer_texts(directory) if tokenizer is None else tokenizer
    return _Source("HF directory" if local else "HF hub", cfg, pretrained.infer_task(raw, None),
                   hf_files.read_hf_weights(directory), [], texts, {"path": str(src), "kind": "hf" if local else "hub"})


def _params_tree(source: _Source, task: str, name: str, progress: bool) -> tuple[dict, list[str]]:
    """The source's tensors as the `task` model's parameter tree; (tree, tensors left out)."""
    sd = _materialize(source.state_dict, "reading", progress)
    tree, report = keymap.hf_to_nnx(sd, source.cfg, task, source=name)
    if report.missing:
        raise WeightsError(f"{name}: the checkpoint lacks tensors the {task!r} model needs: {report.missing}")
    other_heads = [k for k in report.unexpected if k.startswith(HEAD_PREFIXES) and task != source.task]
    unexpected = [k for k in report.unexpected if k not in other_heads]
    if unexpected:
        raise WeightsError(f"{name}: unexpected tensors (not part of a ModernBERT {task!r} model): {unexpected}")
    return tree, source.dropped + other_heads


def _check_out(src: str | Path, out: str | Path) -> None:
    """OUT may not be SRC or a folder holding it: replacing OUT would delete the source being read."""
    s, o = Path(src), Path(out)
    if s.exists() and o.exists() and (o.resolve() == s.resolve() or o.resolve() in s.resolve().parents):
        what = "is SRC" if o.resolve() == s.resolve() else f"contains SRC {s}"
        raise ConversionError(f"{o}: OUT {what}; writing it would delete the checkpoint being converted "
                              "(choose another OUT)")


def to_jax(src: str | Path, out: str | Path, *, dtype: str | None = None, task: str | None = None,
           config: str | Path | None = None, tokenizer: str | Path | None = None, optimizer_state: bool = False,
           overwrite: bool = False, progress: bool = True) -> Result:
    """Converts an HF directory, an HF hub id or a Composer `.pt` checkpoint into a JAX checkpoint directory.

    dtype: storage dtype of params/ (default: the source's, bfloat16 only if every tensor is).
    task: which head to convert (default: the source's architecture; Composer: "mlm"); other
    heads' tensors are left out and listed. config: an HF config.json whose keys override the
    source's (for Composer checkpoints, the config mapped from the embedded FlexBERT one).
    tokenizer: directory of tokenizer files (default: the source's). optimizer_state: also convert
    the Composer optimizer moments (OUT/optimizer/, OUT/optimizer.json).
    """
    t0 = time.time()
    _check_out(src, out)
    _check_dtype(dtype)
    if task is not None and task not in HEADS:
        raise ConversionError(f"--task must be one of {sorted(HEADS)}, got {task!r}")
    path = Path(src)
    if not path.exists() and path.suffix in (".pt", ".ckpt", ".bin", ".safetensors", ".json"):
        raise ConversionError(f"{path}: no such file (expected a Composer .pt checkpoint or an HF directory)")
    override = read_json(config, ConversionError, "an HF config.json") if config is not None else {}
    texts = _tokenizer_option(tokenizer)
    if path.is_file() and path.suffix in (".safetensors", ".bin", ".json"):
        raise ConversionError(f"{path}: pass the HF directory that holds this file (with its config.json)")
    source = (_read_composer(path, override, texts, optimizer_state, task) if path.is_file()
              else _read_hf(src, override, texts, optimizer_state))
    task = task or source.task
    tree, dropped = _params_tree(source, task, str(src), progress)
    source_dtype = _dtype_of(source.state_dict.values())
    dtype = dtype or source_dtype
    tree = _cast(tree, dtype)
    info = {**source.info, "dtype": source_dtype, "tool": "convert_weights.py to-jax",
            "converted": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    moments, opt_info = None, None
    if source.moments is not None:
        m = source.moments
        mu, nu = (_moment_tree(x, source.cfg, task, name) for x, name in ((m.exp_avg, "exp_avg"),
                                                                        (m.exp_avg_sq, "exp_avg_sq")))
        opt_info = dict(m.hparams, missing_state=m.missing)
        moments = (m.step, mu, nu, opt_info)
    outside = source.cfg.special_ids_outside_vocabulary()
    if outside:
        raise ConversionError(f"{src}: special-token ids {outside} are outside its vocabulary of "
                              f"{source.cfg.vocab_size} (ModernBERT's defaults; the source says none), and "
                              "transformers would refuse the export; pass the run's tokenizer with --tokenizer DIR, "
                              "or the ids with --config CONFIG.json")
    with atomic(out, overwrite) as tmp:
        directories.write_jax_dir(tmp, tree, pretrained.jax_config(source.cfg, task, dtype, source=info),
                                  texts=source.tokenizer, moments=moments)
    return Result(str(src), source.kind, Path(out), task, dtype, source.cfg, len(jax.tree.leaves(tree)),
                  _num_params(tree), sorted(source.tokenizer or {}), dropped, opt_info, time.time() - t0)


# ---------------------------------------------------------------------------------------------
# JAX -> HF


def to_hf(src: str | Path, out: str | Path, *, task: str | None = None, dtype: str | None = None,
          overwrite: bool = False, progress: bool = True) -> Result:
    """Exports a JAX directory, a train run (its latest step) or a step directory as an HF directory.

    Writes config.json (transformers-5 layout plus the keys older versions read), model.safetensors
    (the tied decoder weight not duplicated), the tokenizer files and a README.md model card.
    task: the head to export (default: the saved one; "base" drops the head). dtype: default the
    stored one.
    """
    t0 = time.time()
    _check_out(src, out)
    _check_dtype(dtype)
    if task is not None and task not in HEADS:
        raise ConversionError(f"--task must be one of {sorted(HEADS)}, got {task!r}")
    src_path = Path(src)
    if src_path.is_file():
        raise ConversionError(f"{src_path}: to-hf takes a JAX checkpoint directory, a train run directory or "
                              "RUN_DIR/checkpoints/<step>, not a file")
    where = directories.locate(src_path)
    if where.params is None:
        raise ConversionError(f"{src_path}: already an HF directory (no params/); nothing to export")
    cfg, raw = directories.read_config(where)
    info = raw.get("bcmb_jax") or {}
    saved_task = info.get("task", "mlm")
    task = task or saved_task
    stored_classifier = trees.stored_arrays(where.params).get(("classifier", "bias"))
    if stored_classifier is not None and task in ("sequence", "token"):
        n = int(stored_classifier.shape[0])
        if n != cfg.num_labels:
            cfg = cfg.replace(num_labels=n, id2label=cfg.id2label if len(cfg.id2label) == n else ())
    _, abstract, _ = pretrained.abstract_model(cfg, task)
    tree, missing, unexpected = trees.restore_tree(where.params, abstract, stored_dtype=True)
    if missing:
        names = [".".join(map(str, p)) for p in missing]
        raise WeightsError(f"{where.params}: lacks parameters the {task!r} model needs: {names[:8]}"
                             + (f" ({len(names)} in all)" if len(names) > 8 else ""))
    stored = _dtype_of(jax.tree.leaves(tree))
    dtype = dtype or stored
    total = sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))
    sd = keymap.nnx_to_hf(tree, cfg, task)
    dropped = sorted(".".join(p) for p in unexpected)
    sd = {k: _cast(sd[k], dtype) for k in _progress(list(sd), total, "converting", progress)}
    if task == "base":  # HF ModernBertModel names its tensors without the `model.` prefix
        sd = {k[len("model."):]: v for k, v in sd.items()}
    hf_config = cfg.to_hf_dict(HEADS[task].hf_architecture)
    hf_config["dtype"] = hf_config["torch_dtype"] = dtype
    kind = {"jax": "JAX directory", "run": f"train run, step {where.step}", "step": f"train step {where.step}"}
    produced = {"source": str(src_path), "source_kind": kind[where.kind], "dtype": dtype,
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "origin": info.get("source")}
    num_params = sum(int(v.size) for v in sd.values())

    with atomic(out, overwrite) as tmp:
        tmp.mkdir(parents=True)
        hf_files.write_safetensors(sd, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        files = directories.copy_tokenizer(where.tokenizer, tmp) if where.tokenizer else []
        (tmp / "README.md").write_text(model_card.model_card(cfg, task, num_params, produced, out_name=Path(out).name))
    out = Path(out)
    return Result(str(src_path), kind[where.kind], out, task, dtype, cfg, len(sd), num_params, files,
                  dropped, None, time.time() - t0)


__all__ = ["to_jax", "to_hf", "Result", "DTYPES"]
