"""Fine-tune a model on one of the paper's downstream tasks over several seeds and score it on test.

    python evaluate.py --model runs/demo --task chemprot --data ../shared/data/chemprot
    python evaluate.py --model runs/demo/hf --task deid --data DIR --backend torch labels=gold
    python evaluate.py --model DIR --task csv --data DIR text_field=sentence max_train=2000 --seeds 42,43
    python evaluate.py stats --task cos --data ../shared/data/cos     # Table 6 beside the paper's

--model: a JAX checkpoint directory (convert_weights.py to-jax, a train run or one of its steps) or an HF
model directory. The JAX backend runs ModernBERT in JAX on packed rows; the torch backend runs
transformers' Auto*For{Sequence,Token}Classification (a JAX checkpoint is exported to HF first), so any HF
encoder (BERT, RoBERTa, ...) can be scored with the same protocol. The tokenizer comes from the model
directory unless tokenizer=DIR is given.

Tasks: chemprot, phenotype, cos, social_history, deid, conll (CoNLL NER files), csv, jsonl (generic
classification). Task options are key=value too (deid: labels=silver|gold; csv/jsonl: text_field=,
label_field=, label_sep=; conll: scheme=; chemprot: source=, text=; social_history: split=). Values are
read as YAML (numbers, lists, null); unquoted text stays as typed, e.g. label_sep='|'.

Protocol (the paper's HF Trainer set-up and Appendix B): AdamW (0.9, 0.999, 1e-8), weight decay 1e-5 (not
on LayerNorm weights and biases), linear decay without warmup, gradient clipping 1.0, batch 16, 10 epochs,
seeds 42-46 with the median reported, the best validation epoch (seqeval entity F1 for NER, weighted F1
otherwise) scored on test; the learning rate of the paper's Table 5 for the task and model size (base =
hidden 768, large = hidden 1024; any other size: 2e-5, printed). Every seed changes both the data order
and the classifier init. Each result file records every hyper-parameter used and where it came from.
Tokens per example: max_length_rule=model (default) takes the model's context, capped by the tokenizer's
model_max_length when below 10,000; max_length_rule=paper is the authors' code (model_max_length when below
10,000, else 512). Both give 8,192 with the released tokenizers; for a tokenizer without a limit the model
rule keeps the context the model was trained for rather than cutting long notes to 512.

stats: classes, examples per split and average tokens per example counted as the paper's Table 6 (each
word tokenized on its own without a prefix space, plus [CLS] and [SEP]), beside the paper's numbers.
--tokenizer defaults to ../shared/data/modernbert_tokenizer (the tokenizer of the paper's counts).

Output, under --results-dir (default results/):
    <name>/<backend>/<task>.json                              per-seed test/val metrics, epochs, summaries
    <name>/<backend>/<task>/seed<N>/test_predictions.jsonl    one line per test example
    table.md                                    every result in the directory, beside the paper's Table 2
<name> is the model directory's name (or name=...). Files are replaced atomically; the JSON is rewritten
after every seed, so an interrupted run keeps the seeds it finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from bcmb_jax import cli
from bcmb_jax.atomic import check_writable_dir
from bcmb_jax.errors import ConfigError, FinetuneError
from bcmb_jax.evaluation import paper, tasks
from bcmb_jax.evaluation.metrics import MAIN_METRIC
from bcmb_jax.evaluation.protocol import FINETUNE_BACKENDS, FinetuneConfig
from bcmb_jax.runconfig import from_dict, help_text, parse_overrides

log = logging.getLogger("evaluate")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, FinetuneConfig, dict]:
    ap = cli.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="protocol keys (key=value; anything else is passed to the task builder):\n"
               + help_text(FinetuneConfig))
    ap.add_argument("--model", required=True, help="JAX checkpoint directory or HF model directory")
    ap.add_argument("--task", required=True, help=" | ".join(tasks.BUILDERS))
    ap.add_argument("--data", required=True, help="the task's data directory")
    ap.add_argument("--backend", choices=FINETUNE_BACKENDS, default="jax", help="jax (default) or torch")
    ap.add_argument("--seeds", default=",".join(map(str, paper.SEEDS)),
                    help="comma-separated seeds (default: the paper's 42-46)")
    ap.add_argument("--epochs", type=int, help="training epochs (default 10)")
    ap.add_argument("--lr", type=float, help="peak learning rate (default: the paper's Table 5, else 2e-5)")
    ap.add_argument("--results-dir", default="results", help="where results go (default results/)")
    ap.add_argument("--overwrite", action="store_true", help="run every seed again, even where a result with "
                    "these settings is complete, and replace a complete result computed with other settings "
                    "(the old one stays until the new one is complete)")
    ap.add_argument("overrides", nargs="*", help="key=value: protocol keys below, or task options")
    args = ap.parse_intermixed_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"--seeds must list distinct integers, got {args.seeds}")
    given = parse_overrides(args.overrides)
    known = set(FinetuneConfig.__dataclass_fields__)
    options = {k: v for k, v in given.items() if k not in known}
    flags = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}
    cfg = from_dict(FinetuneConfig, {**{k: v for k, v in given.items() if k in known}, **flags})
    args.user_keys = sorted({k for k in given if k in known} | set(flags))
    return args, cfg, options


def run(args: argparse.Namespace, cfg: FinetuneConfig, options: dict) -> int:
    from bcmb_jax.evaluation import encoding, protocol, results

    # 1. The task, the model's tokenizer and context, the examples, the hyper-parameters; every output
    #    location is checked before any work.
    check_writable_dir(args.results_dir, "--results-dir", ConfigError)
    task = tasks.build_task(args.task, args.data, **options)
    info = protocol.model_info(args.model, cfg.tokenizer)
    enc = encoding.load_encoder(info["tokenizer_dir"])
    hp = protocol.resolve_hyperparameters(task.name, info, enc, cfg, set(args.user_keys))
    data = encoding.encode_task(task, enc, hp["max_length"], cfg.limits())
    data.check_vocabulary(info["vocab_size"], info["tokenizer_dir"], args.model)
    lr = hp["lr"]
    log.info("%s: %s examples (train/val/test), max_length %d (%s), lr %g (%s), weight decay %g (%s)", task.name,
             "/".join(str(len(data.split(s))) for s in ("train", "val", "test")), data.max_length,
             hp["sources"]["max_length"], lr, hp["sources"]["lr"], hp["weight_decay"], hp["sources"]["weight_decay"])
    if hp["sources"]["lr"].startswith("fallback"):
        print(f"note: learning rate {hp['sources']['lr']}", file=sys.stderr)

    # The result file: which seeds are still to run (none when a result with these settings is complete).
    name = cfg.name or results.default_name(args.model)
    header = {"task": task.name, "backend": args.backend, "model": str(Path(args.model).resolve()),
              "name": name, "kind": task.kind, "main_metric": MAIN_METRIC[task.kind], "labels": task.labels,
              "config": {**dataclasses.asdict(cfg), **{k: v for k, v in hp.items() if k != "sources"},
                         "seeds": args.seeds, "task_options": options, "data": str(Path(args.data).resolve())},
              "sources": {**hp["sources"], "seeds": "user" if tuple(args.seeds) != paper.SEEDS else "paper"},
              "data_stats": data.stats}
    run = results.ResultRun(args.results_dir, name, args.backend, task.name, header, args.seeds, args.overwrite)
    if not run.todo:
        print(f"{run.final}: already holds seeds {args.seeds} with these settings; nothing to do "
              "(--overwrite runs them again)")
    elif len(run.todo) < len(args.seeds):
        log.info("%s: seeds %s already done with these settings; running %s", run.final,
                 sorted(set(args.seeds) - set(run.todo)), run.todo)

    with tempfile.TemporaryDirectory(prefix="bcmb-eval-") as work:
        if not run.todo:
            return _summary(args, run, results.write_table(args.results_dir))
        # 2. The backend: JAX on the checkpoint, or torch on its HF export.
        t0 = time.perf_counter()
        if args.backend == "jax":
            if not (info["is_jax"] or info["model_type"] == "modernbert"):
                raise FinetuneError(f"{args.model}: a {info['model_type']} model; the JAX backend runs "
                                    "ModernBERT only (use --backend torch)")
            from bcmb_jax.evaluation.jax_backend import JaxBackend

            backend = JaxBackend(args.model, data, cfg)
        else:
            from bcmb_jax.evaluation import torch_backend

            hf_dir = torch_backend.hf_directory(args.model, Path(work))
            backend = torch_backend.TorchBackend(hf_dir, data, cfg, enc.pad_id)
        run.header["load_seconds"] = time.perf_counter() - t0

        # 3. One fine-tuning run per seed, added to the result file as it finishes. Seeds a result with the
        #    same settings already holds are kept; a complete result with other settings is never rewritten.
        for seed in run.todo:
            def progress(row, seed=seed):
                main = MAIN_METRIC[task.kind]
                log.info("seed %d epoch %d: train loss %.4f, val %s %.4f (%.1f s)", seed, row["epoch"],
                         row["train_loss"], main, row["val"][main], row["seconds"])

            res = protocol.fit(backend, data, cfg, seed, lr, on_epoch=progress)
            records = res.pop("predictions")
            run.add(seed, res, records if cfg.save_predictions else None)
            log.info("seed %d: best epoch %d, test %s %.4f (%.0f s)", seed, res["best_epoch"],
                     header["main_metric"], res["test"][header["main_metric"]], res["seconds"])

    # 4. The summary and the table over everything in the results directory.
    return _summary(args, run, results.write_table(args.results_dir))


def _summary(args: argparse.Namespace, run, table: Path) -> int:
    obj = run.current()
    main = obj["main_metric"]
    print(f"{obj['task']} ({args.backend}, {obj['name']}): test {main} median {obj['median'][main]:.4f} "
          f"(min {obj['min'][main]:.4f}, max {obj['max'][main]:.4f}) over seeds {obj['seeds_done']}")
    print(f"results: {run.final}\ntable: {table}")
    return 0


def stats(argv: list[str]) -> int:
    """`evaluate.py stats`: the task's Table 6 row (classes, examples, paper-counted tokens) beside the paper's."""
    from bcmb_jax.evaluation import encoding, results

    ap = cli.ArgumentParser(prog="evaluate.py stats", description=stats.__doc__)
    ap.add_argument("--task", required=True, help="a task name (see evaluate.py --help)")
    ap.add_argument("--data", required=True, help="the task's data directory")
    ap.add_argument("--tokenizer", help="tokenizer directory (default: ../shared/data/modernbert_tokenizer)")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    ap.add_argument("options", nargs="*", help="task options, key=value")
    args = ap.parse_args(argv)
    tok = args.tokenizer or DEFAULT_STATS_TOKENIZER
    task = tasks.build_task(args.task, args.data, **parse_overrides(args.options))
    row = table6_row(task, encoding.load_encoder(tok, prefix_space=False))
    print(results.table6({task.name: row}), end="")
    if args.json:
        print(json.dumps({task.name: row}))
    return 0


DEFAULT_STATS_TOKENIZER = str(Path(__file__).resolve().parent.parent / "shared" / "data" / "modernbert_tokenizer")


def table6_row(task, enc) -> dict:
    """{"classes", "examples": {split: n}, "avg_tokens": {split: x}} of a built task."""
    from bcmb_jax.evaluation.encoding import paper_token_counts

    return {"classes": len(task.labels), "examples": task.counts(), "avg_tokens": paper_token_counts(task, enc)}


def dispatch(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["stats"]:
        return stats(argv[1:])
    args, cfg, options = parse_args(argv)
    return run(args, cfg, options)


@cli.command
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("jax", "absl", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return dispatch(argv)


if __name__ == "__main__":
    cli.run(main)
