"""PyTorch backend plugin.

This module must stay importable without torch: the registry loads ``TorchBackend`` to read its
``Config`` when listing plugins, validating specs or printing the schema. The work happens in
:mod:`.trainer`, imported when a run sets the backend up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field

from plmforge.core.backend import Backend, BackendConfig, MicroBatch, StepMetrics


class TorchBackendConfig(BackendConfig):
    device: str = Field("auto", description="'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: torch's choice).")
    matmul_precision: Literal["highest", "high", "medium"] = Field(
        "high", description="float32 matmul precision on GPUs ('high' allows TF32).")


class TorchBackend(Backend):
    """Ankh/T5 in plain PyTorch: AdamW or Adafactor, bf16 autocast, safetensors weights with HF T5 names."""

    Config = TorchBackendConfig

    def setup(self) -> None:
        from plmforge.plugins.backends.torch.trainer import TorchTrainer

        self._impl = TorchTrainer(self.config, self.context)

    def train_step(self, micro_batches: Mapping[str, list[MicroBatch]], lr: float) -> StepMetrics:
        return self._impl.train_step(micro_batches, lr)

    def eval_step(self, batches: Mapping[str, MicroBatch]) -> StepMetrics:
        return self._impl.eval_step(batches)

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        return self._impl.embed(input_ids)

    def weights(self) -> dict[str, np.ndarray]:
        return self._impl.weights()

    def load_weights(self, weights: Mapping[str, np.ndarray], strict: bool = True) -> None:
        self._impl.load_weights(weights, strict)

    def training_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return self._impl.training_state()

    def load_training_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self._impl.load_training_state(arrays, meta)

    def describe(self) -> dict[str, str]:
        return self._impl.describe()

    def num_parameters(self) -> int:
        return self._impl.num_parameters()
