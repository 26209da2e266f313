"""Stage 1 on every core and every host: each file of the corpus tokenized once, into the shared cache.

    plan     every source's files and their cache entries (`corpus.entry_dir`); the files of the whole
             corpus are dealt to the processes of the job by size, the same deal on every process, and a
             process tokenizes only the missing files dealt to it (`share`)
    run      the files, and byte ranges of large line-based files (`sources.splittable`), run on a pool of
             spawned worker processes, all cores by default; a file's ranges are joined (`corpus.combine`)
             and written as one entry, atomically, as soon as all are done: a killed process leaves only
             temporary directories, which the next writer removes
    wait     then the process waits for the entries of the other processes' files, and loads the whole
             corpus memory-mapped

The result does not depend on the number of workers or processes: the same config gives the same cache
and the same batches. A standalone job (`python -m bcmb_jax.data prepare share=I/N`, one task of a SLURM
array, say) prepares one share and does not wait. Without a `cache_dir` each process tokenizes every file
itself, in memory (with its workers).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bcmb_jax.data import corpus as corpus_lib
from bcmb_jax.data.config import SourceConfig
from bcmb_jax.data.corpus import ChunkStore, Corpus, FileTokens
from bcmb_jax.data.sources import expand_paths, splittable
from bcmb_jax.data.tokenizer import TokenizerInfo
from bcmb_jax.errors import DataError

if TYPE_CHECKING:
    from bcmb_jax.data.config import DataConfig

log = logging.getLogger(__name__)

MIN_RANGE_BYTES = 4 << 20  # large line-based files are cut into byte ranges of this size at least ...
MAX_RANGE_BYTES = 64 << 20  # ... and of this size at most (about two ranges per worker in between)
POOL_MIN_BYTES = 8 << 20  # less work than this runs in this process (a worker's start-up costs about a second)
WAIT_POLL_S = 2.0  # how often a process looks for the other processes' entries
WAIT_REPORT_S = 60.0  # how often it says what it is waiting for


@dataclass(frozen=True)
class FileJob:
    """One file of the corpus: where its entry goes, and which process tokenizes it."""

    source: int  # index into data.sources
    path: Path
    entry: Path | None  # its cache entry (None without a cache_dir)
    owner: int  # the process of the job that tokenizes it


@dataclass(frozen=True)
class Unit:
    """A piece of work for one worker: a whole file or one byte range of it."""

    job: int  # index into the plan's files
    part: int  # its position among the file's ranges
    src: SourceConfig
    path: Path
    byte_range: tuple[int, int] | None


def default_workers() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def deal(sizes: list[int], processes: int) -> list[int]:
    """The process of each file: largest first, each to the least loaded process (ties: the lowest index)."""
    load, owner = [0] * processes, [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        p = min(range(processes), key=lambda q: (load[q], q))
        owner[i] = p
        load[p] += sizes[i]
    return owner


def plan(cfg: DataConfig, tok: TokenizerInfo, processes: int) -> list[FileJob]:
    files = [(s, path) for s, src in enumerate(cfg.sources) for path in expand_paths(src)]
    owners = deal([path.stat().st_size for _, path in files], processes)
    return [FileJob(s, path, corpus_lib.entry_dir(cfg.cache_dir, path, cfg.sources[s], tok, cfg.seq_len)
                    if cfg.cache_dir else None, owner) for (s, path), owner in zip(files, owners)]


def units_of(index: int, job: FileJob, src: SourceConfig, workers: int) -> list[Unit]:
    size = job.path.stat().st_size
    if workers < 2 or size < 2 * MIN_RANGE_BYTES or not splittable(job.path, src):
        return [Unit(index, 0, src, job.path, None)]
    step = min(MAX_RANGE_BYTES, max(MIN_RANGE_BYTES, math.ceil(size / (2 * workers))))
    n = math.ceil(size / step)
    edges = [size * i // n for i in range(n + 1)]
    return [Unit(index, k, src, job.path, (edges[k], edges[k + 1])) for k in range(n)]


# ---------------------------------------------------------------------------------------------
# Workers

_worker: dict = {}


def _init_worker(tok: TokenizerInfo, seq_len: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _worker.update(tok=tok, seq_len=seq_len)


def _run(unit: Unit) -> FileTokens:
    return corpus_lib.tokenize_file(unit.path, unit.src, _worker["tok"], _worker["seq_len"],
                                    byte_range=unit.byte_range)


def pool_size(units: list[Unit], workers: int) -> int:
    """Worker processes for these units: 1 (this process) for a single unit or too little work to pay for them."""
    total = sum((u.byte_range[1] - u.byte_range[0]) if u.byte_range else u.path.stat().st_size for u in units)
    return 1 if workers < 2 or len(units) < 2 or total < POOL_MIN_BYTES else min(workers, len(units))


def run_units(units: list[Unit], tok: TokenizerInfo, seq_len: int, workers: int, on_file, progress: bool) -> None:
    """Runs the units (on `workers` processes when more than one), calling `on_file(job, parts)` as soon as
    every range of a file is done."""
    expected: dict[int, int] = {}
    for u in units:
        expected[u.job] = expected.get(u.job, 0) + 1
    done: dict[int, dict[int, FileTokens]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="tok", unit_scale=True, desc="tokenizing", leave=False, dynamic_ncols=True)

    def finished(unit: Unit, result: FileTokens) -> None:
        done.setdefault(unit.job, {})[unit.part] = result
        if bar is not None:
            bar.update(int(result.stats["tokens"]))
        if len(done[unit.job]) == expected[unit.job]:
            parts = done.pop(unit.job)
            on_file(unit.job, [parts[k] for k in sorted(parts)])

    try:
        workers = pool_size(units, workers)
        if workers == 1:  # in this process: the same results, without a worker's start-up
            for u in units:
                finished(u, corpus_lib.tokenize_file(u.path, u.src, tok, seq_len, byte_range=u.byte_range))
            return
        ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold JAX's threads
        pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                      initializer=_init_worker, initargs=(tok, seq_len))
        try:
            futures = {pool.submit(_run, u): u for u in units}
            for fut in cf.as_completed(futures):
                finished(futures[fut], fut.result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------------------------------
# The whole stage


def prepare(cfg: DataConfig, tok: TokenizerInfo, share: tuple[int, int] | None = None, workers: int | None = None,
            wait: bool = True, progress: bool | None = None) -> Corpus:
    """Stage 1 (see the module docstring); returns the corpus, or with `wait=False` the files of this share."""
    if not cfg.sources:
        raise DataError("data.sources is empty (expected at least one source with `paths`)")
    names = [s.name for s in cfg.sources]
    if len(set(names)) != len(names):
        raise DataError(f"data.sources: names must be unique, got {names}")
    t0 = time.perf_counter()
    if cfg.max_docs is not None:  # quick runs read a prefix of each source, in this process, without a cache
        stores = [corpus_lib.prepare_source(src, tok, cfg.seq_len, cfg.max_docs) for src in cfg.sources]
        return _finish(cfg, stores, t0)
    index, count = share or (0, 1)
    if not 0 <= index < count:
        raise DataError(f"share {index}/{count}: expected 0 <= index < count")
    if not cfg.cache_dir:
        if count > 1:
            log.warning("data.cache_dir is not set: each of the %d processes tokenizes the whole corpus itself; "
                        "set cache_dir on a shared file system to tokenize each file once", count)
        index, count = 0, 1
    workers = workers or cfg.prepare_workers or default_workers()
    jobs = plan(cfg, tok, count)
    mine = [i for i, j in enumerate(jobs) if j.owner == index and not (j.entry and corpus_lib.entry_ready(j.entry))]
    loaded: dict[int, FileTokens] = {}

    def on_file(i: int, parts: list[FileTokens]) -> None:
        ft = corpus_lib.combine(parts)
        if jobs[i].entry is not None:
            corpus_lib.write_entry(jobs[i].entry, ft, jobs[i].path)
            ft = corpus_lib.load_entry(jobs[i].entry)
        loaded[i] = ft

    if mine:
        units = [u for i in mine for u in units_of(i, jobs[i], cfg.sources[jobs[i].source], workers)]
        n = pool_size(units, workers)
        log.info("stage 1: tokenizing %d of %d files (%d units) %s%s", len(mine), len(jobs), len(units),
                 "in this process" if n == 1 else f"on {n} worker processes",
                 f", share {index}/{count}" if count > 1 else "")
        run_units(units, tok, cfg.seq_len, workers, on_file, progress=index == 0 if progress is None else progress)
    if not wait:
        stores = [ChunkStore(src.name, [loaded[i] for i in sorted(loaded) if jobs[i].source == s])
                  for s, src in enumerate(cfg.sources)]
        return Corpus(stores, [s.weight for s in cfg.sources], time.perf_counter() - t0)
    _wait_for_others(jobs, set(loaded))
    parts: list[list[FileTokens]] = [[] for _ in cfg.sources]
    for i, job in enumerate(jobs):
        parts[job.source].append(loaded[i] if i in loaded else corpus_lib.load_entry(job.entry))
    stores = [ChunkStore(src.name, p) for src, p in zip(cfg.sources, parts)]
    return _finish(cfg, stores, t0)


def _wait_for_others(jobs: list[FileJob], have: set[int]) -> None:
    """Blocks until every entry this process did not write exists (written by the other processes)."""
    missing = [i for i, j in enumerate(jobs) if i not in have and not corpus_lib.entry_ready(j.entry)]
    last = time.monotonic()
    while missing:
        time.sleep(WAIT_POLL_S)
        missing = [i for i in missing if not corpus_lib.entry_ready(jobs[i].entry)]
        if missing and time.monotonic() - last > WAIT_REPORT_S:
            owners = sorted({jobs[i].owner for i in missing})
            log.info("stage 1: waiting for %d files that processes %s are tokenizing (e.g. %s)", len(missing),
                     owners, jobs[missing[0]].path)
            last = time.monotonic()


def _finish(cfg: DataConfig, stores: list[ChunkStore], t0: float) -> Corpus:
    for src, store in zip(cfg.sources, stores):
        st = store.stats
        log.info("source %s: %d files, %d docs, %d chunks, %d tokens", src.name, st.files, st.docs, st.chunks,
                 st.tokens)
    if not any(len(s) * src.weight > 0 for s, src in zip(stores, cfg.sources)):
        files = ", ".join(str(p) for src in cfg.sources for p in src.paths)
        raise DataError(f"{files}: no documents to train on in data.sources {[s.name for s in cfg.sources]} "
                        "(every file empty or blank, or weight 0); expected at least one non-empty document")
    return Corpus(stores, [s.weight for s in cfg.sources], time.perf_counter() - t0)
