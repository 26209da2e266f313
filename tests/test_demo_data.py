"""The demo corpus generator and the demo tokenizer (built offline, loadable by transformers)."""

import json
import time

import pytest

from bcmb_jax import demo_data
from bcmb_jax.data import SourceConfig, iter_documents, load_tokenizer


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    corpus = demo_data.write_corpus(d / "notes.jsonl", n_docs=600, seed=3)
    ids = demo_data.build_tokenizer([corpus], d / "tok", vocab_size=1200)
    return d, corpus, ids


def test_notes_deterministic_varied_and_fast():
    t0 = time.perf_counter()
    notes = list(demo_data.generate_notes(3000, seed=7))
    assert time.perf_counter() - t0 < 2.0
    assert notes == list(demo_data.generate_notes(3000, seed=7))
    assert notes != list(demo_data.generate_notes(3000, seed=8))
    kinds = {k for k, _ in notes}
    assert kinds == set(demo_data.NOTE_TYPES)
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
    assert docs == [t.strip() for _, t in demo_data.generate_notes(600, seed=3)]
    assert not list(d.glob(".notes.jsonl.*"))  # no temporary file left behind


def test_tokenizer_special_ids_and_determinism(demo, tmp_path):
    d, corpus, ids = demo
    assert ids == {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "[MASK]": 4}
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (d / "tok" / name).is_file()
    demo_data.build_tokenizer([corpus], tmp_path / "again", vocab_size=1200)
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
    assert len(out) == 3 and all(o["sequence"].startswith("The patient takes") for o in out)
    assert all(0 <= o["token"] < len(tok) for o in out)
