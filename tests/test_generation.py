"""Completing proteins: the search algorithms on a known distribution, then real checkpoints on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import tiny_spec_dict

from plmforge.core.cli import main
from plmforge.core.generation import GenerationConfig, complete, identity
from plmforge.core.vocab import Vocab

VOCAB = Vocab()
A, L, G = (VOCAB.token_id(t) for t in "ALG")
EOS = VOCAB.eos_id


class TableDecoder:
    """A decoder whose next-token distribution depends only on the previous token (a Markov chain).

    Enough to know the exact answer of each search: after the start token, A is likelier than L, but
    everything after A is uncertain while L is followed by a sure </s>.
    """

    def __init__(self):
        self.calls = 0
        self.table = {0: {A: 0.6, L: 0.4}, A: {G: 0.34, L: 0.33, EOS: 0.33}, L: {EOS: 1.0}, G: {EOS: 1.0}}

    def decoder_logits(self, encoder_ids: np.ndarray, decoder_ids: np.ndarray) -> np.ndarray:
        self.calls += 1
        logits = np.full((*decoder_ids.shape, len(VOCAB)), -30.0, dtype=np.float32)
        for row in range(decoder_ids.shape[0]):
            for pos in range(decoder_ids.shape[1]):
                for token, p in self.table.get(int(decoder_ids[row, pos]), {EOS: 1.0}).items():
                    logits[row, pos, token] = np.log(p)
        return logits


def test_greedy_takes_the_locally_best_token_and_beam_the_best_sequence():
    greedy = complete(TableDecoder(), VOCAB, ["MK"], GenerationConfig("greedy", max_new_tokens=5))[0]
    assert greedy.residues == "AG" and greedy.ended  # p = 0.6 * 0.34 * 1
    beam = complete(TableDecoder(), VOCAB, ["MK"], GenerationConfig("beam", beams=2, max_new_tokens=5,
                                                                    length_penalty=0.0))[0]
    assert beam.residues == "L" and beam.ended  # p = 0.4 * 1 beats 0.6 * 0.34
    assert beam.mean_logprob == pytest.approx(np.log(0.4) / 2, abs=1e-6)
    one = complete(TableDecoder(), VOCAB, ["MK"], GenerationConfig("beam", beams=1, max_new_tokens=5))[0]
    assert one.residues == greedy.residues  # a beam of one is greedy


def test_sampling_follows_the_tempered_distribution():
    decoder = TableDecoder()
    config = GenerationConfig("sample", max_new_tokens=1, seed=0)
    firsts = [c.residues for c in complete(decoder, VOCAB, ["MK"] * 2000, config)]
    assert abs(firsts.count("A") / 2000 - 0.6) < 0.03
    cold = GenerationConfig("sample", max_new_tokens=1, temperature=0.25, seed=0)
    share = [c.residues for c in complete(decoder, VOCAB, ["MK"] * 2000, cold)].count("A") / 2000
    expected = 0.6 ** 4 / (0.6 ** 4 + 0.4 ** 4)  # softmax(log p / T)
    assert abs(share - expected) < 0.03
    top1 = GenerationConfig("sample", max_new_tokens=1, top_k=1, seed=0)
    assert {c.residues for c in complete(decoder, VOCAB, ["MK"] * 50, top1)} == {"A"}
    again = [c.residues for c in complete(decoder, VOCAB, ["MK"] * 2000, config)]
    assert again == firsts  # the seed fixes the draws


def test_only_residues_and_end_are_generated():
    class Sentinels(TableDecoder):
        def decoder_logits(self, encoder_ids, decoder_ids):
            logits = np.zeros((*decoder_ids.shape, len(VOCAB)), dtype=np.float32)
            logits[..., VOCAB.sentinel_id(0)] = 50.0  # the model loves a token it must not emit
            logits[..., VOCAB.token_id("X")] = 40.0  # and a non-standard residue
            logits[..., VOCAB.token_id("W")] = 10.0
            return logits

    out = complete(Sentinels(), VOCAB, ["MK"], GenerationConfig("greedy", max_new_tokens=3))[0]
    assert out.residues == "WWW" and not out.ended


def test_identity():
    assert identity("ABCD", "ABXD") == 0.75
    assert identity("AB", "ABCD") == 0.5
    assert identity("", "") == 1.0


@pytest.fixture(scope="module")
def completion_run(tmp_path_factory):
    """A tiny model trained briefly with [S2S] completion on the built-in corpus."""
    from plmforge.core.run import train
    from plmforge.core.spec import validate_spec

    tmp = tmp_path_factory.mktemp("completion")
    raw = tiny_spec_dict(tmp, steps=8, eval_every=8, checkpoint_every=8)
    raw["objectives"] = [{"name": "completion", "max_target_length": 32}]
    raw["tracking"]["enabled"] = False
    result = train(validate_spec(raw), show_progress=False)
    return tmp / "run", result


def test_completion_trains_and_logs_its_metrics(completion_run):
    _, result = completion_run
    for key in ("val/completion/completion_ce", "val/completion/next_residue_accuracy", "val/completion/loss"):
        assert np.isfinite(result.eval_metrics[key])
    history = [metrics["train/completion/loss"] for _, metrics in result.history]
    assert history[-1] < history[0]  # it learns (residue frequencies at least)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_backends_complete_alike(completion_run, strategy):
    from plmforge.core.embedding import load_model

    run_dir, _ = completion_run
    prompts = ["MKTAYIAKQRQISFVKSHFSRQ", "MSDNGPQ"]
    config = GenerationConfig(strategy, max_new_tokens=12, beams=3)
    outputs = {}
    for backend_name in ("torch", "jax"):
        backend, vocab = load_model(run_dir, backend_name)
        outputs[backend_name] = complete(backend, vocab, prompts, config, prefix="[S2S]")
    for a, b in zip(outputs["torch"], outputs["jax"]):
        assert a.residues == b.residues and a.ended == b.ended
        assert a.mean_logprob == pytest.approx(b.mean_logprob, abs=1e-3)


def test_generate_command_compares_with_the_true_rest(completion_run, tmp_path):
    run_dir, _ = completion_run
    fasta = tmp_path / "prompts.fasta"
    fasta.write_text(">p1\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ\n>p2\nMSDNGPQNQRNAPRITFGGPSDSTGSNQNGERS\n")
    out = tmp_path / "completions.fasta"
    result = CliRunner().invoke(main, ["generate", str(run_dir), "--fasta", str(fasta), "--keep", "0.5",
                                       "--strategy", "sample", "--num-samples", "2", "--temperature", "0.7",
                                       "--max-new-tokens", "16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "mean identity to the true continuation" in result.output
    text = out.read_text().splitlines()
    assert [line.split()[0] for line in text[::2]] == [">p1#0", ">p1#1", ">p2#0", ">p2#1"]
    assert all("identity=" in line and "strategy=sample" in line for line in text[::2])
    assert text[1].startswith("mktayiakqrqisfvk") and text[1][16:].isupper()  # prompt lower, completion upper


def test_generate_errors_are_clear(completion_run, tmp_path):
    run_dir, _ = completion_run
    runner = CliRunner()
    result = runner.invoke(main, ["generate", str(run_dir)])
    assert result.exit_code == 1 and "nothing to complete" in result.output
    result = runner.invoke(main, ["generate", str(run_dir), "--prompt", "MK", "--num-samples", "3"])
    assert result.exit_code == 1 and "--strategy sample" in result.output
    result = runner.invoke(main, ["generate", str(tmp_path), "--prompt", "MK"])
    assert result.exit_code == 1 and "not a plmforge checkpoint" in result.output
