"""Documents -> chunks: the chunking rule, the byte-level prefix space, long documents in pieces."""

import numpy as np
import pytest
from data_helpers import N_WORDS, ids_of, word_tokenizer

from bcmb_jax.data.chunking import _split_text, tokenize_documents
from bcmb_jax.data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def word_tok(tmp_path_factory):
    return word_tokenizer(tmp_path_factory.mktemp("wordtok"))


@pytest.fixture(scope="module")
def bpe_tok(tmp_path_factory):
    """A small byte-level BPE (ModernBERT-style) trained on the demo notes."""
    from bcmb_jax.data import demo_corpus

    d = tmp_path_factory.mktemp("bpetok")
    corpus = demo_corpus.write_corpus(d / "notes.jsonl", n_docs=300, seed=1)
    demo_corpus.build_tokenizer([corpus], d / "tok", vocab_size=800)
    return d / "tok"


def test_chunking_rule_word_level(word_tok):
    tok = load_tokenizer(word_tok)
    assert not tok.prefix_space  # not a byte-level tokenizer
    docs = [" ".join(f"w{i % N_WORDS}" for i in range(n)) for n in (1, 29, 30, 31, 95)]
    out = list(tokenize_documents(docs, tok, seq_len=32))
    for doc, chunks in zip(docs, out):
        want = ids_of(doc)
        assert len(chunks) == -(-len(want) // 30)
        assert all(c[0] == tok.cls_id and c[-1] == tok.sep_id and len(c) <= 32 for c in chunks)
        assert all(len(c) == 32 for c in chunks[:-1])  # full chunks hold seq_len - 2 content tokens
        assert np.concatenate([c[1:-1] for c in chunks]).tolist() == want


def test_chunking_prefix_space_byte_level(bpe_tok):
    tok = load_tokenizer(bpe_tok, prefix_space=True)
    plain = load_tokenizer(bpe_tok, prefix_space=False)
    assert tok.prefix_space and not plain.prefix_space
    text = "Hypertension treated with lisinopril and amlodipine; dyspnea resolved. " * 40
    ids = tok.tokenizer.encode(text.strip(), add_special_tokens=False).ids
    assert tok.tokenizer.id_to_token(ids[0]).startswith("Ġ")  # a leading space is added to the document
    assert not plain.tokenizer.id_to_token(plain.tokenizer.encode("Hypertension").ids[0]).startswith("Ġ")
    (chunks,) = tokenize_documents([text.strip()], tok, seq_len=16)
    assert len(chunks) > 20 and all(len(c) <= 16 for c in chunks)
    assert chunks[0][1:-1].tolist() == ids[:14]  # the first chunk is the document's first 14 tokens
    texts = [tok.tokenizer.decode(c[1:-1].tolist()) for c in chunks]
    assert all(t[0].isspace() for t in texts)  # every chunk starts like a document: with a space
    assert "".join("".join(texts).split()) == "".join(text.split())  # no text lost or added
    # heads of continuation chunks that fell mid-word were re-tokenized with a leading space
    assert np.concatenate([c[1:-1] for c in chunks]).tolist() != ids


def test_long_text_pieces_tokenize_like_whole(bpe_tok):
    tok = load_tokenizer(bpe_tok)
    text = ("Patient   reports  fever and\tcough.\n\nPlan:  chest x-ray " * 4000).strip()
    pieces = _split_text(text, max_chars=5000)
    assert len(pieces) > 20 and "".join(pieces) == text
    whole = tok.tokenizer.encode(text, add_special_tokens=False).ids
    parts = sum((e.ids for e in tok.tokenizer.encode_batch(pieces, add_special_tokens=False)), [])
    assert parts == whole
