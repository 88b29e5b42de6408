"""Profiles from MSAs: hand-computed columns of a real alignment, a slow reference, weighting properties, sets."""

import gzip
from fractions import Fraction as F
from pathlib import Path

import numpy as np
import pytest

from plmforge.core.data.msa import GAP, PROFILE_ALPHABET, iter_alignment_sources, read_alignments, read_alignments_text
from plmforge.core.data.profiles import BACKGROUNDS, ProfileSet, build_profile_set, compute_profile, henikoff_weights

PFAM = Path(__file__).resolve().parent / "data" / "pfam"
AA = {a: k for k, a in enumerate(PROFILE_ALPHABET)}

# BLOSUM62 background frequencies in alphabetical order, as tabulated in Easel's esl_composition_BL62()
# (Henikoff & Henikoff 1992); typed here independently of core/data/profiles.py.
BLOSUM62 = dict(zip("ACDEFGHIKLMNPQRSTVWY", [F(x, 1000) for x in (74, 25, 54, 54, 47, 74, 26, 68, 58, 99, 25, 45,
                                                                      39, 34, 52, 57, 51, 73, 13, 32)]))
UNIFORM = {a: F(1, 20) for a in PROFILE_ALPHABET}


def codes_of(rows: list[str]) -> np.ndarray:
    """Rows over PROFILE_ALPHABET and '-' as codes (GAP for '-')."""
    return np.array([[AA.get(c, GAP) for c in row] for row in rows], dtype=np.uint8)


def column_letters(codes: np.ndarray, columns: list[int]) -> list[str]:
    table = PROFILE_ALPHABET + "-"
    return ["".join(table[c] for c in codes[:, j]) for j in columns]


def expected_row(values: dict[str, F], rest: F) -> np.ndarray:
    """A profile row: the given amino acids' values, ``rest`` for every other one."""
    return np.array([float(values.get(a, rest)) for a in PROFILE_ALPHABET])


# -- acceptance: hand-computed columns of a real alignment ----------------------------------------------
def test_globins4_columns_by_hand():
    (aln,) = read_alignments(PFAM / "globins4.sto")
    assert aln.row_names == ["HBB_HUMAN", "HBA_HUMAN", "MYG_PHYCA", "GLB5_PETMA"]
    # Query (HBB_HUMAN) residues 1, 2 and 10, read from globins4.sto (rows in the order above):
    #   residue 1  = alignment column 9:   V . . A   (HBA and MYG have '.')
    #   residue 2  = alignment column 10:  H V V P
    #   residue 10 = alignment column 18:  A N L K
    columns = [0, 1, 9]
    assert column_letters(aln.codes, columns) == ["V--A", "HVVP", "ANLK"]
    sub = aln.codes[:, columns]

    # Henikoff weights of the three-column sub-alignment, by hand (r = distinct residues, n = count):
    #   residue 1:  r=2 (V, A), n_V=1, n_A=1       -> HBB 1/(2*1) = 1/2, HBA 0, MYG 0, GLB5 1/(2*1) = 1/2
    #   residue 2:  r=3 (H, V, P), n_H=1, n_V=2, n_P=1 -> HBB 1/(3*1) = 1/3, HBA 1/(3*2) = 1/6, MYG 1/6, GLB5 1/3
    #   residue 10: r=4 (A, N, L, K), each n=1      -> 1/(4*1) = 1/4 for every row
    #   sums: HBB 1/2+1/3+1/4 = 13/12, HBA 1/6+1/4 = 5/12, MYG 5/12, GLB5 13/12; total 36/12 = 3
    #   scaled to sum to 4 rows (x 4/3):
    weights = [F(13, 9), F(5, 9), F(5, 9), F(13, 9)]
    assert sum(weights) == 4
    np.testing.assert_allclose(henikoff_weights(sub), [float(w) for w in weights], rtol=1e-12)

    # residue 1, pseudocount 1, uniform background (1/20):
    #   c_V = 13/9 (HBB), c_A = 13/9 (GLB5); total 26/9 + 1 = 35/9
    #   p_V = p_A = (13/9 + 1/20) / (35/9) = 269/700; any other amino acid (0 + 1/20) / (35/9) = 9/700
    col1 = expected_row({"V": F(269, 700), "A": F(269, 700)}, F(9, 700))
    # residue 2, pseudocount 1, BLOSUM62 background (b_H = 0.026, b_V = 0.073, b_P = 0.039):
    #   c_H = 13/9, c_V = 5/9 + 5/9 = 10/9, c_P = 13/9; total 36/9 + 1 = 5
    col2 = np.array([float(((F(13, 9) if a in "HP" else F(10, 9) if a == "V" else 0) + BLOSUM62[a]) / 5)
                     for a in PROFILE_ALPHABET])
    assert col2[AA["H"]] == pytest.approx((13 / 9 + 0.026) / 5) and col2[AA["W"]] == pytest.approx(0.013 / 5)
    # residue 10, pseudocount 2, uniform: c_A = c_K = 13/9, c_N = c_L = 5/9; total 4 + 2 = 6
    #   p_A = p_K = (13/9 + 2/20) / 6 = 139/540, p_N = p_L = (5/9 + 1/10) / 6 = 59/540, others (1/10) / 6 = 9/540
    col10 = expected_row({"A": F(139, 540), "K": F(139, 540), "N": F(59, 540), "L": F(59, 540)}, F(9, 540))

    for pseudocount, background, column, expected in [(1, "uniform", 0, col1), (1, "blosum62", 1, col2),
                                                      (2, "uniform", 2, col10)]:
        profile, has_profile = compute_profile(sub, "henikoff", pseudocount, background)
        assert profile.dtype == np.float32 and profile.shape == (3, 20) and has_profile.all()
        np.testing.assert_allclose(profile[column], expected, atol=1e-7)
        assert expected.sum() == pytest.approx(1.0)

    # the whole alignment without weighting: residue 2 is H V V P -> raw frequencies 1/4, 1/2, 1/4
    profile, _ = compute_profile(aln.codes, "none", 0.0)
    np.testing.assert_allclose(profile[1], expected_row({"H": F(1, 4), "V": F(1, 2), "P": F(1, 4)}, F(0)))
    # residue 1 is V . . A: gaps are not counted -> 1/2, 1/2; with pseudocount 1: (1 + 1/20) / 3 and (1/20) / 3
    np.testing.assert_allclose(profile[0], expected_row({"V": F(1, 2), "A": F(1, 2)}, F(0)))
    profile, _ = compute_profile(aln.codes, "none", 1.0)
    np.testing.assert_allclose(profile[0], expected_row({"V": F(21, 60), "A": F(21, 60)}, F(1, 60)), atol=1e-7)


