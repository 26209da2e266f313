"""The MLM input pipeline: readers, chunking, cache, packing, masking, resume, sharding, CLI."""

import collections
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bcmb_jax import data, packing
from bcmb_jax.data import DataConfig, DataError, SourceConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
N_WORDS = 1000  # word-level fixture vocabulary: w0..w999 -> ids 5..1004


@pytest.fixture(scope="module")
def word_tok(tmp_path_factory):
    """A word-level tokenizer: token ids are known exactly, so documents can be traced through packing."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials)} | {f"w{i}": i + 5 for i in range(N_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    d = tmp_path_factory.mktemp("wordtok")
    tok.save(str(d / "tokenizer.json"))
    return d


@pytest.fixture(scope="module")
def bpe_tok(tmp_path_factory):
    """A small byte-level BPE (ModernBERT-style) trained on the demo notes."""
    from bcmb_jax import demo_data

    d = tmp_path_factory.mktemp("bpetok")
    corpus = demo_data.write_corpus(d / "notes.jsonl", n_docs=300, seed=1)
    demo_data.build_tokenizer([corpus], d / "tok", vocab_size=800)
    return d / "tok"


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


# ----------------------------------------------------------------------------------------------- readers


def test_every_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("first document\nsecond line of it\n")
    (tmp_path / "txt" / "b.txt").write_bytes("bom doc".encode("utf-16"))  # UTF-16 with BOM
    (tmp_path / "txt" / ".hidden.txt").write_text("ignored")
    (tmp_path / "txt" / "skip.md").write_text("not matched by the pattern")
    write_lines(tmp_path / "l.txt", ["one", "  ", "two"])
    (tmp_path / "r.jsonl").write_text('{"t": "j1", "m": {"x": "nested"}}\n\n{"t": ["a", "b"], "m": {"x": "n2"}}\n'
                                      '"plain string record"\n')
    (tmp_path / "r.json").write_text(json.dumps([{"note": "rec 1"}, {"note": None}, {"note": "rec 3"}]))
    (tmp_path / "one.json").write_text(json.dumps({"note": "a single record", "day": 1}))
    (tmp_path / "h.csv").write_text('id,notes,other\n1,"multi\nline, with comma",x\n2,"say ""hi""",y\n')
    (tmp_path / "n.csv").write_text('0,zero,"first\nrow"\n1,one,"second"\n')
    (tmp_path / "t.tsv").write_text("id\ttext\n1\ttab one\n2\ttab two\n")
    pq.write_table(pa.table({"text": ["pq one", None, "pq three"], "n": [1, 2, 3]}), tmp_path / "p.parquet")
    with gzip.open(tmp_path / "z.jsonl.gz", "wt") as f:
        f.write('{"text": "gzipped"}\n')
    (tmp_path / "x.TextGrid").write_text(
        'File type = "ooTextFile"\nObject class = "TextGrid"\n\nxmin = 0\nxmax = 9\ntiers? <exists>\nsize = 2\n'
        'item []:\n    item [1]:\n        class = "IntervalTier"\n        name = "A"\n        intervals: size = 2\n'
        '        intervals [1]:\n            xmin = 0\n            xmax = 2\n            text = ""\n'
        '        intervals [2]:\n            xmin = 5\n            xmax = 6\n            text = "later ""quoted"""\n'
        '    item [2]:\n        class = "IntervalTier"\n        name = "B"\n        intervals: size = 1\n'
        '        intervals [1]:\n            xmin = 1\n            xmax = 2\n            text = "earlier\nline"\n')

    def read(**kw):
        st = data.ReadStats()
        return list(data.iter_documents(SourceConfig(**kw), st)), st

    assert read(paths=[str(tmp_path / "txt")], pattern="*.txt")[0] == ["first document\nsecond line of it",
                                                                       "bom doc"]
    docs, st = read(paths=[str(tmp_path / "l.txt")], format="lines")
    assert docs == ["one", "two"] and st.skipped_empty == 1 and st.docs == 2
    assert read(paths=[str(tmp_path / "r.jsonl")], field="t")[0] == ["j1", "a\nb", "plain string record"]
    assert read(paths=[str(tmp_path / "r.jsonl")], field="t,m.x")[0][:2] == ["j1", "nested"]
    docs, st = read(paths=[str(tmp_path / "r.json"), str(tmp_path / "one.json")], field="note")
    assert docs == ["rec 1", "rec 3", "a single record"] and st.skipped_empty == 1
    assert read(paths=[str(tmp_path / "h.csv")], field="notes")[0] == ["multi\nline, with comma", 'say "hi"']
    assert read(paths=[str(tmp_path / "h.csv")], field=["id", "other"])[0] == ["1", "x", "2", "y"]
    assert read(paths=[str(tmp_path / "n.csv")], csv_header=False, field=2)[0] == ["first\nrow", "second"]
    assert read(paths=[str(tmp_path / "t.tsv")])[0] == ["tab one", "tab two"]
    assert read(paths=[str(tmp_path / "p.parquet")])[0] == ["pq one", "pq three"]
    assert read(paths=[str(tmp_path / "z.jsonl.gz")])[0] == ["gzipped"]
    assert read(paths=[str(tmp_path / "*.TextGrid")])[0] == ['earlier\nline\nlater "quoted"']
    files = data.expand_paths(SourceConfig(paths=[str(tmp_path / "**" / "*.txt")]))
    assert [f.name for f in files] == ["l.txt", "a.txt", "b.txt"]


