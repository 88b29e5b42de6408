"""Helpers shared by tests (imported as ``helpers``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plmforge.core.hookspecs import hookimpl

#: A model small enough for tests to train in seconds on two CPU cores.
TINY_MODEL = dict(preset=None, d_model=32, num_layers=2, num_decoder_layers=1, num_heads=2, d_kv=16, d_ff=64,
                  dropout_rate=0.0)


def tiny_spec_dict(tmp_path: Path, **training: Any) -> dict[str, Any]:
    return {
        "name": "tiny",
        "seed": 7,
        "output_dir": str(tmp_path / "run"),
        "data": {"source": "builtin:scl2205", "max_length": 64},
        "model": dict(TINY_MODEL),
        "backend": {"name": "torch", "threads": 1},
        "objectives": [{"name": "mlm", "probabilities": [0.15, 0.3]}],
        "training": {"steps": 6, "batch_size": {"tokens": 1024}, "log_every": 1, "eval_every": 3,
                     "eval_batches": 2, "checkpoint_every": 3, "keep_checkpoints": 5,
                     "optimizer": {"name": "adamw", "lr": 3e-3}, "schedule": {"warmup_steps": 2}, **training},
        "tracking": {"enabled": True, "experiment": "tests", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }


class StopAt:
    """A hook that simulates Ctrl-C after a given step (for stop-and-resume tests)."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def plmforge_step_end(self, run, step, metrics):
        if step == self.step:
            raise KeyboardInterrupt
