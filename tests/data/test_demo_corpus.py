"""The demo corpus generator and the demo tokenizer (built offline, loadable by transformers)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bcmb_jax.data import demo_corpus
from bcmb_jax.data.config import SourceConfig
from bcmb_jax.data.sources import iter_documents
from bcmb_jax.data.tokenizer import load_tokenizer
from bcmb_jax.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    corpus = demo_corpus.write_corpus(d / "notes.jsonl", n_docs=600, seed=3)
    ids = demo_corpus.build_tokenizer([corpus], d / "tok", vocab_size=1200)
    return d, corpus, ids


def test_notes_deterministic_varied_and_fast():
    t0 = time.perf_counter()
    notes = list(demo_corpus.generate_notes(3000, seed=7))
    assert time.perf_counter() - t0 < 2.0
    assert notes == list(demo_corpus.generate_notes(3000, seed=7))
    assert notes != list(demo_corpus.generate_notes(3000, seed=8))
    kinds = {k for k, _ in notes}
    assert kinds == set(demo_corpus.NOTE_TYPES)
    texts = [t for _, t in notes]
    assert len(set(texts)) == len(texts)  # no duplicate documents
    by_kind = {k: next(t for kk, t in notes if kk == k) for k in kinds}
    assert "CHIEF COMPLAINT" in by_kind["history_and_physical"] and "Vitals" in by_kind["history_and_physical"]
    assert "DISCHARGE MEDICATIONS" in by_kind["discharge_summary"]
    assert by_kind["progress_note"].count("\n") >= 4 and "A: " in by_kind["progress_note"]
    assert "IMPRESSION:" in by_kind["radiology_report"] and "FINDINGS:" in by_kind["radiology_report"]
    assert "NURSING NOTE" in by_kind["nursing_note"] and "Pain:" in by_kind["nursing_note"]
    assert all(200 < len(t) < 4000 for t in texts)


def test_corpus_file_is_read_by_data_pipeline(demo):
    d, corpus, _ = demo
    lines = corpus.read_text().splitlines()
    assert len(lines) == 600
    assert set(json.loads(lines[0])) == {"text", "type"}
    docs = list(iter_documents(SourceConfig(name="demo", paths=[str(corpus)])))
    assert docs == [t.strip() for _, t in demo_corpus.generate_notes(600, seed=3)]
    assert not list(d.glob(".notes.jsonl.*"))  # no temporary file left behind


def test_tokenizer_special_ids_and_determinism(demo, tmp_path):
    d, corpus, ids = demo
    assert ids == {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "[MASK]": 4}
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (d / "tok" / name).is_file()
    demo_corpus.build_tokenizer([corpus], tmp_path / "again", vocab_size=1200)
    assert (tmp_path / "again" / "tokenizer.json").read_text() == (d / "tok" / "tokenizer.json").read_text()
    info = load_tokenizer(d / "tok")
    assert (info.cls_id, info.sep_id, info.pad_id, info.mask_id) == (1, 2, 3, 4)
    assert info.byte_level and 600 < info.vocab_size <= 1200
    # the post-processor wraps a sequence in [CLS] ... [SEP]; byte-level BPE round-trips text exactly
    text = "Patient denies chest pain. BP 120/80, SpO2 97% on room air."
    enc = info.tokenizer.encode(text)
    assert enc.ids[0] == 1 and enc.ids[-1] == 2
    assert info.tokenizer.decode(enc.ids[1:-1]) == " " + text  # prefix_space=True adds the leading space


def test_transformers_loads_it_for_fill_mask(demo):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    d, _, _ = demo
    tok = transformers.AutoTokenizer.from_pretrained(d / "tok")
    assert tok.is_fast
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id, tok.unk_token_id) == (
        1, 2, 3, 4, 0)
    enc = tok("Started on aspirin [MASK] daily.")
    toks = tok.convert_ids_to_tokens(enc["input_ids"])
    assert toks[0] == "[CLS]" and toks[-1] == "[SEP]"
    assert toks.count("[MASK]") == 1
    # lstrip=True: the space before [MASK] belongs to the mask token, as in ModernBERT's tokenizer
    assert tok("aspirin [MASK] daily")["input_ids"] == tok("aspirin[MASK] daily")["input_ids"]
    cfg = transformers.ModernBertConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        pad_token_id=3, cls_token_id=1, sep_token_id=2, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.ModernBertForMaskedLM(cfg).eval()
    out = transformers.pipeline("fill-mask", model=model, tokenizer=tok)("The patient takes [MASK] daily.", top_k=3)
    # the decoded sequence keeps the leading space the tokenizer gave the text (ByteLevel decoder, as ModernBERT's)
    assert len(out) == 3 and all(o["sequence"].startswith(" The patient takes") for o in out)
    assert all(0 <= o["token"] < len(tok) for o in out)


def test_prompts_tokenize_like_training_text(demo):
    """A prompt's first word tokenizes as inside a note, as the training pipeline (data.prefix_space) sees it;
    `[MASK]` takes the space before it and adds none after it, so a masked prompt is exactly a training
    input with one token replaced by [MASK]."""
    transformers = pytest.importorskip("transformers")
    d, _, _ = demo
    tok = transformers.AutoTokenizer.from_pretrained(d / "tok")
    train = load_tokenizer(d / "tok").tokenizer  # what chunking.py tokenizes documents with
    plain = load_tokenizer(d / "tok", prefix_space=False).tokenizer

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    for word in ("The", "Patient", "oxygen", "pneumonia", "Exam"):
        start, inside = ids(f"{word} was noted"), ids(f"and {word} was noted")[1:]
        assert start == inside, word
        assert tok.convert_ids_to_tokens(start[0]).startswith("Ġ")
        assert not plain.id_to_token(plain.encode(word, add_special_tokens=False).ids[0]).startswith("Ġ")
    sentence = "PHYSICAL EXAMINATION: Vitals: T 37.1 C, HR 84, SpO2 96% on room air."
    assert tok(sentence)["input_ids"] == train.encode(sentence).ids
    want = train.encode(sentence).ids
    air = want.index(train.token_to_id("Ġair"))
    want[air] = tok.mask_token_id
    masked = sentence.replace(" air.", " [MASK].")
    assert tok(masked)["input_ids"] == want  # the prompt is the training input with "air" masked
    assert tok.convert_ids_to_tokens(tok(masked)["input_ids"])[-3:] == ["[MASK]", ".", "[SEP]"]  # no " ."
    assert ids("aspirin [MASK] daily") == ids("aspirin[MASK] daily") == ids("aspirin   [MASK] daily")
    assert ids("[MASK] daily")[1:] == ids("aspirin daily")[1:]  # text after the mask keeps its own space


def test_tokenizer_settings_match_modernbert(demo):
    """Normalizer, decoder, post-processor template and special-token flags are ModernBERT's."""
    if not (SHARED / "modernbert_tokenizer").is_dir():
        pytest.skip("../shared/data is not beside the checkout")
    d, _, _ = demo
    ours = json.loads((d / "tok" / "tokenizer.json").read_text())
    real = json.loads((SHARED / "modernbert_tokenizer" / "tokenizer.json").read_text())
    assert ours["normalizer"] == real["normalizer"]
    assert ours["decoder"]["type"] == real["decoder"]["type"] == "ByteLevel"  # its other flags do not decode
    assert ours["pre_tokenizer"]["pretokenizers"][1] == real["pre_tokenizer"]  # ByteLevel, regex, no own prefix
    pieces = ["single", "pair"]
    assert [ours["post_processor"][p] for p in pieces] == [real["post_processor"][p] for p in pieces]
    flags = ("lstrip", "rstrip", "normalized", "single_word", "special")
    real_added = {t["content"]: {f: t[f] for f in flags} for t in real["added_tokens"]}
    for t in ours["added_tokens"]:
        assert {f: t[f] for f in flags} == real_added[t["content"]], t["content"]
    ours_map = json.loads((d / "tok" / "special_tokens_map.json").read_text())
    real_map = json.loads((SHARED / "modernbert_tokenizer" / "special_tokens_map.json").read_text())
    assert ours_map == real_map


