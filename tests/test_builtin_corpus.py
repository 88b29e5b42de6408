"""The built-in SCL2205 corpus: counts, split hygiene, composition, loading, and reproducible build."""

import collections
import hashlib
import importlib.util
import lzma
import os
import re
import sys
import time
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from plmforge.core.data.fasta import read_fasta
from plmforge.core.data.sources import builtin_names, load_builtin, load_splits
from plmforge.core.errors import DataError
from plmforge.core.vocab import STANDARD_AMINO_ACIDS, Vocab

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "build_scl2205_corpus.py"
COUNTS = {"train": 15183, "validation": 1260, "test": 2631}
LOCATIONS = {
    "Cytoplasm",
    "Plastid",
    "Secreted",
    "Mitochondrion",
    "Membrane",
    "Peroxisome",
    "Nucleus",
    "Cell projection",
    "ER",
    "Cytoplasm;Nucleus",
    "Cytoplasm;Membrane",
    "Cytoplasm;Cytoskeleton",
    "Centrosome;Cytoplasm;Cytoskeleton;Microtubule organizing center",
}


def corpus_file(name: str) -> bytes:
    return resources.files("plmforge.core.data").joinpath("corpora", name).read_bytes()


@pytest.fixture(scope="module")
def corpus():
    return load_builtin("scl2205")


@pytest.fixture(scope="module")
def sequences(corpus):
    return {split: [ps.sequence(i) for i in range(len(ps))] for split, ps in corpus.items()}


def test_split_counts(corpus):
    assert {s: len(ps) for s, ps in corpus.items()} == COUNTS
    assert list(corpus) == ["train", "validation", "test"]
    assert sum(len(ps) for ps in corpus.values()) == 19074
    assert sum(ps.total_residues for ps in corpus.values()) == 9_752_823


def test_accessions_unique_and_in_one_split(corpus):
    seen = collections.Counter(name for ps in corpus.values() for name in ps.names)
    assert len(seen) == 19074 and max(seen.values()) == 1
    # UniProtKB accession format (https://www.uniprot.org/help/accession_numbers)
    accession = re.compile(r"[OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9]([A-Z][A-Z0-9]{2}[0-9]){1,2}")
    assert all(accession.fullmatch(name) for name in seen)


def test_labels_are_locations(corpus):
    for ps in corpus.values():
        assert len(ps.labels) == len(ps) and set(ps.labels) <= LOCATIONS
    assert set(corpus["train"].labels) == LOCATIONS
    assert collections.Counter(corpus["train"].labels).most_common(1)[0][0] == "Membrane"


def test_identical_sequences_across_splits(sequences):
    """The split is homology-reduced by the source, yet a few exact duplicates cross it (reported here)."""
    train = set(sequences["train"])
    test_in_train = sum(s in train for s in sequences["test"])
    validation_in_train = sum(s in train for s in sequences["validation"])
    print(
        f"test proteins whose exact sequence is in train: {test_in_train}; validation: {validation_in_train}"
    )
    assert test_in_train == 17 and validation_in_train == 7  # out of 2,631 and 1,260


def test_sequences_are_plausible_proteins(corpus, sequences):
    lengths = np.concatenate([ps.lengths for ps in corpus.values()])
    assert lengths.min() == 30 and lengths.max() == 4924 and 300 < np.median(lengths) < 600
    counts = collections.Counter()
    for ps in corpus.values():
        counts.update(dict(zip(*np.unique(ps.residues, return_counts=True))))
    vocab = Vocab()
    total = sum(counts.values())
    freq = {vocab.tokens[i]: c / total for i, c in counts.items()}
    assert max(freq, key=freq.get) == "L"
    assert 0.085 < freq["L"] < 0.105 and 0.007 < freq["W"] < 0.02 and 0.01 < freq["C"] < 0.03
    assert sum(freq.get(a, 0) for a in STANDARD_AMINO_ACIDS) > 0.9999
    assert all(freq.get(a, 0) > 0.005 for a in STANDARD_AMINO_ACIDS)
    assert sum(s.startswith("M") for s in sequences["train"]) / len(sequences["train"]) > 0.9


