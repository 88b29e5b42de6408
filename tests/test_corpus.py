"""Prepared corpora: the built-in splits survive a round trip through CorpusWriter, a run trains from a
corpus directory exactly as from the built-in corpus, and every damaged corpus is one clear error."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from helpers import tiny_spec_dict

from plmforge.core.cli import main
from plmforge.core.data import sources
from plmforge.core.data.corpus import MANIFEST, ArrowStrings, CorpusWriter, open_corpus
from plmforge.core.data.proteins import ProteinSet
from plmforge.core.data.sources import load_builtin, load_splits
from plmforge.core.errors import DataError

CHUNK = 997  # proteins per add(): several chunks per split, the last one partial


def write_corpus(splits: dict[str, ProteinSet], path, chunk: int = CHUNK, **options):
    """Write ProteinSets as a prepared corpus, ``chunk`` proteins per CorpusWriter.add."""
    with CorpusWriter(path, splits=tuple(splits), columns=("label",), **options) as writer:
        for split, proteins in splits.items():
            for start in range(0, len(proteins), chunk):
                stop = min(start + chunk, len(proteins))
                a, b = proteins.offsets[start], proteins.offsets[stop]
                writer.add(split, proteins.residues[a:b], np.diff(proteins.offsets[start : stop + 1]),
                           proteins.names[start:stop], proteins.labels[start:stop])
        return writer.finish({"sources": [], "report": {"records": 19074, "skipped_invalid": 0}})


@pytest.fixture(scope="module")
def builtin():
    return load_builtin("scl2205")


@pytest.fixture(scope="module")
def corpus_dir(builtin, tmp_path_factory):
    return write_corpus(builtin, tmp_path_factory.mktemp("corpus") / "scl2205")


@pytest.fixture
def corpus_copy(corpus_dir, tmp_path):
    """A private copy to damage."""
    return shutil.copytree(corpus_dir, tmp_path / "copy")


def test_the_builtin_splits_round_trip_protein_by_protein(builtin, corpus_dir):
    corpus = open_corpus(corpus_dir, verify_checksums=True)
    assert list(corpus.splits) == ["train", "validation", "test"]
    for split, expected in builtin.items():
        got = corpus.splits[split]
        assert len(got) == len(expected) and got.total_residues == expected.total_residues
        for i in range(len(expected)):
            np.testing.assert_array_equal(got.tokens(i), expected.tokens(i))
            assert got.name(i) == expected.name(i) and got.label(i) == expected.label(i)
        assert got.sequence(len(got) - 1) == expected.sequence(len(expected) - 1)
        assert got.lengths.dtype == np.int32
        np.testing.assert_array_equal(got.lengths, expected.lengths)
        assert corpus.manifest["splits"][split] == {"proteins": len(expected), "residues": expected.total_residues}


def test_opening_maps_the_files_and_reads_no_residues_or_names(corpus_dir):
    train = open_corpus(corpus_dir).splits["train"]
    for array in (train.residues, train.offsets, train.lengths):
        assert isinstance(array, np.memmap) and not array.flags.writeable
    assert isinstance(train.names, ArrowStrings) and isinstance(train.labels, ArrowStrings)
    assert not isinstance(train.names, list)


def test_a_subset_of_a_mapped_set_is_an_ordinary_set(builtin, corpus_dir):
    mapped = open_corpus(corpus_dir).splits["validation"]
    picked, expected = mapped.subset([5, 0, 5, -1]), builtin["validation"].subset([5, 0, 5, -1])
    assert picked.names == expected.names and picked.labels == expected.labels
    np.testing.assert_array_equal(picked.residues, expected.residues)
    assert picked.lengths.dtype == np.int64  # computed from offsets, like any in-memory set


def test_loading_a_corpus_source_reports_its_counts_from_the_manifest(builtin, corpus_dir, tmp_path):
    data = type("Data", (), {"source": str(corpus_dir)})()
    loaded = load_splits(data)
    assert list(loaded.splits) == ["train", "validation", "test"]
    assert loaded.report["train.proteins"] == len(builtin["train"])
    assert loaded.report["test.residues"] == builtin["test"].total_residues
    assert loaded.report["source.records"] == 19074
    assert isinstance(loaded.train.residues, np.memmap)

    fasta = tmp_path / "val.fasta"
    fasta.write_text(">v1\nMKV\n>v2\nACDE\n")
    overridden = load_splits(type("Data", (), {"source": str(corpus_dir), "validation_source": str(fasta)})())
    assert overridden.validation.names == ["v1", "v2"]
    assert overridden.report["validation.proteins"] == 2
    assert overridden.report["train.proteins"] == len(builtin["train"])


def test_a_large_fasta_source_warns_to_prepare_it(tmp_path, monkeypatch, capsys):
    fasta = tmp_path / "big.fasta"
    fasta.write_text("".join(f">p{i}\n{'ACDEFGHIKL' * (i + 1)}\n" for i in range(40)))
    load_splits(type("Data", (), {"source": str(fasta)})())
    assert "plmforge prepare" not in capsys.readouterr().err
    monkeypatch.setattr(sources, "LARGE_FASTA_BYTES", fasta.stat().st_size - 1)
    loaded = load_splits(type("Data", (), {"source": str(fasta)})())
    err = " ".join(capsys.readouterr().err.split())
    assert "warning" in err and "plmforge prepare" in err and "big.fasta" in err
    assert len(loaded.train) + len(loaded.validation) == 40  # still trains from the FASTA


# -- writing ----------------------------------------------------------------------------------------
def test_an_error_while_writing_leaves_nothing_behind(tmp_path):
    out = tmp_path / "out" / "corpus"
    with pytest.raises(RuntimeError), CorpusWriter(out, splits=("train",), columns=()) as writer:
        writer.add("train", np.array([3, 4, 5], np.uint8), [2, 1], ["a", "b"])
        raise RuntimeError("reader failed")
    with CorpusWriter(out, splits=("train",), columns=()) as writer:  # leaving without finish()
        writer.add("train", np.array([3], np.uint8), [1], ["a"])
    assert list(out.parent.iterdir()) == []


def test_an_existing_corpus_is_replaced_only_when_asked(tmp_path):
    out = tmp_path / "out" / "corpus"
    small = ProteinSet.from_sequences(["a", "b"], ["MKV", "AC"], labels=["x", "y"])
    write_corpus({"train": small}, out)
    with pytest.raises(DataError, match="already exists"):
        CorpusWriter(out, splits=("train",))
    write_corpus({"train": small.subset([1])}, out, overwrite=True)
    assert list(open_corpus(out).splits["train"].names) == ["b"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["corpus"]


def test_an_empty_split_is_written_and_read(tmp_path):
    out = tmp_path / "corpus"
    small = ProteinSet.from_sequences(["a"], ["MKV"], labels=["x"])
    write_corpus({"train": small, "validation": ProteinSet.empty(with_labels=True)}, out)
    validation = open_corpus(out).splits["validation"]
    assert len(validation) == 0 and validation.total_residues == 0 and list(validation.names) == []


# -- damaged corpora: one clear error naming the file -------------------------------------------------
def test_a_corpus_without_manifest_was_interrupted(corpus_copy):
    (corpus_copy / MANIFEST).unlink()
    with pytest.raises(DataError, match="not a complete prepared corpus; was prepare interrupted"):
        open_corpus(corpus_copy)


def test_a_truncated_residues_file_is_named(corpus_copy):
    residues = corpus_copy / "train" / "residues.npy"
    os.truncate(residues, residues.stat().st_size - 100)
    with pytest.raises(DataError, match=r"train/residues\.npy: \d+ bytes but the manifest says .*truncated"):
        open_corpus(corpus_copy)


def test_a_corpus_of_a_newer_format_asks_for_a_newer_plmforge(corpus_copy):
    manifest = json.loads((corpus_copy / MANIFEST).read_text())
    (corpus_copy / MANIFEST).write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(DataError, match=r"manifest\.json: corpus made by a newer plmforge"):
        open_corpus(corpus_copy)


def test_a_corpus_of_another_vocabulary_is_refused(corpus_copy):
    manifest = json.loads((corpus_copy / MANIFEST).read_text())
    manifest["vocab"]["residues"] = manifest["vocab"]["residues"][::-1]
    (corpus_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="another vocabulary"):
        open_corpus(corpus_copy)


def test_a_changed_file_of_the_same_size_is_found_by_its_checksum(corpus_copy):
    residues = corpus_copy / "validation" / "residues.npy"
    data = bytearray(residues.read_bytes())
    data[-1] = 3 if data[-1] != 3 else 4  # another residue id
    residues.write_bytes(bytes(data))
    open_corpus(corpus_copy)  # sizes match: opening alone does not read the data
    with pytest.raises(DataError, match=r"validation/residues\.npy: sha256 differs"):
        open_corpus(corpus_copy, verify_checksums=True)


def _validate(tmp_path, source):
    spec = {"name": "c", "data": {"source": str(source), "max_length": 64}, "model": {"preset": "ankh-tiny"},
            "backend": {"name": "torch", "device": "cpu"}, "objectives": [{"name": "mlm", "probabilities": [0.15]}],
            "training": {"steps": 2}, "tracking": {"enabled": False}, "output_dir": str(tmp_path / "out")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    return result.exit_code, " ".join(result.output.split())


def test_validate_accepts_a_corpus_and_names_what_is_wrong_with_a_damaged_one(corpus_copy, tmp_path):
    code, out = _validate(tmp_path, corpus_copy)
    assert code == 0 and "valid" in out, out
    os.truncate(corpus_copy / "test" / "lengths.npy", 64)
    code, out = _validate(tmp_path, corpus_copy)
    assert code != 0 and "lengths.npy" in out and "truncated" in out
    (corpus_copy / MANIFEST).unlink()
    code, out = _validate(tmp_path, corpus_copy)
    assert code != 0 and "data.source" in out and "not a complete prepared corpus" in out


# -- training ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_from_the_prepared_builtin_corpus_matches_the_builtin_corpus(corpus_dir, tmp_path):
    """Same splits, same numbers: a run on the prepared scl2205 logs the losses of a run on builtin:scl2205."""
    from plmforge.core.run import train
    from plmforge.core.spec import validate_spec

    raw = tiny_spec_dict(tmp_path, steps=3, checkpoint_every=100, eval_every=3)
    raw["tracking"]["enabled"] = False
    builtin_run = train(validate_spec({**raw, "output_dir": str(tmp_path / "builtin")}), show_progress=False)
    raw["data"] = {**raw["data"], "source": str(corpus_dir)}
    corpus_run = train(validate_spec({**raw, "output_dir": str(tmp_path / "corpus")}), show_progress=False)
    def losses(result):
        return [(step, {k: v for k, v in metrics.items() if "loss" in k}) for step, metrics in result.history]

    assert [step for step, _ in losses(corpus_run)] == [1, 2, 3]
    assert losses(corpus_run) == losses(builtin_run)  # identical, not close: same proteins, same batches
    assert any("loss" in k for k in corpus_run.eval_metrics)
    assert corpus_run.eval_metrics == builtin_run.eval_metrics
    for key in ("train.proteins", "train.residues", "validation.proteins", "test.residues"):
        assert corpus_run.data_report[key] == builtin_run.data_report[key]
