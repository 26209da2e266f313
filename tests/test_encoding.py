"""bcmb_jax.encoding: the paper's Table 6 token counts on the real corpora (skipped without ../shared/data)."""

from __future__ import annotations

import pytest
from conftest import SHARED_DATA

from bcmb_jax import paper
from bcmb_jax.encoding import load_encoder, paper_token_counts
from bcmb_jax.tasks import build_task


@pytest.mark.parametrize("name", ["cos", "social_history", "deid"])
def test_table6_equals_the_papers(name):
    data, tok = SHARED_DATA / name, SHARED_DATA / "modernbert_tokenizer"
    if not (data.exists() and tok.exists()):
        pytest.skip(f"{data} or {tok} not available")
    task = build_task(name, data)
    classes, examples, avg = paper.TABLE6[name]
    assert len(task.labels) == classes
    assert tuple(task.counts().values()) == examples
    got = paper_token_counts(task, load_encoder(tok, prefix_space=False))
    print(f"\n{name}: {got} (paper {avg})")
    for split, want in zip(("train", "val", "test"), avg):
        assert abs(got[split] - want) <= 0.1, (split, got[split], want)
    # Training tokenizes with the prefix space, which gives fewer tokens than the paper's count.
    with_space = paper_token_counts(task, load_encoder(tok))
    assert with_space["train"] < got["train"]
