"""Where arrays live: a one-axis device mesh, how parameters and batches are sharded over it, and back to the host.

The mesh has one axis, ``data``. Batches are split over it by rows. Parameters (and the optimizer
state that mirrors them) are either replicated on every device (``data``: data parallel) or split
along their largest axis that the device count divides (``fsdp``: fully sharded; XLA inserts the
all-gathers before use and the reduce-scatters of gradients). Arrays too small or indivisible stay
replicated.

In a multi-process run (``backend.multi_host``) the mesh spans every process's devices: each process
places only the parts of an array that live on its own devices, and gathers to the host collectively.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from plmforge.core.errors import PlmforgeError

AXIS = "data"


#: What describes a multi-process run on machines JAX cannot detect (not Cloud TPU, not SLURM).
PROCESS_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


#: How long processes other than 0 wait at exit for process 0 (JAX's default, 5 minutes, is too short).
SHUTDOWN_TIMEOUT_S = 24 * 3600


def join_processes() -> None:
    """Join the other processes of a multi-process run (``jax.distributed.initialize``), once.

    JAX itself reads only the coordinator's address from the environment; the process count and
    this process's index come from ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` when set, so one
    machine (or any cluster without auto-detection) can start its processes with three variables.
    """
    if jax.distributed.is_initialized():
        return
    given = {name: os.environ[name] for name in PROCESS_VARIABLES if os.environ.get(name)}
    numbers: dict[str, int] = {}
    for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if name in given:
            try:
                numbers[key] = int(given[name])
            except ValueError:
                raise PlmforgeError(f"backend.multi_host: {name} is {given[name]!r}, not a whole number") from None
    if given and len(given) < len(PROCESS_VARIABLES):
        missing = ", ".join(name for name in PROCESS_VARIABLES if name not in given)
        raise PlmforgeError(f"backend.multi_host: {', '.join(given)} set but {missing} not; set all three "
                            f"({'/'.join(PROCESS_VARIABLES)}) or none (Cloud TPU, SLURM)")
    try:  # the others wait at exit while process 0 alone runs the downstream tasks: give it a day
        jax.distributed.initialize(coordinator_address=given.get("JAX_COORDINATOR_ADDRESS"),
                                   shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S, **numbers)
    except (ValueError, TypeError, RuntimeError) as error:
        raise PlmforgeError(
            f"backend.multi_host is true but JAX could not join the other processes: {error}. Outside Cloud TPU "
            f"and SLURM, start every process with {'/'.join(PROCESS_VARIABLES)} set "
            f"(see docs/jax-backend.md)") from None


def select_devices(platform: str, count: int | None, every_process: bool) -> list[Any]:
    """``count`` devices of ``platform`` ('auto' = JAX's default platform), all of them by default.

    ``every_process``: the devices of all processes of a multi-process run (the training mesh);
    otherwise only this process's own, for work it does alone even after joining the others.
    """
    try:
        if every_process:
            devices = jax.devices() if platform == "auto" else jax.devices(platform)
        else:
            devices = jax.local_devices(backend=None if platform == "auto" else platform)
    except RuntimeError as error:
        raise PlmforgeError(f"backend.platform is {platform!r} but JAX cannot use it: {error}") from None
    if count is not None and count != len(devices) and jax.process_count() > 1:
        raise PlmforgeError(f"backend.devices is {count} but a multi-process mesh spans every process's devices "
                            f"({len(devices)} here); leave backend.devices unset")
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

    def put(self, values: Any, shardings: Any) -> Any:
        """Place host (numpy) arrays that every process holds identically with ``shardings``.

        Across processes each one copies only its devices' parts: no collective (``jax.device_put``
        would compare the values of all processes first, gathering every parameter).
        """
        if not self.mesh.is_multi_process:
            return jax.device_put(values, shardings)
        return jax.tree.map(lambda value, sharding: jax.make_array_from_callback(
            np.shape(value), sharding, lambda index: np.asarray(value)[index]), values, shardings)

    def put_process_rows(self, arrays: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Join every process's batch of equal shape into one global batch, split by rows, this process's block."""
        processes = jax.process_count()
        return {key: jax.make_array_from_process_local_data(self.rows, value, (value.shape[0] * processes,
                                                                                *value.shape[1:]))
                for key, value in arrays.items()}

    def put_batch(self, arrays: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Place a global numpy batch, split by rows; each process keeps only its devices' rows."""
        return self.put(arrays, {key: self.rows for key in arrays})


def exchange_step_plan(weights: list[float], shapes: list[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """Every process's micro-batch weights and array shapes, as ``[process, ...]`` arrays (a collective).

    Weights travel as the bits of float64 (JAX computes in 32 bits here), so their sums are exact.
    """
    from jax.experimental import multihost_utils

    bits = np.ascontiguousarray(np.asarray(weights, np.float64)).view(np.int32)
    dims = np.asarray([dim for shape in shapes for dim in shape], np.int32)
    gathered = np.asarray(multihost_utils.process_allgather(np.concatenate([bits, dims])))
    everyone_weights = np.ascontiguousarray(gathered[:, :bits.size]).view(np.float64)
    everyone_dims = gathered[:, bits.size:]
    return everyone_weights, everyone_dims


def to_host(value: jax.Array) -> np.ndarray:
    """A numpy copy of a (possibly sharded, possibly multi-host) array; every process must call it."""
    if value.is_fully_addressable:
        return np.asarray(jax.device_get(value))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(value, tiled=True))
