"""The whole paper in one command: checkpoint -> phase 1 -> phase 2 -> export -> Table 2 -> Table 3 -> report.

    python reproduce.py --config configs/reproduce.yaml --size base --init ckpt/ep0-ba52988-rank0.pt
    python reproduce.py --config configs/reproduce.yaml --size large --init thomas-sounack/ModernBERT-large
    python reproduce.py --scale tiny           # the whole chain offline on a laptop CPU (about 10 minutes)
    python reproduce.py --help                 # every config key and its meaning

Stages, each a subprocess of an existing command, each skipped when its outputs are complete and continued
when it was interrupted (train.py resumes from its run directory; a task's seeds are rerun):

  convert     convert_weights.py to-jax INIT -> OUT/init (a random HF ModernBERT when `init` is null)
  phase1      train.py --config PHASE1 model.init=OUT/init run_dir=OUT/phase1 (+ the config's data)
  phase2      train.py --config PHASE2 model.init=OUT/phase1 run_dir=OUT/phase2
  export      OUT/phase2/hf (train.py's export; convert_weights.py to-hf when it is missing)
  finetune    evaluate.py on the export, every task x backend (jax, torch) x seed -> OUT/results/
  table2      OUT/results/table.md, beside the paper's Table 2 row of `paper_row`
  throughput  bench/throughput.py on the export, JAX and torch -> OUT/throughput/
  report      OUT/report/report.md: timings per stage, held-out MLM loss, loss curves, Table 2, Table 3

A task whose data directory is absent (Phenotype needs credentialed MIMIC-III) is skipped with a note in
the report. OUT/timings.json records each stage's wall time (a skipped stage keeps its earlier time).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcmb_jax import cli
from bcmb_jax.errors import ConfigError, InputError
from bcmb_jax.evaluation import paper
from bcmb_jax.runconfig import from_dict, help_text, load, opt

ROOT = Path(__file__).resolve().parent
STAGES = ("convert", "phase1", "phase2", "export", "finetune", "table2", "throughput", "report")
SCALES = {"paper": ROOT / "configs" / "reproduce.yaml", "tiny": ROOT / "configs" / "reproduce_tiny.yaml"}
log = logging.getLogger("reproduce")


@dataclass(frozen=True)
class PhaseConfig:
    config: str = opt("", "train.py YAML of the phase; `{size}` is replaced by --size")
    overrides: dict[str, Any] = opt({}, "train.py keys set on top (dotted names), e.g. {max_steps: 20}")


@dataclass(frozen=True)
class TaskSpec:
    data: str = opt("", "the task's data directory; absent = the task is skipped with a note")
    options: dict[str, Any] = opt({}, "task options and protocol keys (evaluate.py key=value), e.g. {max_train: 64}")


@dataclass(frozen=True)
class ReproduceConfig:
    size: str = opt("base", "base | large: `{size}` in the phase configs and the paper rows compared with")
    init: str | None = opt(None, "the stable-phase checkpoint: Composer .pt, HF directory, hub id or JAX "
                                 "directory; null = a random HF ModernBERT of `random_init`")
    optimizer_state: bool = opt(True, "convert: keep a Composer checkpoint's StableAdamW moments")
    tokenizer: str | None = opt(None, "convert: tokenizer directory for a Composer checkpoint / random init; "
                                      "`demo` = the embedded corpus's tokenizer, built under OUT/data")
    random_init: dict[str, Any] = opt({}, "HF ModernBertConfig keys of the random init (vocab and special ids "
                                          "come from the tokenizer)")
    out_dir: str = opt("runs/reproduce_{size}", "everything goes here")
    phase1: PhaseConfig = opt(PhaseConfig(), "phase 1 (train.py)")
    phase2: PhaseConfig = opt(PhaseConfig(), "phase 2 (train.py)")
    pretrain_sources: list[dict[str, Any]] | None = opt(None, "data.sources of both phases (null = the phase "
                                                               "configs'); `demo` paths = the embedded corpus")
    tasks: dict[str, dict] = opt({}, "task name -> {data, options}: chemprot, phenotype, cos, "
                                         "social_history, deid (any evaluate.py task works)")
    seeds: list[int] = opt(list(paper.SEEDS), "fine-tuning seeds (the paper: 42-46, median reported)")
    backends: list[str] = opt(["jax", "torch"], "fine-tuning backends, both on the export")
    finetune: dict[str, Any] = opt({}, "protocol keys for every task (evaluate.py key=value); empty = the "
                                       "paper's defaults")
    paper_row: str | None = opt(None, "the Table 2 row to compare with; null = BioClinical ModernBERT-{size}")
    heldout: str = opt("demo", "held-out MLM text: a file with one document per line, or `demo` (notes the "
                               "embedded corpus never holds)")
    heldout_docs: int = opt(64, "held-out documents scored")
    throughput: list[str] = opt([], "bench/throughput.py arguments (--model and --out are set); [] = its defaults")
    skip: list[str] = opt([], f"stages to skip, of {', '.join(STAGES)}")

    def __post_init__(self):
        if self.size not in ("base", "large"):
            raise ConfigError(f"`size` must be base or large, got {self.size!r}")
        bad = sorted(set(self.skip) - set(STAGES))
        if bad:
            raise ConfigError(f"`skip`: unknown stage(s) {bad}; expected some of {list(STAGES)}")
        bad = sorted(set(self.backends) - {"jax", "torch"})
        if bad or not self.backends:
            raise ConfigError(f"`backends` must list jax and/or torch, got {self.backends}")
        self.task_specs()

        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"`seeds` must list distinct integers, got {self.seeds}")
        if self.heldout_docs < 1:
            raise ConfigError(f"`heldout_docs` must be >= 1, got {self.heldout_docs}")

    def task_specs(self) -> dict[str, TaskSpec]:
        """The tasks, each name and option checked against the task registry and the protocol's keys."""
        from bcmb_jax.evaluation import tasks
        from bcmb_jax.evaluation.protocol import FinetuneConfig

        protocol_keys = set(FinetuneConfig.__dataclass_fields__)
        out = {}
        for name, spec in self.tasks.items():
            if not isinstance(spec, dict):
                raise ConfigError(f"`tasks.{name}` must be a mapping {{data, options}}, got {spec!r}")
            try:
                accepted = tasks.task_options(name)
            except ConfigError as e:
                raise ConfigError(f"`tasks.{name}`: {e}") from None
            out[name] = from_dict(TaskSpec, spec, prefix=f"tasks.{name}.")
            unknown = sorted(set(out[name].options) - protocol_keys - set(accepted))
            if unknown:
                raise ConfigError(f"`tasks.{name}.options`: unknown key(s) {unknown}; expected task options "
                                  f"{accepted or 'none'} or protocol keys (evaluate.py --help)")
        unknown = sorted(set(self.finetune) - protocol_keys)
        if unknown:
            raise ConfigError(f"`finetune`: unknown protocol key(s) {unknown} (evaluate.py --help lists them)")
        for where, given in (("finetune", self.finetune), *((f"tasks.{n}.options", {**self.finetune, **{
                k: v for k, v in spec.options.items() if k in protocol_keys}}) for n, spec in out.items())):
            try:  # the values too, as evaluate.py will read them: a bad one fails now, not after pretraining
                from_dict(FinetuneConfig, given)
            except ConfigError as e:
                raise ConfigError(f"`{where}`: {e}") from None
        return out

    def phase_configs(self) -> None:
        """Loads both phases' train.py configs with their overrides, so a bad key fails now, not hours later."""
        from bcmb_jax.training.config import TrainConfig

        for which in ("phase1", "phase2"):
            spec: PhaseConfig = getattr(self, which)
            try:
                load(TrainConfig, phase_config_path(spec, self.size), overrides(spec.overrides))
            except ConfigError as e:
                raise ConfigError(f"`{which}`: {e}") from None


