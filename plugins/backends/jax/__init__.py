"""JAX/Flax NNX backend plugin: the same Ankh/T5 model, checkpoints and objectives as PyTorch.

This module must stay importable without jax (the registry reads ``JaxBackend.Config`` to list
plugins, validate specs and print the schema); :mod:`.engine` (``JaxEngine``) is imported at setup.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, model_validator

from plmforge.core.backend import BackendConfig, LazyBackend
from plmforge.core.strict import checks_machine


class JaxBackendConfig(BackendConfig):
    platform: Literal["auto", "cpu", "gpu", "tpu"] = Field(
        "auto", description="JAX platform to run on; 'auto' takes JAX's default (TPU, then GPU, then CPU).")
    devices: int | None = Field(
        None, ge=1, description="How many devices of the platform form the mesh (default: all of them).")
    sharding: Literal["data", "fsdp"] = Field(
        "data", description="'data': parameters replicated, batches split over devices (data parallel); "
                            "'fsdp': parameters and optimizer state split over the devices too (fully sharded).")
    multi_host: bool = Field(
        False, description="Join the other processes of a multi-process run first (jax.distributed.initialize): "
                           "TPU pods and SLURM are detected; elsewhere set JAX_COORDINATOR_ADDRESS, "
                           "JAX_NUM_PROCESSES and JAX_PROCESS_ID in every process (see docs/jax-backend.md).")
    shape_growth: float = Field(
        1.0, ge=1.0, le=2.0,
        description="Extra padding of batch shapes, to compile fewer of them. 1.0 keeps the planner's shapes "
                    "(lengths already rounded to training.pad_to_multiple: the quickstart meets 19 in 600 steps); "
                    "e.g. 1.25 rounds every axis up a geometric ladder: fewer compilations, more padding.")

    def for_one_process(self) -> JaxBackendConfig:
        return self.model_copy(update={"multi_host": False})

    @model_validator(mode="after")
    def _gpus_present(self, info: ValidationInfo) -> JaxBackendConfig:
        """On this machine (validate, train): refuse platform 'gpu' without enough (NVIDIA) GPUs here."""
        if self.platform != "gpu" or self.multi_host or not checks_machine(info):
            return self
        from plmforge.core.devices import cuda_device_count

        count = cuda_device_count()
        if count is not None and count < (self.devices or 1):
            wanted = f"{self.devices} GPU devices" if self.devices else "a GPU"
            raise ValueError(f"platform 'gpu' needs {wanted} but this machine has {count} CUDA device(s); "
                             f"use platform 'auto' or 'cpu'")
        return self


class JaxBackend(LazyBackend):
    """Ankh/T5 in Flax NNX + optax: compiled steps, a device mesh for data-parallel or fully sharded training."""

    Config = JaxBackendConfig
    implementation = "plmforge.plugins.backends.jax.engine:JaxEngine"
