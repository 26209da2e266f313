"""The MLM input pipeline end to end: packing invariants, sharding, resume, the CLI, the real corpus."""

import collections
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import SHARED_DATA
from data_helpers import cfg_for, ids_of, segments, word_docs, word_tokenizer, write_lines

from bcmb_jax.data import commands, pipeline
from bcmb_jax.data.stage1 import prepare
from bcmb_jax.data.tokenizer import load_tokenizer
from bcmb_jax.errors import DataError


@pytest.fixture(scope="module")
def word_tok(tmp_path_factory):
    return word_tokenizer(tmp_path_factory.mktemp("wordtok"))


def test_bad_input_errors(tmp_path, word_tok):
    with pytest.raises(DataError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "no_tokenizer")
    (tmp_path / "u.txt").write_bytes(b"w1 \xff\xfe w2\n\n   \nw3\n")
    cfg = cfg_for(word_tok, [{"name": "a", "paths": [str(tmp_path / "u.txt")], "format": "lines"}])
    with pytest.raises(DataError, match="multiple of process_count"):
        pipeline.make_iterator(cfg, seed=0, batch_size=3, process_index=0, process_count=2)


def test_packing_invariants(tmp_path, word_tok):
    docs = word_docs(300, seed=2, hi=70)  # some longer than seq_len - 2 = 30
    f = write_lines(tmp_path / "a.txt", docs)
    cfg = cfg_for(word_tok, [{"name": "a", "paths": [str(f)], "format": "lines"}], packing_bins=16)
    it = pipeline.make_iterator(cfg, seed=1, batch_size=4, process_index=0, process_count=1, epochs=1)
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
    tok = load_tokenizer(word_tok)
    corpus = prepare(cfg, tok)
    want = collections.Counter(tuple(s[i].tolist()) for s in corpus.stores for i in range(len(s)))
    got = []
    for p in range(2):
        ds, _, _ = pipeline.build_dataset(cfg, seed=0, batch_size=4, process_index=p, process_count=2, epochs=1,
                                      tok=tok, corpus=corpus)
        mine = [seg for b in ds for seg in segments(b)]
        assert all(b["input_ids"].shape == (2, 32) for b in ds)
        got.append(collections.Counter(mine))
    assert got[0] + got[1] == want
    assert abs(sum(got[0].values()) - sum(got[1].values())) <= 1


def test_resume_exactly_from_orbax_checkpoint(tmp_path, word_tok):
    import grain
    import orbax.checkpoint as ocp

    f = write_lines(tmp_path / "a.txt", word_docs(120, seed=4, hi=60))
    cfg = cfg_for(word_tok, [{"name": "a", "paths": [str(f)], "format": "lines"}], packing_bins=8,
                  num_threads=2, prefetch=4)

    def make():
        return pipeline.make_iterator(cfg, seed=11, batch_size=4, process_index=0, process_count=1)

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
    other = pipeline.make_iterator(cfg, seed=12, batch_size=4, process_index=0, process_count=1)
    first = next(make())
    assert not np.array_equal(next(other)["labels"], first["labels"])  # the training seed drives masking


def test_stats_cli(tmp_path, word_tok, capsys):
    f = write_lines(tmp_path / "a.txt", word_docs(80, seed=5) + ["   "])
    yml = tmp_path / "run.yaml"
    yml.write_text(json.dumps({"model": {"ignored": 1}, "data": {
        "tokenizer": str(word_tok), "seq_len": 128,
        "sources": [{"name": "a", "paths": [str(f)], "format": "lines"}]}}))
    argv = ["stats", "--config", str(yml), "data.seq_len=32", "mlm_probability=0.15", "batch_size=4"]
    assert commands.main(argv) == 0
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
    assert commands.main(["stats", "--config", str(yml), "data.sources=[{name: a, paths: [/no/such/file]}]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "/no/such/file" in err
    # a key of the other command is named, not ignored
    for cmd, key in (("stats", "workers=2"), ("stats", "share=0/2"), ("prepare", "batch_size=4")):
        assert commands.main([cmd, "--config", str(yml), key]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{key.split('=')[0]}= is a key of" in err, err


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


@pytest.mark.skipif(not (SHARED_DATA / "pretrain_sample").is_dir(), reason="shared data not present")
def test_real_corpus_and_tokenizer():
    ps = SHARED_DATA / "pretrain_sample"
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
    cfg = cfg_for(SHARED_DATA / "modernbert_tokenizer", sources, seq_len=1024, mlm_probability=0.15)
    s = pipeline.run_stats(cfg, batch_size=8)
    assert s["sources"]["aci"]["docs"] == 2 * 207 and s["sources"]["primock_notes"]["docs"] == 57
    assert s["sources"]["primock_transcripts"]["docs"] == 114 and s["sources"]["interviews"]["docs"] == 272
    assert s["sources"]["negex"]["docs"] == 2376 and s["sources"]["ade"]["docs"] == 16695
    assert s["replaced_utf8"] == 0  # the two UTF-16 transcripts are decoded through their BOM
    assert s["tokens"] == s["chunk_tokens"] > 2_000_000
    assert s["packing_efficiency"] >= 0.95 and s["non_pad_fraction"] >= 0.95
    assert abs(s["mask_fraction"] - 0.15) <= 0.01
    tok = load_tokenizer(SHARED_DATA / "modernbert_tokenizer")
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id) == (50281, 50282, 50283, 50284)
    enc = tok.tokenizer.encode("Patient has  fever.", add_special_tokens=False)
    assert enc.tokens == ["ĠPatient", "Ġhas", "  ", "Ġfever", "."]  # add_prefix_space=True, like the original
