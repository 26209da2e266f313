"""Helpers of the input pipeline tests: a word-level tokenizer whose ids are known, documents, configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bcmb_jax.data.config import DataConfig, SourceConfig

N_WORDS = 1000  # word-level fixture vocabulary: w0..w999 -> ids 5..1004


def word_tokenizer(d: Path) -> Path:
    """A word-level tokenizer in `d`: token ids are known exactly, so documents can be traced through packing."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials)} | {f"w{i}": i + 5 for i in range(N_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    tok.save(str(d / "tokenizer.json"))
    return d


def word_docs(n, seed=0, lo=1, hi=40):
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{i}" for i in rng.integers(0, N_WORDS, rng.integers(lo, hi))) for _ in range(n)]


def ids_of(doc):
    return [int(w[1:]) + 5 for w in doc.split()]


def write_lines(path, docs):
    path.write_text("".join(d + "\n" for d in docs))
    return path


def cfg_for(tok_dir, sources, **kw):
    kw = {"seq_len": 32, "mlm_probability": 0.3, **kw}
    return DataConfig(tokenizer=str(tok_dir), sources=[SourceConfig(**s) for s in sources], **kw)


def segments(batch, pad_id=3):
    """Original token sequences of every packed segment (labels hold originals where masked)."""
    orig = np.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    out = []
    for row, seg in zip(orig, batch["segment_ids"]):
        out += [tuple(row[seg == s].tolist()) for s in np.unique(seg[seg > 0])]
    return out
