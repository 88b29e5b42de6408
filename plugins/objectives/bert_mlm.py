"""BERT/ESM-style masked language modelling on the encoder (the profile-prediction paper's MLM).

A share of residues (15 %) is selected; of those, 80 % become a mask token, 10 % a random standard
amino acid and 10 % stay as they are. The encoder LM head predicts the original residue at every
selected position, and only there::

    input   M K [MASK] Y V W I N </s>       (A masked; L replaced by W; N kept but selected)
    target  . . A      . . L . N .

Unlike sentinel demasking (``mlm``) this needs no decoder, so it trains encoder-only models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from plmforge.core import losses
from plmforge.core.objective import (
    ENCODER_INPUT,
    ENCODER_LOGITS,
    Feature,
    LossOutput,
    ModelNeeds,
    Objective,
    ObjectiveConfig,
    Protein,
)

TARGET = "mlm_target_ids"
#: The 20 standard amino acids are the first 20 residue ids (A L G V S R E D T I P K F Q N Y M H W C).
STANDARD_RESIDUES = 20


class BertMLMConfig(ObjectiveConfig):
    mask_probability: float = Field(0.15, gt=0.0, lt=1.0, description="Share of residues selected for prediction.")
    replace_with_mask: float = Field(0.8, ge=0.0, le=1.0, description="Of the selected: share replaced by mask_token.")
    replace_with_random: float = Field(
        0.1, ge=0.0, le=1.0, description="Of the selected: share replaced by a random standard amino acid "
                                         "(the rest stays unchanged).")
    mask_token: str = Field("[MASK]", description="The token that hides a residue (added to the vocabulary).")

    @model_validator(mode="after")
    def _shares_fit(self) -> BertMLMConfig:
        if self.replace_with_mask + self.replace_with_random > 1.0 + 1e-9:
            raise ValueError("replace_with_mask + replace_with_random must be at most 1")
        return self


class BertMaskedLM(Objective):
    """Predict selected residues from the encoder's own output (80/10/10 corruption)."""

    Config = BertMLMConfig
    conversion_default = ("encoder",)  # what `plmforge convert` trains an encoder checkpoint with
    target_feature = TARGET

    def __init__(self, config: BertMLMConfig, vocab):
        super().__init__(config, vocab)
        self.config: BertMLMConfig = config
        self._mask_id = vocab.token_id(config.mask_token)

    @classmethod
    def special_tokens(cls, config: BertMLMConfig) -> tuple[str, ...]:
        return (config.mask_token, *super().special_tokens(config))

    def needs(self) -> ModelNeeds:
        return ModelNeeds(encoder_lm=True)

    def features(self) -> dict[str, Feature]:
        return {ENCODER_INPUT: Feature("int32", "encoder"), TARGET: Feature("int32", "encoder")}

    def make_example(self, protein: Protein, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tokens = np.asarray(protein.tokens, dtype=np.int32)
        n = len(tokens)
        count = int(np.clip(round(self.config.mask_probability * n), 1, n)) if n else 0
        selected = np.zeros(n, dtype=bool)
        selected[rng.choice(n, size=count, replace=False)] = True
        fate = rng.random(n)  # one draw per residue: below p_mask -> mask, next p_random -> random residue
        to_mask = selected & (fate < self.config.replace_with_mask)
        to_random = selected & ~to_mask & (fate < self.config.replace_with_mask + self.config.replace_with_random)
        corrupted = tokens.copy()
        corrupted[to_mask] = self._mask_id
        corrupted[to_random] = rng.integers(self.vocab.residue_offset, self.vocab.residue_offset + STANDARD_RESIDUES,
                                            size=int(to_random.sum()))
        target = np.where(selected, tokens, self.vocab.pad_id).astype(np.int32)
        pad = [self.vocab.pad_id] * len(self.prefix_ids)
        return {
            ENCODER_INPUT: np.asarray([*self.prefix_ids, *corrupted, self.vocab.eos_id], dtype=np.int32),
            TARGET: np.asarray([*pad, *target, self.vocab.pad_id], dtype=np.int32),
        }

    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], xp: Any) -> LossOutput:
        targets = batch[TARGET]
        nll, correct = losses.token_nll(xp, outputs[ENCODER_LOGITS], targets)
        selected = targets != self.vocab.pad_id
        masked = selected & (batch[ENCODER_INPUT] == self._mask_id)
        total = losses.masked_sum(xp, nll, selected)
        return LossOutput(loss=total, metrics={
            "masked_residue_ce": (total, losses.count(xp, selected)),
            "masked_residue_accuracy": (losses.masked_sum(xp, correct, selected), losses.count(xp, selected)),
            "mask_token_accuracy": (losses.masked_sum(xp, correct, masked), losses.count(xp, masked)),
        })

    def eval_metrics(self) -> tuple[str, ...]:
        return ("masked_residue_ce", "masked_residue_accuracy")
