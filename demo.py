"""`make demo`: the whole workflow, offline, in a few minutes on a laptop CPU.

1. write the embedded corpus (fictional clinical notes) and train a tokenizer on it;
2. make a small random Hugging Face ModernBERT and convert it:  convert_weights.py to-jax;
3. continue its MLM pretraining in JAX:                          train.py --config configs/demo.yaml;
4. the run exports runs/demo/hf, which `transformers` loads: fill-mask and the MLM loss, before and after.

    python demo.py            # embedded corpus and tokenizer
    python demo.py --real     # ../shared/data: the real ModernBERT tokenizer and the pretrain_sample corpus
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bcmb_jax import cli
from bcmb_jax.config import ConfigError

ROOT = Path(__file__).resolve().parent
RUNS = ROOT / "runs"
REAL = ROOT.parent / "shared" / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def prepare_data(real: bool) -> tuple[Path, list[str]]:
    """(tokenizer dir, train.py overrides selecting the corpus)."""
    from bcmb_jax import demo_data

    if real:
        if not REAL.is_dir():
            sys.exit(f"error: --real needs {REAL} (the shared data folder beside the checkout)")
        sample = REAL / "pretrain_sample"
        sources = [
            {"name": "aci_bench", "paths": [str(sample / "aci_bench")], "pattern": "*.csv", "field": "dialogue,note"},
            {"name": "primock57_notes", "paths": [str(sample / "primock57" / "notes")], "field": "note"},
            {"name": "mtsamples", "paths": [str(sample / "mtsamples_subset" / "mtsamples.csv")],
             "csv_header": False, "field": 4},
            {"name": "ade", "paths": [str(sample / "ade_corpus_v2" / "ADE-NEG.txt")], "format": "lines"},
        ]
        return REAL / "modernbert_tokenizer", [f"data.sources={json.dumps(sources)}"]
    data = RUNS / "demo_data"
    corpus = data / "clinical_notes.jsonl"
    if not corpus.exists():
        demo_data.write_corpus(corpus, n_docs=3000, seed=0)
    if not (data / "tokenizer" / "tokenizer.json").exists():
        demo_data.build_tokenizer([corpus], data / "tokenizer", vocab_size=4096)
    n_docs = sum(1 for _ in corpus.open())
    print(f"corpus: {corpus} ({n_docs} fictional notes); tokenizer: {data / 'tokenizer'}")
    return data / "tokenizer", []


def random_hf_model(tokenizer_dir: Path, out: Path) -> None:
    """A small random ModernBertForMaskedLM (4 layers x 128) matching the tokenizer, saved with it."""
    import torch
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = tf.ModernBertConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4,
        local_attention=32, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id, classifier_pooling="mean")
    torch.manual_seed(0)
    shutil.rmtree(out, ignore_errors=True)
    tf.ModernBertForMaskedLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    print(f"random HF ModernBERT: {sum(p.numel() for p in tf.ModernBertForMaskedLM(cfg).parameters()):,} "
          f"parameters -> {out}")


def run(args: list[str]) -> None:
    print("$ " + " ".join(str(a) for a in args), flush=True)
    subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, check=True)


def loss_curve(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    print(f"{'step':>6} {'loss':>8} {'lr':>10} {'tokens/s':>9}")
    for r in rows[:: max(1, len(rows) // 10)] + ([rows[-1]] if len(rows) % 10 else []):
        print(f"{r['step']:>6} {r['loss']:>8.4f} {r['lr']:>10.2e} {r['tokens_per_s']:>9.0f}")
    return rows


def held_out_texts(real: bool, n: int = 64) -> list[str]:
    from bcmb_jax import demo_data

    if real:
        lines = (REAL / "pretrain_sample" / "ade_corpus_v2" / "ADE-NEG.txt").read_text(errors="replace").splitlines()
        return [line.split(" ", 2)[-1] for line in lines[-n:]]
    return [text for _, text in demo_data.generate_notes(n, seed=12345)]  # notes the run never saw


def hf_mlm_loss(model_dir: Path, texts: list[str], rate: float = 0.15) -> float:
    """transformers' own MLM loss on held-out text, 15% of the tokens masked ([MASK] only, fixed seed)."""
    import torch
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(model_dir)
    model = tf.AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    enc = tok(texts, truncation=True, max_length=256, padding=True, return_tensors="pt")
    gen = torch.Generator().manual_seed(0)
    special = torch.tensor([[t in tok.all_special_ids for t in row] for row in enc["input_ids"].tolist()])
    pick = (torch.rand(enc["input_ids"].shape, generator=gen) < rate) & (enc["attention_mask"] == 1) & ~special
    labels = torch.where(pick, enc["input_ids"], -100)
    ids = torch.where(pick, tok.mask_token_id, enc["input_ids"])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=enc["attention_mask"], labels=labels).loss.item()


