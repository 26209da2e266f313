"""The README.md model card of an exported Hugging Face directory: what it is, its config, how it was made."""

from __future__ import annotations

from typing import Any

from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.heads import HEADS


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
