"""`make demo`: the whole workflow, offline, in a few minutes on a laptop CPU.

1. write the embedded corpus (fictional clinical notes) and train a tokenizer on it;
2. make a small random Hugging Face ModernBERT and convert it:  convert_weights.py to-jax;
3. continue its MLM pretraining in JAX:                          train.py --config configs/demo.yaml;
4. the run exports runs/demo/hf, which `transformers` loads: the held-out MLM loss and fill-mask on
   held-out sentences, the random initial model beside the trained one; runs/demo/loss_curve.png.

    python demo.py            # embedded corpus and tokenizer
    python demo.py --real     # ../shared/data: the real ModernBERT tokenizer and the pretrain_sample corpus
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from bcmb_jax import cli
from bcmb_jax.atomic import atomic, read_json
from bcmb_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parent
RUNS = ROOT / "runs"
REAL = ROOT.parent / "shared" / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def prepare_data(real: bool) -> tuple[Path, list[str]]:
    """(tokenizer dir, train.py overrides selecting the corpus)."""
    from bcmb_jax.data import demo_corpus

    if real:
        if not REAL.is_dir():
            sys.exit(f"error: --real needs {REAL} (the shared data folder beside the checkout)")
        sample = REAL / "pretrain_sample"
        sources = [
            {"name": "aci_bench", "paths": [str(sample / "aci_bench")], "pattern": "*[0-9dn].csv",  # not *_metadata
             "field": "dialogue,note"},
            {"name": "primock57_notes", "paths": [str(sample / "primock57" / "notes")], "field": "note"},
            {"name": "mtsamples", "paths": [str(sample / "mtsamples_subset" / "mtsamples.csv")],
             "csv_header": False, "field": 4},
            {"name": "ade", "paths": [str(sample / "ade_corpus_v2" / "ADE-NEG.txt")], "format": "lines"},
        ]
        return REAL / "modernbert_tokenizer", [f"data.sources={json.dumps(sources)}"]
    corpus, tokenizer_dir = demo_corpus.ensure(RUNS / "demo_data")  # what configs/demo.yaml reads
    n_docs = sum(1 for _ in corpus.open())
    print(f"corpus: {corpus} ({n_docs} fictional notes); tokenizer: {tokenizer_dir}")
    return tokenizer_dir, []


SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "local_attention",
              "global_attn_every_n_layers", "max_position_embeddings")


def random_hf_model(tokenizer_dir: Path, out: Path, shape: dict) -> None:
    """A small random ModernBertForMaskedLM of the config's shape (`model.overrides`), saved with the tokenizer."""
    from bcmb_jax.weights import hf_files

    keys = {k: shape[k] for k in SHAPE_KEYS if k in shape}
    n = hf_files.write_random_model(tokenizer_dir, keys, out)
    print(f"random HF ModernBERT: {keys.get('num_hidden_layers')} layers x {keys.get('hidden_size')}, "
          f"{n:,} parameters -> {out}")


def run(args: list[str]) -> None:
    print("$ " + " ".join(str(a) for a in args), flush=True)
    subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, check=True)


