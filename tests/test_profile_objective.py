"""Profile prediction on real Pfam seed alignments: targets follow the crop window, the loss is KL on
profiled positions only, and training runs end to end on both backends."""

from __future__ import annotations

from pathlib import Path

import array_api_compat.torch as xp
import numpy as np
import pytest
import torch
from helpers import tiny_spec_dict

from plmforge.core.data.batching import BatchPlanner
from plmforge.core.data.profiles import build_profile_set
from plmforge.core.data.proteins import ProteinSet
from plmforge.core.data.sources import load_builtin
from plmforge.core.data.stream import ExampleStream
from plmforge.core.vocab import Vocab
from plmforge.plugins.objectives.profile import PROFILE, PROFILE_MASK, ProfileConfig, ProfilePrediction

PFAM = Path(__file__).parent / "data" / "pfam"


def make(**options) -> ProfilePrediction:
    config = ProfileConfig(**{"msas": [str(PFAM)], **options})
    return ProfilePrediction(config, Vocab(ProfilePrediction.special_tokens(config)))


@pytest.fixture(scope="module")
def pfam_proteins() -> ProteinSet:
    """The Pfam queries plus real corpus proteins that have no MSA here."""
    profiles = build_profile_set([str(PFAM)])
    corpus = load_builtin("scl2205")["validation"]
    names = [*profiles.names, *corpus.names[:6]]
    sequences = [*profiles.sequences(), *(corpus.sequence(i) for i in range(6))]
    return ProteinSet.from_sequences(names, sequences)


def test_prepare_keeps_proteins_with_profiles_or_all(pfam_proteins):
    source = make().prepare(pfam_proteins, "train")
    assert len(source.proteins) == 4 and set(source.proteins.names) == {"Caudal_act", "RRM_1", "fn3", "globins4"}
    everything = make(proteins="all").prepare(pfam_proteins, "train")
    assert len(everything.proteins) == len(pfam_proteins)
    without = everything.extras(len(pfam_proteins) - 1)  # a corpus protein: no MSA, nothing to learn
    assert without[PROFILE_MASK].sum() == 0 and without[PROFILE].shape == (len(pfam_proteins.tokens(-1)), 20)


def test_targets_follow_the_crop_window_and_skip_prefix_and_end(pfam_proteins):
    objective = make(prefix="[NLU]")
    profiles = objective.profile_set()
    source = objective.prepare(pfam_proteins, "train")
    stream = ExampleStream(objective, source, BatchPlanner(max_length=40, tokens=4096), seed=3)
    seen = 0
    for _ in range(4):
        batch = stream.next()
        for row in range(batch.arrays[PROFILE].shape[0]):
            ids = batch.arrays["encoder_input_ids"][row]
            length = int((ids != 0).sum())
            assert ids[0] == objective.vocab.token_id("[NLU]") and ids[length - 1] == objective.vocab.eos_id
            mask = batch.arrays[PROFILE_MASK][row]
            assert mask[0] == 0 and mask[length - 1:].sum() == 0  # prefix, </s> and padding excluded
            window = objective.vocab.decode_residues(ids[1:length - 1])
            full = next(s for s in profiles.sequences() if window in s)
            start = full.index(window)  # a random 40-residue window of a longer protein
            np.testing.assert_array_equal(batch.arrays[PROFILE][row, 1:length - 1],
                                          profiles.get(full)[0][start:start + len(window)])
            seen += 1
    assert seen >= 4


def test_loss_is_kl_on_profiled_positions():
    objective = make()
    rng = np.random.default_rng(0)
    target = rng.dirichlet(np.ones(20), size=(2, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0]], np.float32)
    logits = torch.from_numpy(rng.normal(size=(2, 5, 20)).astype(np.float32))
    batch = {PROFILE: torch.from_numpy(target), PROFILE_MASK: torch.from_numpy(mask)}
    out = objective.loss({"profile": logits}, batch, xp)
    logq = torch.log_softmax(logits, -1).numpy()
    kl = (target * (np.log(target) - logq)).sum(-1)
    assert out.loss.item() == pytest.approx(float((kl * mask).sum()), rel=1e-5)
    assert out.metrics["profile_kl"][1].item() == 6 and objective.weight({PROFILE_MASK: mask}) == 6
    perfect = objective.loss({"profile": torch.log(torch.from_numpy(target))}, batch, xp)
    assert abs(perfect.loss.item()) < 1e-5  # the head that outputs the profile has zero loss
    assert perfect.metrics["top_residue_agreement"][0].item() == 6


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_profile_training_on_pfam_seeds(tmp_path, backend):
    from plmforge.core.run import train
    from plmforge.core.spec import validate_spec

    profiles = build_profile_set([str(PFAM)])
    fasta = tmp_path / "queries.fasta"
    fasta.write_text("".join(f">{n}\n{s}\n" for n, s in zip(profiles.names, profiles.sequences())))
    raw = tiny_spec_dict(tmp_path, steps=30, eval_every=30, checkpoint_every=30, log_every=10,
                         optimizer={"name": "adamw", "lr": 1e-2})
    raw["model"]["num_decoder_layers"] = 0  # encoder only: the profile head needs no decoder
    raw["data"] = {"source": str(fasta), "validation_source": str(fasta), "max_length": 64}
    raw["backend"] = {"name": backend}
    raw["objectives"] = [{"name": "profile", "msas": [str(PFAM)]}]
    raw["tracking"]["enabled"] = False
    result = train(validate_spec(raw), show_progress=False)
    kl = [metrics["train/profile/profile_kl"] for _, metrics in result.history]
    assert kl[-1] < 0.7 * kl[0]  # it fits the four profiles
    assert result.eval_metrics["val/profile/profile_kl"] < kl[0]
    assert result.data_report == {**result.data_report, "train.proteins": 4}
