"""Device mesh, logical-axis sharding rules and multi-host start-up.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data parallelism whose
parameters and optimizer state are sharded across the axis). Every parameter's dimensions carry
logical axis names in the key map (`weights.keymap.KEY_MAP`, `keymap.axes_tree`: vocab, embed, qkv, attn,
mlp_in, mlp, labels); `RULES` maps each name to a mesh axis or None. Batches are split over both
axes along their row dimension.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bcmb_jax.errors import ConfigError
from bcmb_jax.runconfig import opt

log = logging.getLogger(__name__)
BATCH_AXES = ("data", "fsdp")


@dataclass(frozen=True)
class MeshConfig:
    """The `mesh:` section of a run config."""

    data: int = opt(-1, "devices on the data-parallel axis; -1 = all devices left over")
    fsdp: int = opt(1, "devices on the parameter-sharding axis; -1 = all devices left over")
    rules: dict[str, str | None] = opt({}, "logical axis -> mesh axis overrides, e.g. {vocab: fsdp}")

    def __post_init__(self):
        for axis, target in self.rules.items():
            if target not in (*BATCH_AXES, None):
                raise ConfigError(f"`mesh.rules.{axis}`: mesh axis must be one of {', '.join(BATCH_AXES)} or null, "
                                  f"got {target!r}")


# Logical axis -> mesh axis, for the matrices. Every matrix has an `embed` (hidden size) dimension,
# so FSDP shards every matrix along it (the first one, for the head's embed x embed dense layer).
# Vectors (norm scales, biases) are small and always stay replicated.
RULES: dict[str, str | None] = {
    "embed": "fsdp",
    "vocab": None,
    "qkv": None,
    "attn": None,
    "mlp_in": None,
    "mlp": None,
    "labels": None,
}


def make_mesh(mesh_cfg: MeshConfig, devices: list | None = None) -> Mesh:
    """A ('data', 'fsdp') mesh over all devices; one size may be -1 (the rest)."""
    devices = devices or jax.devices()
    n = len(devices)
    sizes = [mesh_cfg.data, mesh_cfg.fsdp]
    if sizes.count(-1) > 1:
        raise ConfigError("mesh: at most one of `mesh.data`, `mesh.fsdp` may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n % known:
            raise ConfigError(f"mesh: {n} devices do not divide by the fixed axis size {known}")
        sizes[sizes.index(-1)] = n // known
    if sizes[0] * sizes[1] != n:
        raise ConfigError(f"mesh: data={sizes[0]} x fsdp={sizes[1]} = {sizes[0] * sizes[1]} devices, but this job "
                          f"has {n}; set mesh.data and mesh.fsdp to multiply to {n} (or one of them to -1)")
    # The Mesh constructor gives Auto axes: classic GSPMD propagation inside jit.
    return Mesh(np.asarray(devices).reshape(sizes), BATCH_AXES)


def spec_for(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh,
             rules: dict[str, str | None] | None = None) -> PartitionSpec:
    """PartitionSpec for an array with these logical axes; vectors and dimensions that do not divide stay whole."""
    rules = {**RULES, **(rules or {})}
    unknown = sorted({a for a in axes if a is not None and a not in rules})
    if unknown:
        raise ConfigError(f"mesh.rules: unknown logical axes {unknown}; known: {sorted(RULES)}")
    if len(shape) < 2:
        return PartitionSpec()
    out: list[str | None] = []
    for name, size in zip(axes, shape):
        axis = rules.get(name) if name else None
        if axis is not None and (size % mesh.shape[axis] or axis in out):
            axis = None
        out.append(axis)
    return PartitionSpec(*out)


def param_specs(params: dict, axes: dict, mesh: Mesh, rules: dict[str, str | None] | None = None) -> dict:
    """PartitionSpecs for a parameter tree (arrays or ShapeDtypeStructs) from its axes tree (`keymap.axes_tree`)."""
    return jax.tree.map(lambda x, a: spec_for(a, x.shape, mesh, rules), params, axes,
                        is_leaf=lambda a: isinstance(a, tuple))


def param_shardings(params: dict, axes: dict, mesh: Mesh, rules: dict[str, str | None] | None = None) -> dict:
    """NamedShardings for a parameter tree, from its axes tree."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(params, axes, mesh, rules),
                        is_leaf=lambda s: isinstance(s, PartitionSpec))


def batch_sharding(mesh: Mesh, ndim: int, row_axis: int = 0) -> NamedSharding:
    """Rows split over ('data', 'fsdp'); every other dimension whole."""
    spec = [None] * ndim
    spec[row_axis] = BATCH_AXES
    return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, row_axis: int = 0) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays sharded over the batch axes."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim, row_axis), v)
            for k, v in local.items()}


# ---------------------------------------------------------------------------------------------
# Multi-host


@dataclass(frozen=True)
class DistributedConfig:
    """The `distributed:` section: multi-host start-up through `jax.distributed.initialize`."""

    enabled: str = opt("auto", "auto (when SLURM/coordinator variables are set) | true | false")
    coordinator: str | None = opt(None, "host:port of process 0; None = from the environment")
    num_processes: int | None = opt(None, "None = from the environment (SLURM_NTASKS, ...)")
    process_id: int | None = opt(None, "None = from the environment (SLURM_PROCID, ...)")
    local_devices: list[int] | None = opt(None, "local device ids this process uses; None = all")


def _launched_by_cluster() -> bool:
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ


def init_distributed(dist: DistributedConfig) -> None:
    """Calls `jax.distributed.initialize()` when configured (or, in `auto`, when a cluster launched us)."""
    enabled = str(dist.enabled).lower()
    if enabled not in ("auto", "true", "false"):
        raise ConfigError(f"distributed.enabled must be auto | true | false, got {dist.enabled!r}")
    explicit = dist.coordinator is not None or dist.num_processes is not None
    if enabled == "false" or (enabled == "auto" and not explicit and not _launched_by_cluster()):
        return
    kwargs = {k: v for k, v in dict(coordinator_address=dist.coordinator, num_processes=dist.num_processes,
                                    process_id=dist.process_id, local_device_ids=dist.local_devices).items()
              if v is not None}
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
