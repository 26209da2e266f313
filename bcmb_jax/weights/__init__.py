"""Weights on disk: every checkpoint form in, JAX and Hugging Face directories out.

Owns `keymap.py` (the one HF <-> NNX key map, with each dimension's logical axis), `hf_files.py`
(safetensors, sharded and pickled HF files), `torch_files.py` (the restricted unpickler), `composer.py`
(Composer checkpoints of the original runs), `directories.py` (which layout a path is; JAX directories),
`trees.py` (orbax parameter trees on any mesh), `pretrained.py` (`from_pretrained`, `save_jax`),
`export.py` (conversion both ways) and `model_card.py` (the README of an exported directory). It uses
the model, never the data, training or evaluation code.
"""

from bcmb_jax.weights.directories import Located, locate
from bcmb_jax.weights.export import to_hf, to_jax
from bcmb_jax.weights.pretrained import from_pretrained, save_jax

__all__ = ["Located", "from_pretrained", "locate", "save_jax", "to_hf", "to_jax"]
