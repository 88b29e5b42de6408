"""Which model outputs a forward pass computes: only those the objectives ask for.

Shared by every backend's model so they accept the same output names and fail the same way; the
backend passes its own encoder, decoder and heads as callables.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

#: Names a model's forward can return besides its per-residue head names.
BUILTIN_OUTPUTS = ("encoder_hidden", "decoder_hidden", "encoder_logits", "decoder_logits")

Array = Any


def compute_outputs(wanted: Collection[str], heads: Mapping[str, Callable[[Array], Array]],
                    encode: Callable[[], Array], encoder_lm_head: Callable[[Array], Array] | None,
                    decode: Callable[[Array], Array] | None, lm_head: Callable[[Array], Array] | None
                    ) -> dict[str, Array]:
    """Run the encoder, then only the heads and decoder that ``wanted`` needs.

    ``decode`` maps the encoder output to the decoder output; ``None`` when no decoder input was given.
    """
    wanted = set(wanted)
    unknown = wanted - set(BUILTIN_OUTPUTS) - set(heads)
    if unknown:
        raise ValueError(f"unknown outputs {sorted(unknown)}; available: {[*BUILTIN_OUTPUTS, *heads]}")
    if "encoder_logits" in wanted and encoder_lm_head is None:
        raise ValueError("'encoder_logits' asked for, but the model was built without encoder_lm_head")
    result: dict[str, Array] = {}
    encoder_hidden = encode()
    if "encoder_hidden" in wanted:
        result["encoder_hidden"] = encoder_hidden
    if "encoder_logits" in wanted:
        result["encoder_logits"] = encoder_lm_head(encoder_hidden)
    for name, head in heads.items():
        if name in wanted:
            result[name] = head(encoder_hidden)
    if wanted & {"decoder_hidden", "decoder_logits"}:
        if decode is None:
            raise ValueError("decoder outputs asked for without decoder_input_ids")
        decoder_hidden = decode(encoder_hidden)
        if "decoder_hidden" in wanted:
            result["decoder_hidden"] = decoder_hidden
        if "decoder_logits" in wanted:
            result["decoder_logits"] = lm_head(decoder_hidden)
    return result
