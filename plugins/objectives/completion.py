"""Sequence completion (Ankh3 ``[S2S]``): the encoder reads the start of a protein, the decoder writes the rest.

::

    encoder  [S2S] M K A Y V L </s>
    decoder  <pad> I N S R G P          (input: the target shifted right)
    target   I N S R G P </s>

The split point is a fixed fraction of the (cropped) protein, or drawn per example from a range, and
always leaves at least one residue on each side. The target is cut to ``max_target_length`` residues;
it ends with ``</s>`` only when the whole rest fits, so the model learns to stop only where proteins
really end. ``plmforge generate`` completes sequences from a checkpoint trained with this objective.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from plmforge.core import losses
from plmforge.core.objective import (
    DECODER_INPUT,
    DECODER_LOGITS,
    ENCODER_INPUT,
    Feature,
    LossOutput,
    ModelNeeds,
    Objective,
    ObjectiveConfig,
    Protein,
)

TARGET = "decoder_target_ids"


class CompletionConfig(ObjectiveConfig):
    split: float = Field(
        0.5, gt=0.0, lt=1.0,
        description="Share of the protein the encoder sees (Ankh3's example splits at 0.5); ignored when "
                    "split_range is given.")
    split_range: tuple[float, float] | None = Field(
        None, description="Draw the split share uniformly from [low, high] per example instead of using split.")
    max_target_length: int | None = Field(
        None, ge=1, description="Longest decoder target in residues (the rest is cut); null = no limit.")
    prefix: str | None = Field(
        "[S2S]", description="Task prefix token put before the protein on the encoder input (Ankh3 '[S2S]').")

    @model_validator(mode="after")
    def _range_is_ordered(self) -> CompletionConfig:
        if self.split_range is not None:
            low, high = self.split_range
            if not 0.0 < low <= high < 1.0:
                raise ValueError(f"split_range must satisfy 0 < low <= high < 1, got {list(self.split_range)}")
        return self


class SequenceCompletion(Objective):
    """Predict the rest of a protein from its beginning, with the decoder."""

    Config = CompletionConfig
    target_feature = TARGET

    def __init__(self, config: CompletionConfig, vocab):
        super().__init__(config, vocab)
        self.config: CompletionConfig = config

    def needs(self) -> ModelNeeds:
        return ModelNeeds(decoder_lm=True)

    def features(self) -> dict[str, Feature]:
        return {
            ENCODER_INPUT: Feature("int32", "encoder"),
            DECODER_INPUT: Feature("int32", "decoder"),
            TARGET: Feature("int32", "decoder"),
        }

    def split_point(self, length: int, rng: np.random.Generator) -> int:
        """Residues the encoder sees: at least one, and at least one left for the decoder."""
        if length < 2:
            return length  # nothing to complete; the target is just </s>
        share = self.config.split if self.config.split_range is None else rng.uniform(*self.config.split_range)
        return int(np.clip(round(share * length), 1, length - 1))

    def make_example(self, protein: Protein, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tokens = np.asarray(protein.tokens, dtype=np.int32)
        cut = self.split_point(len(tokens), rng)
        rest = tokens[cut:]
        limit = self.config.max_target_length
        ends = limit is None or len(rest) <= limit
        target = np.concatenate([rest, [self.vocab.eos_id]]) if ends else rest[:limit]
        return {
            ENCODER_INPUT: np.asarray([*self.prefix_ids, *tokens[:cut], self.vocab.eos_id], dtype=np.int32),
            DECODER_INPUT: np.concatenate([[self.vocab.pad_id], target[:-1]]).astype(np.int32),
            TARGET: target.astype(np.int32),
        }

    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], xp: Any) -> LossOutput:
        targets = batch[TARGET]
        nll, correct = losses.token_nll(xp, outputs[DECODER_LOGITS], targets)
        in_target = targets != self.vocab.pad_id
        residue = self.vocab.is_residue(targets)
        ends = targets == self.vocab.eos_id
        return LossOutput(loss=losses.masked_sum(xp, nll, in_target), metrics={
            "completion_ce": (losses.masked_sum(xp, nll, residue), losses.count(xp, residue)),
            "next_residue_accuracy": (losses.masked_sum(xp, correct, residue), losses.count(xp, residue)),
            "end_accuracy": (losses.masked_sum(xp, correct, ends), losses.count(xp, ends)),
        })

    def eval_metrics(self) -> tuple[str, ...]:
        return ("completion_ce", "next_residue_accuracy")
