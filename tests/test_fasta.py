"""FASTA reading (plain and compressed, every bad-input case) and FASTA sources with a held-out split."""

import bz2
import gzip
import lzma
import random
from types import SimpleNamespace

import numpy as np
import pytest

import plmforge.core.data.fasta as fasta_module
from plmforge.core.data.fasta import FastaRecord, read_fasta
from plmforge.core.data.sources import load_builtin, load_splits, validation_mask
from plmforge.core.errors import DataError, PlmforgeError


@pytest.fixture(scope="module")
def real():
    """400 real proteins (accession, sequence) from the built-in corpus."""
    train = load_builtin("scl2205")["train"]
    return [(train.names[i], train.sequence(i)) for i in range(0, 4000, 10)]


def to_fasta(records, width=60) -> str:
    out = []
    for name, seq in records:
        out.append(f">sp|{name}| protein {name} OS=real\n")
        out.extend(seq[k : k + width] + "\n" for k in range(0, len(seq), width))
    return "".join(out)


def write(path, text, opener=open):
    with opener(path, "wb") as fh:
        fh.write(text.encode() if isinstance(text, str) else text)
    return path


def spec(source, **kw):
    """A stand-in for the spec's data section."""
    fields = {
        "source": str(source),
        "validation_source": None,
        "validation_fraction": 0.05,
        "on_invalid": "error",
    }
    return SimpleNamespace(**{**fields, **kw})


