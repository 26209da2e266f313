"""ModernBERT in Flax NNX: the backbone and its MLM, sequence- and token-classification heads.

    x = LN(Emb[ids])
    for each layer i:  x += Wo(Attn(i == 0 ? x : LN(x)));  x += MLP(LN(x))     (pre-norm, no biases)
    h = LN(x)
    MLM:  logits = LN(gelu(W h)) @ Emb^T + b        (decoder tied to the embeddings)

Attention is global on layers i % 3 == 0 (RoPE theta 160k) and local elsewhere (|i - j| <= 64,
theta 10k); see `masks.py`. Every call goes through one code path on packed rows:
`segment_ids` (0 = padding, 1..M = documents) and `position_ids` restarting per document. The
padded form `(input_ids, attention_mask)` is the special case of one document per row, with
positions 0..T-1 as in Hugging Face. Names follow HF so that `weights/keymap.py` maps them one-to-one.
How the model computes (attention kernels, remat, platform fast paths) is the run-time option
`runtime.Runtime`, not part of `ModelConfig`.

Dimension key (the same in every module): B batch rows, T tokens, D hidden, N heads, K head dim,
F MLP width, V vocab, M documents per row, C labels, P predicted (masked) positions, L rotary table
length; the attention kernels add Q queries of a block and S keys of a block or window.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from bcmb_jax.modeling import heads
from bcmb_jax.modeling.attention import attention_heads_first, on_every_device, rows_on_their_devices
from bcmb_jax.modeling.config import ModelConfig
from bcmb_jax.modeling.inputs import check_ids, normalize_inputs
from bcmb_jax.modeling.runtime import (
    DEFAULT_RUNTIME,
    Runtime,
    TokenLayerNorm,
    add_bias,
    as_runtime,
    dense,
    normed_linear,
    remat_layer,
)

ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
}


@struct.dataclass
class Output:
    """Model outputs. `logits`: [B,T,V] mlm, [B,T,C] token, [B,C] (padded) or [B,M,C] (packed) sequence."""

    logits: jax.Array | None
    last_hidden_state: jax.Array


def trunc_normal(std: float, cutoff: float):
    """HF's `trunc_normal_(std, a=-cutoff*std, b=cutoff*std)`: a normal of scale `std`, truncated."""

    def init(key, shape, dtype=jnp.float32):
        return (std * jax.random.truncated_normal(key, -cutoff, cutoff, shape, jnp.float32)).astype(dtype)

    return init


def _rotate(x, cos, sin):
    """x * cos + rotate_half(x) * sin in fp32, for any layout whose last axis is the head dim."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


@functools.lru_cache(maxsize=16)
def _rope_constants(theta: float, dim: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [length, dim] for positions 0..length-1 (rotate-half layout: frequencies repeated twice).

    The angles position * inv_freq are rounded to float32 (as HF computes them), then cos/sin taken
    in float64 and rounded.
    """
    inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    f = np.arange(length, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)
    f = np.concatenate([f, f], axis=-1).astype(np.float64)
    return np.cos(f).astype(np.float32), np.sin(f).astype(np.float32)


def rope_tables(cfg: ModelConfig, pos_BT: jax.Array) -> dict[float, tuple[jax.Array, jax.Array]]:
    """{theta: (cos, sin) [B, 1, T, head_dim]} for the two rotary bases.

    Rows of precomputed tables gathered by position (positions past max(T, max_position_embeddings)
    are clipped). Computing sin/cos in the graph instead lets XLA fuse them into every layer's
    use, recomputing them per head and per layer.
    """
    length = max(pos_BT.shape[1], cfg.max_position_embeddings)
    tables = {}
    for theta in {cfg.global_rope_theta, cfg.local_rope_theta}:
        cos_LK, sin_LK = _rope_constants(float(theta), cfg.head_dim, length)
        tables[theta] = tuple(jnp.take(jnp.asarray(t), pos_BT, axis=0, mode="clip")[:, None] for t in (cos_LK, sin_LK))
    return tables


