"""Bidirectional attention over packed rows: one function (`masks.py`), three backends.

Backends (the run-time option `Runtime.attention_backend`, see `runtime.py`):
  reference  `jax.nn.dot_product_attention` with the dense T x T mask; the oracle of the tests.
  blocked    the XLA:CPU kernels: banded local layers (`banded.py`), block-skipping online softmax
             for global layers (`blocked.py`), O(T * block) memory in both passes. The default.
  gpu        the Pallas kernel of `pallas_attention.py` for both layer kinds (per-query key
             ranges: document span, and the window on local layers). Falls back to `blocked`
             when no GPU is present, unless `interpret=True` (the Pallas interpreter, for tests).

Layouts: `attention` takes q/k/v_BTNK (batch, tokens, heads, head dim); the model calls
`attention_heads_first` with q/k/v_BNTK, the layout the kernels work in, so each layer transposes
once. seg_BT is int32. Softmax statistics are float32 in every backend.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

from bcmb_jax.errors import ConfigError
from bcmb_jax.modeling.masks import reference_attention

ATTENTION_BACKENDS = ("blocked", "reference", "gpu")


def attention(q_BTNK: jax.Array, k_BTNK: jax.Array, v_BTNK: jax.Array, seg_BT: jax.Array, *,
              window: int | None, backend: str = "blocked", local_chunk: int = 64, global_chunk: int = 1024,
              interpret: bool = False) -> jax.Array:
    """Scaled dot-product attention; `window` is the half-width of a local layer, None for global."""
    if backend == "reference":
        return reference_attention(q_BTNK, k_BTNK, v_BTNK, seg_BT, window=window, scale=q_BTNK.shape[-1] ** -0.5)
    o_BNTK = attention_heads_first(*(jnp.swapaxes(x, 1, 2) for x in (q_BTNK, k_BTNK, v_BTNK)), seg_BT,
                                   window=window, backend=backend, local_chunk=local_chunk,
                                   global_chunk=global_chunk, interpret=interpret)
    return jnp.swapaxes(o_BNTK, 1, 2)


def attention_heads_first(q_BNTK: jax.Array, k_BNTK: jax.Array, v_BNTK: jax.Array, seg_BT: jax.Array, *,
                          window: int | None, backend: str = "blocked", local_chunk: int = 64,
                          global_chunk: int = 1024, interpret: bool = False) -> jax.Array:
    """`attention` in the heads-first layout: q/k/v_BNTK -> o_BNTK (q unscaled)."""
    scale = q_BNTK.shape[-1] ** -0.5
    if backend == "reference":
        o_BTNK = reference_attention(*(jnp.swapaxes(x, 1, 2) for x in (q_BNTK, k_BNTK, v_BNTK)), seg_BT,
                                     window=window, scale=scale)
        return jnp.swapaxes(o_BTNK, 1, 2)
    if backend not in ATTENTION_BACKENDS:
        raise ConfigError(f"unknown attention backend {backend!r}; expected one of {ATTENTION_BACKENDS}")
    pallas = backend == "gpu" and (interpret or (gpu_available() and gpu_kernel_lowers()))  # outside shard_map
    kernel = functools.partial(_kernel, window=window, pallas=pallas, local_chunk=local_chunk,
                               global_chunk=global_chunk, interpret=interpret, scale=scale)
    return per_device_rows(kernel, q_BNTK, k_BNTK, v_BNTK, seg_BT)


def per_device_rows(kernel, *args_B: jax.Array) -> jax.Array:
    """`kernel(*args_B)` run on each device's own rows when a mesh is set (`jax.set_mesh`).

    The kernels loop over rows (XLA:CPU) or are custom calls (Pallas), which the SPMD partitioner
    cannot split: on a mesh it would gather every row to every device and run the whole batch
    there. Under `shard_map` each device runs its rows only. Every mesh axis splits the rows (data
    and FSDP parallelism; heads and tokens are never split); a batch that does not divide evenly
    runs as it is.
    """
    rows = _row_split(args_B[0])
    if rows is None:
        return kernel(*args_B)
    return jax.shard_map(kernel, in_specs=(rows,) * len(args_B), out_specs=rows, check_vma=False)(*args_B)


def rows_on_their_devices(x_B: jax.Array) -> jax.Array:
    """`x_B` constrained to the mesh's row split (nothing without a mesh): with FSDP-sharded weights the
    partitioner then gathers the weights for each product rather than the activations."""
    rows = _row_split(x_B)
    return x_B if rows is None else jax.lax.with_sharding_constraint(x_B, rows)


def on_every_device(x: jax.Array) -> jax.Array:
    """`x` whole on every device of the mesh (nothing without one): an FSDP-sharded table gathered once."""
    return x if _mesh() is None else jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec())


def _mesh():
    """The context mesh (`jax.set_mesh`) when it has several devices, else None."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty or mesh.size == 1 else mesh


def _row_split(x_B: jax.Array) -> jax.sharding.PartitionSpec | None:
    """The rows split over every axis of the context mesh, or None (no mesh, one device, rows that do not divide)."""
    mesh = _mesh()
    if mesh is None or x_B.shape[0] % mesh.size:
        return None
    return jax.sharding.PartitionSpec(tuple(mesh.axis_names))


def _kernel(q_BNTK, k_BNTK, v_BNTK, seg_BT, *, window, pallas, local_chunk, global_chunk, interpret, scale):
    if pallas:
        from bcmb_jax.modeling.pallas_attention import pallas_attention

        return pallas_attention(q_BNTK, k_BNTK, v_BNTK, seg_BT, window=window, scale=scale, interpret=interpret)
    from bcmb_jax.modeling.banded import local_attention
    from bcmb_jax.modeling.blocked import GLOBAL_QUERY_BLOCK, global_attention, round_up

    q_BNTK = q_BNTK * jnp.asarray(scale, q_BNTK.dtype)
    T = q_BNTK.shape[2]
    if window is not None:
        if local_chunk < window:
            raise ValueError(f"local chunk {local_chunk} must be >= the half window {window}")
        return local_attention(q_BNTK, k_BNTK, v_BNTK, seg_BT, window, min(local_chunk, round_up(T, 8)))
    k_block = min(global_chunk, round_up(T, 8))
    return global_attention(q_BNTK, k_BNTK, v_BNTK, seg_BT, min(GLOBAL_QUERY_BLOCK, k_block), k_block)


@functools.cache
def gpu_available() -> bool:
    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        return False


@functools.cache
def gpu_kernel_lowers() -> bool:
    """Whether the Pallas (Triton) kernel lowers for CUDA on the installed JAX (checked once, on a tiny case).

    Pallas's Triton lowering is deprecated from JAX 0.11; where it is gone the `gpu` backend runs the
    `blocked` kernels instead, with one warning."""
    from bcmb_jax.modeling.pallas_attention import pallas_attention

    x = jax.ShapeDtypeStruct((1, 1, 128, 64), jnp.bfloat16)
    seg = jax.ShapeDtypeStruct((1, 128), jnp.int32)
    try:
        fn = jax.jit(lambda q, s: pallas_attention(q, q, q, s, window=None, scale=0.125))
        fn.trace(x, seg).lower(lowering_platforms=("cuda",))
    except Exception as e:  # noqa: BLE001 - whatever the installed JAX raises, the blocked kernels still work
        warnings.warn(f"attention_backend=gpu: the Pallas kernel does not lower on jax {jax.__version__} "
                      f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); using the blocked kernels",
                      stacklevel=2)
        return False
    return True