def test_bad_input_errors(tmp_path, word_tok):
    def err(**kw):
        with pytest.raises(DataError) as e:
            list(data.iter_documents(SourceConfig(name="src", **kw)))
        return str(e.value)

    missing = tmp_path / "nope.txt"
    assert str(missing) in err(paths=[str(missing)]) and "not found" in err(paths=[str(missing)])
    assert "matches no files" in err(paths=[str(tmp_path / "*.zzz")])
    (tmp_path / "d").mkdir()
    assert "no files matching" in err(paths=[str(tmp_path / "d")])
    (tmp_path / "c.csv").write_text("a,b\n1,2\n")
    msg = err(paths=[str(tmp_path / "c.csv")], field="text")
    assert "c.csv" in msg and "'text'" in msg and "['a', 'b']" in msg
    assert "needs a header" in err(paths=[str(tmp_path / "c.csv")], csv_header=False, field="a")
    (tmp_path / "short.csv").write_text("a,b\n1,2\n3\n")
    assert "short.csv:3" in err(paths=[str(tmp_path / "short.csv")], field="b")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    assert "bad.jsonl:2" in err(paths=[str(tmp_path / "bad.jsonl")])
    (tmp_path / "nofield.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    assert "nofield.jsonl:2" in err(paths=[str(tmp_path / "nofield.jsonl")]) and "body" in err(
        paths=[str(tmp_path / "nofield.jsonl")])
    (tmp_path / "num.jsonl").write_text('{"text": 5}\n')
    assert "expected a string" in err(paths=[str(tmp_path / "num.jsonl")])
    assert "unknown format" in err(paths=[str(tmp_path / "c.csv")], format="xml")
    (tmp_path / "g.TextGrid").write_text("not praat")
    assert "TextGrid" in err(paths=[str(tmp_path / "g.TextGrid")])
    with pytest.raises(DataError, match="tokenizer not found"):
        data.load_tokenizer(tmp_path / "no_tokenizer")
    assert issubclass(DataError, ValueError)
    # invalid UTF-8 is replaced and counted; empty and whitespace-only documents are skipped and counted
    (tmp_path / "u.txt").write_bytes(b"w1 \xff\xfe w2\n\n   \nw3\n")
    st = data.ReadStats()
    docs = list(data.iter_documents(SourceConfig(paths=[str(tmp_path / "u.txt")], format="lines"), st))
    assert docs == ["w1 \ufffd\ufffd w2", "w3"] and st.replaced_utf8 == 2 and st.skipped_empty == 2
    cfg = cfg_for(word_tok, [{"name": "a", "paths": [str(tmp_path / "u.txt")], "format": "lines"}])
    with pytest.raises(DataError, match="multiple of process_count"):
        data.make_iterator(cfg, seed=0, batch_size=3, process_index=0, process_count=2)


# ----------------------------------------------------------------------------------------------- chunking