def test_load_splits_default_is_builtin_and_fast():
    data = SimpleNamespace(
        source="builtin:scl2205", validation_source=None, validation_fraction=0.05, on_invalid="error"
    )
    start = time.perf_counter()
    loaded = load_splits(data)
    seconds = time.perf_counter() - start
    print(f"builtin:scl2205 loaded in {seconds:.3f} s")
    assert seconds < 3.0  # about 0.3 s; generous for slow CI machines
    assert {s: len(ps) for s, ps in loaded.splits.items()} == COUNTS
    assert loaded.report["train.proteins"] == 15183 and loaded.report["test.residues"] == 1_480_272
    assert load_splits(SimpleNamespace()).report == loaded.report  # duck-typed defaults
    assert builtin_names() == ["scl2205"]


def test_unknown_builtin_lists_available():
    data = SimpleNamespace(
        source="builtin:uniref50", validation_source=None, validation_fraction=0.05, on_invalid="error"
    )
    with pytest.raises(
        DataError, match=r"unknown built-in corpus builtin:uniref50; available: builtin:scl2205"
    ):
        load_splits(data)


def test_builtin_with_validation_source(tmp_path, corpus):
    test = corpus["test"]
    (tmp_path / "val.fasta").write_text("".join(f">{test.name(i)}\n{test.sequence(i)}\n" for i in range(20)))
    data = SimpleNamespace(
        source="builtin:scl2205", validation_source="val.fasta", validation_fraction=0.05, on_invalid="error"
    )
    loaded = load_splits(data, base_dir=tmp_path)
    assert len(loaded.validation) == 20 and len(loaded.train) == 15183 and len(loaded.splits["test"]) == 2631
    assert loaded.report["validation_source.records_kept"] == 20
    assert read_fasta(tmp_path / "val.fasta").ids == loaded.validation.names


def test_committed_files_are_consistent():
    xz = corpus_file("scl2205.tsv.xz")
    readme = corpus_file("README.md").decode()
    licence = corpus_file("scl2205.LICENSE").decode()
    assert len(xz) < 6_000_000
    assert hashlib.sha256(xz).hexdigest() in readme
    assert hashlib.sha256(lzma.decompress(xz)).hexdigest() in readme
    assert "p-scldata==2025.6.0" in readme and "p-scldata==2025.6.0" in licence
    assert "MIT License" in licence and "Copyright (c) 2025 Ouso" in licence
    for split, n in COUNTS.items():
        assert f"| {split} |" in readme and f"{n:,}" in readme


# -- the build script reproduces the committed file ---------------------------------------------------
def load_script():
    spec = importlib.util.spec_from_file_location("build_scl2205_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def source():
    """The p-scldata 2025.6.0 files: from $PLMFORGE_SCLDATA_WHEEL (a .whl) or the installed package."""
    script = load_script()
    wheel = os.environ.get("PLMFORGE_SCLDATA_WHEEL")
    try:
        src = script.read_wheel(Path(wheel)) if wheel else script.read_installed()
    except script.BuildError as exc:
        pytest.skip(f"SCL2205 source not available: {exc}")
    return script, src


def test_build_reproduces_the_table(source):
    script, src = source
    built = script.build(src, compress=False)
    assert built.counts == COUNTS
    assert built.tsv == lzma.decompress(corpus_file("scl2205.tsv.xz"))


@pytest.mark.slow
def test_build_reproduces_every_file_byte_for_byte(source):
    """xz at preset 9|extreme takes ~10 s; the bytes also depend on the liblzma encoder version."""
    script, src = source
    built = script.build(src)
    for name, data in script.outputs(built).items():
        assert data == corpus_file(name), f"{name} differs from a fresh build"


def test_build_refuses_other_sources(source):
    script, src = source
    files = dict(src.files)
    files["splits.json"] = files["splits.json"].replace(b"3891", b"3890", 1)
    with pytest.raises(script.BuildError, match="splits.json has sha256"):
        script.build(script.Source(files, "tampered"))
