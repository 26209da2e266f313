"""MDS shards (`format: mds`), written with mosaicml-streaming's own MDSWriter: text shards chunk like JSONL,
token shards give their ids exactly, and what must not be read is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_helpers import cfg_for, ids_of, word_docs, word_tokenizer

from bcmb_jax.data import mds, stage1
from bcmb_jax.data.tokenizer import load_tokenizer
from bcmb_jax.errors import DataError


@pytest.fixture(scope="module")
def word_tok(tmp_path_factory):
    return word_tokenizer(tmp_path_factory.mktemp("wordtok"))


def writer(out, columns, **kw):
    mds._streaming()  # the package's format modules, without its data loaders
    from streaming.base.format.mds.writer import MDSWriter

    return MDSWriter(out=str(out), columns=columns, **kw)


def chunks_of(c):
    return [c.stores[0][i].tolist() for i in range(len(c.stores[0]))]


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_text_shards_give_the_chunks_the_same_documents_give_in_jsonl(tmp_path, word_tok, compression):
    docs = word_docs(300, seed=5, lo=1, hi=90)
    with writer(tmp_path / "mds", {"text": "str", "id": "int"}, compression=compression, size_limit=4096) as w:
        for i, d in enumerate(docs):
            w.write({"text": d, "id": i})
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tok = load_tokenizer(word_tok)
    from_mds = stage1.prepare(cfg_for(word_tok, [{"name": "m", "paths": [str(tmp_path / "mds")], "format": "mds"}],
                                      cache_dir=str(tmp_path / "c")), tok)
    from_jsonl = stage1.prepare(cfg_for(word_tok, [{"name": "j", "paths": [str(tmp_path / "docs.jsonl")]}]), tok)
    assert len(from_mds.stores[0].parts) > 3  # several shards, each a cache entry
    assert chunks_of(from_mds) == chunks_of(from_jsonl) and from_mds.stats().docs == 300


def test_token_shards_give_their_ids_exactly(tmp_path, word_tok):
    tok = load_tokenizer(word_tok)
    docs = word_docs(120, seed=6, lo=1, hi=40)
    samples = [np.array([tok.cls_id, *ids_of(d), tok.sep_id], np.uint16) for d in docs]
    with writer(tmp_path / "tok", {"input_ids": "ndarray:uint16"}, size_limit=2048) as w:
        for s in samples:
            w.write({"input_ids": s})
    cfg = cfg_for(word_tok, [{"name": "t", "paths": [str(tmp_path / "tok")], "format": "mds"}], seq_len=32,
                  cache_dir=str(tmp_path / "c"))
    got = chunks_of(stage1.prepare(cfg, tok))
    assert got == [s.tolist()[:32] for s in samples]  # as written (the few longer than seq_len cut to it)
    assert any(len(s) > 32 for s in samples)


def test_what_must_not_be_read_is_refused(tmp_path, word_tok):
    tok = load_tokenizer(word_tok)
    with writer(tmp_path / "big", {"input_ids": "ndarray:uint32"}) as w:
        w.write({"input_ids": np.array([1, 5, 50000, 2], np.uint32)})  # the tokenizer has 1,005 ids
    cfg = cfg_for(word_tok, [{"name": "t", "paths": [str(tmp_path / "big")], "format": "mds"}])
    with pytest.raises(DataError, match="token id 50000, outside the tokenizer's vocabulary of 1005"):
        stage1.prepare(cfg, tok)
    with writer(tmp_path / "pkl", {"text": "pkl"}) as w:
        w.write({"text": "w1 w2"})
    cfg = cfg_for(word_tok, [{"name": "p", "paths": [str(tmp_path / "pkl")], "format": "mds"}])
    with pytest.raises(DataError, match="unsafe type: pkl.*never read"):
        stage1.prepare(cfg, tok)
    cfg = cfg_for(word_tok, [{"name": "n", "paths": [str(tmp_path)], "format": "mds"}])
    (tmp_path / "empty").mkdir()
    cfg.sources[0].paths = [str(tmp_path / "empty")]
    with pytest.raises(DataError, match="no index.json"):
        stage1.prepare(cfg, tok)
    auto = cfg_for(word_tok, [{"name": "a", "paths": [str(tmp_path / "big")]}])
    with pytest.raises(DataError, match="set `format: mds`"):
        stage1.prepare(auto, tok)
