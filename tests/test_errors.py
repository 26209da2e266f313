"""Bad inputs through every command line: exit status 2 (130 for Ctrl-C), one `error:` line naming the culprit,
no traceback, and every file that existed before is byte-identical after."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_RUN_MODEL, hf_model, save_hf
from error_helpers import (
    Payload,
    bad_tokenizer_json,
    bad_yaml,
    big_tokenizer,
    binary_files,
    conll_dir,
    copy_run,
    corpus_case,
    corrupt_step,
    digests,
    disagreeing_config,
    non_utf8_conll,
    resume_case,
    tokenizer_without_json,
    train_case,
    train_config,
    utf16_without_bom,
    write_yaml,
)

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"train": ["train.py"], "convert": ["convert_weights.py"], "evaluate": ["evaluate.py"],
            "demo": ["demo.py"], "bench": ["bench/throughput.py"], "data": ["-m", "bcmb_jax.data"],
            "quick": ["bench/quick.py"], "reproduce": ["reproduce.py"],
            "demo_corpus": ["-m", "bcmb_jax.data.demo_corpus"]}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "JAX_PLATFORMS": "cpu",
       "PYTHONPATH": str(ROOT)}
ENV.pop("BCMB_DEBUG", None)


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> SimpleNamespace:
    """A corpus + tokenizer, a tiny HF model, its JAX conversion, a trained run (2 checkpoints), an evil HF dir."""
    import convert_weights
    import train
    from bcmb_jax.data import demo_corpus

    root = tmp_path_factory.mktemp("fixtures")
    corpus = root / "corpus"
    demo_corpus.write_corpus(corpus / "notes.jsonl", n_docs=120, seed=1)
    demo_corpus.build_tokenizer([corpus / "notes.jsonl"], corpus / "tokenizer", vocab_size=512)
    hf = save_hf(hf_model("mlm"), root / "hf")
    assert convert_weights.main(["to-jax", str(hf), str(root / "jax"), "--no-progress"]) == 0
    evil = root / "evil"
    hf_model("mlm").config.save_pretrained(evil)
    torch.save({"model.final_norm.weight": torch.ones(64), "x": Payload(root / "pwned")},
               evil / "pytorch_model.bin")
    fx = SimpleNamespace(root=root, corpus=corpus, hf=hf, jax=root / "jax", evil=evil, marker=root / "pwned")
    cfg = write_yaml(root / "run.yaml", train_config(fx, root / "run"))
    assert train.main(["--config", str(cfg)]) == 0
    fx.run = root / "run"
    return fx


@dataclass
class Case:
    id: str
    cmd: str
    setup: Callable[[Path, SimpleNamespace], list[str]]
    expect: tuple[str, ...]  # substrings of the error line ("{d}" = the case directory, "{fx}" = the fixtures)
    status: int = 2


CASES = [
    # train.py: every kind of bad input before any work
    Case("train-missing-corpus", "train", lambda d, fx: train_case(
        d, fx, data={"sources": [{"name": "notes", "paths": [str(d / "nope.jsonl")], "field": "text"}]}),
        ("{d}/nope.jsonl", "path not found")),
    Case("train-empty-corpus", "train", lambda d, fx: corpus_case(d, fx, ""), ("{d}/c.jsonl", "no documents")),
    Case("train-corpus-is-a-directory-of-nothing", "train", lambda d, fx: (
        (d / "empty").mkdir(), train_case(d, fx, data={"sources": [{"name": "n", "paths": [str(d / "empty")]}]}))[1],
        ("{d}/empty", "no files")),
    Case("train-blank-corpus", "train", lambda d, fx: corpus_case(d, fx, "\n  \n\n"), ("{d}/c.jsonl",)),
    Case("train-seq-len-negative", "train", lambda d, fx: train_case(d, fx, data={"seq_len": -5}),
         ("data.seq_len", ">= 4", "-5")),
    Case("train-seq-len-beyond-positions", "train", lambda d, fx: train_case(d, fx, data={"seq_len": 512}),
         ("data.seq_len", "512", "max_position_embeddings (256)")),
    Case("train-vocab-smaller-than-tokenizer", "train", lambda d, fx: train_case(
        d, fx, model={"overrides": {**TINY_RUN_MODEL, "vocab_size": 100}}),
        ("{fx}/corpus/tokenizer", "vocab_size is 100", "512 tokens")),
    Case("train-missing-tokenizer", "train", lambda d, fx: train_case(d, fx, data={"tokenizer": str(d / "tok")}),
         ("tokenizer not found", "{d}/tok")),
    Case("train-tokenizer-invalid-json", "train", bad_tokenizer_json, ("{d}/tok/tokenizer.json", "invalid JSON")),
    Case("train-config-invalid-yaml", "train", bad_yaml, ("{d}/bad.yaml:4", "invalid YAML")),
    Case("train-config-missing", "train", lambda d, fx: ["--config", str(d / "none.yaml")], ("{d}/none.yaml",)),
    Case("train-init-refused-pickle", "train", lambda d, fx: train_case(
        d, fx, model={"init": str(fx.evil), "overrides": {}}, data={"tokenizer": str(fx.corpus / "tokenizer")}),
        ("{fx}/evil/pytorch_model.bin", "refused to unpickle", "posix.system", "nothing in it was executed")),
    Case("train-init-corrupted-checkpoint", "train", lambda d, fx: train_case(
        d, fx, model={"init": str(corrupt_step(copy_run(fx, d), 2)), "overrides": {}}),
        ("{d}/run/checkpoints/2",)),
    Case("train-resume-another-model-size", "train", lambda d, fx: resume_case(
        d, fx, model={"overrides": {**TINY_RUN_MODEL, "hidden_size": 64, "intermediate_size": 96}}),
        ("{d}/run", "model hidden_size: run has 32, now 64", "model intermediate_size")),
    Case("train-resume-other-data-settings", "train", lambda d, fx: resume_case(d, fx, data={"seq_len": 32}),
         ("{d}/run", "data.seq_len: run has 64, now 32")),
    # convert_weights.py
    Case("to-hf-config-disagrees-with-params", "convert", disagreeing_config,
         ("{d}/jax", "shape", "192")),
    Case("to-jax-refused-pickle", "convert", lambda d, fx: ["to-jax", str(fx.evil), str(d / "out")],
         ("{fx}/evil/pytorch_model.bin", "refused to unpickle", "posix.system")),
    Case("to-jax-missing-source", "convert", lambda d, fx: ["to-jax", str(d / "none"), str(d / "out")],
         ("{d}/none",)),
    Case("to-hf-corrupted-step", "convert", lambda d, fx: [
        "to-hf", str(corrupt_step(copy_run(fx, d), 2)), str(d / "out")], ("{d}/run/checkpoints/2", "corrupt")),
    # evaluate.py, bench, demo, the data CLI
    Case("evaluate-missing-model", "evaluate", lambda d, fx: [
        "--model", str(d / "none"), "--task", "conll", "--data", str(conll_dir(d)), "--results-dir", str(d / "r")],
        ("{d}/none",)),
    Case("evaluate-non-utf8-conll", "evaluate", non_utf8_conll, ("{d}/conll/dev.txt", "UTF-8")),
    Case("evaluate-unknown-option", "evaluate", lambda d, fx: [
        "--model", str(fx.jax), "--task", "conll", "--data", str(d), "colour=blue", "--results-dir", str(d / "r")],
        ("colour",)),
    Case("bench-missing-model", "bench", lambda d, fx: ["--model", str(d / "none"), "--out", str(d / "out")],
         ("--model {d}/none", "config.json")),
    Case("bench-bad-lengths", "bench", lambda d, fx: ["--lengths", "64,abc", "--out", str(d / "out")],
         ("--lengths", "'64,abc'", "integers")),
    Case("demo-steps-zero", "demo", lambda d, fx: ["--steps", "0"], ("--steps", ">= 1")),
    Case("demo-config-is-a-list", "demo", lambda d, fx: (
        (d / "list.yaml").write_text("- max_steps: 3\n"), ["--config", str(d / "list.yaml")])[1],
        ("{d}/list.yaml", "mapping")),
    Case("demo-bad-override", "demo", lambda d, fx: ["optim.lr=abc"], ("optim.lr", "float", "'abc'")),
    Case("data-stats-missing-tokenizer", "data", lambda d, fx: [
        "stats", "--config", str(write_yaml(d / "c.yaml", train_config(fx, d / "r"))), f"tokenizer={d / 'tok'}"],
        ("tokenizer not found", "{d}/tok")),
    Case("data-stats-invalid-yaml", "data", lambda d, fx: ["stats", *bad_yaml(d, fx)], ("{d}/bad.yaml",)),
    # Accepted in silence before: each gave rc 0 with a wrong or useless result.
    Case("evaluate-tokenizer-beyond-the-vocabulary", "evaluate", lambda d, fx: [
        "--model", str(fx.jax), "--task", "conll", "--data", str(conll_dir(d)), "--results-dir", str(d / "r"),
        "--seeds", "1", "--epochs", "1", f"tokenizer={big_tokenizer(d, fx)}"],
        ("{d}/bigtok", "vocab_size 512", "token id")),
    Case("train-mlm-probability-zero", "train", lambda d, fx: train_case(d, fx, data={"mlm_probability": 0}),
         ("data.mlm_probability", "(0, 1]")),
    Case("train-directory-of-binary-files", "train", binary_files, ("{d}/bin/part0.dat", "not UTF-8 text",
                                                                    "binary")),
    Case("train-utf16-without-bom", "train", utf16_without_bom, ("{d}/notes.txt", "UTF-16 without a byte-order mark")),
    Case("to-jax-tokenizer-without-tokenizer-json", "convert", tokenizer_without_json,
         ("{d}/tok", "no tokenizer.json")),
    Case("data-stats-max-batches-negative", "data", lambda d, fx: [
        "stats", "--config", str(write_yaml(d / "c.yaml", train_config(fx, d / "r"))), "max_batches=-1"],
        ("max_batches", ">= 1", "-1")),
    Case("data-stats-batch-size-zero", "data", lambda d, fx: [
        "stats", "--config", str(write_yaml(d / "c.yaml", train_config(fx, d / "r"))), "batch_size=0"],
        ("batch_size", ">= 1")),
    Case("bench-samples-zero", "bench", lambda d, fx: ["--samples", "0", "--out", str(d / "out")],
         ("--samples", ">= 1")),
    Case("bench-repeats-zero", "bench", lambda d, fx: ["--repeats", "0", "--out", str(d / "out")],
         ("--repeats", ">= 1")),
    Case("bench-lengths-negative", "bench", lambda d, fx: ["--lengths", "-5", "--out", str(d / "out")],
         ("--lengths", ">= 1")),
    Case("quick-shapes-zero-rows", "quick", lambda d, fx: ["--shapes", "0x128", "--out", str(d / "out")],
         ("--shapes", "0x128")),
    Case("demo-corpus-docs-zero", "demo_corpus", lambda d, fx: [str(d / "out"), "--docs", "0"], ("--docs", ">= 1")),
    # Checks before work: output locations and every stage's settings.
    Case("train-run-dir-is-a-file", "train", lambda d, fx: (
        (d / "file").write_text("x"), ["--config", str(write_yaml(d / "c.yaml", train_config(fx, d / "file")))])[1],
        ("{d}/file", "is a file")),
    Case("evaluate-results-dir-is-a-file", "evaluate", lambda d, fx: (
        (d / "file").write_text("x"), ["--model", str(fx.jax), "--task", "conll", "--data", str(conll_dir(d)),
                                       "--results-dir", str(d / "file")])[1], ("--results-dir", "is a file")),
    Case("train-cache-dir-is-a-file", "train", lambda d, fx: (
        (d / "file").write_text("x"), train_case(d, fx, data={"cache_dir": str(d / "file")}))[1],
        ("data.cache_dir", "{d}/file is a file")),
    Case("data-prepare-share-out-of-range", "data", lambda d, fx: [
        "prepare", "--config", str(write_yaml(d / "c.yaml", train_config(fx, d / "r"))),
        f"data.cache_dir={d / 'cache'}", "share=3/2"], ("share=3/2", "I=3, N=2")),
    Case("to-hf-output-is-a-file", "convert", lambda d, fx: (
        (d / "file").write_text("x"), ["to-hf", str(fx.jax), str(d / "file")])[1],
        ("{d}/file", "is a file", "--overwrite")),
    Case("reproduce-task-name-typo", "reproduce", lambda d, fx: [
        "--scale", "tiny", "--out", str(d / "out"), "tasks={cso: {data: /nowhere}}"],
        ("tasks.cso", "unknown task 'cso'")),
    Case("reproduce-phase-override-typo", "reproduce", lambda d, fx: [
        "--scale", "tiny", "--out", str(d / "out"), "phase1.overrides={max_stepz: 3}"],
        ("phase1", "max_stepz")),
    # Errors name what the user typed.
    Case("train-override-named-as-typed", "train", lambda d, fx: [*train_case(d, fx), "global_batch=0"],
         ("command line (global_batch=0)", "`global_batch` must be >= 1")),
    Case("to-jax-missing-pt", "convert", lambda d, fx: ["to-jax", str(d / "ep0.pt"), str(d / "out"),
                                                        "--optimizer-state"], ("{d}/ep0.pt", "no such file")),
    Case("train-config-is-a-directory", "train", lambda d, fx: ["--config", str(d)], ("{d}", "a directory")),
    Case("evaluate-model-is-a-file", "evaluate", lambda d, fx: (
        (d / "model.bin").write_text("x"), ["--model", str(d / "model.bin"), "--task", "conll", "--data",
                                            str(conll_dir(d)), "--results-dir", str(d / "r")])[1],
        ("--model {d}/model.bin", "a file")),
    Case("data-command-typo", "data", lambda d, fx: ["statz"], ("unknown command 'statz'", "stats")),
    Case("evaluate-stats-wrong-folder", "evaluate", lambda d, fx: ["stats", "--task", "deid", "--data",
                                                                   str(conll_dir(d))],
         ("{d}/conll", "not a deid data directory")),
    Case("convert-unknown-subcommand", "convert", lambda d, fx: ["sideways", "a", "b"], ("invalid choice",)),
    # Values of the right key but the wrong kind, refused before any work (each was a traceback, a write into
    # someone else's files, or a run on a silently different setting).
    Case("train-list-key-given-a-number", "train", lambda d, fx: [*train_case(d, fx), "optim.betas=0.9"],
         ("optim.betas", "must be a list", "0.9")),
    Case("train-masked-cap-sigmas-nan", "train", lambda d, fx: [*train_case(d, fx), "masked_cap_sigmas=nan"],
         ("masked_cap_sigmas", "nan")),
    Case("train-mesh-rule-unknown-axis", "train", lambda d, fx: [*train_case(d, fx), "mesh.rules={vocab: tensor}"],
         ("mesh.rules.vocab", "'tensor'")),
    Case("train-model-override-not-a-number", "train", lambda d, fx: train_case(
        d, fx, model={"overrides": {**TINY_RUN_MODEL, "hidden_size": "big"}}), ("hidden_size", "'big'")),
    Case("train-model-override-unknown-key", "train", lambda d, fx: train_case(
        d, fx, model={"overrides": {**TINY_RUN_MODEL, "hiden_size": 64}}),
        ("model.overrides.hiden_size", "not a ModernBERT config.json key")),
    Case("train-zero-layers", "train", lambda d, fx: train_case(
        d, fx, model={"overrides": {**TINY_RUN_MODEL, "num_hidden_layers": 0}}), ("num_hidden_layers", "positive")),
    Case("train-shuffle-seed-negative", "train", lambda d, fx: train_case(d, fx, data={"shuffle_seed": -5}),
         ("data.shuffle_seed", ">= 0")),
    Case("train-random-token-range-empty", "train", lambda d, fx: train_case(
        d, fx, data={"random_token_low": 100, "random_token_high": 10}),
        ("data.random_token_high", "data.random_token_low")),
    Case("train-source-field-empty", "train", lambda d, fx: train_case(d, fx, data={"sources": [
        {"name": "notes", "paths": [str(fx.corpus / "notes.jsonl")], "field": []}]}), ("notes", "`field` is empty")),
    Case("train-config-duplicate-key", "train", lambda d, fx: (
        (d / "dup.yaml").write_text(json.dumps(train_config(fx, d / "r"))[:-1] + ', "max_steps": 9}'),
        ["--config", str(d / "dup.yaml")])[1], ("{d}/dup.yaml:1", "duplicate key 'max_steps'")),
    Case("train-run-dir-holds-a-model", "train", lambda d, fx: (
        shutil.copytree(fx.hf, d / "hf"), ["--config", str(write_yaml(d / "c.yaml", train_config(fx, d / "hf")))])[1],
        ("{d}/hf", "not a training run's directory")),
    Case("to-jax-out-is-src", "convert", lambda d, fx: (
        shutil.copytree(fx.hf, d / "src"), ["to-jax", str(d / "src"), str(d / "src"), "--overwrite"])[1],
        ("{d}/src", "OUT is SRC")),
    Case("to-jax-out-contains-src", "convert", lambda d, fx: (
        shutil.copytree(fx.hf, d / "par" / "src"), ["to-jax", str(d / "par" / "src"), str(d / "par"),
                                                    "--overwrite"])[1], ("{d}/par", "contains SRC")),
    Case("to-jax-config-value-null", "convert", lambda d, fx: (
        shutil.copytree(fx.hf, d / "src"), (d / "src" / "config.json").write_text(json.dumps(
            {**json.loads((fx.hf / "config.json").read_text()), "num_attention_heads": None})),
        ["to-jax", str(d / "src"), str(d / "out")])[2], ("{d}/src/config.json", "num_attention_heads")),
    Case("evaluate-name-outside-results-dir", "evaluate", lambda d, fx: [
        "--model", str(fx.jax), "--task", "conll", "--data", str(conll_dir(d)), "--results-dir", str(d / "r"),
        "name=../../escape"], ("`name`", "plain name")),
    Case("evaluate-torch-attention-unknown", "evaluate", lambda d, fx: [
        "--model", str(fx.hf), "--task", "conll", "--data", str(conll_dir(d)), "--results-dir", str(d / "r"),
        "--backend", "torch", "attn_implementation=flash"], ("attn_implementation", "'flash'")),
    Case("reproduce-finetune-bad-value", "reproduce", lambda d, fx: [
        "--scale", "tiny", "--out", str(d / "out"), "finetune={lr: -1}"], ("finetune", "lr", "> 0")),
]


def run_command(cmd: str, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *COMMANDS[cmd], *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def error_line(stderr: str) -> str:
    """The single `error:` line, which must end stderr; no traceback anywhere."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, fx, tmp_path):
    args = case.setup(tmp_path, fx)
    before = digests(tmp_path, fx.root)
    out = run_command(case.cmd, args)
    assert out.returncode == case.status, out.stderr[-3000:]
    line = error_line(out.stderr)
    print(f"{case.id} | {out.returncode} | {line}")  # the table of cases and their lines (pytest -s)
    for part in case.expect:
        assert part.format(d=tmp_path, fx=fx.root) in line, line
    after = digests(tmp_path, fx.root)
    assert {k: after.get(k) for k in before} == before  # nothing that existed was changed or removed
    assert not fx.marker.exists()
    assert "weights_only" not in line


