"""The device mesh, partition rules and host-local → global batches.

The mesh has a data axis and an fsdp axis. Batches are split over both (every device sees its own
examples); parameters and optimizer state are replicated over `data` and, when large enough,
split over `fsdp` along their largest divisible dimension (FSDP / ZeRO-3 style). XLA inserts the
all-gathers and reduce-scatters this implies. The stacked parameters of scanned blocks
(models/stacking.py) are split like one block's: never along their leading (block) axis, which
the scan slices one block at a time.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from mcm_jax.models import stacking

DATA, FSDP = "data", "fsdp"
BATCH_AXES = (DATA, FSDP)


def create_mesh(data: int = -1, fsdp: int = 1, devices: list | None = None) -> Mesh:
    """A (data, fsdp) mesh over all devices; data = -1 takes what fsdp leaves.

    `jax.make_mesh` orders the devices by the physical topology (rings on TPU); the axes stay
    `Auto` (make_mesh's default is `Explicit`) so shardings propagate as they always have.
    """
    devices = jax.devices() if devices is None else devices
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"mesh fsdp={fsdp} must be >= 1 and divide the {len(devices)} devices")
    data = len(devices) // fsdp if data == -1 else data
    if data * fsdp != len(devices):
        raise ValueError(f"mesh data={data} × fsdp={fsdp} must equal the {len(devices)} devices")
    return jax.make_mesh(
        (data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
    """Shards the largest dimension divisible by the fsdp axis, for arrays of >= min_size elements."""
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = FSDP
            return P(*spec)
    return P()


def leaf_spec(path: tuple, shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
    """param_spec of the leaf at key `path`; a stacked block parameter gets its one block's spec
    behind an unsplit leading axis."""
    if stacking.is_stacked(path):
        return P(None, *param_spec(shape[1:], fsdp_size, min_size))
    return param_spec(shape, fsdp_size, min_size)


def tree_specs(tree: Any, fsdp_size: int, min_size: int = 2**18) -> Any:
    """PartitionSpecs for every array leaf of `tree` (arrays or ShapeDtypeStructs)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf_spec(path, tuple(leaf.shape), fsdp_size, min_size), tree
    )


def tree_shardings(tree: Any, mesh: Mesh, min_size: int = 2**18) -> Any:
    """NamedShardings for every array leaf of `tree` (arrays or ShapeDtypeStructs)."""
    specs = tree_specs(tree, mesh.shape[FSDP], min_size)
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P)
    )


def host_local_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles every process's slice of the global batch into global arrays split over devices."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