def test_caudal_act_pfam_seed_columns_by_hand():
    """The same by hand on a Pfam seed alignment (PF04731, CC0), with a gapped column."""
    (aln,) = read_alignments(PFAM / "Caudal_act.sto.gz")
    assert len(aln.row_names) == 9 and aln.query.startswith("MYPGPVRHSGGL")
    # query residues 1 and 11 (rows in file order): M M M M M V M M M  and  G G - - - - G G -
    assert column_letters(aln.codes, [0, 10]) == ["MMMMMVMMM", "GG----GG-"]
    sub = aln.codes[:, [0, 10]]
    # residue 1:  r=2 (M, V), n_M=8, n_V=1 -> each M row 1/(2*8) = 1/16, the V row (CDX1_MOUSE) 1/(2*1) = 8/16
    # residue 11: r=1 (G), n_G=4            -> rows 1, 2, 7, 8 get 1/(1*4) = 4/16; gapped rows nothing
    # raw (x 1/16): 5 5 1 1 1 8 5 5 1, sum 32/16 = 2; scaled to sum to 9 rows (x 9/2):
    weights = [F(45, 32), F(45, 32), F(9, 32), F(9, 32), F(9, 32), F(9, 4), F(45, 32), F(45, 32), F(9, 32)]
    assert sum(weights) == 9
    np.testing.assert_allclose(henikoff_weights(sub), [float(w) for w in weights], rtol=1e-12)
    # residue 1, pseudocount 1, uniform: c_M = 9 - 9/4 = 27/4, c_V = 9/4, total 9 + 1 = 10
    #   p_M = (27/4 + 1/20) / 10 = 17/25, p_V = (9/4 + 1/20) / 10 = 23/100, others (1/20) / 10 = 1/200
    profile, _ = compute_profile(sub, "henikoff", 1.0, "uniform")
    np.testing.assert_allclose(profile[0], expected_row({"M": F(17, 25), "V": F(23, 100)}, F(1, 200)), atol=1e-7)
    # residue 11, pseudocount 1/2, BLOSUM62: c_G = 4 * 45/32 = 45/8 (gaps not counted), total 45/8 + 1/2 = 49/8
    profile, _ = compute_profile(sub, "henikoff", 0.5, "blosum62")
    expected = np.array([float(((F(45, 8) if a == "G" else 0) + F(1, 2) * BLOSUM62[a]) / F(49, 8))
                         for a in PROFILE_ALPHABET])
    np.testing.assert_allclose(profile[1], expected, atol=1e-7)
    assert profile[1][AA["G"]] == pytest.approx((45 / 8 + 0.5 * 0.074) / (49 / 8))