def loss_curve(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    print(f"{'step':>6} {'loss':>8} {'lr':>10} {'tokens/s':>9}")
    for r in rows[:: max(1, len(rows) // 10)] + ([rows[-1]] if len(rows) % 10 else []):
        print(f"{r['step']:>6} {r['loss']:>8.4f} {r['lr']:>10.2e} {r['tokens_per_s']:>9.0f}")
    return rows


def plot_loss(rows: list[dict], out: Path) -> Path:
    """The training loss (and the learning rate) against the step, as a PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in rows], color="tab:blue", marker=".", label="MLM loss")
    ax.set(xlabel="step", ylabel="training MLM loss", title=f"{out.parent.name}: continued MLM pretraining")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [r["lr"] for r in rows], color="tab:orange", alpha=0.6, label="learning rate")
    lr_ax.set_ylabel("learning rate", color="tab:orange")
    fig.tight_layout()
    try:
        with atomic(out, overwrite=True) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
    return out


# Held-out fill-mask: the last word of a sentence is masked in its note, and the model sees the whole note, as
# in training. Shown: for each opening, the first held-out sentence that starts with it (embedded corpus), or the
# first sentence of each held-out text (--real); the overall line counts every such sentence ending. Only endings
# of one token qualify (one [MASK] stands for one token).
OPENINGS = ("IMPRESSION:", "Exam is notable for", "PHYSICAL EXAMINATION: Vitals:", "Skin: IV site",
            "DISCHARGE INSTRUCTIONS:", "P: Continue")
N_SHOWN, N_OVERALL = len(OPENINGS), 300
_LAST_WORD = re.compile(r"(.*\S)\s+([A-Za-z]+)(\.?)")


def held_out_texts(real: bool, n: int = 64) -> tuple[str, list[str]]:
    """(what they are, texts): documents in the style of the training corpus that the run never read."""
    from bcmb_jax.data import demo_corpus

    if real:
        rel = (REAL / "pretrain_sample" / "ade_corpus_v2" / "DRUG-AE.rel").read_text(errors="replace")
        sentences = list(dict.fromkeys(line.split("|")[1] for line in rel.splitlines() if line.count("|") >= 7))
        return "ADE corpus sentences with a drug-adverse effect relation (DRUG-AE.rel, not a training source)", \
            sentences[-n:]
    return (f"{n} notes generated with another seed",
            [text for _, text in demo_corpus.generate_notes(n, seed=12345)])


class Case(NamedTuple):
    shown: str  # the sentence, its last word as [MASK]
    masked: str  # the whole text with that word as [MASK]: what the model reads
    word: str  # the masked word
    text: int  # index of the held-out text


def masked_sentences(texts: list[str], n_tokens) -> list[Case]:
    """A case for every sentence ending in a one-token word."""
    out = []
    for k, text in enumerate(texts):
        cursor = 0
        for sentence in (s for line in text.splitlines() for s in re.split(r"(?<=\.)\s+", line.strip())):
            at = text.index(sentence, cursor) if sentence else cursor
            cursor = at + len(sentence)
            m = _LAST_WORD.fullmatch(sentence)
            if m and n_tokens(" " + m[2]) == 1:
                masked = text[:at + m.start(2)] + "[MASK]" + text[at + m.end(2):]
                out.append(Case(f"{m[1]} [MASK]{m[3]}", masked, m[2], k))
    return out


def shown_cases(cases: list[Case], real: bool) -> list[Case]:
    if real:
        return list({c.text: c for c in reversed(cases)}.values())[::-1][:N_SHOWN]
    return [next(c for c in cases if c.shown.startswith(o)) for o in OPENINGS
            if any(c.shown.startswith(o) for c in cases)]


def load_hf(model_dir: Path):
    import transformers as tf

    return tf.AutoTokenizer.from_pretrained(model_dir), tf.AutoModelForMaskedLM.from_pretrained(model_dir).eval()


def fill_mask(tok, model, prompts: list[str], k: int = 3, batch: int = 32) -> list[list[tuple[int, float]]]:
    """The top-k (token id, probability) at the one [MASK] of each prompt."""
    import torch

    out = []
    for j in range(0, len(prompts), batch):
        enc = tok([p.replace("[MASK]", tok.mask_token) for p in prompts[j:j + batch]], padding=True,
                  return_tensors="pt")
        at = enc["input_ids"] == tok.mask_token_id
        assert (at.sum(1) == 1).all(), "one [MASK] per prompt"
        with torch.no_grad():
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        prob, ids = logits[at].float().softmax(-1).topk(k, dim=-1)
        out += [list(zip(i, p)) for i, p in zip(ids.tolist(), prob.tolist())]
    return out


def compare(init_dir: Path, trained_dir: Path, real: bool) -> None:
    """Held-out MLM loss and fill-mask, the random initial model beside the trained one."""
    from bcmb_jax.evaluation.report import mlm_loss

    # Training gave every document a leading space (data.prefix_space, as ModernBERT's original run did).
    # The demo tokenizer adds it itself; ModernBERT's released tokenizer does not, so --real texts carry it.
    lead = " " if real else ""
    what, texts = held_out_texts(real)
    (_, init), (tok, trained) = load_hf(init_dir), load_hf(trained_dir)
    print(f"held-out: {what}")
    before, after = (mlm_loss(tok, m, [lead + t for t in texts]) for m in (init, trained))
    print(f"held-out MLM loss in transformers (15% masked): initial {before:.3f} -> trained {after:.3f}")

    def n_tokens(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    every = masked_sentences(texts, n_tokens)
    cases, every = shown_cases(every, real), every[:N_OVERALL]
    models = {"initial": init, "trained": trained}
    targets = [tok(" " + c.word, add_special_tokens=False)["input_ids"][0] for c in cases]
    guesses = {name: fill_mask(tok, m, [lead + c.masked for c in cases]) for name, m in models.items()}
    words = {i: tok.decode([i]).strip() or repr(tok.decode([i])) for g in guesses.values() for row in g
             for i, _ in row}
    width = min(10, max(len(w) for w in words.values()))

    def cell(row: list[tuple[int, float]]) -> str:
        return "  ".join(f"{words[i][:width]:<{width}} {p:4.2f}" for i, p in row)

    print("fill-mask on held-out text, the last word of a sentence masked: top-3 with probabilities")
    for n, (case, target) in enumerate(zip(cases, targets), 1):
        shown = case.shown
        print(f"{n:>2}. {shown if len(shown) <= 96 else '...' + shown[-93:]}  -> {case.word}")
        marks = {k: "+" if g[n - 1][0][0] == target else " " for k, g in guesses.items()}
        print(f"    initial {marks['initial']} {cell(guesses['initial'][n - 1])}   "
              f"trained {marks['trained']} {cell(guesses['trained'][n - 1])}")
    right = {k: sum(g[j][0][0] == t for j, t in enumerate(targets)) for k, g in guesses.items()}
    all_targets = [tok(" " + c.word, add_special_tokens=False)["input_ids"][0] for c in every]
    overall = {name: sum(g[0][0] == t for g, t in zip(fill_mask(tok, m, [lead + c.masked for c in every], k=1),
                                                      all_targets)) / max(1, len(every))
               for name, m in models.items()}
    print(f"top-1 correct (+): initial {right['initial']}/{len(cases)}, trained {right['trained']}/{len(cases)}; "
          f"on all {len(every)} held-out sentence endings: initial {overall['initial']:.0%}, "
          f"trained {overall['trained']:.0%}")


def steps_overrides(train_cfg, steps: int | None) -> list[str]:
    """train.py overrides for `--steps N`: the schedule and logging scaled to the run (warmup and decay in
    proportion, at least two logged points), so any N trains and shows its loss curve."""
    if not steps:
        return []
    return [f"max_steps={steps}", f"schedule.total={steps}", f"schedule.decay={max(1, steps // 3)}",
            f"schedule.warmup={min(train_cfg.schedule.warmup, steps // 10)}",
            f"log_every={max(1, min(train_cfg.log_every, steps // 10))}"]


@cli.command
def main(argv: list[str] | None = None) -> int:
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--real", action="store_true", help="real tokenizer + pretrain_sample from ../shared/data")
    ap.add_argument("--config", type=Path, default=Path("configs/demo.yaml"), help="the training config")
    ap.add_argument("--steps", type=cli.count(), default=None,
                    help="training steps (default: the config's max_steps); the schedule is scaled to them")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="train.py overrides applied on top of the config, e.g. optim.lr=1e-3")
    args = ap.parse_args(argv)
    args.config = args.config.resolve()  # train.py runs in the checkout
    from bcmb_jax.runconfig import load
    from bcmb_jax.training.config import TrainConfig

    # read and checked like train.py reads it, before any work: a bad --config or override fails first
    train_cfg = load(TrainConfig, args.config, args.overrides)
    load(TrainConfig, args.config, steps_overrides(train_cfg, args.steps) + args.overrides)  # --steps fits too
    shape = train_cfg.model.overrides
    RUNS.mkdir(exist_ok=True)

    banner("1. data")
    tokenizer_dir, data_overrides = prepare_data(args.real)

    banner("2. a random Hugging Face ModernBERT, converted to JAX")
    hf_init, jax_init = RUNS / "demo_hf_init", RUNS / "demo_init"
    random_hf_model(tokenizer_dir, hf_init, shape)
    run(["convert_weights.py", "to-jax", hf_init, jax_init, "--overwrite"])

    banner("3. continued MLM pretraining in JAX")
    run_dir = RUNS / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo always starts afresh
    import transformers as tf

    init_cfg = read_json(jax_init / "config.json", ConfigError, "the converted model's config")
    ids = {k: init_cfg[k] for k in ("vocab_size", "pad_token_id", "cls_token_id", "sep_token_id", "bos_token_id",
                                    "eos_token_id")}
    ids["mask_token_id"] = tf.AutoTokenizer.from_pretrained(tokenizer_dir).mask_token_id
    overrides = [f"run_dir={run_dir}", f"model.init={jax_init}", f"data.tokenizer={tokenizer_dir}",
                 f"model.overrides={json.dumps(ids)}", *data_overrides]
    overrides += steps_overrides(train_cfg, args.steps) + args.overrides
    run(["train.py", "--config", args.config, *overrides])
    rows = loss_curve(run_dir)
    first, last = rows[0]["loss"], rows[-1]["loss"]
    print(f"MLM loss (30% masking): {first:.3f} at step {rows[0]['step']} -> {last:.3f} at step {rows[-1]['step']}")
    print(f"loss curve: {plot_loss(rows, run_dir / 'loss_curve.png')}")

    banner("4. the exported checkpoint in PyTorch (transformers): random initial model vs trained")
    hf_dir = run_dir / "hf"
    print(f"{hf_dir}: {sorted(p.name for p in hf_dir.iterdir())}")
    compare(hf_init, hf_dir, args.real)
    if len(rows) > 1 and not last < first:
        sys.exit("error: the MLM loss did not fall")
    return 0


if __name__ == "__main__":
    cli.run(main)
