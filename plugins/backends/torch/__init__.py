"""PyTorch backend plugin.

This module must stay importable without torch: the registry loads ``TorchBackend`` to read its
``Config`` when listing plugins, validating specs or printing the schema. The work happens in
:mod:`.trainer`, imported when a run sets the backend up.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from plmforge.core.backend import BackendConfig, LazyBackend


class TorchBackendConfig(BackendConfig):
    device: str = Field("auto", description="'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
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


    def for_one_process(self) -> TorchBackendConfig:
        return self.model_copy(update={"distributed": "none"})


class TorchBackend(LazyBackend):
    """Ankh/T5 in plain PyTorch: AdamW or Adafactor, bf16 autocast, safetensors weights with HF T5 names."""

    Config = TorchBackendConfig
    implementation = "plmforge.plugins.backends.torch.trainer:TorchTrainer"
