"""Checkpoints: one directory per step, written atomically, readable by every backend.

Layout of ``<output_dir>/checkpoints/step-000123/``::

    model.safetensors     weights, Hugging Face T5 names and layouts (float32)
    config.json           the model shape as a Hugging Face T5Config (vocab size included)
    training.safetensors  optimizer (and other backend) state arrays
    trainer_state.json    step, data stream positions, RNG state, backend metadata, metrics
    spec.yaml             the resolved spec

A checkpoint is written into a temporary sibling directory and renamed into place only when every
file is complete and flushed, so a crash never leaves a half-written ``step-*`` directory and never
touches the previous good one. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from plmforge.core.errors import CheckpointError

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"
TRAINING = "training.safetensors"
TRAINER_STATE = "trainer_state.json"
SPEC = "spec.yaml"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    weights: dict[str, np.ndarray]
    training_arrays: dict[str, np.ndarray]
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def checkpoint_root(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_path(output_dir: Path, step: int) -> Path:
    return checkpoint_root(output_dir) / f"step-{step:06d}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / TRAINER_STATE).is_file()]


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _contiguous(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # reshape: np.ascontiguousarray turns a 0-d array (an optimizer step count) into shape (1,)
    return {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in arrays.items()}


def save_checkpoint(output_dir: Path, step: int, weights: dict[str, np.ndarray], model_config: dict[str, Any],
                    training_arrays: dict[str, np.ndarray], state: dict[str, Any], spec_yaml: str,
                    keep: int | None = None) -> Path:
    """Write a checkpoint atomically and prune older ones beyond ``keep``; returns its path."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(output_dir, step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:06d}-", dir=root))
    try:
        save_file(_contiguous(weights), str(tmp / WEIGHTS), metadata={"format": "pt"})
        save_file(_contiguous(training_arrays) or {"_empty": np.zeros(0, np.float32)}, str(tmp / TRAINING))
        (tmp / MODEL_CONFIG).write_text(json.dumps(model_config, indent=2))
        (tmp / TRAINER_STATE).write_text(json.dumps({**state, "step": step}, indent=2))
        (tmp / SPEC).write_text(spec_yaml)
        for file in tmp.iterdir():
            with open(file, "rb+") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(tmp)
        if final.exists():  # same step written again (e.g. final == periodic): replace it whole
            stale = root / f".stale-{final.name}-{os.getpid()}"
            final.rename(stale)
            tmp.rename(final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, with_training_state: bool = True) -> Checkpoint:
    """Read a checkpoint directory (or a bare ``model.safetensors`` file)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        return Checkpoint(path=path, weights=_read(path), training_arrays={}, state={"step": 0})
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint not found")
    weights_file = path / WEIGHTS
    if not weights_file.is_file():
        raise CheckpointError(f"{path}: not a checkpoint (no {WEIGHTS})")
    state: dict[str, Any] = {"step": 0}
    training_arrays: dict[str, np.ndarray] = {}
    if (path / TRAINER_STATE).is_file():
        try:
            state = json.loads((path / TRAINER_STATE).read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path / TRAINER_STATE}: unreadable ({exc})") from None
    if with_training_state and (path / TRAINING).is_file():
        training_arrays = {k: v for k, v in _read(path / TRAINING).items() if k != "_empty"}
    return Checkpoint(path=path, weights=_read(weights_file), training_arrays=training_arrays, state=state)


def _read(file: Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(file))
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
        raise CheckpointError(f"{file}: cannot read safetensors file ({exc})") from None
