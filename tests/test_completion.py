"""Sequence completion ([S2S]) on real proteins: split points, target cropping, loss and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from plmforge.core.data.sources import load_builtin
from plmforge.core.objective import Protein
from plmforge.core.vocab import Vocab
from plmforge.plugins.objectives.completion import CompletionConfig, SequenceCompletion


@pytest.fixture(scope="module")
def proteins():
    validation = load_builtin("scl2205")["validation"]
    return [validation.tokens(i)[:300] for i in range(200)]


def make(**options) -> SequenceCompletion:
    config = CompletionConfig(**options)
    return SequenceCompletion(config, Vocab(SequenceCompletion.special_tokens(config)))


def test_fixed_split_rejoins_to_the_protein(proteins):
    objective = make()
    vocab = objective.vocab
    s2s = vocab.token_id("[S2S]")
    for i, tokens in enumerate(proteins):
        ex = objective.make_example(Protein(tokens), np.random.default_rng(i))
        encoder, target = ex["encoder_input_ids"], ex["decoder_target_ids"]
        assert encoder[0] == s2s and encoder[-1] == vocab.eos_id and target[-1] == vocab.eos_id
        prompt = encoder[1:-1]
        assert len(prompt) == round(0.5 * len(tokens))  # Ankh3's 50 % example
        np.testing.assert_array_equal(np.concatenate([prompt, target[:-1]]), tokens)
        np.testing.assert_array_equal(ex["decoder_input_ids"], np.concatenate([[vocab.pad_id], target[:-1]]))


def test_the_published_example():
    """Ankh3: `[S2S] MKAYVL` -> `INSRGP`."""
    objective = make()
    vocab = objective.vocab
    ex = objective.make_example(Protein(vocab.encode_residues("MKAYVLINSRGP")), np.random.default_rng(0))
    assert vocab.decode(ex["encoder_input_ids"]) == "[S2S]MKAYVL</s>"
    assert vocab.decode(ex["decoder_target_ids"]) == "INSRGP</s>"


def test_split_range_draws_per_example_and_keeps_both_sides(proteins):
    objective = make(split_range=(0.2, 0.8))
    shares = []
    for i, tokens in enumerate(proteins):
        ex = objective.make_example(Protein(tokens), np.random.default_rng(i))
        seen = len(ex["encoder_input_ids"]) - 2
        assert 1 <= seen <= len(tokens) - 1
        shares.append(seen / len(tokens))
    assert 0.19 <= min(shares) < 0.3 and 0.7 < max(shares) <= 0.81
    assert abs(np.mean(shares) - 0.5) < 0.05
    again = objective.make_example(Protein(proteins[3]), np.random.default_rng(3))
    first = objective.make_example(Protein(proteins[3]), np.random.default_rng(3))
    np.testing.assert_array_equal(again["encoder_input_ids"], first["encoder_input_ids"])


def test_target_is_cropped_and_then_has_no_end(proteins):
    objective = make(max_target_length=16)
    vocab = objective.vocab
    for i, tokens in enumerate(proteins[:50]):
        ex = objective.make_example(Protein(tokens), np.random.default_rng(i))
        target = ex["decoder_target_ids"]
        rest = len(tokens) - (len(ex["encoder_input_ids"]) - 2)
        if rest <= 16:
            assert target[-1] == vocab.eos_id and len(target) == rest + 1
        else:
            assert len(target) == 16 and vocab.eos_id not in target


def test_config_errors_name_the_problem():
    with pytest.raises(ValidationError, match="split_range"):
        CompletionConfig(split_range=(0.8, 0.2))
    with pytest.raises(ValidationError):
        CompletionConfig(split=1.0)


def test_loss_and_metrics_count_residues_and_end():
    objective = make()
    vocab = objective.vocab
    targets = torch.tensor([[5, 6, vocab.eos_id, 0], [7, 8, 9, 10]])  # second row: cropped, no </s>
    logits = torch.full((2, 4, len(vocab)), -10.0)
    perfect = targets.clone()
    perfect[1, 3] = 3  # one wrong prediction
    logits.scatter_(-1, perfect.unsqueeze(-1), 10.0)
    import array_api_compat.torch as xp

    out = objective.loss({"decoder_logits": logits}, {"decoder_target_ids": targets}, xp)
    acc_sum, acc_count = out.metrics["next_residue_accuracy"]
    assert acc_count.item() == 6 and acc_sum.item() == 5
    end_sum, end_count = out.metrics["end_accuracy"]
    assert end_count.item() == 1 and end_sum.item() == 1
    assert objective.weight({"decoder_target_ids": targets.numpy()}) == 7
    assert out.loss.item() > 19  # the one miss costs about 20 nats; hits cost ~0
