"""`plmforge embed`: embeddings from a trained checkpoint, per residue and per protein."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import tiny_spec_dict
from safetensors.numpy import load_file

from plmforge.core.data.sources import load_builtin
from plmforge.core.embedding import embed_sequences, load_model
from plmforge.core.run import train
from plmforge.core.spec import validate_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("embed")
    raw = tiny_spec_dict(tmp, steps=2, eval_every=2, checkpoint_every=2)
    raw["tracking"]["enabled"] = False
    raw["objectives"][0]["prefix"] = "[NLU]"
    result = train(validate_spec(raw), show_progress=False)
    test = load_builtin("scl2205")["test"]
    fasta = tmp / "proteins.fasta"
    names = [test.name(i) for i in range(12)]
    sequences = [test.sequence(i)[:300] for i in range(12)]
    fasta.write_text("".join(f">{n} test protein\n{s.lower()}\n" for n, s in zip(names, sequences)))
    return result.checkpoint, fasta, names, sequences


def cli(*args):
    return subprocess.run([sys.executable, "-m", "plmforge.core.cli", *map(str, args)], capture_output=True, text=True)


def test_per_residue_embeddings_drop_the_end_token(trained, tmp_path):
    checkpoint, fasta, names, sequences = trained
    out = cli("embed", checkpoint, fasta, "-o", tmp_path / "res.safetensors")
    assert out.returncode == 0, out.stderr
    tensors = load_file(str(tmp_path / "res.safetensors"))
    assert list(tensors) == sorted(names) or set(tensors) == set(names)
    for name, sequence in zip(names, sequences):
        assert tensors[name].shape == (len(sequence), 32)
        assert np.isfinite(tensors[name]).all()


def test_per_protein_embeddings_are_the_residue_mean_and_batch_independent(trained, tmp_path):
    checkpoint, fasta, names, sequences = trained
    out = cli("embed", checkpoint, fasta, "-o", tmp_path / "prot.npy", "--per-protein", "--prefix", "[NLU]")
    assert out.returncode == 0, out.stderr
    matrix = np.load(tmp_path / "prot.npy")
    assert matrix.shape == (12, 32)
    assert (tmp_path / "prot.ids.txt").read_text().split() == names
    backend, vocab = load_model(checkpoint)
    alone = embed_sequences(backend, vocab, sequences[3:4], prefix="[NLU]")[0]
    np.testing.assert_allclose(matrix[3], alone.mean(axis=0), rtol=1e-4, atol=1e-5)
    without_prefix = embed_sequences(backend, vocab, sequences[3:4], per_protein=True)[0]
    assert not np.allclose(without_prefix, matrix[3])


def test_embed_errors_are_clear(trained, tmp_path):
    checkpoint, fasta, _, _ = trained
    out = cli("embed", checkpoint, fasta, "-o", tmp_path / "x.npy")
    assert out.returncode == 1 and "add --per-protein" in out.stderr
    out = cli("embed", checkpoint, fasta, "-o", tmp_path / "x.safetensors", "--prefix", "[S3S]")
    assert out.returncode == 1 and "not in this model's vocabulary" in out.stderr
    out = cli("embed", tmp_path, fasta, "-o", tmp_path / "x.safetensors")
    assert out.returncode == 1 and "not a plmforge checkpoint" in out.stderr