def test_chunking_rule_word_level(word_tok):
    tok = data.load_tokenizer(word_tok)
    assert not tok.prefix_space  # not a byte-level tokenizer
    docs = [" ".join(f"w{i % N_WORDS}" for i in range(n)) for n in (1, 29, 30, 31, 95)]
    out = list(data.tokenize_documents(docs, tok, seq_len=32))
    for doc, chunks in zip(docs, out):
        want = ids_of(doc)
        assert len(chunks) == -(-len(want) // 30)
        assert all(c[0] == tok.cls_id and c[-1] == tok.sep_id and len(c) <= 32 for c in chunks)
        assert all(len(c) == 32 for c in chunks[:-1])  # full chunks hold seq_len - 2 content tokens
        assert np.concatenate([c[1:-1] for c in chunks]).tolist() == want


def test_chunking_prefix_space_byte_level(bpe_tok):
    tok = data.load_tokenizer(bpe_tok, prefix_space=True)
    plain = data.load_tokenizer(bpe_tok, prefix_space=False)
    assert tok.prefix_space and not plain.prefix_space
    text = "Hypertension treated with lisinopril and amlodipine; dyspnea resolved. " * 40
    ids = tok.tokenizer.encode(text.strip(), add_special_tokens=False).ids
    assert tok.tokenizer.id_to_token(ids[0]).startswith("Ġ")  # a leading space is added to the document
    assert not plain.tokenizer.id_to_token(plain.tokenizer.encode("Hypertension").ids[0]).startswith("Ġ")
    (chunks,) = data.tokenize_documents([text.strip()], tok, seq_len=16)
    assert len(chunks) > 20 and all(len(c) <= 16 for c in chunks)
    assert chunks[0][1:-1].tolist() == ids[:14]  # the first chunk is the document's first 14 tokens
    texts = [tok.tokenizer.decode(c[1:-1].tolist()) for c in chunks]
    assert all(t[0].isspace() for t in texts)  # every chunk starts like a document: with a space
    assert "".join("".join(texts).split()) == "".join(text.split())  # no text lost or added
    # heads of continuation chunks that fell mid-word were re-tokenized with a leading space
    assert np.concatenate([c[1:-1] for c in chunks]).tolist() != ids


def test_long_text_pieces_tokenize_like_whole(bpe_tok):
    tok = data.load_tokenizer(bpe_tok)
    text = ("Patient   reports  fever and\tcough.\n\nPlan:  chest x-ray " * 4000).strip()
    pieces = data._split_text(text, max_chars=5000)
    assert len(pieces) > 20 and "".join(pieces) == text
    whole = tok.tokenizer.encode(text, add_special_tokens=False).ids
    parts = sum((e.ids for e in tok.tokenizer.encode_batch(pieces, add_special_tokens=False)), [])
    assert parts == whole


def test_million_token_document_streams(tmp_path, word_tok):
    n = 1_000_000
    (tmp_path / "big.txt").write_text(" ".join(f"w{i % N_WORDS}" for i in range(n)))
    tok = data.load_tokenizer(word_tok)
    store = data.prepare_source(SourceConfig(name="big", paths=[str(tmp_path / "big.txt")]), tok, 1024)
    assert len(store) == -(-n // 1022) and store.stats.docs == 1
    assert store.stats.tokens == n + 2 * len(store)
    assert store[len(store) - 1][1:-1].tolist() == [(i % N_WORDS) + 5 for i in range(n - n % 1022, n)]


# ----------------------------------------------------------------------------------------------- cache


def test_token_cache(tmp_path, word_tok, monkeypatch):
    f = write_lines(tmp_path / "a.txt", word_docs(50))
    cache = tmp_path / "cache"
    cfg = cfg_for(word_tok, [{"name": "a", "paths": [str(f)], "format": "lines"}], cache_dir=str(cache))
    tok = data.load_tokenizer(word_tok)
    first = data.prepare(cfg, tok)
    entries = [p for p in cache.iterdir()]
    assert len(entries) == 1 and not entries[0].name.startswith(".tmp")
    assert sorted(p.name for p in entries[0].iterdir()) == ["doc_ids.npy", "meta.json", "offsets.npy",
                                                            "tokens.npy"]

    def boom(*a, **k):
        raise AssertionError("tokenized although cached")

    monkeypatch.setattr(data, "tokenize_file", boom)
    second = data.prepare(cfg, tok)
    s1, s2 = first.stores[0], second.stores[0]
    assert len(s1) == len(s2) == first.stats().chunks and second.stats().docs == 50
    assert all(np.array_equal(s1[i], s2[i]) for i in range(len(s1)))
    monkeypatch.undo()
    write_lines(f, word_docs(50, seed=1))  # new content -> new key
    third = data.prepare(cfg, tok)
    assert len(list(cache.iterdir())) == 2 and not np.array_equal(third.stores[0][0], s1[0])
    cfg.seq_len = 16  # settings are part of the key too
    data.prepare(cfg, tok)
    assert len(list(cache.iterdir())) == 3
    cfg.max_docs = 7  # quick runs read a prefix and bypass the cache
    quick = data.prepare(cfg, tok)
    assert quick.stats().docs == 7 and len(list(cache.iterdir())) == 3


# ----------------------------------------------------------------------------------------------- masking


def test_mask_statistics_and_determinism():
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 50_000, (64, 512)).astype(np.int32)
    seg = np.ones_like(ids)
    seg[:, 400:] = 0  # padding
    kw = dict(rate=0.3, seed=5, step=7, row_offset=0, mask_id=4, low=0, high=50_285)
    out, labels = packing.mask_tokens(ids, seg, **kw)
    sel = labels != -100
    assert abs(sel[:, :400].mean() - 0.3) < 0.01 and not sel[:, 400:].any()
    assert np.array_equal(labels[sel], ids[sel])
    assert np.array_equal(out[~sel], ids[~sel])
    n = sel.sum()
    assert abs((out[sel] == 4).sum() / n - 0.8) < 0.015
    assert abs((out[sel] != ids[sel]).sum() / n - 0.9) < 0.015  # [MASK] + random (almost never the same id)
    rand = sel & (out != 4) & (out != ids)
    assert abs(rand.sum() / n - 0.1) < 0.01 and out[rand].min() >= 0 and out[rand].max() < 50_285
    again = packing.mask_tokens(ids, seg, **kw)
    assert np.array_equal(again[0], out) and np.array_equal(again[1], labels)
    other = packing.mask_tokens(ids, seg, **{**kw, "step": 8})
    assert not np.array_equal(other[1], labels)
    # rows depend only on (seed, step, global row): the last 3 rows alone, offset by 61, mask the same way
    tail = packing.mask_tokens(ids[61:], seg[61:], **{**kw, "row_offset": 61})
    assert np.array_equal(tail[0], out[61:]) and np.array_equal(tail[1], labels[61:])
    # special tokens can be protected
    ids[:, 0], ids[:, 399] = 1, 2
    _, lab = packing.mask_tokens(ids, seg, **kw, special_ids=(1, 2, 3, 4))
    assert (lab[:, [0, 399]] == -100).all()
    _, lab = packing.mask_tokens(ids, seg, **kw)
    assert (lab[:, [0, 399]] != -100).any()


# ----------------------------------------------------------------------------------------------- packing


def test_packing_invariants(tmp_path, word_tok):
    docs = word_docs(300, seed=2, hi=70)  # some longer than seq_len - 2 = 30
    f = write_lines(tmp_path / "a.txt", docs)
    cfg = cfg_for(word_tok, [{"name": "a", "paths": [str(f)], "format": "lines"}], packing_bins=16)
    it = data.make_iterator(cfg, seed=1, batch_size=4, process_index=0, process_count=1, epochs=1)
    batches = list(it)
    whole = {tuple([1, *ids_of(d), 2]) for d in docs if len(d.split()) <= 30}
    seen = []
    for b in batches:
        assert set(b) == {"input_ids", "segment_ids", "position_ids", "labels"}
        assert all(v.dtype == np.int32 and v.shape == (4, 32) for v in b.values())
        for ids, seg, pos, lab in zip(b["input_ids"], b["segment_ids"], b["position_ids"], b["labels"]):
            n = int((seg > 0).sum())
            assert (seg[:n] > 0).all() and (seg[n:] == 0).all()  # segments first, padding at the end
            assert (np.diff(seg[:n]) >= 0).all() and (np.diff(seg[:n]) <= 1).all()
            assert (seg[:n].max(initial=0) == len(np.unique(seg[:n])))  # 1, 2, 3, ... contiguous
            for s in np.unique(seg[:n]):
                assert np.array_equal(pos[seg == s], np.arange((seg == s).sum()))  # positions restart
            assert (ids[n:] == 3).all() and (lab[n:] == -100).all() and (pos[n:] == 0).all()
        seen += segments(b)
    for s in seen:
        assert s[0] == 1 and s[-1] == 2
    assert whole <= set(seen)  # short documents are never split across rows
    real = [s for s in seen if s]
    eff = sum(map(len, real)) / (32 * sum((b["segment_ids"] > 0).any(1).sum() for b in batches))
    assert eff > 0.85


def test_two_processes_cover_every_chunk_once(tmp_path, word_tok):
    docs = word_docs(200, seed=3, hi=50)
    fa = write_lines(tmp_path / "a.txt", docs[:120])
    fb = write_lines(tmp_path / "b.txt", docs[120:])
    cfg = cfg_for(word_tok, [{"name": "a", "paths": [str(fa)], "format": "lines"},
                             {"name": "b", "paths": [str(fb)], "format": "lines"}], packing_bins=8)
    tok = data.load_tokenizer(word_tok)
    corpus = data.prepare(cfg, tok)
    want = collections.Counter(tuple(s[i].tolist()) for s in corpus.stores for i in range(len(s)))
    got = []
    for p in range(2):
        ds, _, _ = data.build_dataset(cfg, seed=0, batch_size=4, process_index=p, process_count=2, epochs=1,
                                      tok=tok, corpus=corpus)
        mine = [seg for b in ds for seg in segments(b)]
        assert all(b["input_ids"].shape == (2, 32) for b in ds)
        got.append(collections.Counter(mine))
    assert got[0] + got[1] == want
    assert abs(sum(got[0].values()) - sum(got[1].values())) <= 1


def test_epochs_and_weights():
    order = packing.EpochOrder([10, 4], [2.0, 0.5], seed=9, shuffle=True)
    assert order.length == 22
    e0, e1 = order(0), order(1)
    assert not np.array_equal(e0, e1)  # a different shuffle every epoch
    c0 = collections.Counter(e0.tolist())
    assert all(c0[i] == 2 for i in range(10)) and sum(c0[i] for i in range(10, 14)) == 2
    assert all(c0[i] <= 1 for i in range(10, 14))
    assert np.array_equal(order(0), e0)  # recomputed identically
    stream = packing.ChunkStream([list(range(10)), list(range(4))], order, 1, 3, epochs=None)
    assert stream.per_epoch == 7 and len(stream) > 10**12
    assert [stream.chunk_id(i) for i in range(7)] == e0[1::3].tolist()
    assert [stream.chunk_id(7 + i) for i in range(7)] == e1[1::3].tolist()
    flat = packing.EpochOrder([5], [1.0], seed=0, shuffle=False)
    assert flat(0).tolist() == flat(3).tolist() == [0, 1, 2, 3, 4]


def test_resume_exactly_from_orbax_checkpoint(tmp_path, word_tok):
    import grain
    import orbax.checkpoint as ocp

    f = write_lines(tmp_path / "a.txt", word_docs(120, seed=4, hi=60))
    cfg = cfg_for(word_tok, [{"name": "a", "paths": [str(f)], "format": "lines"}], packing_bins=8,
                  num_threads=2, prefetch=4)

    def make():
        return data.make_iterator(cfg, seed=11, batch_size=4, process_index=0, process_count=1)

    it = make()
    assert isinstance(it, grain.DatasetIterator)
    for _ in range(5):
        next(it)
    mgr = ocp.CheckpointManager(tmp_path / "ckpt")
    mgr.save(5, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
    want = [next(it) for _ in range(40)]  # runs past the end of the first epoch (endless by default)
    fresh = make()
    mgr.restore(5, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointRestore(fresh)))
    got = [next(fresh) for _ in range(40)]
    for w, g in zip(want, got):
        assert all(np.array_equal(w[k], g[k]) for k in w)
    other = data.make_iterator(cfg, seed=12, batch_size=4, process_index=0, process_count=1)
    first = next(make())
    assert not np.array_equal(next(other)["labels"], first["labels"])  # the training seed drives masking


# ----------------------------------------------------------------------------------------------- CLI


def test_stats_cli(tmp_path, word_tok, capsys):
    f = write_lines(tmp_path / "a.txt", word_docs(80, seed=5) + ["   "])
    yml = tmp_path / "run.yaml"
    yml.write_text(json.dumps({"model": {"ignored": 1}, "data": {
        "tokenizer": str(word_tok), "seq_len": 128,
        "sources": [{"name": "a", "paths": [str(f)], "format": "lines"}]}}))
    assert data.main(["stats", "--config", str(yml), "data.seq_len=32", "mlm_probability=0.15", "batch_size=4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    s = json.loads(lines[-1])
    assert len(lines) > 3 and s["seq_len"] == 32 and s["docs"] == 80 and s["skipped_empty"] == 1
    for key in ("rows", "tokens", "non_pad_fraction", "mask_fraction", "docs", "tokens_per_s", "replaced_utf8",
                "chunks", "packing_efficiency"):
        assert key in s
    n_words = [len(d.split()) for d in word_docs(80, seed=5)]
    assert s["tokens"] == s["chunk_tokens"] == sum(n + 2 * -(-n // 30) for n in n_words)
    assert s["rows"] % 4 == 0 and 0 < s["non_pad_fraction"] <= s["packing_efficiency"] <= 1
    assert abs(s["mask_fraction"] - 0.15) < 0.04
    assert data.main(["stats", "--config", str(yml), "data.sources=[{name: a, paths: [/no/such/file]}]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "/no/such/file" in err


def test_cli_module_with_worker_processes(tmp_path, word_tok):
    f = write_lines(tmp_path / "a.txt", word_docs(60, seed=6))
    yml = tmp_path / "run.yaml"
    yml.write_text(json.dumps({"data": {"tokenizer": str(word_tok), "seq_len": 64, "worker_count": 2,
                                        "sources": [{"name": "a", "paths": [str(f)], "format": "lines"}]}}))
    r = subprocess.run([sys.executable, "-m", "bcmb_jax.data", "stats", "--config", str(yml), "batch_size=2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["tokens"] == s["chunk_tokens"] and s["docs"] == 60


# ----------------------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (SHARED / "pretrain_sample").is_dir(), reason="shared data not present")
def test_real_corpus_and_tokenizer():
    ps = SHARED / "pretrain_sample"
    sources = [
        {"name": "aci", "paths": [str(ps / "aci_bench" / "*[0-9dn].csv")], "field": "dialogue,note"},
        {"name": "primock_notes", "paths": [str(ps / "primock57" / "notes" / "*.json")], "field": "note"},
        {"name": "primock_transcripts", "paths": [str(ps / "primock57" / "transcripts")], "pattern": "*.TextGrid"},
        {"name": "mtsamples", "paths": [str(ps / "mtsamples_subset" / "mtsamples.csv")], "csv_header": False,
         "field": 4},
        {"name": "negex", "paths": [str(ps / "negex" / "Annotations-1-120.txt")], "format": "csv",
         "delimiter": "\t", "field": "Sentence"},
        {"name": "interviews", "paths": [str(ps / "sim_resp_interviews" / "Clean_Transcripts")]},
        {"name": "ade", "paths": [str(ps / "ade_corpus_v2" / "ADE-NEG.txt")], "format": "lines"},
    ]
    cfg = cfg_for(SHARED / "modernbert_tokenizer", sources, seq_len=1024, mlm_probability=0.15)
    s = data.run_stats(cfg, batch_size=8)
    assert s["sources"]["aci"]["docs"] == 2 * 207 and s["sources"]["primock_notes"]["docs"] == 57
    assert s["sources"]["primock_transcripts"]["docs"] == 114 and s["sources"]["interviews"]["docs"] == 272
    assert s["sources"]["negex"]["docs"] == 2376 and s["sources"]["ade"]["docs"] == 16695
    assert s["replaced_utf8"] == 0  # the two UTF-16 transcripts are decoded through their BOM
    assert s["tokens"] == s["chunk_tokens"] > 2_000_000
    assert s["packing_efficiency"] >= 0.95 and s["non_pad_fraction"] >= 0.95
    assert abs(s["mask_fraction"] - 0.15) <= 0.01
    tok = data.load_tokenizer(SHARED / "modernbert_tokenizer")
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id) == (50281, 50282, 50283, 50284)
    enc = tok.tokenizer.encode("Patient has  fever.", add_special_tokens=False)
    assert enc.tokens == ["ĠPatient", "Ġhas", "  ", "Ġfever", "."]  # add_prefix_space=True, like the original
