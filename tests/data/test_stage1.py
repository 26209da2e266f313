"""Stage 1 on every core and every host: the same cache whatever the workers, ranges and processes; warm starts
that read no corpus; each file tokenized once in a 2-process job."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from data_helpers import cfg_for, word_docs, word_tokenizer, write_lines

from bcmb_jax.data import corpus, pipeline, stage1
from bcmb_jax.data.tokenizer import load_tokenizer
from bcmb_jax.errors import DataError


@pytest.fixture(scope="module")
def word_tok(tmp_path_factory):
    return word_tokenizer(tmp_path_factory.mktemp("wordtok"))


def awkward_jsonl(path, n=4000):
    """Records with what byte ranges could get wrong: blank and CRLF lines, a BOM, multi-byte characters."""
    lines = []
    for i, doc in enumerate(word_docs(n, seed=3, lo=1, hi=60)):
        lines.append(json.dumps({"text": doc + (" é€" if i % 7 == 0 else "")}, ensure_ascii=False))
        if i % 11 == 0:
            lines.append("")
    text = "\ufeff" + "".join(line + ("\r\n" if i % 5 == 0 else "\n") for i, line in enumerate(lines))
    path.write_text(text, encoding="utf-8")
    return path


def corpus_files(d):
    files = [awkward_jsonl(d / "big.jsonl")]
    for k in range(3):
        files.append(write_lines(d / f"small{k}.txt", word_docs(40 + k, seed=10 + k)))
    return files


def fingerprint(c) -> str:
    h = hashlib.sha256()
    for store in c.stores:
        for p in store.parts:
            for a in (p.tokens, p.offsets, p.doc_ids):
                h.update(np.ascontiguousarray(a).tobytes())
            h.update(json.dumps({k: v for k, v in p.stats.items()}, sort_keys=True).encode())
    return h.hexdigest()


def sources(files):
    return [{"name": "big", "paths": [str(files[0])], "format": "jsonl"},
            {"name": "small", "paths": [str(f) for f in files[1:]], "format": "lines"}]


def test_workers_and_byte_ranges_give_the_cache_one_worker_gives(tmp_path, word_tok, monkeypatch):
    files = corpus_files(tmp_path)
    tok = load_tokenizer(word_tok)
    one = stage1.prepare(cfg_for(word_tok, sources(files), cache_dir=str(tmp_path / "c1")), tok, workers=1)
    monkeypatch.setattr(stage1, "MIN_RANGE_BYTES", 16 << 10)  # the big file in about 20 ranges ...
    monkeypatch.setattr(stage1, "MAX_RANGE_BYTES", 32 << 10)
    monkeypatch.setattr(stage1, "POOL_MIN_BYTES", 0)  # ... on two worker processes
    units = stage1.units_of(0, stage1.FileJob(0, files[0], None, 0), cfg_for(word_tok, sources(files)).sources[0], 2)
    assert len(units) > 10 and units[0].byte_range[0] == 0 and units[-1].byte_range[1] == files[0].stat().st_size
    two = stage1.prepare(cfg_for(word_tok, sources(files), cache_dir=str(tmp_path / "c2")), tok, workers=2)
    assert fingerprint(one) == fingerprint(two)
    assert one.stores[0].stats.docs == 4000 and one.stores[0].stats.files == 1
    # The same batches too, from either cache.
    cfg1 = cfg_for(word_tok, sources(files), cache_dir=str(tmp_path / "c1"))
    cfg2 = cfg_for(word_tok, sources(files), cache_dir=str(tmp_path / "c2"))
    it1 = pipeline.make_iterator(cfg1, seed=3, batch_size=4, process_index=0, process_count=1)
    it2 = pipeline.make_iterator(cfg2, seed=3, batch_size=4, process_index=0, process_count=1)
    for _ in range(3):
        a, b = next(it1), next(it2)
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_an_error_in_a_later_byte_range_names_the_true_line(tmp_path, word_tok, monkeypatch):
    f = awkward_jsonl(tmp_path / "bad.jsonl", n=3000)
    lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2500] = "{not json\n"
    f.write_text("".join(lines), encoding="utf-8")
    monkeypatch.setattr(stage1, "MIN_RANGE_BYTES", 16 << 10)
    cfg = cfg_for(word_tok, [{"name": "b", "paths": [str(f)], "format": "jsonl"}], cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match=r"bad.jsonl:2501: invalid JSON"):
        stage1.prepare(cfg, load_tokenizer(word_tok), workers=2)
    cache = tmp_path / "c"
    assert not cache.exists() or not [p for p in cache.iterdir() if not p.name.startswith(".")]  # nothing to trust


def test_a_warm_start_reads_a_few_kilobytes_per_file_and_a_changed_file_gets_a_new_entry(tmp_path, word_tok,
                                                                                          monkeypatch):
    big = write_lines(tmp_path / "big.txt", word_docs(20000, seed=4))  # about 1.5 MB
    cfg = cfg_for(word_tok, [{"name": "a", "paths": [str(big)], "format": "lines"}], cache_dir=str(tmp_path / "c"))
    tok = load_tokenizer(word_tok)
    stage1.prepare(cfg, tok)
    read = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(corpus, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False)
    warm = stage1.prepare(cfg, tok)
    assert warm.stats().docs == 20000 and 0 < sum(read) <= 3 * 4096
    monkeypatch.undo()
    data = bytearray(big.read_bytes())  # one byte changed in the middle, same size, same modification time
    mid = len(data) // 2
    data[mid] = ord("x") if data[mid] != ord("x") else ord("y")
    st = big.stat()
    big.write_bytes(bytes(data))
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    stage1.prepare(cfg, tok)
    assert len([p for p in (tmp_path / "c").iterdir()]) == 2


SHARE = r"""
import json, logging, sys
import jax
logging.basicConfig(level=logging.INFO)
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from bcmb_jax.data import stage1
from bcmb_jax.data.config import DataConfig, SourceConfig
from bcmb_jax.data.tokenizer import load_tokenizer
cfg = DataConfig(tokenizer=sys.argv[3], seq_len=32, cache_dir=sys.argv[4],
                 sources=[SourceConfig(name="s", paths=sys.argv[5:], format="lines")])
