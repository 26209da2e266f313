"""Convert ModernBERT checkpoints between PyTorch (HF, Composer) and JAX, both ways, exactly.

Run `python convert_weights.py --help` for the modes and examples.
"""

from __future__ import annotations

import argparse
import os

from bcmb_jax import cli
from bcmb_jax.cli import command, run

EPILOG = """\
modes:
  to-jax SRC OUT   SRC: an HF directory (model.safetensors, sharded *.safetensors + index, or
                   pytorch_model.bin), an HF hub id (downloaded unless HF_HUB_OFFLINE=1), or a
                   Composer .pt checkpoint of the ModernBERT / BioClinical runs (FlexBERT weights,
                   embedded config and tokenizer, optionally the StableAdamW state).
                   OUT: a JAX checkpoint directory (config.json, params/, tokenizer files
                   [, optimizer/, optimizer.json]) that bcmb_jax.from_pretrained and train.py load.
  to-hf SRC OUT    SRC: a JAX checkpoint directory, a train run directory (its latest step) or
                   RUN_DIR/checkpoints/<step>. OUT: an HF directory (config.json, model.safetensors,
                   tokenizer files, README.md model card) for transformers' Auto* classes.

examples:
  python convert_weights.py to-jax thomas-sounack/BioClinical-ModernBERT-base ckpt/bcmb-base
  python convert_weights.py to-jax ep0-ba52988-rank0.pt ckpt/stable --optimizer-state \\
      --tokenizer /path/to/modernbert_tokenizer
  python convert_weights.py to-jax my_finetuned_ner/ ckpt/ner --dtype bfloat16
  python convert_weights.py to-hf runs/phase1 export/phase1            # latest step of a run
  python convert_weights.py to-hf runs/phase1/checkpoints/2000 export/s2000 --task base --overwrite

Both directions copy values exactly (HF -> JAX -> HF is bit-identical). Pickled .bin/.pt files are
read without running code from them; OUT is written to a temporary sibling and renamed when complete;
an existing non-empty OUT is left untouched unless --overwrite. Errors print one line and exit 2.
"""


def parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="convert_weights.py", description=__doc__.splitlines()[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True, metavar="{to-jax,to-hf}")
    from bcmb_jax.modeling.heads import HEADS

    tasks = sorted(HEADS)

    j = sub.add_parser("to-jax", help="HF directory / hub id / Composer .pt -> JAX checkpoint directory",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    j.add_argument("src", metavar="SRC", help="HF directory, HF hub id, or Composer .pt checkpoint")
    j.add_argument("out", metavar="OUT", help="JAX checkpoint directory to write")
    j.add_argument("--dtype", choices=["float32", "bfloat16"], help="storage dtype (default: the source's)")
    j.add_argument("--task", choices=tasks, help="head to convert (default: the source's; Composer: mlm)")
    j.add_argument("--config", metavar="FILE", help="HF config.json whose keys override the source config")
    j.add_argument("--tokenizer", metavar="DIR", help="take the tokenizer files from DIR")
    j.add_argument("--optimizer-state", action="store_true",
                   help="Composer only: also convert the StableAdamW/AdamW moments and step")
    j.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    j.add_argument("--no-progress", action="store_true", help="no progress bar")

    h = sub.add_parser("to-hf", help="JAX directory / train run / step -> HF directory with a model card",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_argument("src", metavar="SRC", help="JAX checkpoint directory, RUN_DIR or RUN_DIR/checkpoints/<step>")
    h.add_argument("out", metavar="OUT", help="HF directory to write")
    h.add_argument("--task", choices=tasks, help="head to export (default: the saved one; base drops it)")
    h.add_argument("--dtype", choices=["float32", "bfloat16"], help="weights dtype (default: the stored one)")
    h.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    h.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from bcmb_jax.weights import export

    if args.mode == "to-jax":
        result = export.to_jax(args.src, args.out, dtype=args.dtype, task=args.task, config=args.config,
                               tokenizer=args.tokenizer, optimizer_state=args.optimizer_state,
                               overwrite=args.overwrite, progress=not args.no_progress)
    else:
        result = export.to_hf(args.src, args.out, task=args.task, dtype=args.dtype, overwrite=args.overwrite,
                              progress=not args.no_progress)
    print(f"{args.mode}: " + "\n".join(result.lines()))
    return 0


if __name__ == "__main__":
    run(main)