# ---------------------------------------------------------------------------------------------
# Modules


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs, runtime: Runtime):
        H, c = cfg.hidden_size, cfg.initializer_cutoff_factor
        out_std = cfg.initializer_range / np.sqrt(2.0 * cfg.num_hidden_layers)
        self.cfg = cfg
        self.runtime = runtime
        self.window = None if cfg.is_global(layer) else cfg.window
        self.theta = cfg.global_rope_theta if cfg.is_global(layer) else cfg.local_rope_theta
        self.Wqkv = nnx.Linear(H, 3 * H, use_bias=cfg.attention_bias, dtype=dtype, rngs=rngs,
                               kernel_init=trunc_normal(cfg.initializer_range, c))
        self.Wo = nnx.Linear(H, H, use_bias=cfg.attention_bias, dtype=dtype, rngs=rngs,
                             kernel_init=trunc_normal(out_std, c))

    def __call__(self, x_BTD, seg_BT, rope_tables, norm: nnx.LayerNorm | None = None):
        """Attention of `norm(x)`; `rope_tables`: {theta: (cos, sin) [B, 1, T, K]} from `rope_tables`."""
        B, T, _ = x_BTD.shape
        N, K = self.cfg.num_attention_heads, self.cfg.head_dim
        # One transpose to the heads-first layout of the attention kernels (fused with the rotation).
        qkv_3BNTK = normed_linear(self.runtime, norm, self.Wqkv, x_BTD).reshape(B, T, 3, N, K)
        qkv_3BNTK = qkv_3BNTK.transpose(2, 0, 3, 1, 4)
        cos_B1TK, sin_B1TK = rope_tables[self.theta]
        q_BNTK = _rotate(qkv_3BNTK[0], cos_B1TK, sin_B1TK)
        k_BNTK = _rotate(qkv_3BNTK[1], cos_B1TK, sin_B1TK)
        r = self.runtime
        o_BNTK = attention_heads_first(q_BNTK, k_BNTK, qkv_3BNTK[2], seg_BT, window=self.window,
                                       backend=r.attention_backend, local_chunk=r.local_chunk,
                                       global_chunk=r.global_chunk, interpret=r.interpret)
        return dense(self.runtime, self.Wo, o_BNTK.transpose(0, 2, 1, 3).reshape(B, T, N * K))


class MLP(nnx.Module):
    """GeGLU: Wi -> [input | gate]; Wo(act(input) * gate)."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs, runtime: Runtime):
        H, F, c = cfg.hidden_size, cfg.intermediate_size, cfg.initializer_cutoff_factor
        out_std = cfg.initializer_range / np.sqrt(2.0 * cfg.num_hidden_layers)
        self.runtime = runtime
        self.act = ACTIVATIONS[cfg.hidden_activation]
        self.Wi = nnx.Linear(H, 2 * F, use_bias=cfg.mlp_bias, dtype=dtype, rngs=rngs,
                             kernel_init=trunc_normal(cfg.initializer_range, c))
        self.Wo = nnx.Linear(F, H, use_bias=cfg.mlp_bias, dtype=dtype, rngs=rngs,
                             kernel_init=trunc_normal(out_std, c))
        self.drop = nnx.Dropout(cfg.mlp_dropout, rngs=rngs)

    def __call__(self, x_BTD, norm: nnx.LayerNorm | None = None):
        """The MLP of `norm(x)`."""
        u_BTF, g_BTF = jnp.split(normed_linear(self.runtime, norm, self.Wi, x_BTD), 2, axis=-1)
        return dense(self.runtime, self.Wo, self.drop(self.act(u_BTF) * g_BTF))


def layer_norm(cfg: ModelConfig, dtype, rngs) -> nnx.LayerNorm:
    return TokenLayerNorm(cfg.hidden_size, epsilon=cfg.norm_eps, use_bias=cfg.norm_bias, dtype=dtype, rngs=rngs)


class Layer(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs, runtime: Runtime):
        # Layer 0 has no attention norm: the embeddings are already normalised.
        self.attn_norm = layer_norm(cfg, dtype, rngs) if layer > 0 else None
        self.attn = Attention(cfg, layer, dtype=dtype, rngs=rngs, runtime=runtime)
        self.mlp_norm = layer_norm(cfg, dtype, rngs)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs, runtime=runtime)

    def __call__(self, x_BTD, seg_BT, rope_tables):
        x_BTD = x_BTD + self.attn(x_BTD, seg_BT, rope_tables, norm=self.attn_norm)
        return x_BTD + self.mlp(x_BTD, norm=self.mlp_norm)


class Embeddings(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        self.tok_embeddings = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, rngs=rngs,
                                        embedding_init=trunc_normal(cfg.initializer_range,
                                                                    cfg.initializer_cutoff_factor))
        self.norm = layer_norm(cfg, dtype, rngs)
        self.drop = nnx.Dropout(cfg.embedding_dropout, rngs=rngs)

    def __call__(self, ids_BT):
        table_VD = self.tok_embeddings.embedding[...]  # nnx.Embed's lookup, with the table whole on each device
        table_VD = on_every_device(table_VD.astype(self.tok_embeddings.dtype or table_VD.dtype))  # (for FSDP)
        return self.drop(self.norm(jnp.take(table_VD, ids_BT, axis=0)))


class ModernBert(nnx.Module):
    """The backbone: embeddings, layers, final norm. Returns h_BTD."""

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs, remat: bool = False,
                 runtime: Runtime = DEFAULT_RUNTIME):
        self.cfg = cfg
        self.remat = remat  # recompute each layer in the backward pass instead of storing its activations
        self.runtime = runtime
        self.embeddings = Embeddings(cfg, dtype=dtype, rngs=rngs)
        self.layers = nnx.List([Layer(cfg, i, dtype=dtype, rngs=rngs, runtime=runtime)
                                for i in range(cfg.num_hidden_layers)])
        self.final_norm = layer_norm(cfg, dtype, rngs)

    def __call__(self, ids_BT, seg_BT, pos_BT):
        tables = rope_tables(self.cfg, pos_BT)
        x_BTD = rows_on_their_devices(self.embeddings(ids_BT))  # on a mesh: each device keeps its rows
        for layer in self.layers:
            if self.remat:
                x_BTD = remat_layer(self.runtime, layer, x_BTD, seg_BT, tables)
            else:
                x_BTD = layer(x_BTD, seg_BT, tables)
            x_BTD = rows_on_their_devices(x_BTD)
        return self.final_norm(x_BTD)


class PredictionHead(nnx.Module):
    """dense -> activation -> LayerNorm, shared by the MLM and task heads (HF `head.*`)."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        out_std = cfg.initializer_range / np.sqrt(2.0 * cfg.num_hidden_layers)
        self.dense = nnx.Linear(cfg.hidden_size, cfg.hidden_size, use_bias=cfg.classifier_bias, dtype=dtype,
                                rngs=rngs, kernel_init=trunc_normal(out_std, cfg.initializer_cutoff_factor))
        self.act = ACTIVATIONS[cfg.classifier_activation]
        self.norm = layer_norm(cfg, dtype, rngs)

    def __call__(self, x):
        return self.norm(self.act(self.dense(x)))


