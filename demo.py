"""`make demo`: build a small random Hugging Face ModernBERT, load it into JAX, check parity and speed."""

from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import jax
    import numpy as np
    import torch
    import transformers as tf

    import bcmb_jax

    jax.config.update("jax_default_matmul_precision", "highest")
    cfg = tf.ModernBertConfig(vocab_size=8192, hidden_size=256, intermediate_size=384, num_hidden_layers=6,
                              num_attention_heads=4, max_position_embeddings=2048, pad_token_id=0,
                              bos_token_id=1, cls_token_id=1, eos_token_id=2, sep_token_id=2)
    torch.manual_seed(0)
    hf = tf.ModernBertForMaskedLM(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = bcmb_jax.from_pretrained(d)
    rng = np.random.default_rng(0)
    lengths = [512, 300, 77, 1]
    ids = rng.integers(100, 8000, size=(4, 512))
    mask = (np.arange(512)[None] < np.array(lengths)[:, None]).astype(np.int64)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(model(ids, attention_mask=mask).logits)
    diff = np.abs(got - ref)[mask.astype(bool)].max()
    print(f"parity vs transformers (fp32, {int(mask.sum())} real tokens): max |logit diff| = {diff:.2e}")

    docs = [rng.integers(100, 8000, size=int(n)).tolist() for n in rng.integers(16, 2048, size=32)]
    bcmb_jax.encode(model, docs[:4], row_len=2048, batch_tokens=8192)  # compile
    t0 = time.perf_counter()
    bcmb_jax.encode(model, docs, row_len=2048, batch_tokens=8192)
    dt = time.perf_counter() - t0
    n = sum(map(len, docs))
    print(f"packed inference: {len(docs)} documents, {n} tokens in {dt:.2f} s = {n / dt:.0f} tokens/s")


if __name__ == "__main__":
    main()
