"""Multi-probability masked language modelling with sentinels (Ankh, Ankh3 ``[NLU]``).

Ankh's "1-gram partial demasking": a fraction of residues is replaced, each by its own sentinel,
and the decoder writes ``sentinel residue`` pairs::

    input   A B <extra_id_0> D E F <extra_id_1> </s>
    target  <extra_id_0> C <extra_id_1> G </s>

Ankh3 varies the masking probability between examples; here each example draws it from
``probabilities`` (uniformly, or by ``probability_weights``). ``mean_span_length > 1`` switches to
T5 span corruption: contiguous spans share one sentinel. At most 116 spans fit the sentinel range,
so very long crops at high rates are capped (the logged ``mask_rate`` shows the real rate).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

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
from plmforge.core.vocab import NUM_SENTINELS

TARGET = "decoder_target_ids"
PROBABILITY_INDEX = "mask_probability_index"
Probability = Annotated[float, Field(gt=0.0, lt=1.0)]


class MaskedLMConfig(ObjectiveConfig):
    probabilities: list[Probability] = Field(
        default_factory=lambda: [0.15, 0.2, 0.3],
        min_length=1,
        description="Masking probabilities; each example draws one (Ankh3 multiple masking probabilities).",
    )
    probability_weights: list[float] | None = Field(
        None, description="Relative chance of each probability; uniform when omitted.")
    mean_span_length: float = Field(
        1.0, ge=1.0,
        description="1 = Ankh 1-gram demasking (each masked residue its own sentinel); >1 = T5 span corruption.")

    @model_validator(mode="after")
    def _weights_match(self) -> MaskedLMConfig:
        w = self.probability_weights
        if w is not None:
            if len(w) != len(self.probabilities):
                raise ValueError(
                    f"probability_weights has {len(w)} entries but probabilities has {len(self.probabilities)}")
            if any(x < 0 for x in w) or sum(w) <= 0:
                raise ValueError("probability_weights must be non-negative and not all zero")
        return self


class MaskedLanguageModeling(Objective):
    """Sentinel demasking with a masking probability drawn per example."""

    Config = MaskedLMConfig
    conversion_default = ("encoder-decoder",)  # what `plmforge convert` trains an encoder-decoder checkpoint with
    target_feature = TARGET

    def __init__(self, config: MaskedLMConfig, vocab):
        super().__init__(config, vocab)
        self.config: MaskedLMConfig = config
        w = np.asarray(config.probability_weights or [1.0] * len(config.probabilities), dtype=np.float64)
        self._choice_p = w / w.sum()

    def needs(self) -> ModelNeeds:
        return ModelNeeds(decoder_lm=True)

    def features(self) -> dict[str, Feature]:
        return {
            ENCODER_INPUT: Feature("int32", "encoder"),
            DECODER_INPUT: Feature("int32", "decoder"),
            TARGET: Feature("int32", "decoder"),
            PROBABILITY_INDEX: Feature("int32", None),
        }

    # -- example side (numpy) ---------------------------------------------------------------------
    def make_example(self, protein: Protein, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tokens = np.asarray(protein.tokens, dtype=np.int32)
        k = int(rng.choice(len(self.config.probabilities), p=self._choice_p))
        noise = self._noise_mask(len(tokens), self.config.probabilities[k], rng)
        encoder, target = self._corrupt(tokens, noise)
        if self.prefix_ids:
            encoder = np.concatenate([self.prefix_ids, encoder]).astype(np.int32)
        decoder_input = np.concatenate([[self.vocab.pad_id], target[:-1]]).astype(np.int32)
        return {
            ENCODER_INPUT: encoder,
            DECODER_INPUT: decoder_input,
            TARGET: target,
            PROBABILITY_INDEX: np.asarray(k, dtype=np.int32),
        }

    def _noise_mask(self, length: int, probability: float, rng: np.random.Generator) -> np.ndarray:
        """Boolean mask of residues to hide: exactly round(p·L) of them (at least one)."""
        num_noise = int(np.clip(round(probability * length), 1, max(length - 1, 1)))
        mask = np.zeros(length, dtype=bool)
        if self.config.mean_span_length <= 1.0:
            num_noise = min(num_noise, NUM_SENTINELS)
            mask[rng.choice(length, size=num_noise, replace=False)] = True
            return mask
        num_spans = int(np.clip(round(num_noise / self.config.mean_span_length), 1, NUM_SENTINELS))
        num_spans = min(num_spans, num_noise, length - num_noise)
        noise_lengths = _random_segmentation(num_noise, num_spans, rng)
        keep_lengths = _random_segmentation(length - num_noise, num_spans, rng)
        # T5 interleaving: keep, noise, keep, noise, ... (each span preceded by kept residues)
        starts = np.cumsum(np.stack([keep_lengths, noise_lengths], axis=1).reshape(-1))
        for begin, end in zip(starts[0::2], starts[1::2]):
            mask[begin:end] = True
        return mask

    def _corrupt(self, tokens: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Replace each noise span by one sentinel; the target lists sentinel + hidden residues."""
        eos = np.asarray([self.vocab.eos_id], dtype=np.int32)
        if self.config.mean_span_length <= 1.0:
            span_start = noise  # 1-gram: every masked residue is its own span
        else:
            span_start = noise & ~np.concatenate([[False], noise[:-1]])
        span_index = np.cumsum(span_start) - 1
        sentinels = self.vocab.sentinel_ids(int(span_start.sum()))
        encoder = tokens.copy()
        encoder[span_start] = sentinels[span_index[span_start]]
        encoder = encoder[~noise | span_start]
        # target: for each noise position, emit the sentinel first when it starts a span
        noise_positions = np.flatnonzero(noise)
        starts_here = span_start[noise_positions]
        target = np.empty(len(noise_positions) + int(starts_here.sum()), dtype=np.int32)
        out_pos = np.arange(len(noise_positions)) + np.cumsum(starts_here)
        target[out_pos] = tokens[noise_positions]
        target[out_pos[starts_here] - 1] = sentinels[span_index[noise_positions[starts_here]]]
        return np.concatenate([encoder, eos]), np.concatenate([target, eos])

    # -- loss side (array API) -----------------------------------------------------------------
    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], xp: Any) -> LossOutput:
        targets = batch[TARGET]
        nll, correct = losses.token_nll(xp, outputs[DECODER_LOGITS], targets)
        in_target = targets != self.vocab.pad_id
        residue = self.vocab.is_residue(targets)
        hidden, visible = losses.count(xp, residue), losses.count(xp, self.vocab.is_residue(batch[ENCODER_INPUT]))
        total = losses.masked_sum(xp, nll, in_target)
        metrics = {
            "mask_rate": (hidden, hidden + visible),  # the real rate, after the sentinel cap
            "token_accuracy": (losses.masked_sum(xp, correct, in_target), losses.count(xp, in_target)),
            "masked_residue_ce": (losses.masked_sum(xp, nll, residue), losses.count(xp, residue)),
            "masked_residue_accuracy": (losses.masked_sum(xp, correct, residue), losses.count(xp, residue)),
        }
        # per masking probability: per-example sums, then select examples drawn with probability k
        correct_per_example = xp.sum(xp.astype(correct & residue, xp.float32), axis=1)
        nll_per_example = xp.sum(xp.where(residue, nll, xp.zeros_like(nll)), axis=1)
        residues_per_example = xp.sum(xp.astype(residue, xp.float32), axis=1)
        for k, p in enumerate(self.config.probabilities):
            chosen = batch[PROBABILITY_INDEX] == k
            n = losses.masked_sum(xp, residues_per_example, chosen)
            metrics[f"masked_residue_accuracy/p{p:g}"] = (losses.masked_sum(xp, correct_per_example, chosen), n)
            metrics[f"masked_residue_ce/p{p:g}"] = (losses.masked_sum(xp, nll_per_example, chosen), n)
        return LossOutput(loss=total, metrics=metrics)

    def eval_metrics(self) -> tuple[str, ...]:
        return ("masked_residue_ce", "masked_residue_accuracy")


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``num_items`` into ``num_segments`` positive lengths uniformly at random (as in T5)."""
    if num_segments <= 1:
        return np.asarray([num_items], dtype=np.int64)
    cuts = np.sort(rng.choice(np.arange(1, num_items), size=num_segments - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [num_items]]))