# -- real sequences, plain and compressed ------------------------------------------------------------
def test_real_sequences_read_back(tmp_path, real):
    path = write(tmp_path / "real.fasta", to_fasta(real))
    res = read_fasta(path)
    assert res.ids == [f"sp|{n}|" for n, _ in real]
    assert res.sequences == [s for _, s in real]
    assert res.descriptions[0] == f"sp|{real[0][0]}| protein {real[0][0]} OS=real"
    rep = res.report
    assert (rep.records_read, rep.records_kept, rep.skipped_empty, rep.skipped_invalid) == (400, 400, 0, 0)
    assert rep.counts("source.") == {
        "source.records_read": 400,
        "source.records_kept": 400,
        "source.skipped_empty": 0,
        "source.skipped_invalid": 0,
    }
    # header line numbers: 1, then after each record's wrapped lines
    expected, line = [], 1
    for _, seq in real:
        expected.append(line)
        line += 1 + -(-len(seq) // 60)
    assert res.lines == expected
    assert res[3] == FastaRecord(res.ids[3], res.descriptions[3], real[3][1], expected[3])
    assert list(res)[5].sequence == real[5][1] and len(res) == 400
    ps = res.to_protein_set()
    assert len(ps) == 400 and ps.sequence(7) == real[7][1] and ps.name(7) == res.ids[7]


@pytest.mark.parametrize(
    ("opener", "name"),
    [
        (gzip.open, "real.fasta.gz"),
        (gzip.open, "real.fa"),
        (lzma.open, "real.fasta.xz"),
        (bz2.open, "real.fasta.bz2"),
    ],
)
def test_compressed_gives_the_same_records(tmp_path, real, opener, name):
    text = to_fasta(real)
    plain = read_fasta(write(tmp_path / "plain.fasta", text))
    packed = read_fasta(write(tmp_path / name, text, opener))  # detected by magic bytes, not by name
    assert packed.ids == plain.ids and packed.sequences == plain.sequences and packed.lines == plain.lines
    assert packed.report.counts() == plain.report.counts()


def test_plain_file_named_gz_is_read_as_plain(tmp_path):
    res = read_fasta(write(tmp_path / "looks.fasta.gz", ">a\nMKV\n"))
    assert res.sequences == ["MKV"]


def test_block_boundaries_do_not_matter(tmp_path, real, monkeypatch):
    text = to_fasta(real[:60]) + ">long\n" + "ACDEFGHIKLMNPQRSTVWY" * 50 + "\n\n>tail\nmk v\n"
    path = write(tmp_path / "blocks.fasta", text)
    whole = read_fasta(path)
    for block in (7, 64, 1000):
        monkeypatch.setattr(fasta_module, "_BLOCK", block)
        small = read_fasta(path)
        assert small.ids == whole.ids and small.sequences == whole.sequences and small.lines == whole.lines
    assert whole.sequences[-1] == "MKV" and whole.sequences[-2] == "ACDEFGHIKLMNPQRSTVWY" * 50


# -- normalisation rules ------------------------------------------------------------------------------
def test_case_whitespace_and_stop(tmp_path):
    text = "\n\n>r1 first  record\r\nmkv lg\r\nAC\tDE\r\n>r2\nMKV*\n>r3 \n  m k  \n\n*\n>r4|x desc\nW\n"
    res = read_fasta(write(tmp_path / "norm.fasta", text))
    assert res.ids == ["r1", "r2", "r3", "r4|x"]
    assert res.descriptions == ["r1 first  record", "r2", "r3", "r4|x desc"]
    assert res.sequences == ["MKVLGACDE", "MKV", "MK", "W"]
    assert res.lines == [3, 6, 8, 12]


def test_empty_records_are_skipped_and_counted(tmp_path):
    text = ">e1\n>a\nMK\n>e2\n\n  \n>e3\n*\n>b\nW\n>e4"
    res = read_fasta(write(tmp_path / "empty.fasta", text))
    assert res.ids == ["a", "b"]
    rep = res.report
    assert (rep.records_read, rep.records_kept, rep.skipped_empty, rep.skipped_invalid) == (6, 2, 4, 0)


# -- bad input: one clear DataError naming file, line and record ---------------------------------------
def test_invalid_letters_error_names_file_line_record_and_letters(tmp_path, real):
    text = to_fasta(real[:3]).splitlines(keepends=True)
    bad_line = len(text) + 1
    text = "".join(text) + ">sp|P1|X bad one\nMKVJ\nL*L*\n>ok\nMK\n"
    path = write(tmp_path / "proteins.fasta", text)
    with pytest.raises(DataError) as info:
        read_fasta(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{bad_line}: record 'sp|P1|X': invalid residue letter(s) '*J'")
    assert "proteins.fasta" in msg and "first at residue 4" in msg and "on_invalid='skip'" in msg
    assert isinstance(info.value, PlmforgeError)


def test_double_stop_and_digits_are_invalid(tmp_path):
    path = write(tmp_path / "stops.fasta", ">a\nMK**\n>b\nM1K\n>c\nMKé\n>d\nMK\n")
    with pytest.raises(DataError, match=r"stops.fasta:1: record 'a': invalid residue letter\(s\) '\*'"):
        read_fasta(path)
    res = read_fasta(path, on_invalid="skip")
    assert res.ids == ["d"]
    rep = res.report
    assert (rep.records_read, rep.records_kept, rep.skipped_empty, rep.skipped_invalid) == (4, 1, 0, 3)
    with pytest.raises(DataError, match=r"stops.fasta:4: record 'c': invalid residue letter\(s\) 'é'"):
        read_fasta(write(tmp_path / "stops.fasta", ">c0\nMK\n\n>c\nMKé\n"))


def test_skip_mode_counts_with_real_data(tmp_path, real):
    recs = [(n, s if i % 7 else s[:5] + "J" + s[5:]) for i, (n, s) in enumerate(real)]
    text = to_fasta(recs) + ">empty\n"
    res = read_fasta(write(tmp_path / "mixed.fasta", text), on_invalid="skip")
    n_bad = len(range(0, 400, 7))
    rep = res.report
    assert (rep.records_read, rep.records_kept, rep.skipped_empty, rep.skipped_invalid) == (
        401,
        400 - n_bad,
        1,
        n_bad,
    )
    assert res.sequences == [s for i, (_, s) in enumerate(real) if i % 7]


@pytest.mark.parametrize(
    ("text", "line", "found"),
    [
        ("MKV\n>a\nMK\n", 1, "MKV"),
        ("\n\n  \n# comment\n>a\nMK\n", 4, "# comment"),
        ("sequence>a\nMK", 1, "sequence>a"),
    ],
)
def test_text_before_first_header(tmp_path, text, line, found):
    path = write(tmp_path / "pre.fasta", text)
    with pytest.raises(DataError) as info:
        read_fasta(path)
    assert (
        str(info.value) == f"{path}:{line}: expected a FASTA header line starting with '>', found {found!r}"
    )


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "missing.fasta"
    with pytest.raises(DataError, match=r"missing\.fasta: FASTA file not found"):
        read_fasta(path)
    with pytest.raises(DataError, match="is a directory"):
        read_fasta(tmp_path)


@pytest.mark.parametrize("text", ["", "\n\n  \n", "\n" * 100])
def test_file_without_records(tmp_path, text):
    path = write(tmp_path / "none.fasta", text)
    with pytest.raises(DataError, match=r"none\.fasta: no FASTA records"):
        read_fasta(path)
    with pytest.raises(DataError, match="no FASTA records"):
        read_fasta(write(tmp_path / "none.fasta.gz", text, gzip.open))


def test_broken_gzip_names_the_file(tmp_path, real):
    good = gzip.compress(to_fasta(real).encode())
    truncated = write(tmp_path / "truncated.fasta.gz", good[: len(good) // 2])
    with pytest.raises(DataError, match=r"truncated\.fasta\.gz: cannot read FASTA file"):
        read_fasta(truncated)
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 64] = bytes(64)
    with pytest.raises(DataError, match=r"corrupt\.gz: cannot read FASTA file"):
        read_fasta(write(tmp_path / "corrupt.gz", bytes(corrupt)))
    with pytest.raises(DataError, match=r"header\.gz: cannot read FASTA file"):
        read_fasta(write(tmp_path / "header.gz", b"\x1f\x8bnot really gzip"))


def test_zstd_is_refused_clearly(tmp_path):
    with pytest.raises(DataError, match="zstd"):
        read_fasta(write(tmp_path / "x.fasta.zst", b"\x28\xb5\x2f\xfd" + bytes(20)))


def test_on_invalid_is_checked(tmp_path):
    with pytest.raises(ValueError):
        read_fasta(write(tmp_path / "a.fasta", ">a\nM\n"), on_invalid="warn")


# -- FASTA sources: held-out validation by sequence hash -----------------------------------------------
def test_fasta_source_holds_out_by_sequence_hash(tmp_path, real):
    recs = list(real)
    write(tmp_path / "train.fasta", to_fasta(recs))
    loaded = load_splits(spec("train.fasta", validation_fraction=0.2), base_dir=tmp_path)
    train, val = loaded.splits["train"], loaded.splits["validation"]
    assert set(loaded.splits) == {"train", "validation"}
    assert len(train) + len(val) == 400 and 40 < len(val) < 120
    rep = loaded.report
    assert rep["source.records_read"] == 400 and rep["train.proteins"] == len(train)
    assert rep["validation.proteins"] == len(val) and rep["validation.residues"] == val.total_residues
    # order-independent, and identical sequences always land together
    shuffled = recs[:]
    random.Random(0).shuffle(shuffled)
    shuffled += [(f"copy{i}", s) for i, (_, s) in enumerate(recs[:50])]
    write(tmp_path / "shuffled.fasta.gz", to_fasta(shuffled), gzip.open)
    again = load_splits(spec(tmp_path / "shuffled.fasta.gz", validation_fraction=0.2))
    val_seqs = {val.sequence(i) for i in range(len(val))}
    again_val = {again.validation.sequence(i) for i in range(len(again.validation))}
    assert again_val == val_seqs
    train_seqs = {again.train.sequence(i) for i in range(len(again.train))}
    assert not train_seqs & again_val
    mask = validation_mask([s for _, s in recs], 0.2)
    assert mask.dtype == bool and int(mask.sum()) == len(val)
    assert not validation_mask([s for _, s in recs], 0.0).any()


def test_fasta_source_with_validation_source(tmp_path, real, monkeypatch):
    write(tmp_path / "t.fasta", to_fasta(real[:300]))
    write(tmp_path / "v.fasta", to_fasta(real[290:]))
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the current directory
    loaded = load_splits(spec("t.fasta", validation_source="v.fasta"))
    assert len(loaded.train) == 300 and len(loaded.validation) == 110
    assert loaded.report["validation.in_train"] == 10
    assert loaded.report["validation_source.records_read"] == 110
    assert loaded.origins["validation"] == "v.fasta"


def test_fasta_source_errors(tmp_path):
    with pytest.raises(DataError, match=r"absent\.fasta: FASTA file not found"):
        load_splits(spec("absent.fasta"), base_dir=tmp_path)
    write(tmp_path / "bad.fasta", ">a\nMK\n>b\nMKJ\n")
    with pytest.raises(DataError, match=r"bad\.fasta:3: record 'b'"):
        load_splits(spec("bad.fasta"), base_dir=tmp_path)
    loaded = load_splits(spec("bad.fasta", on_invalid="skip", validation_fraction=0.0), base_dir=tmp_path)
    assert loaded.report["source.skipped_invalid"] == 1 and len(loaded.train) == 1
    assert len(loaded.validation) == 0
    with pytest.raises(DataError, match="validation_fraction"):
        load_splits(spec("bad.fasta", validation_fraction=1.0), base_dir=tmp_path)
    # a single protein that hashes into validation leaves nothing to train on
    seq = next(s for s in ("MK" * k for k in range(1, 200)) if validation_mask([s], 0.5)[0])
    write(tmp_path / "one.fasta", f">x\n{seq}\n")
    with pytest.raises(DataError, match="all 1 proteins fell into the validation split"):
        load_splits(spec("one.fasta", validation_fraction=0.5), base_dir=tmp_path)
    assert np.asarray(validation_mask([seq], 0.5)).all()
