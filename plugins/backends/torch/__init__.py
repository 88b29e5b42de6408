"""PyTorch backend plugin.

This module must stay importable without torch: the registry loads ``TorchBackend`` to read its
``Config`` when listing plugins, validating specs or printing the schema. The work happens in
:mod:`.engine` (``TorchEngine``), imported when a run sets the backend up.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from plmforge.core.backend import BackendConfig, LazyBackend
from plmforge.core.strict import checks_machine


class TorchBackendConfig(BackendConfig):
    device: str = Field("auto", description="'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'. "
                                            "`plmforge validate` checks that a CUDA device named here exists.")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: torch's choice).")
    matmul_precision: Literal["highest", "high", "medium"] = Field(
        "high", description="float32 matmul precision on GPUs ('high' allows TF32).")
    distributed: Literal["none", "ddp", "fsdp"] = Field(
        "none", description="Data parallelism over the processes `torchrun` starts (gloo on CPU, NCCL on GPU): "
                            "'ddp' replicates the model (DistributedDataParallel); 'fsdp' shards parameters, "
                            "gradients and optimizer state (FSDP2 fully_shard). The global batch is the spec's: "
                            "training.gradient_accumulation micro-batches per step, split over the processes.")
    compile: bool = Field(
        False, description="torch.compile the model (dynamic shapes): faster steps after a first slow one "
                           "per shape family; worth it for long runs on GPU.")


    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str, info: ValidationInfo) -> str:
        """A device PyTorch can be asked for; on this machine (validate, train) also one that is there."""
        match = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", value)
        if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
            raise ValueError(f"unknown device {value!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if match.group(1) == "cuda" and checks_machine(info):
            from plmforge.core.devices import cuda_device_count

            count = cuda_device_count()
            index = int(match.group(2) or 0)
            if count is not None and index >= count:
                seen = "no CUDA device" if count == 0 else f"{count} CUDA device(s) (cuda:0..cuda:{count - 1})"
                raise ValueError(f"device {value!r} is not on this machine, which has {seen}; use 'auto' or 'cpu'")
        return value

    def for_one_process(self) -> TorchBackendConfig:
        return self.model_copy(update={"distributed": "none"})


class TorchBackend(LazyBackend):
    """Ankh/T5 in plain PyTorch: AdamW or Adafactor, bf16 autocast, safetensors weights with HF T5 names."""

    Config = TorchBackendConfig
    implementation = "plmforge.plugins.backends.torch.engine:TorchEngine"
