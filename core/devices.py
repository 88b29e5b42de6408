"""Cheap facts about this machine's accelerators, found without importing PyTorch or JAX.

``plmforge validate`` must stay fast and framework-free, yet refuse ``backend.device: cuda:7`` on a
machine without that GPU, as training would. NVIDIA GPUs are counted from the driver's
``/proc/driver/nvidia/gpus`` (one folder per GPU) or the ``/dev/nvidiaN`` device files, then narrowed
by ``CUDA_VISIBLE_DEVICES`` as the CUDA runtime does. Where the answer cannot be known cheaply (an AMD
ROCm machine, where PyTorch also says "cuda"; a system without ``/proc``), it is ``None`` and nothing is
refused here: the backend still checks when the run starts.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path


def cuda_device_count() -> int | None:
    """How many CUDA devices a process started now would see, or None when that is not cheaply known."""
    if sys.platform == "darwin":
        return 0
    if not sys.platform.startswith("linux") or Path("/dev/kfd").exists():
        return None
    present = _nvidia_gpus_present()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return present if visible is None else _visible_count(visible, present)


def _nvidia_gpus_present() -> int:
    proc = Path("/proc/driver/nvidia/gpus")
    from_proc = len(list(proc.iterdir())) if proc.is_dir() else 0
    from_dev = sum(1 for entry in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", entry.name))
    return max(from_proc, from_dev)


def _visible_count(visible: str, present: int) -> int:
    """Devices CUDA enumerates for ``CUDA_VISIBLE_DEVICES``: entries up to the first invalid one."""
    count = 0
    for entry in (item.strip() for item in visible.split(",")):
        if entry.isdigit():
            if int(entry) >= present:
                break
        elif not entry.startswith(("GPU-", "MIG-")):
            break
        count += 1
    return min(count, present)
