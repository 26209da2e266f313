"""Tokenizer loading, the one place that reads special-token ids and applies the byte-level prefix space.

`load_tokenizer(dir)` reads `tokenizer.json` (+ `special_tokens_map.json`, `tokenizer_config.json`) with the
`tokenizers` library; `load_any_tokenizer(dir)` falls back to transformers' `AutoTokenizer` (never remote
code) for tokenizers whose special tokens are not named like ModernBERT's (BERT's WordPiece, RoBERTa's BPE).
With `prefix_space`, ByteLevel pre-tokenizers get add_prefix_space=True: what
`AutoTokenizer.from_pretrained(..., add_prefix_space=True)` did in the original runs with transformers 4.x
(transformers 5 ignores that argument for plain fast tokenizers).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bcmb_jax.atomic import read_json
from bcmb_jax.errors import DataError

# tokenizer_config.json's model_max_length at or above this means "no limit" (HF's VERY_LARGE_INTEGER);
# the paper's fine-tuning code used the value only below it.
NO_LIMIT = 10_000
_DEFAULT_NAMES = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]"}


@dataclass
class TokenizerInfo:
    """A `tokenizers.Tokenizer` plus the ids the pipelines need."""

    tokenizer: Any
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int | None  # None only for a tokenizer without a mask token (load_any_tokenizer)
    special_ids: tuple[int, ...]
    vocab_size: int  # including added tokens
    base_vocab_size: int
    byte_level: bool  # a ByteLevel pre-tokenizer (prefix-space handling applies)
    prefix_space: bool
    fingerprint: str
    model_max_length: int | None = None  # tokenizer_config.json's value, None when absent or >= NO_LIMIT

    @property
    def dtype(self):
        return np.uint16 if self.vocab_size <= 2**16 else np.uint32


def special_names(tok_dir: Path) -> dict[str, str]:
    """{cls,sep,pad,mask}_token: the token strings of special_tokens_map.json (ModernBERT's by default)."""
    names = dict(_DEFAULT_NAMES)
    path = tok_dir / "special_tokens_map.json"
    if path.is_file():
        d = read_json(path, DataError)
        for k in names:
            v = d.get(k)
            names[k] = v.get("content", names[k]) if isinstance(v, dict) else v or names[k]
    return names


def model_max_length(tok_dir: Path) -> int | None:
    """tokenizer_config.json's model_max_length when below `NO_LIMIT`, else None."""
    path = tok_dir / "tokenizer_config.json"
    n = read_json(path, DataError).get("model_max_length") if path.is_file() else None
    return int(n) if isinstance(n, int | float) and n < NO_LIMIT else None


def set_prefix_space(node: Any, on: bool = True) -> bool:
    """Sets add_prefix_space on every ByteLevel pre-tokenizer in a JSON tree (and, when `on` is False,
    turns off a Metaspace that prepends a space to the text); True if a ByteLevel was found."""
    found = False
    if isinstance(node, dict):
        if node.get("type") == "ByteLevel":
            node["add_prefix_space"] = on
            found = True
        elif node.get("type") == "Metaspace" and node.get("replacement") == " " and not on:
            node["prepend_scheme"] = "never"
        for v in node.values():
            found |= set_prefix_space(v, on)
    elif isinstance(node, list):
        for v in node:
            found |= set_prefix_space(v, on)
    return found


def _from_spec(spec: dict, prefix_space: bool):
    from tokenizers import Tokenizer

    byte_level = '"ByteLevel"' in json.dumps(spec.get("pre_tokenizer"))
    if byte_level:
        set_prefix_space(spec["pre_tokenizer"], prefix_space)
    text = json.dumps(spec, sort_keys=True)
    return Tokenizer.from_str(text), byte_level, hashlib.sha256(text.encode()).hexdigest()


def load_tokenizer(path: str | Path, prefix_space: bool = True, *, mask_token_id: int | None = None,
                   pad_token_id: int | None = None) -> TokenizerInfo:
    """Loads `path`/tokenizer.json (or the file itself) with ModernBERT-style special tokens. With
    `prefix_space`, ByteLevel pre-tokenizers get add_prefix_space=True; without it, no leading space is added."""
    if not str(path):
        raise DataError("data.tokenizer is not set (expected a directory holding tokenizer.json)")
    path = Path(path).expanduser()
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"tokenizer not found: {file} (expected a tokenizer.json or a directory holding one)")
    try:
        tok, byte_level, fingerprint = _from_spec(read_json(file, DataError), prefix_space)
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for a malformed spec
        if isinstance(e, DataError):
            raise
        raise DataError(f"{file}: not a valid tokenizers file ({' '.join(str(e).split())[:200]})") from None
    names = special_names(file.parent)

    def tid(key: str, override: int | None) -> int:
        if override is not None:
            return int(override)
        i = tok.token_to_id(names[key])
        if i is None:
            raise DataError(f"{file}: the tokenizer has no {key} {names[key]!r}")
        return i

    ids = [tid("cls_token", None), tid("sep_token", None), tid("pad_token", pad_token_id),
           tid("mask_token", mask_token_id)]
    special = sorted({i for i, t in tok.get_added_tokens_decoder().items() if t.special} | set(ids))
    return TokenizerInfo(tok, *ids, special_ids=tuple(special), vocab_size=tok.get_vocab_size(True),
                         base_vocab_size=tok.get_vocab_size(False), byte_level=byte_level,
                         prefix_space=prefix_space and byte_level, fingerprint=fingerprint,
                         model_max_length=model_max_length(file.parent))


def load_any_tokenizer(directory: str | Path, prefix_space: bool = True) -> TokenizerInfo:
    """`load_tokenizer`, or for other special-token names any fast HF tokenizer via `AutoTokenizer`."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: tokenizer directory does not exist")
    if (d / "tokenizer.json").is_file():
        try:
            return load_tokenizer(d, prefix_space)
        except DataError as e:
            if "the tokenizer has no" not in str(e):
                raise
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(d), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{d}: no usable tokenizer ({type(e).__name__}: {e})") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None or hf.cls_token_id is None or hf.sep_token_id is None:
        raise DataError(f"{d}: the tokenizer needs a fast (tokenizers) backend and [CLS]/[SEP]-like tokens")
    tok, byte_level, fingerprint = _from_spec(json.loads(backend.to_str()), prefix_space)
    pad = hf.pad_token_id if hf.pad_token_id is not None else hf.sep_token_id
    ids = {hf.cls_token_id, hf.sep_token_id, pad} | ({hf.mask_token_id} if hf.mask_token_id is not None else set())
    return TokenizerInfo(tok, hf.cls_token_id, hf.sep_token_id, pad, hf.mask_token_id,
                         special_ids=tuple(sorted(set(hf.all_special_ids) | ids)),
                         vocab_size=tok.get_vocab_size(True), base_vocab_size=tok.get_vocab_size(False),
                         byte_level=byte_level, prefix_space=prefix_space and byte_level, fingerprint=fingerprint,
                         model_max_length=model_max_length(d))
