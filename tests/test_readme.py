"""The README's Python example runs as written on what the repository builds (a tiny model of the demo's kind)."""

from __future__ import annotations

import re

import numpy as np
from conftest import ROOT


def test_using_a_model_snippet_runs(tmp_path):
    from bcmb_jax.data import demo_corpus
    from bcmb_jax.weights import hf_files

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using a model"):text.index("## Converting checkpoints")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'path = "runs/demo/hf"' in code
    corpus = demo_corpus.write_corpus(tmp_path / "notes.jsonl", n_docs=200, seed=3)
    demo_corpus.build_tokenizer([corpus], tmp_path / "tok", vocab_size=600)
    shape = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                 local_attention=16, max_position_embeddings=128)
    hf_files.write_random_model(tmp_path / "tok", shape, tmp_path / "hf")
    scope: dict = {}
    exec(code.replace('"runs/demo/hf"', repr(str(tmp_path / "hf"))), scope)  # noqa: S102 - our own README
    out, per_doc, a, b = scope["out"], scope["per_doc"], scope["a"], scope["b"]
    assert np.isfinite(np.asarray(out.logits)).all()
    assert [x.shape for x in per_doc] == [(len(a), 600), (len(b), 600)]
    np.testing.assert_allclose(per_doc[0], np.asarray(out.logits)[0, :len(a)], atol=2e-5)