# ---------------------------------------------------------------------------------------------
# Running commands and recording stages


class Stages:
    """Runs stages in order, records their wall time in OUT/timings.json."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out / "timings.json"
        self.timings: dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def run(self, name: str, done: bool, fn) -> None:
        if done:
            print(f"== {name}: complete, skipped", flush=True)
            self.timings.setdefault(name, {"seconds": 0.0})["status"] = "complete (skipped on rerun)"
        else:
            print(f"== {name}", flush=True)
            t0 = time.perf_counter()
            fn()
            self.timings[name] = {"seconds": round(time.perf_counter() - t0, 1), "status": "ran"}
        self.save()

    def save(self) -> None:
        from bcmb_jax.atomic import write_text

        write_text(self.path, json.dumps(self.timings, indent=1) + "\n")


class StageFailed(InputError):
    """A stage's command failed; its log says why (and rerunning continues from that stage)."""


def command(*args: Any, log_file: Path | None = None) -> None:
    """Runs `python ARGS` in the repository root; its output goes to `log_file` (and a failure is an error)."""
    argv = [sys.executable, str(ROOT / args[0]), *map(str, args[1:])]
    print("$ " + " ".join(map(str, args)), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}
    if log_file is None:
        rc = subprocess.run(argv, env=env).returncode
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a") as f:
            rc = subprocess.run(argv, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        where = f"; see {log_file}" if log_file else ""
        raise StageFailed(f"`{' '.join(map(str, args[:2]))} ...` exited with status {rc}{where}")


def overrides(d: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted key=value strings of a nested dict (lists and dicts of leaves as JSON)."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v and not k.endswith("overrides"):
            out += overrides(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={json.dumps(v) if isinstance(v, list | dict | bool) or v is None else v}")
    return out


def hf_complete(d: Path) -> bool:
    return (d / "config.json").is_file() and any(d.glob("*.safetensors"))


# ---------------------------------------------------------------------------------------------
# Stages


def demo_tokenizer(out: Path) -> tuple[Path, Path]:
    """(corpus, tokenizer dir) of the embedded demo corpus under OUT/data, built once."""
    from bcmb_jax.data import demo_corpus

    return demo_corpus.ensure(out / "data")


def convert(cfg: ReproduceConfig, out: Path, tokenizer: Path | None) -> None:
    logs = out / "logs" / "convert.log"
    src = cfg.init
    if src is None:
        src = out / "init_hf"
        if not hf_complete(src):
            from bcmb_jax.weights import hf_files

            hf_files.write_random_model(tokenizer, cfg.random_init, src)
    extra = ["--optimizer-state"] if cfg.optimizer_state and str(src).endswith(".pt") else []
    if tokenizer is not None and str(src).endswith(".pt"):
        extra += ["--tokenizer", tokenizer]
    command("convert_weights.py", "to-jax", src, out / "init", "--overwrite", *extra, log_file=logs)
    if not hf_complete(out / "init_hf"):  # the initial weights as HF, for the held-out loss
        command("convert_weights.py", "to-hf", out / "init", out / "init_hf", "--overwrite", log_file=logs)


def phase(cfg: ReproduceConfig, which: str, out: Path, init: Path, tokenizer: Path, sources) -> None:
    spec: PhaseConfig = getattr(cfg, which)
    args = [f"run_dir={out / which}", f"model.init={init}", f"data.tokenizer={tokenizer}"]
    if sources is not None:
        args.append(f"data.sources={json.dumps(sources)}")
    args += overrides(spec.overrides)
    command("train.py", "--config", phase_config_path(spec, cfg.size), *args, log_file=out / "logs" / f"{which}.log")


def phase_config_path(spec: PhaseConfig, size: str) -> Path:
    config = Path(spec.config.format(size=size))
    if not config.is_file() and (ROOT / config).is_file():
        config = ROOT / config  # the repository's configs/
    return config


def result_complete(path: Path, seeds: list[int]) -> bool:
    """Whether a result file is complete and holds every seed asked (evaluate.py reruns only missing seeds)."""
    try:
        obj = json.loads(path.read_text())
        return bool(obj["complete"]) and {str(s) for s in seeds} <= set(obj["seeds"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def finetune_jobs(cfg: ReproduceConfig, out: Path) -> tuple[list[tuple[str, str, TaskSpec]], list[str]]:
    """([(task, backend, spec)] to run or check, notes on skipped tasks)."""
    jobs, notes = [], []
    for task in paper.TASKS:
        if task not in cfg.tasks:
            notes.append(f"{task}: not in this config's tasks")
    for task, spec in cfg.task_specs().items():
        data = Path(spec.data.format(size=cfg.size)) if spec.data else None
        if data is None or not data.exists():
            notes.append(f"{task}: skipped, its data directory {spec.data or '(not set)'} is absent"
                         + (" (Phenotype needs credentialed MIMIC-III)" if task == "phenotype" else ""))
            continue
        jobs += [(task, backend, spec) for backend in cfg.backends]
    return jobs, notes


def finetune(cfg: ReproduceConfig, out: Path, export: Path, jobs) -> None:
    from bcmb_jax.evaluation.results import result_paths

    name = "phase2"
    for task, backend, spec in jobs:
        path, _ = result_paths(out / "results", name, backend, task)
        if result_complete(path, cfg.seeds):
            print(f"   {task} ({backend}): complete", flush=True)
            continue
        opts = {**cfg.finetune, **spec.options, "name": name, "paper_row": paper_row(cfg)}
        data = Path(spec.data.format(size=cfg.size)).resolve()
        command("evaluate.py", "--model", export, "--task", task, "--data", data, "--backend", backend,
                "--seeds", ",".join(map(str, cfg.seeds)), "--results-dir", out / "results",
                *overrides(opts), log_file=out / "logs" / f"finetune_{task}_{backend}.log")


def paper_row(cfg: ReproduceConfig) -> str:
    return cfg.paper_row or f"BioClinical ModernBERT-{cfg.size}"


def throughput(cfg: ReproduceConfig, out: Path, export: Path) -> None:
    args = list(cfg.throughput)
    command("bench/throughput.py", *args, "--model", export, "--out", out / "throughput",
            log_file=out / "logs" / "throughput.log")


# ---------------------------------------------------------------------------------------------
# The command


def parse_args(argv: list[str] | None) -> tuple[ReproduceConfig, argparse.Namespace]:
    ap = cli.ArgumentParser(description=__doc__,
                            epilog="config keys (YAML, or key=value overrides):\n" + help_text(ReproduceConfig))
    ap.add_argument("--config", help="YAML config (default: configs/reproduce.yaml, or reproduce_tiny.yaml)")
    ap.add_argument("--scale", choices=sorted(SCALES), default="paper", help="paper (default) or tiny")
    ap.add_argument("--size", choices=("base", "large"), help="model size (overrides `size`)")
    ap.add_argument("--init", help="stable-phase checkpoint (overrides `init`)")
    ap.add_argument("--out", help="output directory (overrides `out_dir`)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. seeds=[42,43]")
    args = ap.parse_args(argv)
    extra = list(args.overrides)
    for key, value in (("size", args.size), ("init", args.init), ("out_dir", args.out)):
        if value is not None:
            extra.append(f"{key}={value}")
    cfg = load(ReproduceConfig, args.config or SCALES[args.scale], extra)
    return cfg, args


@cli.command
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg, _ = parse_args(argv)
    from bcmb_jax.atomic import check_writable_dir
    from bcmb_jax.evaluation import report

    # Every stage's settings and the output location, before the first expensive step.
    cfg.phase_configs()
    out = Path(cfg.out_dir.format(size=cfg.size)).resolve()
    check_writable_dir(out, "--out", ConfigError)
    stages = Stages(out)
    t_start = time.perf_counter()
    tokenizer = Path(cfg.tokenizer) if cfg.tokenizer and cfg.tokenizer != "demo" else None
    sources = cfg.pretrain_sources
    if cfg.tokenizer == "demo" or any("demo" in (s.get("paths") or []) for s in sources or []):
        corpus, demo_tok = demo_tokenizer(out)
        tokenizer = demo_tok if cfg.tokenizer == "demo" else tokenizer
        sources = [{**s, "paths": [str(corpus) if p == "demo" else p for p in s.get("paths", [])]}
                   for s in sources or []] or None
    if cfg.init is None and tokenizer is None:
        raise ConfigError("`init` is null (random init) but no `tokenizer` is set; expected a tokenizer directory "
                          "or `demo`")
    init, phase1, phase2 = out / "init", out / "phase1", out / "phase2"
    export = phase2 / "hf"
    skip = set(cfg.skip)
    jobs, notes = finetune_jobs(cfg, out)
    stages.run("convert", "convert" in skip or (init / "config.json").is_file(),
               lambda: convert(cfg, out, tokenizer))
    stages.run("phase1", "phase1" in skip or hf_complete(phase1 / "hf"),
               lambda: phase(cfg, "phase1", out, init, init, sources))
    stages.run("phase2", "phase2" in skip or hf_complete(export),
               lambda: phase(cfg, "phase2", out, phase1, init, sources))
    stages.run("export", "export" in skip or hf_complete(export),
               lambda: command("convert_weights.py", "to-hf", phase2, export, "--overwrite",
                               log_file=out / "logs" / "export.log"))
    from bcmb_jax.evaluation.results import result_paths, write_table

    done = all(result_complete(result_paths(out / "results", "phase2", b, t)[0], cfg.seeds) for t, b, _ in jobs)
    stages.run("finetune", "finetune" in skip or done, lambda: finetune(cfg, out, export, jobs))
    stages.run("table2", "table2" in skip, lambda: write_table(out / "results"))
    stages.run("throughput", "throughput" in skip or (out / "throughput" / "results.json").is_file(),
               lambda: throughput(cfg, out, export))
    stages.run("report", False, lambda: report.write_report(
        out, cfg.size, paper_row(cfg), stages.timings, notes, cfg.heldout, cfg.heldout_docs))
    print(f"report: {out / 'report' / 'report.md'} ({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