# -- acceptance: a slow, obviously correct reference on larger Pfam alignments ----------------------------
def stockholm_rows(path: Path) -> list[str]:
    """Query-column rows of a single-block Stockholm file, read here without plmforge's parser."""
    text = (gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()).decode()
    rows: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#") and line.strip() != "//":
            name, seq = line.split()
            rows[name] = rows.get(name, "") + seq
    aligned = list(rows.values())
    keep = [j for j, c in enumerate(aligned[0]) if c.isalpha()]
    return ["".join(row[j].upper() if row[j].upper() in AA else "-" for j in keep) for row in aligned]


def reference_weights(rows: list[str]) -> list[float]:
    raw = [0.0] * len(rows)
    for j in range(len(rows[0])):
        column = [row[j] for row in rows if row[j] != "-"]
        for i, row in enumerate(rows):
            if row[j] != "-":
                raw[i] += 1.0 / (len(set(column)) * column.count(row[j]))
    return [w * len(rows) / sum(raw) for w in raw]


def reference_profile(rows, weighting, pseudocount, background) -> list[list[float]]:
    weights = reference_weights(rows) if weighting == "henikoff" else [1.0] * len(rows)
    profile = []
    for j in range(len(rows[0])):
        counts = dict.fromkeys(PROFILE_ALPHABET, 0.0)
        for weight, row in zip(weights, rows):
            if row[j] != "-":
                counts[row[j]] += weight
        total = sum(counts.values()) + pseudocount
        profile.append([(counts[a] + pseudocount * float(background[a])) / total for a in PROFILE_ALPHABET])
    return profile


@pytest.mark.parametrize("file", ["fn3.sto", "RRM_1.sto.gz", "Caudal_act.sto.gz"])
def test_matches_slow_reference(file):
    rows = stockholm_rows(PFAM / file)
    (aln,) = read_alignments(PFAM / file)
    assert column_letters(aln.codes, range(len(aln.query))) == ["".join(c) for c in zip(*rows)]
    np.testing.assert_allclose(henikoff_weights(aln.codes), reference_weights(rows), rtol=1e-12)
    for weighting, pseudocount, name, background in [("henikoff", 1.0, "uniform", UNIFORM),
                                                     ("henikoff", 0.5, "blosum62", BLOSUM62),
                                                     ("none", 0.0, "uniform", UNIFORM),
                                                     ("none", 3.0, "blosum62", BLOSUM62)]:
        profile, has_profile = compute_profile(aln.codes, weighting, pseudocount, name)
        assert has_profile.all()
        np.testing.assert_allclose(profile, reference_profile(rows, weighting, pseudocount, background), atol=2e-7)


# -- weighting properties ---------------------------------------------------------------------------------
def test_weights_sum_to_rows_and_none_gives_raw_frequencies():
    (aln,) = read_alignments(PFAM / "fn3.sto")
    weights = henikoff_weights(aln.codes)
    assert weights.dtype == np.float64 and weights.shape == (98,)
    assert weights.sum() == pytest.approx(98) and (weights > 0).all()
    profile, _ = compute_profile(aln.codes, "none", 0.0)
    j = 5
    column = aln.codes[:, j]
    residues = column[column != GAP]
    np.testing.assert_allclose(profile[j], np.bincount(residues, minlength=20) / residues.size, rtol=1e-6)


def test_identical_rows_share_their_weight():
    # Row 0 has a residue of its own in every column (n = 1 there), so a copy of it halves each of its
    # per-column terms 1/(r*1) -> 1/(r*2) and leaves r and every other row's terms unchanged.
    rows = ["ACDEFG", "WM-KHY", "WLSK--", "LLLLLL"]
    alone = henikoff_weights(codes_of(rows))
    doubled = henikoff_weights(codes_of([rows[0], *rows]))
    # Each column with a residue contributes exactly 1 before scaling, so both raw totals are 6 (the
    # columns) and the scaling is rows / 6: undo it to compare raw weights.
    raw_alone, raw_doubled = alone * 6 / 4, doubled * 6 / 5
    assert raw_doubled[0] == pytest.approx(raw_alone[0] / 2) and raw_doubled[1] == pytest.approx(raw_alone[0] / 2)
    np.testing.assert_allclose(raw_doubled[2:], raw_alone[1:])
    # (Where the copied residue is shared by k rows, its term goes from 1/(r*k) to 1/(r*(k+1)), not half.)
    # On a real alignment: copies get equal weights, and doubling every row halves every raw weight,
    # which leaves the scaled weights unchanged.
    (aln,) = read_alignments(PFAM / "RRM_1.sto.gz")
    n = aln.num_rows
    with_copy = henikoff_weights(np.vstack([aln.codes, aln.codes[2:3]]))
    assert with_copy[2] == with_copy[n] and with_copy[2] < henikoff_weights(aln.codes)[2]
    twice = henikoff_weights(np.vstack([aln.codes, aln.codes]))
    np.testing.assert_allclose(twice[:n], henikoff_weights(aln.codes), rtol=1e-12)
    np.testing.assert_allclose(twice[n:], twice[:n], rtol=1e-12)


