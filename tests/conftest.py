"""Shared fixtures: random Hugging Face ModernBERT models and a tiny JAX checkpoint, built locally (no hub access)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# One persistent compilation cache per test run, shared by the xdist workers and by the scripts tests start (they
# inherit the environment): the same tiny models are compiled in many processes. Set before jax is imported.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = Path(tempfile.gettempdir()) / f"bcmb-jax-tests-{os.getpid()}-compile-cache"
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(_CACHE)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(4 << 30)  # a size limit turns on the cache's file lock
else:
    _CACHE = None

import jax
import numpy as np
import pytest
from task_helpers import write_conll_task, write_csv_task

jax.config.update("jax_default_matmul_precision", "highest")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]  # the repository
SHARED_DATA = ROOT.parent / "shared" / "data"
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
            local_attention=16, max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            cls_token_id=1, sep_token_id=2)
# The model of tiny train.py runs (model.overrides): the 512-token vocabulary of the test tokenizers.
TINY_RUN_MODEL = dict(vocab_size=512, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
                      local_attention=16, max_position_embeddings=256, pad_token_id=3, cls_token_id=1, sep_token_id=2,
                      bos_token_id=1, eos_token_id=2, mask_token_id=4)
# A tiny bcmb_jax ModelConfig (fine-tuning, evaluate.py); the `tiny` fixture's checkpoint.
TINY_MODEL = dict(vocab_size=600, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                  local_attention=16, max_position_embeddings=512, pad_token_id=3, cls_token_id=1, sep_token_id=2,
                  bos_token_id=1, eos_token_id=2, mask_token_id=4, classifier_pooling="mean")


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or a clean skip when the shared data is not beside the checkout."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


def hf_model(task: str = "mlm", seed: int = 0, **overrides):
    """A random-init transformers ModernBERT for `task`, with norm weights and biases moved off 1/0."""
    import torch
    import transformers as tf

    classes = {"base": tf.ModernBertModel, "mlm": tf.ModernBertForMaskedLM,
               "sequence": tf.ModernBertForSequenceClassification, "token": tf.ModernBertForTokenClassification}
    cfg = tf.ModernBertConfig(**{**TINY, **overrides})
    torch.manual_seed(seed)
    model = classes[task](cfg).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def save_hf(model, directory: Path, **kwargs) -> Path:
    model.save_pretrained(directory, **kwargs)
    return directory


def rng_ids(shape, vocab=512, low=3, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, vocab, size=shape).astype(np.int64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A BPE tokenizer, a random tiny JAX ModernBERT checkpoint holding it, and three small tasks."""
    from bcmb_jax.data import demo_corpus
    from bcmb_jax.modeling import model
    from bcmb_jax.modeling.config import ModelConfig
    from bcmb_jax.weights import pretrained

    d = tmp_path_factory.mktemp("evaluate")
    demo_corpus.write_corpus(d / "notes.jsonl", n_docs=120, seed=1)
    demo_corpus.build_tokenizer([d / "notes.jsonl"], d / "tok", vocab_size=600)
    mlm = model.build(ModelConfig(**TINY_MODEL), "mlm", seed=0)
    pretrained.save_jax(mlm, d / "tiny", tokenizer_dir=d / "tok")
    return {"root": d, "model": d / "tiny", "tok": d / "tok", "csv": write_csv_task(d / "csv"),
            "multi": write_csv_task(d / "multi", multilabel=True), "conll": write_conll_task(d / "conll")}


def pytest_unconfigure(config) -> None:
    """The run that made the compilation cache (not an xdist worker) removes it."""
    if _CACHE is not None and not hasattr(config, "workerinput"):
        shutil.rmtree(_CACHE, ignore_errors=True)
