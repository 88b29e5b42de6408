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


class TorchBackend(LazyBackend):
    """Ankh/T5 in plain PyTorch: AdamW or Adafactor, bf16 autocast, safetensors weights with HF T5 names."""

    Config = TorchBackendConfig
    implementation = "plmforge.plugins.backends.torch.trainer:TorchTrainer"