def test_empty_rows_and_columns():
    codes = codes_of(["AC-", "---", "AW-"])
    weights = henikoff_weights(codes)
    assert weights[1] == 0 and weights.sum() == pytest.approx(3)
    profile, has_profile = compute_profile(codes, "henikoff", 0.0)
    assert has_profile.tolist() == [True, True, False]
    assert not profile[2].any()  # no profile: zeros
    profile, has_profile = compute_profile(codes, "none", 1.0, "blosum62")
    assert has_profile.all()
    np.testing.assert_allclose(profile[2], BACKGROUNDS["blosum62"], rtol=1e-6)  # pseudocount only
    assert henikoff_weights(codes_of(["--", "--"])).tolist() == [0.0, 0.0]


def test_nonstandard_letters_are_not_counted():
    (aln,) = read_alignments_text(">q\nAXA\n>r\nXAB\n", "fasta", "x.afa")
    profile, has_profile = compute_profile(aln.codes, "none", 0.0)
    assert has_profile.tolist() == [True, True, True]  # column 2: X in the query (not counted), A in r
    np.testing.assert_allclose(profile[:, AA["A"]], [1.0, 1.0, 1.0])
    profile, has_profile = compute_profile(aln.codes[:1], "none", 0.0)
    assert has_profile.tolist() == [True, False, True]  # the query's X alone: nothing counted


def test_backgrounds_and_argument_checks():
    for name, background in (("uniform", UNIFORM), ("blosum62", BLOSUM62)):
        assert BACKGROUNDS[name].sum() == pytest.approx(1.0)
        np.testing.assert_allclose(BACKGROUNDS[name], [float(background[a]) for a in PROFILE_ALPHABET])
    codes = codes_of(["AC"])
    with pytest.raises(ValueError, match="weighting"):
        compute_profile(codes, "pb")
    with pytest.raises(ValueError, match="background"):
        compute_profile(codes, background="wag")
    with pytest.raises(ValueError, match="pseudocount"):
        compute_profile(codes, pseudocount=-1)
    with pytest.raises(ValueError, match="codes"):
        compute_profile(np.array([[21]]))
    with pytest.raises(ValueError, match="2-D"):
        henikoff_weights(np.zeros(3, dtype=np.uint8))


# -- profile sets -----------------------------------------------------------------------------------------
def test_build_profile_set_from_a_directory():
    profiles = build_profile_set([PFAM], pseudocount=0.5, background="blosum62")
    assert isinstance(profiles, ProfileSet)
    # Caudal_act is there as A3M, aligned FASTA and Stockholm: the first (A3M) is kept, two are duplicates
    assert len(profiles) == 4 and profiles.duplicates == 2 and profiles.alignments_read == 6
    assert profiles.names == ["Caudal_act", "RRM_1", "fn3", "globins4"]
    (globins,) = read_alignments(PFAM / "globins4.sto")
    assert globins.query in profiles and globins.query.lower() in profiles and "ACDE" not in profiles
    assert profiles.sequences()[3] == globins.query
    profile, has_profile = profiles.get(globins.query)
    expected, _ = compute_profile(globins.codes, "henikoff", 0.5, "blosum62")
    np.testing.assert_array_equal(profile, expected)
    assert profile.dtype == np.float32 and has_profile.dtype == bool and has_profile.all()
    assert profiles.get("ACDE") is None
    assert profiles.nbytes == sum(len(s) * (20 * 4 + 1) for s in profiles.sequences())


def test_max_rows_keeps_the_first_rows():
    profiles = build_profile_set(str(PFAM / "globins4.sto"), weighting="none", pseudocount=0.0, max_rows=1)
    (aln,) = read_alignments(PFAM / "globins4.sto")
    profile, _ = profiles.get(aln.query)
    np.testing.assert_array_equal(profile, np.eye(20, dtype=np.float32)[aln.codes[0]])  # the query alone
    two = build_profile_set(str(PFAM / "globins4.sto"), max_rows=2).get(aln.query)[0]
    np.testing.assert_array_equal(two, compute_profile(aln.codes[:2])[0])
    with pytest.raises(ValueError, match="max_rows"):
        build_profile_set(str(PFAM / "globins4.sto"), max_rows=0)


