"""The Ankh/T5 encoder-decoder shape, shared by every backend.

Field names follow Hugging Face's ``T5Config`` so a plmforge model maps 1:1 onto T5/Ankh checkpoints.
A spec names a preset and may override any field; the resolved spec shows every value.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

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
    relative_attention_num_buckets: int = Field(
        64, ge=4, description="Relative position buckets (Ankh: 64); at least 4: half per direction, of which half "
                              "are exact.")
    relative_attention_max_distance: int = Field(128, gt=0, description="Largest distinguished distance (Ankh: 128).")
    dropout_rate: float = Field(
        0.1, ge=0.0, lt=1.0, description="Dropout in attention, feed-forward and residual paths.")
    layer_norm_epsilon: float = Field(1e-6, gt=0.0, description="RMSNorm epsilon.")
    initializer_factor: float = Field(
        1.0, gt=0.0, le=100.0, description="Scale of the T5 weight initialisation (at most 100).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass to save memory (slower).")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", cls.model_fields["preset"].default)
        if not isinstance(preset, (str, type(None))):
            return data  # the field itself reports the wrong type (a mapping is not even hashable)
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        if preset is None or data.get("init_from") is not None:
            return data  # with init_from the shape is the checkpoint's: build.resolved_model_section fills it in
        return {**PRESETS[preset], **data}

    @field_validator("relative_attention_max_distance")
    @classmethod
    def _log_buckets_usable(cls, distance: int, info: ValidationInfo) -> int:
        """T5's logarithmic buckets span from the exact ones up to this distance, or bucketing divides by zero.

        The encoder (bidirectional) has ``buckets // 4`` exact buckets, the decoder ``buckets // 2``.
        """
        buckets = info.data.get("relative_attention_num_buckets")
        if isinstance(buckets, int) and distance <= buckets // 2:
            raise ValueError(f"must exceed half of relative_attention_num_buckets ({buckets} // 2 = {buckets // 2}); "
                             f"Ankh uses 128 with 64 buckets")
        return distance

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
