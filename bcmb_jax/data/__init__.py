"""Pretraining data: corpora to packed, masked rows.

Owns `config.py` (the `data:` section and its sources), `sources.py` (reading every file format, large
line-based files in byte ranges), `mds.py` (MosaicML Streaming shards), `tokenizer.py` (the one tokenizer
loader), `chunking.py` (documents -> token chunks), `corpus.py` (the on-disk token cache), `stage1.py`
(tokenizing the corpus once, on every core and every host), `packing.py` (epoch order, packing, masking),
`pipeline.py` (the grain iterator the trainer reads), `commands.py` (`python -m bcmb_jax.data
stats|prepare`) and `demo_corpus.py` (the offline demo notes and tokenizer). Of the rest it uses only the
model's label convention.
"""

from bcmb_jax.data.config import DataConfig, SourceConfig
from bcmb_jax.data.pipeline import build_dataset, make_iterator
from bcmb_jax.data.tokenizer import TokenizerInfo, load_tokenizer

__all__ = ["DataConfig", "SourceConfig", "TokenizerInfo", "build_dataset", "load_tokenizer", "make_iterator"]
