"""Built-in data for downstream tasks: protein chains with secondary structure and C-beta coordinates,
and antimicrobial peptides. Numpy only.

The files live in ``plugins/tasks/data/`` (package data of ``plmforge.plugins.tasks``) and are made by
``scripts/build_task_data.py``; ``data/README.md`` there gives their sources, licences and counts.
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from importlib import resources

import numpy as np

__all__ = [
    "DSSP3",
    "DSSP8",
    "SPLITS",
    "StructureChain",
    "contact_map",
    "dssp8_to_3",
    "load_antimicrobial",
    "load_structures",
]

#: DSSP 8-state classes in label order: alpha, 3-10 and pi helix, strand, bridge, turn, bend, coil.
DSSP8 = "HGIEBTS-"
#: 3-state classes in label order: helix, strand, coil.
DSSP3 = "HEC"
SPLITS = ("train", "validation", "test")

_TO3 = {"H": "H", "G": "H", "I": "H", "E": "E", "B": "E", "T": "C", "S": "C", "-": "C", "X": "X", "P": "C", " ": "C"}
STRUCTURES_FILE = "structures.tsv.gz"
CB_FILE = "structures-cb.npz"
AMP_FILE = "antimicrobial.tsv.gz"


@dataclass(frozen=True)
class StructureChain:
    """One protein chain: ``sequence``, its DSSP string ``dssp8`` (same length, ``X`` where DSSP gave
    nothing), the MDAnalysisTests 3-state reference ``reference3`` (``""`` when there is none) and
    ``cb``, float32 [L, 3] C-beta coordinates in Å (C-alpha for glycine, NaN rows where missing)."""

    id: str
    source: str
    split: str
    cluster: int
    sequence: str
    dssp8: str
    reference3: str
    cb: np.ndarray


def _data(name: str) -> bytes:
    return resources.files("plmforge.plugins.tasks").joinpath("data", name).read_bytes()


def _rows(name: str) -> list[dict[str, str]]:
    text = gzip.decompress(_data(name)).decode("ascii")
    return list(csv.DictReader(io.StringIO(text), delimiter="\t"))


def dssp8_to_3(s: str) -> str:
    """Reduce a DSSP 8-state string to 3 states: H, G, I -> H; E, B -> E; T, S, - -> C; X stays X.

    mkdssp 4's polyproline ``P`` and a blank also give C; any other letter is a ValueError.
    """
    try:
        return "".join(_TO3[c] for c in s)
    except KeyError as exc:
        raise ValueError(f"not a DSSP 8-state letter: {exc.args[0]!r}") from None


def load_structures() -> list[StructureChain]:
    """All built-in protein chains, sorted by split (train, validation, test) then id."""
    with np.load(io.BytesIO(_data(CB_FILE)), allow_pickle=False) as npz:
        coords = {name: npz[name] for name in npz.files}
    out = []
    for row in _rows(STRUCTURES_FILE):
        cb = coords[row["id"]]
        cb.setflags(write=False)
        out.append(
            StructureChain(
                id=row["id"],
                source=row["source"],
                split=row["split"],
                cluster=int(row["cluster"]),
                sequence=row["sequence"],
                dssp8=row["dssp8"],
                reference3=row["reference3"] or "",
                cb=cb,
            )
        )
    return out


def contact_map(cb: np.ndarray, threshold: float = 8.0) -> np.ndarray:
    """int8 [L, L] contacts from [L, 3] coordinates: 1 where the distance is below ``threshold`` Å,
    0 where it is not, -1 where either residue has no coordinates (a NaN row)."""
    cb = np.asarray(cb, dtype=np.float64)
    if cb.ndim != 2 or cb.shape[1] != 3:
        raise ValueError(f"expected [L, 3] coordinates, got shape {cb.shape}")
    dist = np.sqrt(((cb[:, None, :] - cb[None, :, :]) ** 2).sum(-1))
    out = (dist < threshold).astype(np.int8)
    missing = np.isnan(cb).any(axis=1)
    out[missing, :] = -1
    out[:, missing] = -1
    return out


def load_antimicrobial() -> list[tuple[str, int, str]]:
    """(sequence, label, split) for every built-in peptide: label 1 antimicrobial (APD3), 0 not (UniProt)."""
    return [(r["sequence"], int(r["label"]), r["split"]) for r in _rows(AMP_FILE)]
