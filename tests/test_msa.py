"""MSA reading: Stockholm, A3M and aligned FASTA give the same query-relative codes; sources; every error case."""

import gzip
import io
import lzma
import tarfile
from pathlib import Path

import numpy as np
import pytest

import plmforge.core.data.msa as msa_module
from plmforge.core.data.msa import (
    GAP,
    PROFILE_ALPHABET,
    Alignment,
    detect_format,
    iter_alignment_sources,
    iter_msa_files,
    read_alignments,
    read_alignments_text,
)
from plmforge.core.errors import DataError
from plmforge.core.vocab import Vocab

PFAM = Path(__file__).resolve().parent / "data" / "pfam"


def letters(alignment: Alignment) -> list[str]:
    """Rows of codes back to text: amino acids upper-case, GAP as '-'."""
    table = np.array(list(PROFILE_ALPHABET + "-"))
    return ["".join(table[row]) for row in alignment.codes]


def write(path: Path, text: str | bytes, opener=open) -> Path:
    with opener(path, "wb") as fh:
        fh.write(text.encode() if isinstance(text, str) else text)
    return path


def raises(match: str):
    return pytest.raises(DataError, match=match)


def make_tar(path: Path, members: dict[str, str], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


STO = """# STOCKHOLM 1.0
#=GF ID   tiny
#=GS q AC P00001.1
q    AC-Da.x
r1   ACwd-.E
#=GR r1 SS ..EE...
r2   -.-W.YK
#=GC seq_cons AC.D...
//
"""


# -- alphabet -------------------------------------------------------------------------------------------
def test_profile_alphabet_is_vocabulary_order():
    ids = Vocab().encode_residues(PROFILE_ALPHABET)
    assert np.array_equal(ids, 3 + np.arange(20))
    assert GAP == 20 and len(set(PROFILE_ALPHABET)) == 20


# -- column rules ---------------------------------------------------------------------------------------
def test_stockholm_columns_follow_the_query():
    (aln,) = read_alignments_text(STO, "stockholm", "tiny.sto")
    assert aln.name == "tiny"  # from #=GF ID
    # query letters 'A C D a x' (either case, X kept); its '-' and '.' columns are dropped
    assert aln.query == "ACDAX"
    assert aln.row_names == ["q", "r1", "r2"]
    assert aln.codes.dtype == np.uint8 and aln.codes.shape == (3, 5)
    # r1 'A C w d - . E' -> columns 0 1 3 4 6 -> A C D - E (lowercase 'd' counts in Stockholm, '.' is a gap)
    # r2 '- . - W . Y K' -> - . W . K ; query X -> GAP (non-standard letters are not counted)
    assert letters(aln) == ["ACDA-", "ACD-E", "--W-K"]


def test_a3m_lowercase_and_dots_are_insertions():
    # query match columns 'A C - D A X' (6); its residues A C D A X sit on match columns 0 1 3 4 5
    text = ">q desc\nAC-DAX\n>r1\nACwD-EE\n>r2 other\n-yy-W.YKL\n"
    (aln,) = read_alignments_text(text, "a3m", "dir/tiny.a3m")
    assert aln.name == "tiny" and aln.row_names == ["q", "r1", "r2"]
    assert aln.query == "ACDAX"
    # r1 'A C w D - E E' -> without lowercase 'A C D - E E' -> columns 0 1 3 4 5 -> A C - E E
    # r2 '- y y - W . Y K L' -> without lowercase and '.' '- - W Y K L' -> - - Y K L
    assert letters(aln) == ["ACDA-", "AC-EE", "--YKL"]


def test_a3m_lowercase_query_residue_is_aligned_to_nothing():
    text = "#A3M#\n>q\nACdE\n>r1\nAcCE\n"
    (aln,) = read_alignments_text(text, "auto", "noext")
    assert aln.query == "ACDE"
    assert letters(aln) == ["ACDE", "AC-E"]


def test_a3m_query_with_as_many_lowercase_letters_as_gaps():
    # 'aC-' has two letters and two match columns, but they are not the same positions: 'a' is
    # aligned to nothing and match column 1 ('-') is no query residue
    (aln,) = read_alignments_text(">q\naC-D\n>r\nKLN\n", "a3m", "t.a3m")
    assert aln.query == "ACD"
    assert letters(aln) == ["ACD", "-KN"]


def test_one_line_and_multi_line_records_read_alike():
    # one line per sequence is split with whole-file operations; records of several lines, blank lines,
    # CRLF, header descriptions and '>' inside a sequence take the per-record path or its errors
    one = ">q desc\nAC-D\n>r1 x y\nA-CD\n>r2\nWYKL\n"
    many = ">q desc\nAC\n-D\n\n>r1 x y\nA-CD\n>r2\nWY\nKL\n"
    crlf = one.replace("\n", "\r\n")
    expected = (["q", "r1", "r2"], ["ACD", "A-D", "WYL"])
    for text in (one, many, crlf, one.rstrip("\n")):
        for fmt in ("fasta", "a3m"):
            (aln,) = read_alignments_text(text, fmt, "t")
            assert (aln.row_names, letters(aln)) == expected
    with raises(r"t:3: row 'r1': invalid alignment character\(s\) '>'"):
        read_alignments_text(">q\nACD\n>r1\nA>D\n", "fasta", "t")
    with raises(r"t:1: the query \(first sequence\) 'q' has no residues"):
        read_alignments_text(">q\n>r\n>s\nACD\n", "fasta", "t")  # every other line a header, but not records


def test_fasta_dots_are_gaps_and_lines_are_joined():
    text = ">q\nAC-D\nAX\n\n>r1 x\nac.d\n-E\n"
    (aln,) = read_alignments_text(text, "fasta", "t.afa")
    assert aln.query == "ACDAX"
    assert letters(aln) == ["ACDA-", "ACD-E"]


def test_nonstandard_letters_and_stop_are_gaps():
    text = ">q\nABZUOJX*L\n>r\nLLLLLLLLL\n"
    (aln,) = read_alignments_text(text, "fasta", "t.afa")
    assert aln.query == "ABZUOJXL"  # '*' is not a letter: its column is dropped
    assert letters(aln) == ["A------L", "LLLLLLLL"]


# -- the three formats of one real Pfam alignment -------------------------------------------------------
def test_three_formats_give_identical_alignments():
    sto = read_alignments(PFAM / "Caudal_act.sto.gz")
    a3m = read_alignments(PFAM / "Caudal_act.a3m")
    afa = read_alignments(PFAM / "Caudal_act.afa")
    assert len(sto) == len(a3m) == len(afa) == 1
    sto, a3m, afa = sto[0], a3m[0], afa[0]
    assert sto.name == a3m.name == afa.name == "Caudal_act"
    assert sto.query == a3m.query == afa.query
    assert sto.row_names == a3m.row_names == afa.row_names
    assert sto.row_names[0] == "P79788_CHICK/13-172"
    assert len(sto.query) == 172 - 13 + 1  # the query's domain range
    assert sto.codes.shape == (9, 160)
    assert np.array_equal(sto.codes, a3m.codes) and np.array_equal(sto.codes, afa.codes)


@pytest.mark.parametrize(
    "file, rows, length, first",
    [("globins4.sto", 4, 146, "HBB_HUMAN"), ("fn3.sto", 98, 86, "LAR_DROME/418-503"),
     ("RRM_1.sto.gz", 79, 71, "GBP2_YEAST/221-291")],
)
def test_real_stockholm_files(file, rows, length, first):
    (aln,) = read_alignments(PFAM / file)
    assert aln.codes.shape == (rows, length) and aln.row_names[0] == first
    assert aln.name == file.split(".")[0]
    assert len(set(aln.row_names)) == rows  # interleaved blocks: each name once, in first-seen order
    assert (aln.codes[0] == GAP).sum() == sum(c not in PROFILE_ALPHABET for c in aln.query)


def test_globins4_interleaved_rows_are_concatenated():
    (aln,) = read_alignments(PFAM / "globins4.sto")
    # HBB_HUMAN, residues only, across its three interleaved lines
    assert aln.query.startswith("VHLTPEEKSAVTALWGKVNVDEVGGEALGRLLVVYPWTQRFFESFGDLSTPDAVMGNPKVKAHGKKVL")
    assert aln.query.endswith("GAFSDGLAHLDNLKGTFATLSELHCDKLHVDPENFRLLGNVLVCVLAHHFGKEFTPPVQAAYQKVVAGVANALAHKYH")


def test_multi_block_stockholm_and_auto_names(tmp_path):
    block = "# STOCKHOLM 1.0\nq  AC\nr  A-\n//\n"
    path = write(tmp_path / "two.stk", block + "\n" + block.replace("AC", "WY").replace("A-", "-Y"))
    first, second = read_alignments(path)
    assert (first.name, second.name) == ("two#1", "two#2")
    assert (first.query, second.query) == ("AC", "WY")
    assert letters(second) == ["WY", "-Y"]


def test_gz_xz_and_format_detection(tmp_path):
    raw = (PFAM / "globins4.sto").read_bytes()
    expected = read_alignments(PFAM / "globins4.sto")[0]
    assert expected.name == "globins4"  # no #=GF ID line: the file stem
    for name, opener in [("g.sto.gz", gzip.open), ("g.sto.xz", lzma.open), ("g_no_suffix", gzip.open)]:
        (aln,) = read_alignments(write(tmp_path / name, raw, opener))
        assert np.array_equal(aln.codes, expected.codes) and aln.query == expected.query
        assert aln.name == name.split(".")[0]
    assert detect_format("x.a3m.gz", b"") == "a3m"
    assert detect_format("x", b">q\nAC\n>r\nA-\n") == "fasta"
    assert detect_format("x", b">q\nAC\n>r\nAcC\n") == "a3m"
    assert detect_format("x", b"\n# STOCKHOLM 1.0\n") == "stockholm"


# -- sources --------------------------------------------------------------------------------------------
def test_directory_source_reads_msa_files_sorted():
    names = [name for name, _ in iter_msa_files([PFAM])]
    assert [Path(n).name for n in names] == [
        "Caudal_act.a3m", "Caudal_act.afa", "Caudal_act.sto.gz", "RRM_1.sto.gz", "fn3.sto", "globins4.sto"
    ]  # README.md is not an MSA file
    alignments = list(iter_alignment_sources(str(PFAM)))
    assert [a.name for a in alignments] == ["Caudal_act"] * 3 + ["RRM_1", "fn3", "globins4"]


def test_glob_source_and_base_dir():
    found = list(iter_alignment_sources(["pfam/*.sto"], base_dir=PFAM.parent))
    assert [a.name for a in found] == ["fn3", "globins4"]
    assert [a.name for a in iter_alignment_sources(["pfam/Caud*", "pfam/glob*"], base_dir=PFAM.parent)] == [
        "Caudal_act"] * 3 + ["globins4"]


def test_tar_archive_members_in_sorted_order(tmp_path):
    members = {"z/b.sto": "# STOCKHOLM 1.0\nq WY\n//\n", "README": "not an MSA", "a.a3m": ">q\nAC\n>r\nA-\n",
               "m.afa": ">q\nKL\n"}
    expected = [("a", "AC"), ("m", "KL"), ("b", "WY")]  # sorted member names: a.a3m, m.afa, z/b.sto
    for name, mode in [("x.tar.gz", "w:gz"), ("x.tar.xz", "w:xz"), ("x.tar", "w")]:
        path = make_tar(tmp_path / name, members, mode)
        assert [(a.name, a.query) for a in iter_alignment_sources([path])] == expected
    ordered = make_tar(tmp_path / "s.tgz", dict(sorted(members.items())))  # stored in name order: streamed
    files = list(iter_msa_files(ordered))
    assert [n for n, _ in files] == [f"{ordered}:a.a3m", f"{ordered}:m.afa", f"{ordered}:z/b.sto"]


def test_tar_archives_tarfile_reads_differently_give_the_same_members(tmp_path):
    # plain ustar headers are read without tarfile; a pax header (a long or non-ASCII name) or a GNU
    # long-name header sends the whole archive to tarfile; all give the same members
    members = {"a.a3m": ">q\nAC\n", f"{'d' * 120}/b.afa": ">q\nWY\n", "é/c.sto": "# STOCKHOLM 1.0\nq KL\n//\n",
               "dir/": "", ".hidden.a3m": ">q\nMM\n"}
    expected = [("a", "AC"), ("b", "WY"), ("c", "KL")]
    for name, fmt in (("pax.tar", tarfile.PAX_FORMAT), ("gnu.tar", tarfile.GNU_FORMAT)):
        path = tmp_path / name
        with tarfile.open(path, "w", format=fmt) as archive:
            for member, text in members.items():
                info = tarfile.TarInfo(member)
                info.type = tarfile.DIRTYPE if member.endswith("/") else tarfile.REGTYPE
                info.size = len(text.encode())
                archive.addfile(info, io.BytesIO(text.encode()))
        assert [(a.name, a.query) for a in iter_alignment_sources([path])] == expected
    plain = make_tar(tmp_path / "plain.tar", {"x/a.a3m": ">q\nAC\n", "b.a3m": ">q\nWY\n"}, "w")
    assert msa_module._plain_tar_members(plain.read_bytes()) is not None  # the fast path applies
    assert [a.query for a in iter_alignment_sources([plain])] == ["WY", "AC"]  # b.a3m < x/a.a3m
    corrupt = bytearray(plain.read_bytes())
    corrupt[0] ^= 1  # a bad header checksum: left to tarfile, which refuses the first header
    with raises(r"bad.tar: cannot read MSA archive"):
        list(iter_alignment_sources([write(tmp_path / "bad.tar", bytes(corrupt))]))


def test_multi_stream_compressed_archives(tmp_path):
    # gzip members or bz2 streams one after the other (pigz, pbzip2, cat): all are read
    import bz2

    members = {"a.a3m": ">q\nAC\n", "b.a3m": ">q\nWY\n", "c.a3m": ">q\nKL\n"}
    tar = make_tar(tmp_path / "t.tar", members, "w").read_bytes()
    half = len(tar) // 2
    gz = gzip.compress(tar[:half], mtime=0) + gzip.compress(tar[half:], mtime=0) + b"\0" * 8
    bz = bz2.compress(tar[:half]) + bz2.compress(tar[half:])
    for name, data in (("m.tar.gz", gz), ("m.tar.bz2", bz)):
        assert [a.query for a in iter_alignment_sources([write(tmp_path / name, data)])] == ["AC", "WY", "KL"]


def test_builtin_msas_missing_or_unknown(monkeypatch):
    with pytest.raises(DataError, match="unknown built-in MSA set builtin:nope; available: builtin:scl2205"):
        list(iter_alignment_sources(["builtin:nope"]))
    monkeypatch.setitem(msa_module.BUILTIN_MSAS, "scl2205", "no-such-archive.tar.xz")
    with raises(r"builtin:scl2205: its archive corpora/no-such-archive.tar.xz is not installed"):
        list(iter_alignment_sources(["builtin:scl2205"]))


def test_builtin_msas_when_present():
    from importlib import resources

    resource = resources.files("plmforge.core.data").joinpath("corpora", msa_module.BUILTIN_MSAS["scl2205"])
    if not resource.is_file():
        pytest.skip("the built-in MSA archive is not built yet")
    first = next(iter_alignment_sources(["builtin:scl2205"]))
    assert first.codes.shape == (first.num_rows, len(first.query)) and first.num_rows >= 1


# -- errors ---------------------------------------------------------------------------------------------
def test_empty_and_blank_files(tmp_path):
    for name in ("e.sto", "e.a3m", "e.afa"):
        with raises(rf"{name}: empty MSA file"):
            read_alignments(write(tmp_path / name, "\n \n"))


def test_row_length_mismatch_names_file_line_and_row(tmp_path):
    path = write(tmp_path / "bad.afa", ">q\nACDE\n>r1\nAC-E\n>r2 x\nAC\nD\n")
    with raises(r"bad.afa:5: row 'r2' has 3 aligned columns, but the query 'q' has 4"):
        read_alignments(path)
    path = write(tmp_path / "bad.a3m", ">q\nACDE\n>r1\nACdddE\n")
    with raises(r"bad.a3m:3: row 'r1' has 3 match columns \(uppercase letters and '-'\), but the query 'q' has 4"):
        read_alignments(path)
    path = write(tmp_path / "bad.sto", "# STOCKHOLM 1.0\nq  ACD\nr  AC\n\nq  EF\nr  EF\n\nq  GH\n//\n")
    with raises(r"bad.sto:6: row 'r' has 4 aligned columns, but the query 'q' has 7"):
        read_alignments(path)


def test_stockholm_structure_errors(tmp_path):
    with raises(r"open.sto:2: Stockholm alignment has no closing '//' line \(file ends at line 4\)"):
        read_alignments(write(tmp_path / "open.sto", "\n# STOCKHOLM 1.0\nq AC\nr A-"))
    text = "# STOCKHOLM 1.0\nq AC\n# STOCKHOLM 1.0\nq AC\n//\n"
    message = r"next.sto:1: Stockholm alignment has no closing '//' line \(the next '# STOCKHOLM' header is at line 3\)"
    with raises(message):
        read_alignments(write(tmp_path / "next.sto", text))
    with raises(r"none.sto:1: Stockholm alignment has no sequences"):
        read_alignments(write(tmp_path / "none.sto", "# STOCKHOLM 1.0\n#=GF ID x\n//\n"))
    with raises(r"head.sto:1: expected a '# STOCKHOLM 1.0' header line, found 'q AC'"):
        read_alignments(write(tmp_path / "head.sto", "q AC\n//\n"))
    with raises(r"name.sto:3: sequence line 'r' has a name but no aligned sequence"):
        read_alignments(write(tmp_path / "name.sto", "# STOCKHOLM 1.0\nq AC\nr\n//\n"))


def test_fasta_structure_errors(tmp_path):
    with raises(r"hdr.afa:2: expected a aligned FASTA header line starting with '>', found 'ACDE'"):
        read_alignments(write(tmp_path / "hdr.afa", "\nACDE\n>q\nAC\n"))
    with raises(r"only.a3m: no sequences \(A3M file without a '>' header line\)"):
        read_alignments(write(tmp_path / "only.a3m", "#A3M#\n"))
    with raises(r"gaps.a3m:1: the query \(first sequence\) 'q' has no residues"):
        read_alignments(write(tmp_path / "gaps.a3m", ">q\n--\n>r\nAC\n"))
    with raises(r"chars.afa:3: row 'r': invalid alignment character\(s\) '1\?'"):
        read_alignments(write(tmp_path / "chars.afa", ">q\nACD\n>r\nA1?\n"))
    with raises(r"clustal: cannot tell the MSA format.*Clustal is not supported"):
        read_alignments(write(tmp_path / "clustal", "CLUSTAL W (1.83)\n\nq AC\n"))


def test_unreadable_files_and_sources(tmp_path):
    with raises(r"missing.sto: MSA file not found"):
        read_alignments(tmp_path / "missing.sto")
    good = gzip.compress((PFAM / "globins4.sto").read_bytes())
    with raises(r"cut.sto.gz: cannot decompress gzip MSA file \(corrupt or truncated\?\)"):
        read_alignments(write(tmp_path / "cut.sto.gz", good[: len(good) // 2]))
    with raises(r"cut.tar.xz: cannot read MSA archive.*\(corrupt or truncated\?\)"):
        data = make_tar(tmp_path / "whole.tar.xz", {"a.a3m": ">q\nAC\n" * 2000}, "w:xz").read_bytes()
        list(iter_alignment_sources([write(tmp_path / "cut.tar.xz", data[: len(data) // 2])]))
    with raises(r"empty.tgz: archive holds no MSA files"):
        list(iter_alignment_sources([make_tar(tmp_path / "empty.tgz", {"README": "x"})]))
    with raises(r"nothing/\*.a3m: the pattern matches no MSA file"):
        list(iter_alignment_sources(["nothing/*.a3m"], base_dir=tmp_path))
    (tmp_path / "docs").mkdir()
    write(tmp_path / "docs" / "notes.txt", "x")
    with raises(r"docs: directory holds no MSA files"):
        list(iter_alignment_sources(["docs"], base_dir=tmp_path))
    with raises(r"nope.tar.gz: MSA archive not found"):
        list(iter_alignment_sources([tmp_path / "nope.tar.gz"]))
    with raises(r"x.zst.sto: zstd-compressed files are not supported"):
        read_alignments(write(tmp_path / "x.zst.sto", b"\x28\xb5\x2f\xfd" + b"\0" * 10))


def test_member_errors_name_the_archive_member(tmp_path):
    path = make_tar(tmp_path / "m.tar.gz", {"ok.a3m": ">q\nAC\n", "bad.a3m": ">q\nAC\n>r\nACD\n"})
    with raises(rf"{path}:bad.a3m:3: row 'r' has 3 match columns"):
        list(iter_alignment_sources([path]))


def test_crlf_line_endings_and_nul_bytes(tmp_path):
    (aln,) = read_alignments(write(tmp_path / "crlf.afa", ">q\r\nAC-D\r\n>r\r\nA-CD\r\n"))
    assert aln.query == "ACD" and letters(aln) == ["ACD", "A-D"]
    (aln,) = read_alignments(write(tmp_path / "crlf.sto", "# STOCKHOLM 1.0\r\nq AC\r\nr A-\r\n//\r\n"))
    assert letters(aln) == ["AC", "A-"]
    with raises(r"nul.a3m:3: row 'r': invalid alignment character\(s\) '\\x00'"):
        read_alignments(write(tmp_path / "nul.a3m", b">q\nAC\n>r\nA\0C\n"))


def test_large_archives_are_streamed_when_sorted(tmp_path, monkeypatch):
    monkeypatch.setattr(msa_module, "_TAR_BUFFER_BYTES", 4)  # too small to sort in memory
    sorted_members = {"a.a3m": ">q\nAC\n", "b.a3m": ">q\nWY\n"}
    path = make_tar(tmp_path / "sorted.tar.xz", sorted_members, "w:xz")
    assert [a.query for a in iter_alignment_sources([path])] == ["AC", "WY"]
    path = make_tar(tmp_path / "unsorted.tar.xz", dict(reversed(sorted_members.items())), "w:xz")
    with raises(r"unsorted.tar.xz: archive members are not stored in name order and too large to sort in memory"):
        list(iter_alignment_sources([path]))
