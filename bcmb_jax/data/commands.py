"""The data pipeline's command line: measure it, or fill the token cache.

    python -m bcmb_jax.data stats --config run.yaml [data.seq_len=1024 max_batches=50 ...]
    python -m bcmb_jax.data prepare --config run.yaml      # fill the token cache (every core)
    python -m bcmb_jax.data prepare --config run.yaml share=3/16 workers=32   # one task of an array job

`prepare` tokenizes every file missing from `data.cache_dir`; with `share=I/N` only the I-th of N shares of
the files (the same deal `train.py`'s processes make), without waiting for the others, so the N tasks of a
SLURM array (or any N jobs) fill the cache together before training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys

from bcmb_jax import cli, runconfig
from bcmb_jax.atomic import check_writable_dir
from bcmb_jax.data import demo_corpus
from bcmb_jax.data.config import DataConfig, SourceConfig
from bcmb_jax.data.pipeline import load_data_tokenizer, run_stats
from bcmb_jax.data.stage1 import prepare
from bcmb_jax.errors import ConfigError, DataError

# The keys each command takes besides the data config's: (default, lowest value allowed; None = any).
_COMMAND_KEYS = {
    "stats": {"batch_size": (8, 1), "max_batches": (None, 1), "epochs": (1, 1), "seed": (0, None),
              "process_index": (0, 0), "process_count": (1, 1)},
    "prepare": {"share": (None, None), "workers": (0, 0)},  # share=I/N: this task's share of the files
}
COMMANDS = ("stats", "prepare")


def _help() -> str:
    return (__doc__.strip() + "\n\nkeys (data.KEY=VALUE or KEY=VALUE):\n" + runconfig.help_text(DataConfig)
            + "\n\nkeys of each entry of `sources`:\n" + runconfig.help_text(SourceConfig)
            + "\n\nstats also takes: "
            + ", ".join(f"{k}= [default {v}]" for k, (v, _) in _COMMAND_KEYS["stats"].items())
            + "\nprepare also takes: share=I/N (this task's share of the files), workers=N (0 = every core)")


def _cli_value(cmd: str, key: str, raw: str):
    if key == "share":
        return _share(raw)
    value = runconfig.parse_overrides([f"x={raw}"])["x"]
    default, low = _COMMAND_KEYS[cmd][key]
    if value is None and key in ("max_batches", "epochs"):
        return None  # no limit
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        raise ConfigError(f"command line ({key}={raw}): `{key}` must be an integer{bound}, got {value!r}")
    return value


def _share(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"command line (share={text}): expected I/N, e.g. share=0/4") from None
    if not 0 <= i < n:
        raise ConfigError(f"command line (share={text}): expected I/N with 0 <= I < N, got I={i}, N={n}")
    return i, n


def _parse_cli(argv: list[str]) -> tuple[str, str | None, dict, list[str]]:
    if not argv or argv[0] in ("-h", "--help"):
        print(_help())
        raise SystemExit(0 if argv else 2)
    if argv[0] not in COMMANDS:
        raise ConfigError(f"unknown command {argv[0]!r}; expected one of {', '.join(COMMANDS)} "
                          "(python -m bcmb_jax.data --help)")
    cmd, rest, path, over = argv[0], argv[1:], None, []
    extra = {k: default for k, (default, _) in _COMMAND_KEYS[cmd].items()}
    others = {k: c for c, keys in _COMMAND_KEYS.items() if c != cmd for k in keys}
    while rest:
        a = rest.pop(0)
        if a == "--config" and rest:
            path = rest.pop(0)
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        elif a in ("-h", "--help"):
            print(_help())
            raise SystemExit(0)
        elif "=" in a:
            key, value = a.split("=", 1)
            key = key.removeprefix("data.")
            if key in extra:
                extra[key] = _cli_value(cmd, key, value)
            elif key in others:
                raise ConfigError(f"command line ({a}): {key}= is a key of `{others[key]}`, not of `{cmd}`")
            else:
                over.append(f"{key}={value}")
        else:
            raise ConfigError(f"unexpected argument {a!r} (expected --config FILE or key=value)")
    if cmd == "stats" and extra["process_index"] >= extra["process_count"]:
        raise ConfigError(f"process_index {extra['process_index']} must be < process_count {extra['process_count']}")
    return cmd, path, extra, over


@cli.command
def main(argv: list[str] | None = None) -> int:
    from absl import flags  # grain's worker processes read absl flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cmd, path, extra, over = _parse_cli(list(sys.argv[1:] if argv is None else argv))
    cfg = runconfig.load(DataConfig, path, over, section="data")
    demo_corpus.ensure_default(cfg.tokenizer)  # configs/demo.yaml's data is made on first use
    if cmd == "prepare":
        if not cfg.cache_dir:
            raise DataError("prepare needs data.cache_dir (the directory its token caches are written to; "
                            "set it in the config or as data.cache_dir=DIR)")
        check_writable_dir(cfg.cache_dir, "data.cache_dir", ConfigError)
        corpus = prepare(cfg, load_data_tokenizer(cfg), share=extra["share"], workers=extra["workers"],
                         wait=extra["share"] is None)
        st = corpus.stats()
        print(json.dumps(dataclasses.asdict(st) | {"prepare_s": round(corpus.seconds, 3),
                                                   "tokens_per_s": round(st.tokens / max(corpus.seconds, 1e-9))}))
        return 0
    s = run_stats(cfg, **extra)
    print("sources: " + ", ".join(f"{k} ({v['docs']} docs, {v['chunks']} chunks, {v['tokens']} tokens, "
                                   f"weight {v['weight']})" for k, v in s["sources"].items()))
    print(f"read: {s['files']} files, {s['docs']} documents, {s['skipped_empty']} empty skipped, "
          f"{s['replaced_utf8']} invalid bytes replaced, {s['chunks']} chunks in {s['prepare_s']} s")
    print(f"packed: {s['rows']} rows x {s['seq_len']} = {s['batches']} batches of {s['batch_size']}, "
          f"{s['tokens']} tokens, non-pad {s['non_pad_fraction']:.4f}, packing efficiency "
          f"{s['packing_efficiency']:.4f}")
    print(f"masking: {s['mask_fraction']:.4f} of tokens selected ({s['mask_token_share']:.3f} [MASK], "
          f"{s['random_token_share']:.3f} random)")
    print(f"speed: {s['tokens_per_s']:.0f} tokens/s overall, {s['iterate_tokens_per_s']:.0f} tokens/s "
          "after preparation")
    print(json.dumps(s))
    return 0
