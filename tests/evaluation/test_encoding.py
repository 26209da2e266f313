"""evaluation/encoding.py: HF's word alignment and truncation; the paper's Table 6 token counts on the real corpora
(skipped without ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SHARED_DATA

from bcmb_jax.evaluation import encoding, paper
from bcmb_jax.evaluation.encoding import load_encoder, paper_token_counts
from bcmb_jax.evaluation.tasks import build_task


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


def _hf_with_prefix_space(tok_dir: Path):
    """transformers' fast tokenizer with the ByteLevel prefix space the paper's transformers 4.52 set."""
    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]")


@pytest.mark.parametrize("which", ["tiny", "modernbert"])
def test_tokenization_matches_hf_alignment(which, tiny):
    tok_dir = tiny["tok"] if which == "tiny" else SHARED_DATA / "modernbert_tokenizer"
    if not tok_dir.is_dir():
        pytest.skip(f"{tok_dir} not available")
    enc = encoding.load_encoder(tok_dir)
    hf = _hf_with_prefix_space(tok_dir)
    text = "Patient denies chest pain; @CHEMICAL$ inhibits @GENE$ (x2)."
    assert hf.convert_ids_to_tokens(enc.text([text])[0])[0].startswith("Ġ")  # the prefix space is there
    words = ["Patient", "denies", "chest-pain", ".", "Hello", "insulin", "glargine", "today"]
    tags = [0, 1, 2, 0, 1, 2, 2, 0]
    rows = [{"id": "a", "tokens": words, "tags": tags}]
    for max_length in (64, 9):  # 9: truncation cuts words off, which then leave the evaluation
        (ex,), stats = encoding.encode_examples(rows, "ner", enc, max_length)
        ref = hf(words, is_split_into_words=True, truncation=True, max_length=max_length)
        assert ex.ids.tolist() == ref["input_ids"]
        # The paper's tokenize_and_align_labels: the label on a word's first sub-token only.
        want, prev = [], None
        for w in ref.word_ids():
            want.append(-100 if w is None or w == prev else tags[w])
            prev = w
        assert ex.token_labels.tolist() == want
        kept = sorted({w for w in ref.word_ids() if w is not None})
        assert ex.words == [words[w] for w in kept] and ex.tags == [tags[w] for w in kept]
        assert stats["dropped_words"] == len(words) - len(kept)
    assert stats["truncated_examples"] == 1 and len(ex.ids) == 9
    (cls,), _ = encoding.encode_examples([{"id": "b", "text": text, "label": 1}], "classification", enc, 10)
    assert cls.ids.tolist() == hf(text, truncation=True, max_length=10)["input_ids"]
