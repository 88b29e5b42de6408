"""The multi-probability sentinel MLM on real proteins: mask rates, structure, metrics."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from plmforge.core.data.sources import load_builtin
from plmforge.core.objective import Protein
from plmforge.core.vocab import NUM_SENTINELS, Vocab
from plmforge.plugins.objectives.mlm import MaskedLanguageModeling, MaskedLMConfig

PROBABILITIES = [0.15, 0.2, 0.3]


@pytest.fixture(scope="module")
def proteins():
    validation = load_builtin("scl2205")["validation"]
    return [validation.tokens(i)[:512] for i in range(400)]


def make(vocab: Vocab | None = None, **options) -> MaskedLanguageModeling:
    config = MaskedLMConfig(**options)
    vocab = vocab or Vocab(MaskedLanguageModeling.special_tokens(config))
    return MaskedLanguageModeling(config, vocab)


def reconstruct(objective: MaskedLanguageModeling, example: dict) -> np.ndarray:
    """Undo the corruption: put each sentinel's target residues back in the encoder sequence."""
    vocab = objective.vocab
    target = example["decoder_target_ids"]
    assert target[-1] == vocab.eos_id
    spans: dict[int, list[int]] = {}
    current = None
    for token in target[:-1]:
        if vocab.is_sentinel(np.array(token)):
            current = int(token)
            spans[current] = []
        else:
            spans[current].append(int(token))
    out = []
    encoder = example["encoder_input_ids"]
    start = 1 if objective.config.prefix else 0
    assert encoder[-1] == vocab.eos_id
    for token in encoder[start:-1]:
        out.extend(spans.pop(int(token)) if vocab.is_sentinel(np.array(token)) else [int(token)])
    assert not spans, "every sentinel of the target appears in the input"
    return np.asarray(out)


def test_mask_rate_per_probability(proteins):
    objective = make(probabilities=PROBABILITIES)
    masked: dict[int, list[float]] = {k: [] for k in range(len(PROBABILITIES))}
    for i, tokens in enumerate(proteins):
        example = objective.make_example(Protein(tokens), np.random.default_rng([1, i]))
        hidden = int(objective.vocab.is_residue(example["decoder_target_ids"]).sum())
        k = int(example["mask_probability_index"])
        masked[k].append(hidden / len(tokens))
        expected = min(round(PROBABILITIES[k] * len(tokens)), NUM_SENTINELS)
        assert hidden == expected
    counts = [len(v) for v in masked.values()]
    assert min(counts) > 100  # uniform choice over three probabilities, 400 draws
    for k, p in enumerate(PROBABILITIES):
        assert abs(np.mean(masked[k]) - p) < 0.01 or p * 512 > NUM_SENTINELS


def test_probability_weights_steer_the_choice(proteins):
    objective = make(probabilities=[0.1, 0.4], probability_weights=[3, 1])
    drawn = Counter(int(objective.make_example(Protein(t), np.random.default_rng([2, i]))["mask_probability_index"])
                    for i, t in enumerate(proteins))
    assert 0.68 < drawn[0] / len(proteins) < 0.82


@pytest.mark.parametrize("options", [dict(), dict(prefix="[NLU]"), dict(mean_span_length=3.0)])
def test_sentinel_structure_round_trips(proteins, options):
    objective = make(**options)
    vocab = objective.vocab
    for i, tokens in enumerate(proteins[:150]):
        example = objective.make_example(Protein(tokens), np.random.default_rng([3, i]))
        np.testing.assert_array_equal(reconstruct(objective, example), tokens)
        target, decoder_input = example["decoder_target_ids"], example["decoder_input_ids"]
        np.testing.assert_array_equal(decoder_input, np.concatenate([[vocab.pad_id], target[:-1]]))
        sentinels = target[vocab.is_sentinel(target)]
        np.testing.assert_array_equal(sentinels, vocab.sentinel_ids(len(sentinels)))  # <extra_id_0>=143 first
        assert target[0] == vocab.sentinel_id(0)
        if options.get("prefix"):
            assert example["encoder_input_ids"][0] == vocab.token_id("[NLU]") == 144
        if "mean_span_length" not in options:  # 1-gram: each masked residue has its own sentinel
            assert len(sentinels) == int(vocab.is_residue(target).sum())


