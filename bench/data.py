"""Throughput of the input pipeline: stage 1 (read, tokenize, chunk, cache) and stage 2 (pack, mask).

    python bench/data.py --config configs/bioclinical_base_phase1.yaml [--workers 1,2] [--seq-len 8192]
    python bench/data.py --corpus-mb 200 [--tokenizer DIR]      # generated clinical-style notes (fictional)
    python bench/data.py --corpus-mb 50 --warm-files 1000        # also: start-up on a warm cache of 1,000 files

Stage 1 runs once per `--workers` count into a fresh cache directory, in one run, and reports tokens/s
(chunk tokens, [CLS]/[SEP] included) overall and per worker; every count must give the same cache. Stage 2
iterates `--batches` batches of `--rows` packed rows of `--seq-len` from the warm cache in this process:
the rate one host's data process feeds its accelerators. `--warm-files N` cuts the corpus into N files,
fills a cache and times a warm start (stage 1 with every entry present). Writes results.json and
results.md to `--out`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bcmb_jax import cli  # noqa: E402 - the checkout's package, via the line above
from bcmb_jax.errors import ConfigError  # noqa: E402

SHARED_TOKENIZER = ROOT.parent / "shared" / "data" / "modernbert_tokenizer"


def parser():
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--config", help="a run config whose `data:` section is measured")
    ap.add_argument("--corpus-mb", type=cli.count(), help="instead of --config: this many MB of generated notes "
                                                          "(JSONL, 4 files)")
    ap.add_argument("--tokenizer", help="tokenizer directory for --corpus-mb (default: the ModernBERT tokenizer in "
                                        "../shared/data, else the demo tokenizer)")
    ap.add_argument("--workers", default="1,2", help="stage-1 worker counts, measured in this order")
    ap.add_argument("--seq-len", type=cli.count(4), default=8192)
    ap.add_argument("--rows", type=cli.count(), default=16, help="stage 2: packed rows per batch")
    ap.add_argument("--batches", type=cli.count(), default=20, help="stage 2: batches timed")
    ap.add_argument("--warm-files", type=cli.count(0), default=0, help="also time a warm start on this many files")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "data"))
    return ap


def generated_corpus(directory: Path, mb: int, files: int = 4) -> list[Path]:
    """`mb` MB of fictional clinical notes as JSONL, in `files` files."""
    from bcmb_jax.data import demo_corpus

    paths = [directory / f"notes{i}.jsonl" for i in range(files)]
    handles = [p.open("w", encoding="utf-8") for p in paths]
    size, seed = 0, 0
    while size < mb << 20:
        for i, (kind, text) in enumerate(demo_corpus.generate_notes(2000, seed=seed)):
            line = json.dumps({"text": text, "type": kind}) + "\n"
            handles[i % files].write(line)
            size += len(line.encode())
        seed += 1
    for h in handles:
        h.close()
    return paths


def cache_digest(cache: Path) -> str:
    h = hashlib.sha256()
    for entry in sorted(p for p in cache.iterdir() if not p.name.startswith(".")):
        for name in ("tokens.npy", "offsets.npy", "doc_ids.npy"):
            h.update((entry / name).read_bytes())
    return h.hexdigest()[:16]


@cli.command
def main(argv: list[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING)
    args = parser().parse_args(argv)
    workers = cli.counts("--workers", args.workers)
    if not workers:
        raise ConfigError("--workers: expected at least one worker count")
    if (args.config is None) == (args.corpus_mb is None):
        raise ConfigError("give one of --config or --corpus-mb")
    from bcmb_jax import runconfig
    from bcmb_jax.data import pipeline, stage1
    from bcmb_jax.data.config import DataConfig, SourceConfig

    work = Path(tempfile.mkdtemp(prefix="bcmb-data-bench-"))
    try:
        if args.config:
            cfg = runconfig.load(DataConfig, args.config, [f"seq_len={args.seq_len}"], section="data")
        else:
            tok_dir = args.tokenizer or (SHARED_TOKENIZER if SHARED_TOKENIZER.is_dir() else None)
            if tok_dir is None:
                from bcmb_jax.data import demo_corpus

                _, tok_dir = demo_corpus.ensure(work / "demo")
            t = time.perf_counter()
            files = generated_corpus(work, args.corpus_mb)
            print(f"generated {sum(f.stat().st_size for f in files) / 2**20:.0f} MB of notes in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
            cfg = DataConfig(tokenizer=str(tok_dir), seq_len=args.seq_len,
                             sources=[SourceConfig(name="notes", paths=[str(f) for f in files])])
        tok = pipeline.load_data_tokenizer(cfg)
        rows, digests = [], set()
        for w in workers:
            cache = work / f"cache-{w}"
            cfg = dataclasses.replace(cfg, cache_dir=str(cache))
            t = time.perf_counter()
            corpus = stage1.prepare(cfg, tok, workers=w, progress=False)
            seconds = time.perf_counter() - t
            tokens = corpus.stats().tokens
            digests.add(cache_digest(cache))
            rows.append({"stage": "1: read, tokenize, chunk, cache", "workers": w, "tokens": tokens,
                         "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds),
                         "tokens_per_s_per_worker": round(tokens / seconds / w)})
            print(f"stage 1, {w} worker(s): {tokens:,} tokens in {seconds:.1f} s = {tokens / seconds:,.0f} tokens/s",
                  flush=True)
        if len(digests) != 1:
            raise RuntimeError(f"the caches differ between worker counts: {digests}")
        t = time.perf_counter()
        corpus = stage1.prepare(cfg, tok, progress=False)
        rows.append({"stage": "1: warm start (cache complete)", "files": sum(len(s.parts) for s in corpus.stores),
                     "seconds": round(time.perf_counter() - t, 3)})
        ds, _, _ = pipeline.build_dataset(cfg, seed=0, batch_size=args.rows, process_index=0, process_count=1,
                                          tok=tok, corpus=corpus)
        it = iter(ds)
        next(it)  # the first batch fills grain's buffers
        t, tokens = time.perf_counter(), 0
        for _ in range(args.batches):
            batch = next(it)
            tokens += int((batch["segment_ids"] > 0).sum())
        seconds = time.perf_counter() - t
        rows.append({"stage": "2: pack, mask", "workers": 1, "tokens": tokens, "seconds": round(seconds, 2),
                     "tokens_per_s": round(tokens / seconds), "tokens_per_s_per_worker": round(tokens / seconds)})
        print(f"stage 2: {tokens:,} tokens in {seconds:.1f} s = {tokens / seconds:,.0f} tokens/s", flush=True)
        if args.warm_files:
            rows.append(warm_start(cfg, tok, args.warm_files, work))
            print(f"warm start on {args.warm_files} files: {rows[-1]['seconds']} s", flush=True)
        write(Path(args.out), rows, cfg, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def warm_start(cfg, tok, n: int, work: Path) -> dict:
    """Cuts the corpus's first file into `n` files, fills a cache, and times a start on the warm cache."""
    from bcmb_jax.data import stage1
    from bcmb_jax.data.config import SourceConfig

    lines = Path(cfg.sources[0].paths[0]).read_text(encoding="utf-8").splitlines(keepends=True)
    d = work / "many"
    d.mkdir()
    for i in range(n):
        (d / f"part{i:05d}.jsonl").write_text("".join(lines[i::n]) or lines[0], encoding="utf-8")
    many = dataclasses.replace(cfg, cache_dir=str(work / "cache-many"),
                               sources=[SourceConfig(name="many", paths=[str(d)], format="jsonl")])
    stage1.prepare(many, tok, progress=False)
    t = time.perf_counter()
    stage1.prepare(many, tok, progress=False)
    return {"stage": "1: warm start (cache complete)", "files": n, "seconds": round(time.perf_counter() - t, 3)}


def write(out: Path, rows: list[dict], cfg, args) -> None:
    from bcmb_jax.atomic import write_text

    env = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "seq_len": cfg.seq_len,
           "tokenizer": cfg.tokenizer, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    write_text(out / "results.json", json.dumps({"rows": rows, "env": env}, indent=1) + "\n")
    lines = [f"# Data pipeline throughput ({env['date']})", "",
             f"seq_len {cfg.seq_len}, tokenizer {cfg.tokenizer}, {env['cores']} cores", "",
             "| stage | workers / files | tokens | seconds | tokens/s | tokens/s per worker |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r.get('workers', r.get('files'))} | {r.get('tokens', '')} | "
                     f"{r['seconds']} | "
                     f"{r.get('tokens_per_s', '')} | {r.get('tokens_per_s_per_worker', '')} |")
    write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    cli.run(main)
