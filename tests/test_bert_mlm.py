"""BERT/ESM-style encoder MLM on real proteins: 15 % selected, 80/10/10 corruption, loss on selected only."""

from __future__ import annotations

import array_api_compat.torch as xp
import numpy as np
import pytest
import torch

from plmforge.core.data.sources import load_builtin
from plmforge.core.objective import Protein
from plmforge.core.vocab import Vocab
from plmforge.plugins.objectives.bert_mlm import BertMaskedLM, BertMLMConfig


@pytest.fixture(scope="module")
def proteins():
    validation = load_builtin("scl2205")["validation"]
    return [validation.tokens(i)[:512] for i in range(300)]


def make(**options) -> BertMaskedLM:
    config = BertMLMConfig(**options)
    return BertMaskedLM(config, Vocab(BertMaskedLM.special_tokens(config)))


def test_selection_and_replacement_shares(proteins):
    objective = make()
    vocab = objective.vocab
    mask_id = vocab.token_id("[MASK]")
    selected = masked = randomised = kept = residues = 0
    for i, tokens in enumerate(proteins):
        ex = objective.make_example(Protein(tokens), np.random.default_rng(i))
        encoder, target = ex["encoder_input_ids"], ex["mlm_target_ids"]
        assert encoder.shape == target.shape == (len(tokens) + 1,) and encoder[-1] == vocab.eos_id
        chosen = target != vocab.pad_id
        np.testing.assert_array_equal(target[chosen], tokens[chosen[:-1]])  # targets are the originals
        np.testing.assert_array_equal(encoder[:-1][~chosen[:-1]], tokens[~chosen[:-1]])  # the rest untouched
        assert chosen.sum() == max(1, round(0.15 * len(tokens)))
        residues += len(tokens)
        selected += chosen.sum()
        masked += (encoder[chosen] == mask_id).sum()
        same = encoder[chosen] == target[chosen]
        kept += same.sum()
        changed = chosen & (encoder != mask_id) & (encoder != target)
        randomised += changed.sum()
        assert vocab.is_residue(encoder[changed]).all() and (encoder[changed] < 23).all()  # standard residues
    assert abs(selected / residues - 0.15) < 0.005
    assert abs(masked / selected - 0.8) < 0.02
    # a random residue equals the original 1 time in 20, so 'kept' is 10 % + 0.5 %
    assert abs(randomised / selected - 0.095) < 0.015 and abs(kept / selected - 0.105) < 0.015


def test_prefix_shifts_targets():
    objective = make(prefix="[NLU]")
    vocab = objective.vocab
    tokens = vocab.encode_residues("MKAYVLINSRGPWQ")
    ex = objective.make_example(Protein(tokens), np.random.default_rng(1))
    assert ex["encoder_input_ids"][0] == vocab.token_id("[NLU]") and ex["mlm_target_ids"][0] == vocab.pad_id
    chosen = ex["mlm_target_ids"] != vocab.pad_id
    np.testing.assert_array_equal(ex["mlm_target_ids"][chosen], tokens[chosen[1:-1]])


def test_loss_only_on_selected_positions():
    objective = make()
    vocab = objective.vocab
    targets = torch.tensor([[0, 5, 0, 7, 0]])
    inputs = torch.tensor([[4, vocab.token_id("[MASK]"), 6, 7, 1]])
    logits = torch.zeros((1, 5, len(vocab)))
    logits[0, 1, 5] = 9.0  # right at the masked position
    logits[0, 3, 8] = 9.0  # wrong at the kept-but-selected position
    logits[0, 0, 0] = -50.0  # unselected positions never count
    out = objective.loss({"encoder_logits": logits}, {"encoder_input_ids": inputs, "mlm_target_ids": targets}, xp)
    assert out.metrics["masked_residue_accuracy"][0].item() == 1
    assert out.metrics["masked_residue_accuracy"][1].item() == 2
    assert out.metrics["mask_token_accuracy"][0].item() == 1 and out.metrics["mask_token_accuracy"][1].item() == 1
    logp = torch.log_softmax(logits[0], -1)
    assert out.loss.item() == pytest.approx(-(logp[1, 5] + logp[3, 7]).item(), rel=1e-5)


def test_shares_must_fit():
    with pytest.raises(ValueError, match="at most 1"):
        BertMLMConfig(replace_with_mask=0.8, replace_with_random=0.3)
