"""Builders of tests/test_errors.py's bad inputs: train configs, corrupted checkpoints, bad files, a pickle that
would run code, and file digests to show nothing on disk changed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from conftest import TINY_RUN_MODEL


class Payload:
    """Unpickling this runs `touch marker`; the loaders must refuse it unrun."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def train_config(fx, run_dir: Path, **top) -> dict:
    cfg = {
        "run_dir": str(run_dir), "max_steps": 2, "checkpoint_every": 1, "seed": 5, "log_every": 1,
        "global_batch": 4, "micro_batch": 4, "export_hf": False,
        "model": {"overrides": dict(TINY_RUN_MODEL)},
        "data": {"tokenizer": str(fx.corpus / "tokenizer"), "seq_len": 64,
                 "sources": [{"name": "notes", "paths": [str(fx.corpus / "notes.jsonl")], "field": "text"}]},
        "schedule": {"name": "wsd", "unit": "steps", "warmup": 1, "total": 4, "decay": 1},
    }
    for k, v in top.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def digests(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.is_symlink():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def copy_run(fx, d: Path) -> Path:
    shutil.copytree(fx.run, d / "run")
    return d / "run"


def corrupt_step(run: Path, step: int) -> Path:
    """Truncates every data file of a checkpoint's parameters; returns the step directory."""
    step_dir = run / "checkpoints" / str(step)
    for f in (step_dir / "params").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:10])
    return step_dir


def train_case(d: Path, fx, **top) -> list[str]:
    return ["--config", str(write_yaml(d / "bad.yaml", train_config(fx, d / "new_run", **top)))]


def corpus_case(d: Path, fx, text: str) -> list[str]:
    (d / "c.jsonl").write_text(text)
    return train_case(d, fx, data={"sources": [{"name": "notes", "paths": [str(d / "c.jsonl")], "field": "text"}]})


def resume_case(d: Path, fx, **top) -> list[str]:
    run = copy_run(fx, d)
    cfg = train_config(fx, run, max_steps=4, **top)
    return ["--config", str(write_yaml(d / "resume.yaml", cfg))]


def disagreeing_config(d: Path, fx) -> list[str]:
    shutil.copytree(fx.jax, d / "jax")
    cfg = json.loads((d / "jax" / "config.json").read_text())
    cfg["intermediate_size"] = 2 * cfg["intermediate_size"]
    (d / "jax" / "config.json").write_text(json.dumps(cfg))
    return ["to-hf", str(d / "jax"), str(d / "out")]


def bad_tokenizer_json(d: Path, fx) -> list[str]:
    shutil.copytree(fx.corpus / "tokenizer", d / "tok")
    (d / "tok" / "tokenizer.json").write_text('{"version": "1.0",\n "model": }\n')
    return train_case(d, fx, data={"tokenizer": str(d / "tok")})


def bad_yaml(d: Path, fx) -> list[str]:
    (d / "bad.yaml").write_text("run_dir: x\nmodel:\n  overrides: {hidden_size: 32\nmax_steps: 3\n")
    return ["--config", str(d / "bad.yaml")]


def conll_dir(d: Path) -> Path:
    (d / "conll").mkdir()
    for split in ("train", "dev", "test"):
        (d / "conll" / f"{split}.txt").write_text("Seen O\nby O\nDr. B-PER\nSmith I-PER\n\n")
    return d / "conll"


def non_utf8_conll(d: Path, fx) -> list[str]:
    conll_dir(d)
    (d / "conll" / "dev.txt").write_bytes(b"Seen O\nby O\nDr\xe9 B-PER\n\n")
    return ["--model", str(fx.jax), "--task", "conll", "--data", str(d / "conll"), "--seeds", "1", "--epochs", "1",
            "--results-dir", str(d / "results")]


def big_tokenizer(d: Path, fx) -> Path:
    """A tokenizer of 1,024 ids, more than the fixture model's 512."""
    from bcmb_jax.data import demo_corpus

    return demo_corpus.build_tokenizer([fx.corpus / "notes.jsonl"], d / "bigtok", vocab_size=1024) and d / "bigtok"


def binary_files(d: Path, fx) -> list[str]:
    (d / "bin").mkdir()
    for i in range(3):
        (d / "bin" / f"part{i}.dat").write_bytes(bytes(range(256)) * 8)
    return train_case(d, fx, data={"sources": [{"name": "notes", "paths": [str(d / "bin")]}]})


def utf16_without_bom(d: Path, fx) -> list[str]:
    (d / "notes.txt").write_bytes("Patient denies chest pain.\nNo fever.\n".encode("utf-16-le"))
    return train_case(d, fx, data={"sources": [{"name": "notes", "paths": [str(d / "notes.txt")],
                                                "format": "lines"}]})


def tokenizer_without_json(d: Path, fx) -> list[str]:
    (d / "tok").mkdir()
    (d / "tok" / "vocab.json").write_text('{"a": 0}')
    return ["to-jax", str(fx.hf), str(d / "out"), "--tokenizer", str(d / "tok")]