@cli.command
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", action="store_true", help="real tokenizer + pretrain_sample from ../shared/data")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: configs/demo.yaml)")
    args = ap.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps: must be >= 1, got {args.steps}")
    RUNS.mkdir(exist_ok=True)

    banner("1. data")
    tokenizer_dir, data_overrides = prepare_data(args.real)

    banner("2. a random Hugging Face ModernBERT, converted to JAX")
    hf_init, jax_init = RUNS / "demo_hf_init", RUNS / "demo_init"
    random_hf_model(tokenizer_dir, hf_init)
    run(["convert_weights.py", "to-jax", hf_init, jax_init, "--overwrite"])

    banner("3. continued MLM pretraining in JAX")
    run_dir = RUNS / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo always starts afresh
    import transformers as tf

    init_cfg = json.loads((jax_init / "config.json").read_text())
    ids = {k: init_cfg[k] for k in ("vocab_size", "pad_token_id", "cls_token_id", "sep_token_id", "bos_token_id",
                                    "eos_token_id")}
    ids["mask_token_id"] = tf.AutoTokenizer.from_pretrained(tokenizer_dir).mask_token_id
    overrides = [f"run_dir={run_dir}", f"model.init={jax_init}", f"data.tokenizer={tokenizer_dir}",
                 f"model.overrides={json.dumps(ids)}", *data_overrides]
    if args.steps:
        overrides += [f"max_steps={args.steps}", f"schedule.total={args.steps}",
                      f"schedule.decay={max(1, args.steps // 3)}"]
    run(["train.py", "--config", "configs/demo.yaml", *overrides])
    rows = loss_curve(run_dir)
    first, last = rows[0]["loss"], rows[-1]["loss"]
    print(f"MLM loss (30% masking): {first:.3f} at step {rows[0]['step']} -> {last:.3f} at step {rows[-1]['step']}")

    banner("4. the exported checkpoint in PyTorch (transformers)")
    hf_dir = run_dir / "hf"
    print(f"{hf_dir}: {sorted(p.name for p in hf_dir.iterdir())}")
    texts = held_out_texts(args.real)
    before, after = hf_mlm_loss(hf_init, texts), hf_mlm_loss(hf_dir, texts)
    print(f"held-out MLM loss in transformers (15% masking): random init {before:.3f} -> trained {after:.3f}")
    fill = tf.pipeline("fill-mask", model=str(hf_dir), tokenizer=str(hf_dir))
    mask = fill.tokenizer.mask_token
    for sentence in (f"The patient was admitted with community-acquired{mask}.",
                     f"Blood pressure 128/76, heart rate 88, oxygen saturation 97% on room{mask}."):
        guesses = ", ".join(f"{g['token_str'].strip()!r} ({g['score']:.2f})" for g in fill(sentence, top_k=3))
        print(f"fill-mask: {sentence}\n           -> {guesses}")
    if not last < first:
        sys.exit("error: the MLM loss did not fall")
    return 0


if __name__ == "__main__":
    cli.run(main)