def test_large_alignments_are_processed_in_row_blocks(monkeypatch):
    import plmforge.core.data.profiles as profiles_module

    (aln,) = read_alignments(PFAM / "fn3.sto")
    whole = compute_profile(aln.codes), henikoff_weights(aln.codes)
    monkeypatch.setattr(profiles_module, "_CHUNK_CELLS", 200)  # fn3: 98 rows x 86 columns -> blocks of 2 rows
    (profile, has_profile), weights = compute_profile(aln.codes), henikoff_weights(aln.codes)
    np.testing.assert_allclose(profile, whole[0][0], atol=1e-7)
    np.testing.assert_array_equal(has_profile, whole[0][1])
    np.testing.assert_allclose(weights, whole[1], rtol=1e-12)
    empty, has_profile = compute_profile(np.zeros((0, 3), dtype=np.uint8), pseudocount=1.0)
    np.testing.assert_allclose(empty, np.full((3, 20), 0.05), rtol=1e-6)  # no rows: the background
    assert henikoff_weights(np.zeros((0, 3), dtype=np.uint8)).shape == (0,)


def test_alignments_computed_together_give_the_same_profiles(monkeypatch):
    # compute_profiles groups alignments (up to _CHUNK_CELLS cells) and counts each group at once; every
    # profile must equal compute_profile of its alignment alone, bit for bit, whatever the grouping
    import plmforge.core.data.profiles as profiles_module
    from plmforge.core.data.profiles import compute_profiles

    rng = np.random.default_rng(0)
    files = ("fn3.sto", "RRM_1.sto.gz", "globins4.sto")
    alignments = [aln.codes for file in files for aln in read_alignments(PFAM / file)]
    alignments += [
        np.zeros((0, 3), dtype=np.uint8),  # no rows
        np.zeros((2, 0), dtype=np.uint8),  # no columns
        np.full((3, 4), GAP, dtype=np.uint8),  # nothing counted
        rng.integers(0, GAP + 1, (3, 4000)).astype(np.int64),  # > 65536 indices: int32, not uint16; any int type
        codes_of(["AC-", "---", "AW-"]),
    ]
    for weighting, pseudocount, background in [("henikoff", 1.0, "uniform"), ("none", 0.0, "blosum62")]:
        alone = [compute_profile(codes, weighting, pseudocount, background) for codes in alignments]
        for cells in (1 << 16, 2000, 1):
            monkeypatch.setattr(profiles_module, "_CHUNK_CELLS", cells)
            together = compute_profiles(alignments, weighting, pseudocount, background)
            assert len(together) == len(alignments)
            for (profile, has_profile), (expected, expected_has) in zip(together, alone):
                np.testing.assert_array_equal(profile, expected)
                np.testing.assert_array_equal(has_profile, expected_has)
                assert profile.dtype == np.float32 and has_profile.dtype == bool
    weights = henikoff_weights(alignments[-2])
    np.testing.assert_allclose(weights, henikoff_weights(alignments[-2].astype(np.uint8)), rtol=0)


def test_profile_set_from_parsed_alignments(monkeypatch):
    import plmforge.core.data.profiles as profiles_module

    monkeypatch.setattr(profiles_module, "_QUEUE_CELLS", 3000)  # several queues, duplicates within one
    monkeypatch.setattr(profiles_module, "_CHUNK_CELLS", 1000)
    alignments = list(iter_alignment_sources([PFAM]))
    profiles = ProfileSet.from_alignments(alignments, pseudocount=0.5, background="blosum62", max_rows=20)
    expected = build_profile_set([PFAM], pseudocount=0.5, background="blosum62", max_rows=20)
    assert profiles.names == expected.names and profiles.sequences() == expected.sequences()
    assert (profiles.duplicates, profiles.alignments_read) == (expected.duplicates, expected.alignments_read)
    for query in profiles.sequences():
        for got, want in zip(profiles.get(query), expected.get(query)):
            np.testing.assert_array_equal(got, want)
    twice = ProfileSet.from_alignments(alignments + alignments)
    assert len(twice) == len(expected) and twice.duplicates == len(alignments) + expected.duplicates
    with pytest.raises(ValueError, match="max_rows"):
        ProfileSet.from_alignments(alignments, max_rows=0)
