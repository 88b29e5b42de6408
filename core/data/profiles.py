"""Per-residue amino-acid profiles from MSAs, the targets of profile prediction (Madani et al. 2020).

For each query residue ``j`` of an :class:`~plmforge.core.data.msa.Alignment` the profile is the
distribution of the 20 standard amino acids in its column:

- sequence weights ``w_i``: ``"henikoff"`` (position-based, see :func:`henikoff_weights`) or ``"none"``
  (all ones); both sum to the number of rows, so a pseudocount means the same under either;
- weighted counts ``c_ja = sum_i w_i [x_ij = a]`` over the 20 amino acids: gaps and non-standard letters
  (X, B, Z, U, O, ...) are not counted;
- ``p_ja = (c_ja + pseudocount * b_a) / (sum_a c_ja + pseudocount)`` with background ``b`` uniform (1/20)
  or the BLOSUM62 background frequencies; a column whose denominator is 0 (no counted residue and
  pseudocount 0) has no profile (``has_profile`` False, profile row all zeros).

Everything is vectorised with ``np.bincount`` over row blocks (no Python loop over rows or columns).
Profiles are kept as ``float32``: ``L * 20 * 4`` bytes per protein of ``L`` residues (80 bytes per
residue, 8 MB for 100,000 residues), plus one byte per residue for ``has_profile``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import numpy as np

from plmforge.core.data.msa import GAP, PROFILE_ALPHABET, iter_alignment_sources

Weighting = Literal["henikoff", "none"]
Background = Literal["uniform", "blosum62"]

NUM_AMINO_ACIDS = len(PROFILE_ALPHABET)
_WIDTH = NUM_AMINO_ACIDS + 1  # the 20 amino acids and GAP
_ONES = np.ones(_WIDTH)
_CHUNK_CELLS = 1 << 18  # cells indexed at a time (2 MB of intp): larger alignments go in row blocks

# BLOSUM62 background frequencies (Henikoff & Henikoff 1992, PNAS 89:10915), the three-decimal values
# tabulated in Easel's esl_composition_BL62(); they sum to exactly 1.
_BLOSUM62_BY_LETTER = {
    "A": 0.074, "C": 0.025, "D": 0.054, "E": 0.054, "F": 0.047, "G": 0.074, "H": 0.026, "I": 0.068,
    "K": 0.058, "L": 0.099, "M": 0.025, "N": 0.045, "P": 0.039, "Q": 0.034, "R": 0.052, "S": 0.057,
    "T": 0.051, "V": 0.073, "W": 0.013, "Y": 0.032,
}
#: Backgrounds in PROFILE_ALPHABET order.
BACKGROUNDS: dict[str, np.ndarray] = {
    "uniform": np.full(NUM_AMINO_ACIDS, 1.0 / NUM_AMINO_ACIDS),
    "blosum62": np.array([_BLOSUM62_BY_LETTER[a] for a in PROFILE_ALPHABET]),
}
for _background in BACKGROUNDS.values():
    _background.flags.writeable = False


def henikoff_weights(codes: np.ndarray) -> np.ndarray:
    """Position-based sequence weights (Henikoff & Henikoff 1994, J Mol Biol 243:574), float64 [num_rows].

    ``w_i = sum_j 1 / (r_j * n_{j, x_ij})`` over the columns ``j`` where row ``i`` has one of the 20
    amino acids, with ``r_j`` the number of distinct amino acids in column ``j`` and ``n_ja`` the number
    of rows with amino acid ``a`` there. As in the original paper the sum is *not* divided by the row's
    length (Easel's ``esl_msaweight_PB`` divides by it). Every column with a counted residue contributes
    exactly 1 to the sum of the raw weights; they are then scaled to sum to the number of rows. A row
    without any counted residue gets 0; identical rows get identical weights, and a copy of a row that is
    alone with its residue in every column halves that row's raw weight (shared by the two copies).
    """
    return _henikoff(_Indexed(_check_codes(codes)))


def compute_profile(
    codes: np.ndarray,
    weighting: Weighting = "henikoff",
    pseudocount: float = 1.0,
    background: Background = "uniform",
) -> tuple[np.ndarray, np.ndarray]:
    """The profile of an alignment's codes: ``(profile float32 [L, 20], has_profile bool [L])``.

    Columns of ``profile`` follow :data:`PROFILE_ALPHABET`; see the module docstring for the formula.
    """
    if weighting not in ("henikoff", "none"):
        raise ValueError(f"weighting must be 'henikoff' or 'none', not {weighting!r}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {sorted(BACKGROUNDS)}, not {background!r}")
    pseudocount = float(pseudocount)
    if not pseudocount >= 0:  # also rejects NaN
        raise ValueError(f"pseudocount must be >= 0, not {pseudocount}")
    indexed = _Indexed(_check_codes(codes))
    weights = _henikoff(indexed) if weighting == "henikoff" else None
    counts = indexed.counts(weights)[:, :NUM_AMINO_ACIDS]
    total = counts @ _ONES[:NUM_AMINO_ACIDS] + pseudocount  # row sums: a matrix-vector product beats sum(axis=1)
    has_profile = total > 0
    profile = counts + pseudocount * BACKGROUNDS[background]
    if has_profile.all():
        profile /= total[:, None]
    else:
        profile /= np.where(has_profile, total, 1.0)[:, None]
        profile[~has_profile] = 0.0
    return profile.astype(np.float32), has_profile


class ProfileSet:
    """Profiles keyed by query sequence (upper-case letters); the first alignment of a query wins."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self._profiles: list[np.ndarray] = []
        self._has_profile: list[np.ndarray] = []
        #: alignment name per query, in insertion order (parallel to :meth:`sequences`)
        self.names: list[str] = []
        #: alignments whose query was already in the set (not stored)
        self.duplicates = 0
        #: alignments offered to :meth:`add`, duplicates included
        self.alignments_read = 0

    def add(self, name: str, query: str, profile: np.ndarray, has_profile: np.ndarray) -> bool:
        """Store one profile; False (and counted in ``duplicates``) when ``query`` is already present."""
        self.alignments_read += 1
        if query in self._index:
            self.duplicates += 1
            return False
        if profile.shape != (len(query), NUM_AMINO_ACIDS) or has_profile.shape != (len(query),):
            raise ValueError(f"{name}: profile shape {profile.shape} does not match a query of {len(query)} residues")
        self._index[query] = len(self.names)
        self._profiles.append(profile.astype(np.float32, copy=False))
        self._has_profile.append(has_profile.astype(bool, copy=False))
        self.names.append(name)
        return True

    def get(self, sequence: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(profile [L, 20] float32, has_profile [L] bool)`` of a sequence (any case), or None."""
        i = self._index.get(sequence.upper())
        return None if i is None else (self._profiles[i], self._has_profile[i])

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, sequence: object) -> bool:
        return isinstance(sequence, str) and sequence.upper() in self._index

    def sequences(self) -> list[str]:
        """The query sequences, in insertion order."""
        return list(self._index)

    @property
    def nbytes(self) -> int:
        """Memory held by the profiles and masks (not the dict of keys)."""
        return sum(p.nbytes for p in self._profiles) + sum(h.nbytes for h in self._has_profile)

    def __repr__(self) -> str:
        return f"ProfileSet({len(self)} profiles, {self.duplicates} duplicate queries, {self.nbytes} bytes)"


def build_profile_set(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    weighting: Weighting = "henikoff",
    pseudocount: float = 1.0,
    background: Background = "uniform",
    max_rows: int | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> ProfileSet:
    """Profiles of every alignment named by ``sources`` (see :func:`~plmforge.core.data.msa.iter_msa_files`).

    ``max_rows`` keeps the first rows of each MSA (the query included) before weighting. An alignment
    whose query is already in the set is counted in ``duplicates`` and not computed.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 or None, not {max_rows}")
    profiles = ProfileSet()
    for alignment in iter_alignment_sources(sources, base_dir):
        if alignment.query in profiles:
            profiles.alignments_read += 1
            profiles.duplicates += 1
            continue
        codes = alignment.codes if max_rows is None else alignment.codes[:max_rows]
        profile, has_profile = compute_profile(codes, weighting, pseudocount, background)
        profiles.add(alignment.name, alignment.query, profile, has_profile)
    return profiles


# -- helpers --------------------------------------------------------------------------------------------
def _check_codes(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be a 2-D integer array [rows, columns], got {codes.dtype} {codes.shape}")
    if codes.size and ((codes.dtype.kind == "i" and codes.min() < 0) or codes.max() > GAP):
        raise ValueError(f"codes must lie in 0..{GAP} (PROFILE_ALPHABET indices or GAP)")
    return codes


class _Indexed:
    """Codes as flat indices ``column * 21 + code`` for ``np.bincount`` and ``take``, in blocks of rows.

    An alignment of up to ``_CHUNK_CELLS`` cells (the usual case) is indexed once and the index reused
    by every pass; a larger one is re-indexed block by block on each pass, so the ``intp`` temporaries
    stay near ``_CHUNK_CELLS`` cells.
    """

    def __init__(self, codes: np.ndarray):
        self.codes = codes
        self.num_rows, self.length = codes.shape
        self.offsets = np.arange(self.length, dtype=np.intp) * _WIDTH
        self.step = max(1, _CHUNK_CELLS // max(self.length, 1))
        self._whole = codes + self.offsets if self.num_rows <= self.step else None

    def blocks(self):
        if self._whole is not None:
            yield 0, self.num_rows, self._whole
            return
        for start in range(0, self.num_rows, self.step):
            stop = min(start + self.step, self.num_rows)
            yield start, stop, self.codes[start:stop] + self.offsets

    def counts(self, weights: np.ndarray | None = None) -> np.ndarray:
        """``[L, 21]`` (weighted) counts of each code per column, float64."""
        size = self.length * _WIDTH
        counts = None
        for start, stop, index in self.blocks():
            w = None if weights is None else np.repeat(weights[start:stop], self.length)
            block = np.bincount(index.ravel(), weights=w, minlength=size)
            counts = block if counts is None else counts + block
        if counts is None:  # no rows
            counts = np.zeros(size)
        return counts.reshape(self.length, _WIDTH).astype(np.float64, copy=False)


def _henikoff(indexed: _Indexed) -> np.ndarray:
    counts = indexed.counts()
    counts[:, GAP] = 0.0
    distinct = (counts > 0) @ _ONES
    # 1 / (r_j * n_ja), computed for every (column, code) pair; only pairs that occur are looked up, so
    # the max(., 1) guards only keep the unused ones finite. GAP terms are 0.
    table = 1.0 / (np.maximum(counts, 1.0) * np.maximum(distinct, 1.0)[:, None])
    table[:, GAP] = 0.0
    flat = table.ravel()
    weights = np.zeros(indexed.num_rows)
    for start, stop, index in indexed.blocks():
        weights[start:stop] = flat.take(index).sum(axis=1)
    total = weights.sum()
    if total > 0:
        weights *= indexed.num_rows / total
    return weights