c = stage1.prepare(cfg, load_tokenizer(sys.argv[3]), share=(jax.process_index(), jax.process_count()), workers=1)
chunks = [c.stores[0][i].tolist() for i in range(len(c.stores[0]))]
print("RESULT " + json.dumps({"chunks": len(chunks), "hash": hash(str(chunks))}), flush=True)
"""


def test_two_processes_tokenize_each_file_once_and_load_the_same_corpus(tmp_path, word_tok):
    files = [write_lines(tmp_path / f"f{i}.txt", word_docs(30 + 5 * i, seed=i)) for i in range(6)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "cache"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
    procs = [subprocess.Popen([sys.executable, "-c", SHARE, f"127.0.0.1:{port}", str(i), str(word_tok), str(cache),
                               *map(str, files)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    done = [int(o.split("stage 1: tokenizing ")[1].split(" of ")[0]) for o in outs]
    assert sorted(done) == [3, 3]  # each file once, dealt by size
    makers = {json.loads((e / "meta.json").read_text())["prepared_by"] for e in cache.iterdir()}
    assert len(list(cache.iterdir())) == 6 and len(makers) == 2
    results = [json.loads(o.split("RESULT ")[1].splitlines()[0]) for o in outs]
    assert results[0] == results[1] and results[0]["chunks"] > 0
    # One process with a fresh cache makes the same corpus.
    single = subprocess.run([sys.executable, "-c", SHARE.replace("jax.distributed.initialize(", "(lambda *a: 0)("),
                             "x", "0", str(word_tok), str(tmp_path / "one"), *map(str, files)], cwd=ROOT,
                            capture_output=True, text=True, env=env, timeout=300)
    assert json.loads(single.stdout.split("RESULT ")[1].splitlines()[0]) == results[0]


def test_shares_as_separate_jobs_then_training_finds_the_cache_warm(tmp_path, word_tok):
    files = [write_lines(tmp_path / f"f{i}.txt", word_docs(20, seed=i)) for i in range(4)]
    yml = tmp_path / "c.yaml"
    yml.write_text(json.dumps({"data": {"tokenizer": str(word_tok), "seq_len": 32, "cache_dir": str(tmp_path / "c"),
                                        "sources": [{"name": "s", "paths": [str(f) for f in files],
                                                                     "format": "lines"}]}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "bcmb_jax.data", "prepare", "--config", str(yml), *args], cwd=ROOT,
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return r

    first, second = run("share=0/2"), run("share=1/2")
    assert "tokenizing 2 of 4 files" in first.stderr and "tokenizing 2 of 4 files" in second.stderr
    whole = run()
    assert "tokenizing" not in whole.stderr and json.loads(whole.stdout.splitlines()[-1])["docs"] == 80