def test_debug_shows_the_traceback(fx, tmp_path):
    args = train_case(tmp_path, fx, data={"seq_len": -5})
    for how in (["--debug"], []):
        env = {**ENV, "BCMB_DEBUG": "1"} if not how else ENV
        out = subprocess.run([sys.executable, "train.py", *args, *how], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 2 and "Traceback" in out.stderr and "ConfigError" in out.stderr
        assert out.stderr.splitlines()[-1].startswith("error: data.seq_len")


def test_ctrl_c_during_a_conversion(tmp_path):
    """SIGINT mid-conversion: one line, exit 130, no temporary sibling left, the old output untouched."""
    import numpy as np
    from safetensors.numpy import save_file

    big = tmp_path / "big"
    cfg = hf_model("mlm").config
    cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size = 65536, 256, 384
    cfg.save_pretrained(big)
    from bcmb_jax.modeling.config import ModelConfig
    from bcmb_jax.weights.keymap import expected_shape, key_map

    mcfg = ModelConfig.from_hf_dict(json.loads((big / "config.json").read_text()))
    rng = np.random.default_rng(0)
    shapes = {e.hf: expected_shape(e, mcfg)[::-1] if e.transpose else expected_shape(e, mcfg)
              for e in key_map(mcfg, "mlm")}
    save_file({k: rng.standard_normal(v, dtype=np.float32) for k, v in shapes.items()}, str(big / "model.safetensors"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("an earlier conversion")
    before = digests(tmp_path)
    proc = subprocess.Popen([sys.executable, "convert_weights.py", "to-jax", str(big), str(out_dir), "--overwrite",
                             "--no-progress"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob(".out.tmp-*")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted" in error_line(stderr)
    assert not list(tmp_path.glob(".out.*")), list(tmp_path.iterdir())
    assert digests(tmp_path) == before


QUIET = r"""
import sys
from bcmb_jax import cli

@cli.command
def main(argv):
    import transformers as tf
    tf.ModernBertModel.from_pretrained(argv[0])  # an MLM checkpoint: its head is "UNEXPECTED" for the base model
    return 0

cli.run(main)
"""


def test_third_party_chatter_stays_off_the_terminal_unless_asked_for(fx):
    env = {k: v for k, v in ENV.items() if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    quiet = subprocess.run([sys.executable, "-c", QUIET, str(fx.hf)], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert quiet.returncode == 0 and "UNEXPECTED" not in quiet.stderr and "Loading weights" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-c", QUIET, str(fx.hf), "--debug"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0 and loud.stderr.count("UNEXPECTED") >= 1  # --debug keeps them
