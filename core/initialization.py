"""Initial weights, drawn once in numpy for every backend.

The same spec and seed give the same initial model on PyTorch and on JAX, so a run is a function of
its spec whichever backend executes it. The standard deviations are Hugging Face
``T5PreTrainedModel._init_weights``'s (times ``initializer_factor``):

* ``shared`` (embedding) 1; ``q`` (d_model·d_kv)^-0.5, which stands in for the missing 1/sqrt(d_kv)
  score scaling; ``k``, ``v`` d_model^-0.5; ``o`` (heads·d_kv)^-0.5; ``relative_attention_bias``
  d_model^-0.5; ``wi_0``, ``wi_1`` d_model^-0.5; ``wo`` d_ff^-0.5; RMSNorm scales 1 (not random);
* one deliberate difference: output heads (``lm_head``, ``encoder_lm_head``, ``heads.*``) get
  d_model^-0.5 instead of 1. After the final RMSNorm the hidden state has unit scale, so std 1 gives
  initial logits of std sqrt(d_model) and a first loss far above ln(vocab).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from plmforge.core.model_config import ModelConfig

#: Mixed into the seed so weight draws never share a stream with data or dropout draws.
_STREAM = 0x1417


def init_std(name: str, config: ModelConfig) -> float | None:
    """Standard deviation of parameter ``name`` (Hugging Face T5 naming); ``None`` for norm scales (ones)."""
    c = config
    module = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name
    if module.endswith("layer_norm"):
        return None
    if name.startswith("heads.") or module in ("lm_head", "encoder_lm_head"):
        std = c.d_model ** -0.5
    else:
        table = {"shared": 1.0, "q": (c.d_model * c.d_kv) ** -0.5, "k": c.d_model ** -0.5, "v": c.d_model ** -0.5,
                 "o": (c.num_heads * c.d_kv) ** -0.5, "relative_attention_bias": c.d_model ** -0.5,
                 "wi_0": c.d_model ** -0.5, "wi_1": c.d_model ** -0.5, "wo": c.d_ff ** -0.5}
        if module not in table:
            raise ValueError(f"no initialisation rule for parameter {name!r}")
        std = table[module]
    return c.initializer_factor * std


def initial_weights(shapes: Mapping[str, tuple[int, ...]], config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """float32 initial weights for a model whose parameters have these names and shapes.

    Each parameter is drawn from its own generator, seeded by (seed, name), so adding a head does not
    change the other parameters' initial values.
    """
    weights = {}
    for name, shape in shapes.items():
        std = init_std(name, config)
        if std is None:
            weights[name] = np.full(shape, config.initializer_factor, np.float32)
            continue
        rng = np.random.default_rng([seed, _STREAM, int.from_bytes(name.encode(), "little")])  # whole name
        weights[name] = (rng.standard_normal(shape, dtype=np.float32) * np.float32(std))
    return weights