# ---------------------------------------------------------------------------------------------
# Task models: one `forward` each, and a shared `__call__` that jit-compiles eager calls.


@functools.partial(nnx.jit, static_argnames=("packed", "num_segments"))
def _compiled_forward(model, ids_BT, seg_BT, pos_BT, packed, num_segments):
    return model.forward(ids_BT, seg_BT, pos_BT, packed=packed, num_segments=num_segments)


class _Task(nnx.Module):
    task: str = "base"
    cfg: ModelConfig
    model: ModernBert
    runtime: Runtime  # how it computes (`runtime.Runtime`); the same on every submodule that has one

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs, remat: bool = False,
                 runtime: Runtime = DEFAULT_RUNTIME):
        self.cfg = cfg
        self.model = ModernBert(cfg, dtype=dtype, rngs=rngs, remat=remat, runtime=runtime)
        self.runtime = runtime

    def __call__(self, input_ids, attention_mask=None, segment_ids=None, position_ids=None, *,
                 num_segments: int | None = None) -> Output:
        """Runs on padded `(input_ids, attention_mask)` or packed `(input_ids, segment_ids[, position_ids])`.

        Called outside `jit`, the forward pass is compiled (cached per shape). `num_segments`
        (sequence task, packed rows) = documents per row to pool; defaults to max(segment_ids).
        """
        if not isinstance(input_ids, jax.core.Tracer):
            check_ids(input_ids, self.cfg.vocab_size)
        ids_BT, seg_BT, pos_BT, packed = normalize_inputs(input_ids, attention_mask, segment_ids, position_ids)
        if packed and self.task == "sequence" and num_segments is None:
            if isinstance(seg_BT, jax.core.Tracer):
                raise ValueError("num_segments must be given for packed sequence classification under jit")
            num_segments = max(int(seg_BT.max()), 1)
        if isinstance(ids_BT, jax.core.Tracer) or isinstance(seg_BT, jax.core.Tracer):
            return self.forward(ids_BT, seg_BT, pos_BT, packed=packed, num_segments=num_segments)
        return _compiled_forward(self, ids_BT, seg_BT, pos_BT, packed, num_segments)

    def forward(self, ids_BT, seg_BT, pos_BT, *, packed: bool, num_segments: int | None) -> Output:
        raise NotImplementedError


class ModernBertModel(_Task):
    """The bare backbone (HF `ModernBertModel`): `logits` is None."""

    task = "base"

    def forward(self, ids_BT, seg_BT, pos_BT, *, packed=False, num_segments=None):
        return Output(None, self.model(ids_BT, seg_BT, pos_BT))


