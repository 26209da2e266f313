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
from bcmb_jax.weights import composer, directories, hf_files, keymap, pretrained, trees

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


def _tokenizer_texts(directory: Path) -> dict[str, str]:
    return {n: p.read_text(encoding="utf-8") for n, p in directories.tokenizer_files(directory).items()}


def _moment_tree(sd: dict[str, np.ndarray], cfg: ModelConfig, task: str, name: str) -> dict:
    """HF-named optimizer moments -> a float32 tree in the parameters' form."""
    tree, report = keymap.hf_to_nnx(sd, cfg, task, source=f"optimizer {name}")
    report.raise_if(f"optimizer {name}")
    return _cast(tree, "float32")


def _num_params(tree) -> int:
    return sum(int(np.asarray(x).size) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------
# HF / Composer -> JAX


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
    _check_dtype(dtype)
    if task is not None and task not in HEADS:
        raise ConversionError(f"--task must be one of {sorted(HEADS)}, got {task!r}")
    src_path = Path(src)
    override = read_json(config, ConversionError, "an HF config.json") if config is not None else {}
    tok_texts = _tokenizer_texts(Path(tokenizer)) if tokenizer is not None else None
    if tokenizer is not None and not tok_texts:
        raise ConversionError(f"{tokenizer}: no tokenizer files ({', '.join(directories.TOKENIZER_FILES)})")
    moments = None
    source_info: dict[str, Any] = {"path": str(src)}

    if src_path.is_file() and src_path.suffix in (".safetensors", ".bin", ".json"):
        raise ConversionError(f"{src_path}: pass the HF directory that holds this file (with its config.json)")
    if src_path.is_file():
        kind = "Composer checkpoint"
        ck = composer.read_checkpoint(src_path)
        if tok_texts is None:
            tok_texts = ck.tokenizer
        if ck.flex_config is None and not override:
            raise ConversionError(f"{src_path}: has no embedded model config (state['integrations']['huggingface']"
                                  "); pass one with --config CONFIG.json")
        ids = composer.special_ids_from_tokenizer(tok_texts)
        if ck.flex_config is not None:
            raw = composer.hf_config_from_flexbert(ck.flex_config, source=f"{src_path} (embedded FlexBERT config)",
                                            special_ids=ids or None)
        else:
            raw = ids
        raw = {**raw, **override}
        cfg = ModelConfig.from_hf_dict(raw, source=f"{src_path} (embedded config{' + --config' if override else ''})")
        src_task = "mlm"
        sd, dropped = ck.state_dict, list(ck.dropped)
        source_info.update(kind="composer", run_name=ck.run_name, timestamp=ck.timestamp)
        if optimizer_state:
            if ck.optimizer is None:
                raise ConversionError(f"{src_path}: --optimizer-state, but the checkpoint has no optimizer state")
            if (task or src_task) != "mlm":
                raise ConversionError("--optimizer-state needs --task mlm (the pretraining model's parameters)")
            moments = composer.moments_from_optimizer(ck.optimizer, cfg, "mlm", f"{src_path} optimizer",
                                               ck.optimizer_name)
    else:
        if optimizer_state:
            raise ConversionError("--optimizer-state: only Composer checkpoints (.pt) carry optimizer state")
        directory = pretrained.resolve(src)
        if list(directory.glob("*.distcp")):
            raise ConversionError(f"{directory}: a sharded (torch.distributed) Composer checkpoint; save or "
                                  "consolidate a monolithic .pt checkpoint and convert that")
        where = directories.locate(directory)
        if where.params is not None:
            raise ConversionError(f"{directory}: already a JAX checkpoint ({where.kind}); use to-hf, or "
                                  "bcmb_jax.from_pretrained to load it")
        kind = "HF directory" if src_path.is_dir() else "HF hub"
        raw = {**read_json(where.config, ConversionError, "an HF config.json"), **override}
        cfg = ModelConfig.from_hf_dict(raw, source=str(where.config) + (" + --config" if override else ""))
        src_task = pretrained.infer_task(raw, None)
        sd, dropped = hf_files.read_hf_weights(directory), []
        if tok_texts is None:
            tok_texts = _tokenizer_texts(directory)
        source_info.update(kind="hf" if src_path.is_dir() else "hub")

    task = task or src_task
    source = str(src)
    sd = _materialize(sd, "reading", progress)
    tree, report = keymap.hf_to_nnx(sd, cfg, task, source=source)
    if report.missing:
        raise WeightsError(f"{source}: the checkpoint lacks tensors the {task!r} model needs: {report.missing}")
    other_heads = [k for k in report.unexpected if k.startswith(HEAD_PREFIXES) and task != src_task]
    unexpected = [k for k in report.unexpected if k not in other_heads]
    if unexpected:
        raise WeightsError(f"{source}: unexpected tensors (not part of a ModernBERT {task!r} model): {unexpected}")
    dropped += other_heads
    source_dtype = _dtype_of(sd.values())
    dtype = dtype or source_dtype
    tree = _cast(tree, dtype)
    source_info.update(dtype=source_dtype, converted=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                       tool="convert_weights.py to-jax")

    moment_trees = None
    if moments is not None:
        mu, nu = (_moment_tree(m, cfg, task, name) for m, name in ((moments.exp_avg, "exp_avg"),
                                                                  (moments.exp_avg_sq, "exp_avg_sq")))
        moment_trees = (moments.step, mu, nu, dict(moments.hparams, missing_state=moments.missing))
    config = pretrained.jax_config(cfg, task, dtype, source=source_info)
    with atomic(out, overwrite) as tmp:
        directories.write_jax_dir(tmp, tree, config, texts=tok_texts, moments=moment_trees)
    out = Path(out)
    opt_info = dict(moments.hparams, missing_state=moments.missing) if moments is not None else None
    return Result(source, kind, out, task, dtype, cfg, len(jax.tree.leaves(tree)), _num_params(tree),
                  sorted(tok_texts or {}), dropped, opt_info, time.time() - t0)


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
    files = directories.tokenizer_files(where.tokenizer) if where.tokenizer else {}
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
        for name, path in files.items():
            (tmp / name).write_bytes(path.read_bytes())
        (tmp / "README.md").write_text(model_card(cfg, task, num_params, produced, out_name=Path(out).name))
    out = Path(out)
    return Result(str(src_path), kind[where.kind], out, task, dtype, cfg, len(sd), num_params, sorted(files),
                  dropped, None, time.time() - t0)


def model_card(cfg: ModelConfig, task: str, num_params: int, produced: dict[str, Any], out_name: str) -> str:
    """README.md for an exported HF directory: what it is, its config, how it was made, how to load it."""
    arch = HEADS[task].hf_architecture
    auto = HEADS[task].auto_class
    n_global = sum(cfg.is_global(i) for i in range(cfg.num_hidden_layers))
    origin = produced.get("origin") or {}
    origin_line = ""
    if origin:
        kinds = {"hf": "HF directory", "hub": "HF hub", "composer": "Composer checkpoint"}
        origin_line = (f"- original source: `{origin.get('path')}` ({kinds.get(origin.get('kind'), origin.get('kind'))}"
                       f", {origin.get('dtype')}), converted to JAX {origin.get('converted', '?')}")
        if origin.get("timestamp"):
            ts = origin["timestamp"]
            origin_line += f"; Composer timestamp batch {ts.get('batch')}, token {ts.get('token')}"
        origin_line += "\n"
    rows = [("architecture", arch), ("parameters", f"{num_params:,}"),
            ("layers / hidden / heads", f"{cfg.num_hidden_layers} / {cfg.hidden_size} / {cfg.num_attention_heads}"),
            ("GeGLU width", cfg.intermediate_size), ("vocabulary", cfg.vocab_size),
            ("attention", f"{n_global} global layers (RoPE theta {cfg.global_rope_theta:g}), "
                          f"{cfg.num_hidden_layers - n_global} local (window {cfg.local_attention}, theta "
                          f"{cfg.local_rope_theta:g})"),
            ("max positions", cfg.max_position_embeddings), ("norm eps", cfg.norm_eps),
            ("dtype", produced["dtype"])]
    if task in ("sequence", "token"):
        rows += [("labels", ", ".join(cfg.labels)), ("pooling", cfg.classifier_pooling if task == "sequence" else "-")]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    usage_tf = {
        "mlm": f'fill = pipeline("fill-mask", model="{out_name}")\nprint(fill("The patient was given [MASK]."))',
        "sequence": f'clf = pipeline("text-classification", model="{out_name}")\nprint(clf("No acute distress."))',
        "token": f'ner = pipeline("token-classification", model="{out_name}")\nprint(ner("Seen by Dr. Smith."))',
        "base": f'tok = AutoTokenizer.from_pretrained("{out_name}")\n'
                f'model = {auto}.from_pretrained("{out_name}")\n'
                'hidden = model(**tok("No acute distress.", return_tensors="pt")).last_hidden_state',
    }[task]
    return f"""---
library_name: transformers
pipeline_tag: {HEADS[task].pipeline_tag}
tags:
- modernbert
- bcmb-jax
---

# {out_name}

A ModernBERT model ({arch}, {num_params:,} parameters) exported from a bcmb-jax (JAX/Flax NNX)
checkpoint. The weights are those of the checkpoint, unchanged; the masked-LM decoder is tied to the
token embeddings and stored once.

## Configuration

| setting | value |
|---|---|
{table}

## How it was produced

- tool: bcmb-jax `convert_weights.py to-hf` ({_version()}), {produced['date']}
- source: `{produced['source']}` ({produced['source_kind']}), stored as {produced['dtype']}
{origin_line}
## Loading

With transformers (4.48 or newer):

```python
from transformers import AutoTokenizer, {auto}, pipeline

model = {auto}.from_pretrained("{out_name}")
{usage_tf}
```

With bcmb-jax:

```python
import bcmb_jax

model = bcmb_jax.from_pretrained("{out_name}")  # task "{task}"
```
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "version " + version("bcmb-jax")
    except PackageNotFoundError:
        return "source checkout"


__all__ = ["to_jax", "to_hf", "model_card", "Result", "DTYPES"]
