"""The span-shuffle objective: plmforge's conformance check, then what is special about it."""

from __future__ import annotations

import numpy as np
import pytest
from plmforge.core.objective import ENCODER_INPUT, Protein
from plmforge.core.registry import Registry
from plmforge.testing import build_objective, check_objective, sample_batch

from plmforge_objective_example.span_shuffle import HEAD, IGNORE, LABELS, SpanShuffleDetection


def test_it_keeps_the_objective_contract_on_every_installed_backend(plmforge_check_objective, plmforge_backends):
    report = plmforge_check_objective(SpanShuffleDetection)
    assert set(report.losses) == set(plmforge_backends)  # trained a step on each; same loss on each


def test_it_also_works_encoder_only_with_long_spans(plmforge_proteins, plmforge_backends):
    check_objective(SpanShuffleDetection, {"shuffled_fraction": 0.3, "mean_span_length": 8},
                    model={"num_decoder_layers": 0}, backends=plmforge_backends[:1], proteins=plmforge_proteins)


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_shuffling_permutes_residues_inside_spans_and_labels_what_moved(plmforge_proteins, fraction):
    objective = build_objective(SpanShuffleDetection, {"shuffled_fraction": fraction})
    for i in range(len(plmforge_proteins)):
        tokens = plmforge_proteins.tokens(i)[:100]
        rng = np.random.default_rng(i)
        spans = objective.spans(len(tokens), np.random.default_rng(i))
        example = objective.make_example(Protein(tokens=tokens), rng)
        shuffled, labels = example[ENCODER_INPUT], example[LABELS]
        assert shuffled[-1] == objective.vocab.eos_id and labels[-1] == IGNORE
        np.testing.assert_array_equal(labels[:-1], shuffled[:-1] != tokens)
        assert sum(end - start for start, end in spans) == round(fraction * len(tokens))
        inside = np.zeros(len(tokens), bool)
        for start, end in spans:
            assert end - start >= 2 and not inside[start:end].any()  # at least 2 long, no overlaps
            inside[start:end] = True
            assert sorted(shuffled[start:end]) == sorted(tokens[start:end])  # a permutation of the span
        np.testing.assert_array_equal(shuffled[:-1][~inside], tokens[~inside])  # nothing else moves


def test_the_loss_is_low_for_a_head_that_sees_the_labels(plmforge_proteins):
    objective = build_objective(SpanShuffleDetection)
    batch = sample_batch(objective, plmforge_proteins)
    labels = batch.arrays[LABELS]
    perfect = np.stack([np.where(labels == 1, -8.0, 8.0), np.where(labels == 1, 8.0, -8.0)], -1).astype(np.float32)
    out = objective.loss({HEAD: perfect}, batch.arrays, np)  # numpy is an array-API namespace too
    assert float(out.loss) / batch.weight < 1e-6
    recall, moved = out.metrics["moved_recall"]
    assert float(recall) == float(moved) == np.count_nonzero(labels == 1) > 0
    assert batch.weight == np.count_nonzero(labels != IGNORE)


def test_plmforge_finds_it_through_the_entry_point():
    registry = Registry()
    info = registry.info("objective", "span_shuffle")
    assert info.distribution == "plmforge-objective-example"
    assert registry.load("objective", "span_shuffle") is SpanShuffleDetection
