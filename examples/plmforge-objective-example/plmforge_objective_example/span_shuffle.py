"""Span-shuffle detection: shuffle residues inside random spans, predict per residue which moved.

The encoder sees the protein with a few short spans shuffled in place (the residues of each span
permuted among themselves)::

    original   M K T A Y I A K Q R Q I S F V K
    input      M K T A I Y A K Q R Q F V S I K      spans 4..5 and 11..14 shuffled
    labels     0 0 0 0 1 1 0 0 0 0 0 1 1 1 1 0      1 = a different residue than before

Composition is unchanged, so the only signal is local order: the model must know which residue
orders are plausible. A linear per-residue head of width 2 over the encoder classifies each position
(``ModelNeeds(per_residue_heads=...)``), so the objective works on encoder-only and
encoder-decoder models alike. A residue that lands on an identical one (``A A`` swapped) counts as
not moved: nothing in the input could tell.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from plmforge.core import losses
from plmforge.core.objective import ENCODER_INPUT, Feature, LossOutput, ModelNeeds, Objective, ObjectiveConfig, Protein
from pydantic import Field

HEAD = "span_shuffle"
LABELS = "moved_labels"
IGNORE = -1  # label of </s> and padding: not scored


class SpanShuffleConfig(ObjectiveConfig):
    shuffled_fraction: float = Field(
        0.15, gt=0.0, lt=1.0, description="Share of each protein's residues that lie inside shuffled spans.")
    mean_span_length: float = Field(
        4.0, ge=2.0, description="Average length of a shuffled span in residues (at least 2: one residue cannot move).")


class SpanShuffleDetection(Objective):
    """Per-residue detection of residues moved by in-span shuffling."""

    Config = SpanShuffleConfig

    def __init__(self, config: SpanShuffleConfig, vocab: Any):
        super().__init__(config, vocab)
        self.config: SpanShuffleConfig = config

    def needs(self) -> ModelNeeds:
        return ModelNeeds(per_residue_heads={HEAD: 2})

    def features(self) -> dict[str, Feature]:
        return {ENCODER_INPUT: Feature("int32", "encoder"),
                LABELS: Feature("int32", "encoder", pad_value=IGNORE)}

    # -- example side (numpy) -----------------------------------------------------------------------
    def make_example(self, protein: Protein, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tokens = np.asarray(protein.tokens, dtype=np.int32)
        shuffled = tokens.copy()
        for start, end in self.spans(len(tokens), rng):
            order = rng.permutation(end - start)
            if np.array_equal(order, np.arange(end - start)):
                order = np.roll(order, 1)  # a span that did not move is no example of moving
            shuffled[start:end] = tokens[start:end][order]
        labels = (shuffled != tokens).astype(np.int32)
        before = self.prefix_ids  # the spec's task prefix token (the option every objective has), if set
        return {ENCODER_INPUT: np.asarray([*before, *shuffled, self.vocab.eos_id], dtype=np.int32),
                LABELS: np.asarray([IGNORE] * len(before) + [*labels, IGNORE], dtype=np.int32)}

    def spans(self, length: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        """Non-overlapping [start, end) spans covering round(fraction · length) residues, each >= 2 long."""
        covered = int(round(self.config.shuffled_fraction * length))
        if covered < 2:
            return []
        count = max(1, min(int(round(covered / self.config.mean_span_length)), covered // 2))
        span_lengths = 2 + rng.multinomial(covered - 2 * count, np.full(count, 1.0 / count))
        gaps = rng.multinomial(length - covered, np.full(count + 1, 1.0 / (count + 1)))
        starts = np.cumsum(gaps[:-1]) + np.concatenate([[0], np.cumsum(span_lengths)[:-1]])
        return [(int(s), int(s + n)) for s, n in zip(starts, span_lengths)]

    def weight(self, batch: Mapping[str, np.ndarray]) -> float:
        return float(np.count_nonzero(batch[LABELS] != IGNORE))

    # -- loss side (array API: the same code runs on PyTorch and JAX) ----------------------------------
    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], xp: Any) -> LossOutput:
        labels = batch[LABELS]
        logits = outputs[HEAD]
        nll, correct = losses.token_nll(xp, logits, labels)
        scored = labels != IGNORE
        moved = labels == 1
        flagged = (xp.argmax(logits, axis=-1) == 1) & scored
        return LossOutput(loss=losses.masked_sum(xp, nll, scored), metrics={
            "accuracy": (losses.masked_sum(xp, correct, scored), losses.count(xp, scored)),
            "moved_recall": (losses.count(xp, flagged & moved), losses.count(xp, moved)),
            "moved_precision": (losses.count(xp, flagged & moved), losses.count(xp, flagged)),
            "moved_rate": (losses.count(xp, moved), losses.count(xp, scored)),
        })

    def eval_metrics(self) -> tuple[str, ...]:
        return ("accuracy", "moved_recall", "moved_precision")
