"""Loss building blocks written against the Python array API (``xp``).

Objectives compose these so their loss runs unchanged on every backend. Everything is computed in
float32 whatever the compute precision, because softmax cross-entropy in bf16 loses accuracy.
"""

from __future__ import annotations

from typing import Any

Array = Any


def log_softmax(xp: Any, logits: Array, axis: int = -1) -> Array:
    logits = xp.astype(logits, xp.float32)
    shifted = logits - xp.max(logits, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def token_nll(xp: Any, logits: Array, targets: Array) -> tuple[Array, Array]:
    """Per-position negative log-likelihood of integer ``targets`` and whether argmax hit them.

    ``logits`` [..., V], ``targets`` [...] of integer ids (any value where masked out later).
    """
    logp = log_softmax(xp, logits)
    safe_targets = xp.astype(xp.clip(targets, 0, logits.shape[-1] - 1), index_dtype(xp))
    picked = xp.take_along_axis(logp, safe_targets[..., None], axis=-1)[..., 0]
    correct = xp.argmax(logp, axis=-1) == safe_targets
    return -picked, correct


def index_dtype(xp: Any) -> Any:
    """The namespace's integer type for indexing: int64 in torch, int32 in JAX without x64."""
    return xp.__array_namespace_info__().default_dtypes()["indexing"]


def masked_sum(xp: Any, values: Array, mask: Array) -> Array:
    """Sum of ``values`` where ``mask`` is true (mask may be bool or float weights)."""
    return xp.sum(xp.where(mask, xp.astype(values, xp.float32), xp.zeros_like(values, dtype=xp.float32)))


def count(xp: Any, mask: Array) -> Array:
    return xp.sum(xp.astype(mask, xp.float32))


def kl_divergence(xp: Any, target_probs: Array, logits: Array, axis: int = -1) -> Array:
    """KL(target || softmax(logits)) per position; zero-probability target entries contribute 0."""
    logq = log_softmax(xp, logits, axis=axis)
    p = xp.astype(target_probs, xp.float32)
    safe_p = xp.where(p > 0, p, xp.ones_like(p))
    return xp.sum(xp.where(p > 0, p * (xp.log(safe_p) - logq), xp.zeros_like(p)), axis=axis)