def test_first_use_builds_the_default_data(tmp_path):
    """A fresh checkout: `python -m bcmb_jax.data stats --config configs/demo.yaml` writes runs/demo_data
    (relative to the working directory) itself; a second build elsewhere gives the same bytes."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "bcmb_jax.data", "stats", "--config", str(ROOT / "configs" / "demo.yaml"),
           "max_batches=1"]
    out = subprocess.run(cmd, cwd=first, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["docs"] == demo_corpus.DEFAULTS["n_docs"] and stats["batches"] == 1
    built = first / demo_corpus.DEFAULT_DIR
    corpus, tok_dir = demo_corpus.ensure(second / demo_corpus.DEFAULT_DIR)
    names = [demo_corpus.CORPUS_FILE] + [f"{demo_corpus.TOKENIZER_DIR}/{n}" for n in
                                        ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")]
    for name in names:
        assert (built / name).read_bytes() == (second / demo_corpus.DEFAULT_DIR / name).read_bytes(), name
    assert sorted(p.name for p in built.iterdir()) == [demo_corpus.CORPUS_FILE, demo_corpus.TOKENIZER_DIR]  # no temp
    info = load_tokenizer(tok_dir)
    assert 1000 < info.vocab_size <= demo_corpus.DEFAULTS["vocab_size"] and info.mask_id == 4
    mtime = (tok_dir / "tokenizer.json").stat().st_mtime_ns
    demo_corpus.ensure(second / demo_corpus.DEFAULT_DIR)  # present: left alone
    assert (tok_dir / "tokenizer.json").stat().st_mtime_ns == mtime


def test_only_the_default_location_is_built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="tokenizer not found"):
        load_tokenizer("runs/other_data/tokenizer")
    with pytest.raises(DataError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "demo_data" / "tokenizer")
    assert not any(tmp_path.iterdir())
    built = []
    monkeypatch.setattr(demo_corpus, "ensure", lambda out: built.append(Path(out)))
    assert demo_corpus.ensure_default(tmp_path / "runs" / "demo_data" / "tokenizer" / "tokenizer.json")
    assert demo_corpus.ensure_default("runs/demo_data/tokenizer")
    assert not demo_corpus.ensure_default("runs/demo_data")
    assert built == [demo_corpus.DEFAULT_DIR] * 2
