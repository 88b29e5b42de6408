"""The Ankh/T5 encoder-decoder shape, shared by every backend.

Field names follow Hugging Face's ``T5Config`` so a plmforge model maps 1:1 onto T5/Ankh checkpoints.
A spec names a preset and may override any field; the resolved spec shows every value.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from plmforge.core.strict import StrictModel

#: Named sizes. ankh-base/large follow the Ankh paper; ankh-tiny is for CPU smoke runs and tests.
PRESETS: dict[str, dict[str, Any]] = {
    "ankh-tiny": dict(d_model=128, num_layers=4, num_decoder_layers=2, num_heads=4, d_kv=32, d_ff=320,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0),
    "ankh-base": dict(d_model=768, num_layers=48, num_decoder_layers=24, num_heads=12, d_kv=64, d_ff=3072,
                      feed_forward_proj="gated-gelu"),
    "ankh-large": dict(d_model=1536, num_layers=48, num_decoder_layers=24, num_heads=16, d_kv=64, d_ff=3840,
                       feed_forward_proj="gated-gelu"),
    "ankh2-large": dict(d_model=1536, num_layers=48, num_decoder_layers=24, num_heads=16, d_kv=64, d_ff=3840,
                        feed_forward_proj="gated-silu"),
}


class ModelConfig(StrictModel):
    """Size and shape of the T5-style encoder-decoder (pre-RMSNorm, relative bias, gated FFN, no biases)."""

    preset: str | None = Field(
        "ankh-tiny", description=f"Named size to start from; other keys override it. One of {sorted(PRESETS)}.")
    init_from: str | None = Field(
        None,
        description="Start from the weights of a Hugging Face T5 checkpoint directory (e.g. Ankh: config.json "
                    "+ model.safetensors) or a plmforge checkpoint or run directory; relative paths are taken "
                    "from the working directory. The shape comes from its config.json (a preset is then not "
                    "applied); shape keys set here must agree with it. Ignored by --resume. See "
                    "docs/checkpoints.md.")
    d_model: int = Field(128, gt=0, description="Hidden size.")
    num_layers: int = Field(4, gt=0, description="Encoder layers.")
    num_decoder_layers: int = Field(2, ge=0, description="Decoder layers (0 builds an encoder-only model).")
    num_heads: int = Field(4, gt=0, description="Attention heads.")
    d_kv: int = Field(32, gt=0, description="Size of each attention head.")
    d_ff: int = Field(320, gt=0, description="Inner size of the gated feed-forward block.")
    feed_forward_proj: Literal["gated-gelu", "gated-silu"] = Field(
        "gated-gelu",
        description="Gated feed-forward activation: Ankh uses gated-gelu (tanh GELU), Ankh2/3 gated-silu.")
    relative_attention_num_buckets: int = Field(64, gt=0, description="Relative position buckets (Ankh: 64).")
    relative_attention_max_distance: int = Field(128, gt=0, description="Largest distinguished distance (Ankh: 128).")
    dropout_rate: float = Field(
        0.1, ge=0.0, lt=1.0, description="Dropout in attention, feed-forward and residual paths.")
    layer_norm_epsilon: float = Field(1e-6, gt=0.0, description="RMSNorm epsilon.")
    initializer_factor: float = Field(1.0, gt=0.0, description="Scale of the T5 weight initialisation.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass to save memory (slower).")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("init_from") is not None:
            return _shape_from_checkpoint(data)
        preset = data.get("preset", cls.model_fields["preset"].default)
        if preset is None:
            return data
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        return {**PRESETS[preset], **data}

    @property
    def has_decoder(self) -> bool:
        return self.num_decoder_layers > 0

    def hf_config(self, vocab_size: int) -> dict[str, Any]:
        """This shape as a Hugging Face ``T5Config`` dictionary (config.json of a checkpoint)."""
        return {
            "architectures": ["T5ForConditionalGeneration"],
            "model_type": "t5",
            "vocab_size": vocab_size,
            "d_model": self.d_model,
            "num_layers": self.num_layers,
            "num_decoder_layers": self.num_decoder_layers,
            "num_heads": self.num_heads,
            "d_kv": self.d_kv,
            "d_ff": self.d_ff,
            "feed_forward_proj": self.feed_forward_proj,
            "relative_attention_num_buckets": self.relative_attention_num_buckets,
            "relative_attention_max_distance": self.relative_attention_max_distance,
            "dropout_rate": self.dropout_rate,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_factor": self.initializer_factor,
            "tie_word_embeddings": False,
            "is_encoder_decoder": True,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "decoder_start_token_id": 0,
        }


def _shape_from_checkpoint(data: dict[str, Any]) -> dict[str, Any]:
    """The model section with the shape of its ``init_from`` checkpoint filled in, checked against what it sets.

    Keys the section sets (itself or through an explicit preset) must agree with the checkpoint, except
    ``num_decoder_layers: 0``, which keeps only the encoder, and the training choices ``dropout_rate``
    and ``initializer_factor``. A section that sets every shape key (a resolved spec, as saved with a
    run) is accepted even when the checkpoint has moved away since; it is read again only to train.
    """
    from pathlib import Path

    from plmforge.core.errors import CheckpointError
    from plmforge.core.hf_checkpoint import SHAPE_FIELDS, SOFT_FIELDS, read_shape

    path, preset = data["init_from"], data.get("preset")
    if not isinstance(path, str):
        return data  # the field's own validation reports it
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    given = {**(PRESETS[preset] if preset else {}), **data}
    if all(key in data for key in SHAPE_FIELDS) and path.strip() and not Path(path).expanduser().exists():
        return {"preset": None, **data}
    try:
        found = read_shape(path, "model.init_from")
    except CheckpointError as exc:
        raise ValueError(str(exc)) from None
    source = found.path / "config.json"
    conflicts = [f"model.{key} is {given[key]!r} here but {found.shape[key]!r} in {source}"
                 for key in SHAPE_FIELDS if key in given and not _same(given[key], found.shape[key])
                 and not (key == "num_decoder_layers" and given[key] == 0)]
    if conflicts:
        raise ValueError("; ".join(conflicts) + " (model.init_from sets the model's shape: leave "
                         f"{'that key' if len(conflicts) == 1 else 'those keys'} out or make them agree)")
    shape = {key: found.shape[key] for key in (*SHAPE_FIELDS, *SOFT_FIELDS)}
    return {**shape, **given, "preset": preset}


def _same(given: Any, found: Any) -> bool:
    """Whether a spec value states the checkpoint's (YAML reads ``1e-6`` as a string; pydantic would coerce it)."""
    if isinstance(found, (int, float)) and not isinstance(found, bool):
        try:
            return float(given) == float(found)
        except (TypeError, ValueError):
            return False
    return given == found
