"""ProteinSet: compact storage, vectorised construction, access and subsets, on real proteins."""

import numpy as np
import pytest

import plmforge.core.data.proteins as proteins_module
from plmforge.core.data.proteins import ProteinSet
from plmforge.core.data.sources import load_builtin
from plmforge.core.vocab import InvalidSequenceError, Vocab


@pytest.fixture(scope="module")
def real():
    """300 real proteins (names, sequences, labels) from the built-in corpus's test split."""
    test = load_builtin("scl2205")["test"]
    idx = range(0, 900, 3)
    return [test.names[i] for i in idx], [test.sequence(i) for i in idx], [test.labels[i] for i in idx]


def test_from_sequences_round_trip(real):
    names, seqs, labels = real
    ps = ProteinSet.from_sequences(names, seqs, labels=labels)
    vocab = Vocab()
    assert len(ps) == 300
    assert ps.residues.dtype == np.uint8 and ps.offsets.dtype == np.int64
    assert ps.lengths.dtype == np.int64 and ps.lengths.tolist() == [len(s) for s in seqs]
    assert ps.total_residues == sum(map(len, seqs)) == ps.residues.size
    for i in (0, 1, 150, 299, -1):
        assert ps.sequence(i) == seqs[i]
        assert ps.name(i) == names[i] and ps.label(i) == labels[i]
        tok = ps.tokens(i)
        assert tok.dtype == np.int32
        assert np.array_equal(tok, vocab.encode_residues(seqs[i]))
        assert vocab.eos_id not in tok
    assert ps.names == names and ps.labels == labels
    assert "300 proteins" in repr(ps)


def test_input_forms_agree(real):
    names, seqs, _ = real
    upper = ProteinSet.from_sequences(names, seqs)
    lower = ProteinSet.from_sequences(names, [s.lower() for s in seqs])
    raw = ProteinSet.from_sequences(names, [s.encode() for s in seqs])
    assert np.array_equal(upper.residues, lower.residues) and np.array_equal(upper.residues, raw.residues)
    assert upper.labels is None and upper.label(0) is None


def test_encoding_in_groups_matches(real, monkeypatch):
    names, seqs, _ = real
    whole = ProteinSet.from_sequences(names, seqs)
    monkeypatch.setattr(proteins_module, "_ENCODE_CHUNK", 700)  # many groups, some of one record
    grouped = ProteinSet.from_sequences(names, seqs)
    assert np.array_equal(whole.residues, grouped.residues)
    assert np.array_equal(whole.offsets, grouped.offsets)


@pytest.mark.parametrize("chunk", [1 << 25, 700])
def test_invalid_letter_names_the_record(real, monkeypatch, chunk):
    monkeypatch.setattr(proteins_module, "_ENCODE_CHUNK", chunk)
    names, seqs, _ = real
    seqs = list(seqs)
    seqs[217] = seqs[217][:10] + "J" + seqs[217][10:]
    with pytest.raises(InvalidSequenceError) as info:
        ProteinSet.from_sequences(names, seqs)
    msg = str(info.value)
    assert "record 217" in msg and names[217] in msg and "'J'" in msg and "position 11" in msg
    assert info.value.record_index == 217 and info.value.record_name == names[217]
    seqs[217] = seqs[217].replace("J", "é")
    with pytest.raises(InvalidSequenceError, match="record 217.*'é'"):
        ProteinSet.from_sequences(names, seqs)


def test_subset(real):
    names, seqs, labels = real
    ps = ProteinSet.from_sequences(names, seqs, labels=labels)
    idx = [5, 0, 299, 5, -2]
    sub = ps.subset(idx)
    expect = [5, 0, 299, 5, 298]
    assert len(sub) == 5
    assert [sub.sequence(k) for k in range(5)] == [seqs[i] for i in expect]
    assert sub.names == [names[i] for i in expect] and sub.labels == [labels[i] for i in expect]
    assert sub.total_residues == sum(len(seqs[i]) for i in expect)
    mask = np.zeros(300, bool)
    mask[[3, 7]] = True
    assert ps.subset(mask).names == [names[3], names[7]]
    empty = ps.subset([])
    assert len(empty) == 0 and empty.total_residues == 0 and empty.lengths.size == 0
    with pytest.raises(IndexError):
        ps.subset([300])
    with pytest.raises(ValueError):
        ps.subset(np.ones(3, bool))


def test_bounds_and_validation():
    ps = ProteinSet.from_sequences(["a", "b"], ["MKV", "W"])
    with pytest.raises(IndexError):
        ps.tokens(2)
    with pytest.raises(IndexError):
        ps.sequence(-3)
    with pytest.raises(ValueError):
        ProteinSet.from_sequences(["a"], ["MK", "V"])
    with pytest.raises(ValueError):
        ProteinSet.from_sequences(["a", "b"], ["MK", "V"], labels=["x"])
    with pytest.raises(ValueError):
        ProteinSet(np.zeros(3, np.uint8), np.array([0, 2]), ["a"])
    empty = ProteinSet.from_sequences([], [])
    assert len(empty) == 0 and empty.total_residues == 0
    assert len(ProteinSet.empty(with_labels=True).labels) == 0
    # a protein of length zero is representable
    assert ProteinSet.from_sequences(["e", "f"], ["", "A"]).lengths.tolist() == [0, 1]
