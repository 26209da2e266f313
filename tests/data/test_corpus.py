"""The tokenized corpus: streaming a very long document, the on-disk token cache."""

import numpy as np
import pytest
from data_helpers import N_WORDS, cfg_for, word_docs, word_tokenizer, write_lines

from bcmb_jax.data import corpus, stage1
from bcmb_jax.data.config import SourceConfig
from bcmb_jax.data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def word_tok(tmp_path_factory):
    return word_tokenizer(tmp_path_factory.mktemp("wordtok"))


def test_million_token_document_streams(tmp_path, word_tok):
    n = 1_000_000
    (tmp_path / "big.txt").write_text(" ".join(f"w{i % N_WORDS}" for i in range(n)))
    tok = load_tokenizer(word_tok)
    store = corpus.prepare_source(SourceConfig(name="big", paths=[str(tmp_path / "big.txt")]), tok, 1024)
    assert len(store) == -(-n // 1022) and store.stats.docs == 1
    assert store.stats.tokens == n + 2 * len(store)
    assert store[len(store) - 1][1:-1].tolist() == [(i % N_WORDS) + 5 for i in range(n - n % 1022, n)]


def test_token_cache(tmp_path, word_tok, monkeypatch):
    f = write_lines(tmp_path / "a.txt", word_docs(50))
    cache = tmp_path / "cache"
    cfg = cfg_for(word_tok, [{"name": "a", "paths": [str(f)], "format": "lines"}], cache_dir=str(cache))
    tok = load_tokenizer(word_tok)
    first = stage1.prepare(cfg, tok)
    entries = [p for p in cache.iterdir()]
    assert len(entries) == 1 and not entries[0].name.startswith(".tmp")
    assert sorted(p.name for p in entries[0].iterdir()) == ["doc_ids.npy", "meta.json", "offsets.npy",
                                                            "tokens.npy"]

    def boom(*a, **k):
        raise AssertionError("tokenized although cached")

    monkeypatch.setattr(corpus, "tokenize_file", boom)
    second = stage1.prepare(cfg, tok)
    s1, s2 = first.stores[0], second.stores[0]
    assert len(s1) == len(s2) == first.stats().chunks and second.stats().docs == 50
    assert all(np.array_equal(s1[i], s2[i]) for i in range(len(s1)))
    monkeypatch.undo()
    write_lines(f, word_docs(50, seed=1))  # new content -> new key
    third = stage1.prepare(cfg, tok)
    assert len(list(cache.iterdir())) == 2 and not np.array_equal(third.stores[0][0], s1[0])
    cfg.seq_len = 16  # settings are part of the key too
    stage1.prepare(cfg, tok)
    assert len(list(cache.iterdir())) == 3
    cfg.max_docs = 7  # quick runs read a prefix and bypass the cache
    quick = stage1.prepare(cfg, tok)
    assert quick.stats().docs == 7 and len(list(cache.iterdir())) == 3