class ModernBertForMaskedLM(_Task):
    task = "mlm"

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs, remat: bool = False,
                 runtime: Runtime = DEFAULT_RUNTIME):
        super().__init__(cfg, dtype=dtype, rngs=rngs, remat=remat, runtime=runtime)
        self.head = PredictionHead(cfg, dtype=dtype, rngs=rngs)
        self.decoder_bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32)) if cfg.decoder_bias else None

    def mlm_logits(self, h_PD: jax.Array, dtype=None) -> jax.Array:
        """Vocabulary logits for any [..., D] hidden states (used on masked positions only in training).

        `dtype`: of the logits (float32 for a loss); default the compute dtype. The decoder is tied
        to the token embeddings.
        """
        x_PD = self.head(h_PD)
        emb_VD, bias_V = self.decoder(x_PD.dtype)
        logits = jnp.dot(x_PD, emb_VD.T, preferred_element_type=dtype or x_PD.dtype)
        if bias_V is not None:
            logits = add_bias(self.runtime, logits, bias_V)
        return logits

    def decoder(self, dtype) -> tuple[jax.Array, jax.Array | None]:
        """The decoder applied to the head's output: the tied token embeddings [V, D] in `dtype`, and the
        float32 bias [V] (None without one)."""
        emb_VD = self.model.embeddings.tok_embeddings.embedding[...].astype(dtype)
        return emb_VD, (self.decoder_bias[...] if self.decoder_bias is not None else None)

    def forward(self, ids_BT, seg_BT, pos_BT, *, packed=False, num_segments=None):
        h_BTD = self.model(ids_BT, seg_BT, pos_BT)
        return Output(self.mlm_logits(h_BTD), h_BTD)


class _Classifier(_Task):
    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs, remat: bool = False,
                 runtime: Runtime = DEFAULT_RUNTIME):
        super().__init__(cfg, dtype=dtype, rngs=rngs, remat=remat, runtime=runtime)
        self.head = PredictionHead(cfg, dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(cfg.classifier_dropout, rngs=rngs)
        self.classifier = nnx.Linear(cfg.hidden_size, cfg.num_labels, use_bias=True, dtype=dtype, rngs=rngs,
                                     kernel_init=trunc_normal(cfg.hidden_size ** -0.5,
                                                              cfg.initializer_cutoff_factor))

    def classify(self, h):
        return self.classifier(self.drop(self.head(h)))


class ModernBertForTokenClassification(_Classifier):
    task = "token"

    def forward(self, ids_BT, seg_BT, pos_BT, *, packed=False, num_segments=None):
        h_BTD = self.model(ids_BT, seg_BT, pos_BT)
        return Output(self.classify(h_BTD), h_BTD)


def pool(h_BTD: jax.Array, seg_BT: jax.Array, num_segments: int, how: str) -> jax.Array:
    """Per-document pooling on packed rows -> [B, M, D]: the first token ("cls") or the masked mean."""
    onehot_BTM = (seg_BT[..., None] == jnp.arange(1, num_segments + 1)).astype(jnp.float32)
    if how == "cls":
        first_BTM = jnp.concatenate([onehot_BTM[:, :1], onehot_BTM[:, 1:] * (1 - onehot_BTM[:, :-1])], axis=1)
        return jnp.einsum("btm,btd->bmd", first_BTM, h_BTD.astype(jnp.float32)).astype(h_BTD.dtype)
    total_BMD = jnp.einsum("btm,btd->bmd", onehot_BTM, h_BTD.astype(jnp.float32))
    count_BM = jnp.maximum(onehot_BTM.sum(1), 1.0)
    return (total_BMD / count_BM[..., None]).astype(h_BTD.dtype)


class ModernBertForSequenceClassification(_Classifier):
    task = "sequence"

    def forward(self, ids_BT, seg_BT, pos_BT, *, packed=False, num_segments=None):
        h_BTD = self.model(ids_BT, seg_BT, pos_BT)
        if not packed:
            # Padded rows: HF pools position 0 ("cls") or the mean over attention_mask == 1.
            if self.cfg.classifier_pooling == "cls":
                return Output(self.classify(h_BTD[:, 0]), h_BTD)
            return Output(self.classify(pool(h_BTD, seg_BT, 1, "mean")[:, 0]), h_BTD)
        pooled_BMD = pool(h_BTD, seg_BT, num_segments, self.cfg.classifier_pooling)
        return Output(self.classify(pooled_BMD), h_BTD)


def build(cfg: ModelConfig, task: str = "mlm", *, seed: int = 0, dtype: Any = jnp.float32,
          remat: bool = False, runtime: Runtime | str | None = None) -> _Task:
    """A randomly initialised model for `task` ("base" | "mlm" | "sequence" | "token").

    `runtime`: a `runtime.Runtime` or an attention backend name ("blocked" | "gpu" | "reference").
    """
    return globals()[heads.get(task).module](cfg, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(seed), remat=remat,
                                             runtime=as_runtime(runtime))
