"""Where arrays live: a one-axis device mesh, how parameters and batches are sharded over it, and back to the host.

The mesh has one axis, ``data``. Batches are split over it by rows. Parameters (and the optimizer
state that mirrors them) are either replicated on every device (``data``: data parallel) or split
along their largest axis that the device count divides (``fsdp``: fully sharded; XLA inserts the
all-gathers before use and the reduce-scatters of gradients). Arrays too small or indivisible stay
replicated.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from plmforge.core.errors import PlmforgeError

AXIS = "data"


def select_devices(platform: str, count: int | None) -> list[Any]:
    """``count`` devices of ``platform`` ('auto' = JAX's default platform), all of them by default."""
    try:
        devices = jax.devices() if platform == "auto" else jax.devices(platform)
    except RuntimeError as error:
        raise PlmforgeError(f"backend.platform is {platform!r} but JAX cannot use it: {error}") from None
    if count is not None:
        if count > len(devices):
            raise PlmforgeError(f"backend.devices is {count} but JAX sees {len(devices)} "
                                f"{devices[0].platform} device(s)")
        devices = devices[:count]
    return devices


def make_mesh(devices: list[Any]) -> Mesh:
    return Mesh(np.asarray(devices), (AXIS,))


class Placement:
    """Shardings for one mesh and one strategy."""

    def __init__(self, mesh: Mesh, strategy: str, min_shard_size: int = 1024):
        self.mesh = mesh
        self.strategy = strategy
        self.size = mesh.devices.size
        self.min_shard_size = min_shard_size
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.rows = NamedSharding(mesh, PartitionSpec(AXIS))

    def for_shape(self, shape: tuple[int, ...]) -> NamedSharding:
        """Sharding of a parameter or optimizer-state array of this shape."""
        if self.strategy != "fsdp" or self.size == 1 or int(np.prod(shape, dtype=np.int64)) < self.min_shard_size:
            return self.replicated
        candidates = [axis for axis, n in enumerate(shape) if n % self.size == 0]
        if not candidates:
            return self.replicated
        axis = max(candidates, key=lambda a: shape[a])
        spec = [None] * len(shape)
        spec[axis] = AXIS
        return NamedSharding(self.mesh, PartitionSpec(*spec))

    def tree(self, tree: Any) -> Any:
        """A sharding for every array leaf of ``tree`` (arrays or ``jax.ShapeDtypeStruct``)."""
        return jax.tree.map(lambda leaf: self.for_shape(tuple(leaf.shape)), tree)

    def put_batch(self, arrays: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Place a global numpy batch, split by rows; each process keeps only its devices' rows."""
        if jax.process_count() == 1:
            return jax.device_put(arrays, self.rows)
        return {k: jax.make_array_from_callback(v.shape, self.rows, lambda index, v=v: v[index])
                for k, v in arrays.items()}


def to_host(value: jax.Array) -> np.ndarray:
    """A numpy copy of a (possibly sharded, possibly multi-host) array; every process must call it."""
    if value.is_fully_addressable:
        return np.asarray(jax.device_get(value))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(value, tiled=True))
