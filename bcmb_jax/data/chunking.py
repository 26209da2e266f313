"""Documents -> token chunks: the original recipe's chunking rule over the HF fast tokenizer.

Each document is tokenized on its own and cut into `[CLS] ... [SEP]` chunks of at most `seq_len` tokens;
with a byte-level tokenizer and `prefix_space`, every continuation chunk starts with a space like a
document does. Documents are tokenized in batches, and long ones in pieces cut before single spaces
(`_split_text`), which tokenize exactly like the whole text, so memory stays bounded for any length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from bcmb_jax.data.tokenizer import TokenizerInfo
from bcmb_jax.errors import DataError

_PIECE_CHARS = 100_000  # long documents are tokenized in pieces of about this many characters
_BATCH_CHARS = 4_000_000  # characters per batched tokenizer call


def _split_text(text: str, max_chars: int = _PIECE_CHARS) -> list[str]:
    """Cuts a long text before single spaces between words, so piecewise tokenization equals whole-text
    tokenization for byte-level BPE (the space stays with the next word)."""
    pieces, pos = [], 0
    while len(text) - pos > max_chars:
        cut, lo, hi = -1, pos + max_chars // 2, pos + max_chars
        while hi > lo:
            i = text.rfind(" ", lo, hi)
            if i <= 0:
                break
            if not text[i - 1].isspace() and i + 1 < len(text) and not text[i + 1].isspace():
                cut = i
                break
            hi = i
        cut = cut if cut > pos else pos + max_chars
        pieces.append(text[pos:cut])
        pos = cut
    pieces.append(text[pos:])
    return pieces


class Chunker:
    """Splits one document's token stream into `[CLS] content [SEP]` chunks of at most `seq_len` tokens.

    Every chunk holds up to `seq_len - 2` content tokens; the tail chunk keeps whatever is left. With a
    byte-level tokenizer and `prefix_space`, the first token of each continuation chunk is re-tokenized
    with a leading space (" " + its text), as the original conversion did, so chunks start like
    documents do; the chunk then takes fewer tokens so that it never exceeds `seq_len`. (The original
    also re-tokenized the first chunk's head, which already carries its space under add_prefix_space;
    that added a stray whitespace token and could make chunks longer than `seq_len`; we do neither.)
    """

    def __init__(self, tok: TokenizerInfo, seq_len: int):
        if seq_len < 4:
            raise DataError(f"seq_len must be >= 4, got {seq_len}")
        self.tok, self.budget = tok, seq_len - 2
        self._heads: dict[int, tuple[int, ...]] = {}
        self._buf = np.empty(0, np.int32)
        self._first = True

    def head(self, t: int) -> tuple[int, ...]:
        if not self.tok.prefix_space:
            return (t,)
        if t not in self._heads:
            s = self.tok.tokenizer.decode([t], skip_special_tokens=False)
            ids: tuple[int, ...] = (t,)
            if s and not s[0].isspace() and "\ufffd" not in s and t not in self.tok.special_ids:
                ids = tuple(self.tok.tokenizer.encode(" " + s, add_special_tokens=False).ids) or (t,)
            self._heads[t] = ids if len(ids) <= 8 else (t,)
        return self._heads[t]

    def _chunk(self, head: tuple[int, ...], body: np.ndarray) -> np.ndarray:
        out = np.empty(len(head) + len(body) + 2, np.int32)
        out[0], out[-1] = self.tok.cls_id, self.tok.sep_id
        out[1:1 + len(head)] = head
        out[1 + len(head):-1] = body
        return out

    def feed(self, ids: np.ndarray) -> list[np.ndarray]:
        """Adds tokens of the current document; returns the chunks completed so far."""
        buf = np.concatenate([self._buf, ids]) if len(self._buf) else np.asarray(ids, np.int32)
        out = []
        while len(buf):
            head = (int(buf[0]),) if self._first else self.head(int(buf[0]))
            take = self.budget - len(head) + 1
            if len(buf) < take:
                break
            out.append(self._chunk(head, buf[1:take]))
            buf, self._first = buf[take:], False
        self._buf = buf
        return out

    def finish(self) -> list[np.ndarray]:
        """Ends the document: returns its last (short) chunk, if any, and resets."""
        out = []
        if len(self._buf):
            head = (int(self._buf[0]),) if self._first else self.head(int(self._buf[0]))
            out.append(self._chunk(head, self._buf[1:]))
        self._buf, self._first = np.empty(0, np.int32), True
        return out


def tokenize_documents(docs: Iterable[str], tok: TokenizerInfo, seq_len: int) -> Iterator[list[np.ndarray]]:
    """Yields, per document, its list of chunks. Documents are tokenized in batches; long ones are
    streamed in pieces, so memory stays bounded for any document length."""
    chunker = Chunker(tok, seq_len)
    encode = getattr(tok.tokenizer, "encode_batch_fast", tok.tokenizer.encode_batch)
    pending: list[tuple[str, bool]] = []  # (piece, last piece of its document)
    size, current = 0, []

    def flush():
        nonlocal current
        results = []
        for (_, last), enc in zip(pending, encode([p for p, _ in pending], add_special_tokens=False)):
            current += chunker.feed(np.asarray(enc.ids, np.int32))
            if last:
                results.append(current + chunker.finish())
                current = []
        pending.clear()
        return results

    for doc in docs:
        pieces = _split_text(doc)
        for i, piece in enumerate(pieces):
            pending.append((piece, i == len(pieces) - 1))
            size += len(piece)
            if size >= _BATCH_CHARS or len(pending) >= 4096:
                yield from flush()
                size = 0
    if pending:
        yield from flush()
