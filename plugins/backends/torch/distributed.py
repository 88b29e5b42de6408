"""Data parallelism over the processes ``torchrun`` starts: DDP or FSDP2, gloo on CPU, NCCL on GPU.

Every process runs the same run loop over the same data streams, but makes and trains only its share
of each step's micro-batches (``training.gradient_accumulation`` of them, every world-size-th starting
at its rank: the engine's ``data_shard``). The loss weights are summed over processes and gradients
too, so a step computes what one process computes on the whole global batch: the number of
processes changes the speed, not the training. Processes other than rank 0 neither log nor write;
full weights and optimizer state are gathered to rank 0 for checkpoints and read by every process
on resume, so checkpoints stay in the one format every backend reads.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from plmforge.core.errors import PlmforgeError

LAUNCH_HINT = "torchrun --nproc-per-node N -m plmforge.core.cli train SPEC"


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the run."""

    kind: str  # "ddp" | "fsdp"
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def join(kind: str, device_name: str) -> tuple[ProcessGroup, torch.device]:
    """Join the process group ``torchrun`` set up (initialising it once) and pick this process's device."""
    missing = [name for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
               if name not in os.environ]
    if missing:
        raise PlmforgeError(f"backend.distributed is {kind!r} but this process was not started by torchrun "
                            f"({', '.join(missing)} not set); launch it as: {LAUNCH_HINT}")
    rank, world, local = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PlmforgeError(f"backend.device is {device_name!r} but PyTorch sees no CUDA device")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=(
            device if device.type == "cuda" else None))
        atexit.register(_leave)
    return ProcessGroup(kind=kind, rank=rank, world_size=world, local_rank=local), device


def _leave() -> None:
    """Leave together: a process that tore down its gloo group while another still worked (rank 0 runs
    the downstream tasks alone) sometimes aborted in gloo's threads ("terminate called without an
    active exception"), failing the whole torchrun."""
    if dist.is_initialized():
        with contextlib.suppress(Exception):  # a peer that already died: nothing left to wait for
            dist.barrier()
        dist.destroy_process_group()


def wrap(model: nn.Module, group: ProcessGroup, device: torch.device, find_unused: bool) -> nn.Module:
    """The module training calls: DDP around ``model``, or ``model`` itself sharded in place by FSDP2.

    FSDP2 shards every encoder and decoder block as a unit (gathered just before it runs, freed
    after) and the remaining parameters (embedding, heads, final norms) at the root. The first block
    of each stack stays with the root: it owns the relative position bias, which the stack reads
    before any block runs.
    """
    if group.kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=find_unused)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (group.world_size,))
    for stack in (model.encoder, model.decoder):
        if stack is not None:
            for block in stack.block[1:]:
                fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def sum_weights_over_processes(weights: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each objective's loss weight summed over processes (same labels everywhere), in float64: weights are
    token counts, so the sum is exact and every process gets the one a single process computes."""
    names = sorted(weights)
    if not names:
        return weights
    flat = torch.tensor([float(weights[name]) for name in names], dtype=torch.float64, device=device)
    dist.all_reduce(flat)
    return dict(zip(names, flat.cpu().tolist()))


@contextlib.contextmanager
def gradient_sync(network: nn.Module, group: ProcessGroup, sync: bool) -> Iterator[None]:
    """Accumulate gradients locally unless ``sync`` (the step's last backward on this process)."""
    if group.kind == "ddp":
        with contextlib.nullcontext() if sync else network.no_sync():
            yield
    else:
        network.set_requires_gradient_sync(sync)
        yield


def sum_over_processes(values: dict[str, tuple[torch.Tensor, torch.Tensor]], device: torch.device
                       ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Metric (sum, count) pairs summed over processes with one all-reduce (same keys everywhere)."""
    names = sorted(values)
    if not names:
        return values
    flat = torch.stack([torch.as_tensor(part, dtype=torch.float32, device=device).reshape(())
                        for name in names for part in values[name]])
    dist.all_reduce(flat)
    return {name: (flat[2 * i], flat[2 * i + 1]) for i, name in enumerate(names)}


def gather_tensor(value: torch.Tensor, group: ProcessGroup, device: torch.device) -> list[torch.Tensor]:
    """``value`` (same shape on every process) from every process, in rank order, on the CPU."""
    local = value.to(device)
    parts = [torch.empty_like(local) for _ in range(group.world_size)]
    dist.all_gather(parts, local)
    return [part.cpu() for part in parts]


def local_value(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a DTensor (a norm FSDP2 computed over shards) or a tensor."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value
