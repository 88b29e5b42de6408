"""Optimizers of the JAX backend with the PyTorch backend's semantics, as optax transformations.

* ``adamw``: ``optax.adamw``, which computes exactly ``torch.optim.AdamW`` (decoupled weight decay
  ``lr * wd * p``, epsilon added after the bias-corrected square root).
* ``adafactor``: ``torch.optim.Adafactor``'s algorithm (factored second moment for matrices, relative
  step ``min(lr, 1/sqrt(t))`` scaled by the parameter RMS, update RMS clipped to 1, no momentum),
  which differs from ``optax.adafactor``; matching it lets a spec mean the same on both backends.

Weight decay applies to matrices only (RMSNorm scales are exempt), as in the PyTorch backend. The
learning rate is a hyperparameter injected every step, so the run loop's schedule drives both.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Params = dict[str, jax.Array]


def decay_mask(params: Params) -> dict[str, bool]:
    return {name: value.ndim >= 2 for name, value in params.items()}


def make_optimizer(config: Any, params: Params) -> optax.GradientTransformation:
    """The spec's ``training.optimizer`` as an optax transformation with an injectable learning rate."""
    mask = decay_mask(params)
    if config.name == "adamw":
        return optax.inject_hyperparams(optax.adamw)(
            learning_rate=config.lr, b1=config.betas[0], b2=config.betas[1], eps=config.eps,
            weight_decay=config.weight_decay, mask=mask)
    return optax.inject_hyperparams(torch_adafactor)(
        learning_rate=config.lr, weight_decay=config.weight_decay, mask=mask)


class AdafactorState(NamedTuple):
    count: jax.Array
    row_var: Params  # [..., R, 1] for matrices, [0] placeholders otherwise
    col_var: Params  # [..., 1, C] for matrices
    variance: Params  # full second moment for vectors


def torch_adafactor(learning_rate: float, weight_decay: float = 0.0, mask: dict[str, bool] | None = None,
                    beta2_decay: float = -0.8, eps1: float | None = None, eps2: float = 1e-3,
                    d: float = 1.0) -> optax.GradientTransformation:
    """``torch.optim.Adafactor`` for a flat dict of parameters (defaults as in PyTorch)."""
    eps1 = float(jnp.finfo(jnp.float32).eps) if eps1 is None else eps1
    empty = jnp.zeros((0,), jnp.float32)

    def init(params: Params) -> AdafactorState:
        rows, cols, full = {}, {}, {}
        for name, p in params.items():
            factored = p.ndim >= 2
            rows[name] = jnp.zeros((*p.shape[:-1], 1), jnp.float32) if factored else empty
            cols[name] = jnp.zeros((*p.shape[:-2], 1, p.shape[-1]), jnp.float32) if factored else empty
            full[name] = empty if factored else jnp.zeros(p.shape, jnp.float32)
        return AdafactorState(jnp.zeros((), jnp.int32), rows, cols, full)

    def update(grads: Params, state: AdafactorState, params: Params | None = None) -> tuple[Params, AdafactorState]:
        count = state.count + 1
        t = count.astype(jnp.float32)
        one_minus_beta2 = t ** beta2_decay
        rho = jnp.minimum(learning_rate, 1.0 / jnp.sqrt(t))
        updates, rows, cols, full = {}, {}, {}, {}
        for name, g in grads.items():
            p = params[name]
            alpha = jnp.maximum(eps2, jnp.sqrt(jnp.mean(jnp.square(p)))) * rho
            if p.ndim >= 2:
                rows[name] = state.row_var[name] + one_minus_beta2 * (
                    jnp.mean(jnp.square(g), axis=-1, keepdims=True) - state.row_var[name])
                cols[name] = state.col_var[name] + one_minus_beta2 * (
                    jnp.mean(jnp.square(g), axis=-2, keepdims=True) - state.col_var[name])
                full[name] = state.variance[name]
                estimate = rows[name] @ cols[name] / jnp.maximum(
                    jnp.mean(rows[name], axis=-2, keepdims=True), eps1)
            else:
                rows[name], cols[name] = state.row_var[name], state.col_var[name]
                full[name] = state.variance[name] + one_minus_beta2 * (jnp.square(g) - state.variance[name])
                estimate = full[name]
            step = jax.lax.rsqrt(jnp.maximum(estimate, eps1 * eps1)) * g
            denom = jnp.maximum(1.0, jnp.sqrt(jnp.mean(jnp.square(step))) / d)
            decay = learning_rate * weight_decay * p if (mask is None or mask[name]) else 0.0
            updates[name] = -alpha / denom * step - decay
        return updates, AdafactorState(count, rows, cols, full)

    return optax.GradientTransformation(init, update)
