"""Learning-rate schedule shared by every backend: linear warmup, then linear/cosine/constant decay.

A plain function of the step, so both backends (and a resumed run) compute the same rate.
"""

from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int = 0,
                  decay: str = "linear", final_lr_ratio: float = 0.0) -> float:
    """Rate for optimizer step ``step`` (0-based) of ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if decay == "constant":
        return peak
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    if decay == "linear":
        factor = 1.0 - progress
    elif decay == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown decay {decay!r}")
    return peak * (final_lr_ratio + (1.0 - final_lr_ratio) * factor)


def rate_for(training, step: int) -> float:
    """Rate at ``step`` for a spec's ``training`` section."""
    s = training.schedule
    return learning_rate(step, training.steps, training.optimizer.lr, s.warmup_steps, s.decay, s.final_lr_ratio)