def test_span_corruption_has_the_configured_mean_span(proteins):
    objective = make(probabilities=[0.3], mean_span_length=3.0)
    spans, hidden = 0, 0
    for i, tokens in enumerate(proteins):
        target = objective.make_example(Protein(tokens), np.random.default_rng([4, i]))["decoder_target_ids"]
        spans += int(objective.vocab.is_sentinel(target).sum())
        hidden += int(objective.vocab.is_residue(target).sum())
    assert 2.7 < hidden / spans < 3.3


def test_sentinels_are_capped_for_long_proteins():
    objective = make(probabilities=[0.3])
    tokens = Vocab().encode_residues("ACDEFGHIKLMNPQRSTVWY" * 30)  # 600 residues: 180 > 116 sentinels
    example = objective.make_example(Protein(tokens), np.random.default_rng(0))
    assert int(objective.vocab.is_sentinel(example["decoder_target_ids"]).sum()) == NUM_SENTINELS


def test_examples_are_a_function_of_the_generator(proteins):
    objective = make()
    a = objective.make_example(Protein(proteins[0]), np.random.default_rng([9, 9]))
    b = objective.make_example(Protein(proteins[0]), np.random.default_rng([9, 9]))
    c = objective.make_example(Protein(proteins[0]), np.random.default_rng([9, 10]))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["encoder_input_ids"], c["encoder_input_ids"])


def test_loss_and_metrics_against_hand_computed_values(proteins):
    import array_api_compat.torch as xp

    from plmforge.core.data.batching import collate

    objective = make(probabilities=PROBABILITIES)
    examples = [objective.make_example(Protein(t), np.random.default_rng([5, i])) for i, t in enumerate(proteins[:8])]
    batch = collate(examples, objective.features())
    tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
    targets = tensors["decoder_target_ids"]
    vocab_size = len(objective.vocab)
    # uniform logits: every target token costs ln(V); accuracy is whatever argmax (id 0) hits: nothing
    uniform = torch.zeros(*targets.shape, vocab_size)
    out = objective.loss({"decoder_logits": uniform}, tensors, xp)
    n_tokens = objective.weight(batch)
    assert n_tokens == int((batch["decoder_target_ids"] != 0).sum())
    assert math.isclose(out.loss.item(), n_tokens * math.log(vocab_size), rel_tol=1e-5)
    assert out.metrics["masked_residue_accuracy"][0].item() == 0
    # perfect logits: loss ~0, all accuracies 1, per-probability counts add up to the total
    perfect = torch.nn.functional.one_hot(targets.long(), vocab_size).float() * 50
    out = objective.loss({"decoder_logits": perfect}, tensors, xp)
    assert out.loss.item() < 1e-6 * n_tokens
    correct, count = (v.item() for v in out.metrics["masked_residue_accuracy"])
    assert correct == count == int(objective.vocab.is_residue(batch["decoder_target_ids"]).sum())
    per_p = sum(out.metrics[f"masked_residue_accuracy/p{p:g}"][1].item() for p in PROBABILITIES)
    assert per_p == count
    hidden, total = (v.item() for v in out.metrics["mask_rate"])
    visible = int(objective.vocab.is_residue(batch["encoder_input_ids"]).sum())
    assert hidden == count and total == count + visible


def test_config_errors_are_explicit():
    with pytest.raises(ValueError, match="probability_weights has 1 entries but probabilities has 2"):
        MaskedLMConfig(probabilities=[0.1, 0.2], probability_weights=[1])
    with pytest.raises(ValueError, match=r"probabilities\.1\n.*greater than 0"):
        MaskedLMConfig(probabilities=[0.1, 0])
