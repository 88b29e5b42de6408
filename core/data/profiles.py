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

Everything is vectorised (no Python loop over rows or columns): residues (gaps left out) become flat
indices ``column * 20 + amino acid`` for ``np.add.at`` and ``take``, and small alignments are computed
several at a time, so numpy's cost per call is shared (see :class:`_Chunk`). Profiles are kept as
``float32``: ``L * 20 * 4`` bytes per protein of ``L`` residues (80 bytes per residue, 8 MB for 100,000
residues), plus one byte per residue for ``has_profile``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate
from typing import Literal

import numpy as np

from plmforge.core.data.msa import GAP, PROFILE_ALPHABET, Alignment, iter_alignment_sources

Weighting = Literal["henikoff", "none"]
Background = Literal["uniform", "blosum62"]

NUM_AMINO_ACIDS = len(PROFILE_ALPHABET)
_ONES = np.ones(NUM_AMINO_ACIDS)
_CHUNK_CELLS = 1 << 16  # cells counted together: fewer numpy calls, temporaries still in the CPU cache
_QUEUE_CELLS = 1 << 20  # cells of parsed alignments queued before computing: parsing and counting in long runs

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
    return _henikoff(_Chunk([_check_codes(codes)]))


def compute_profile(
    codes: np.ndarray,
    weighting: Weighting = "henikoff",
    pseudocount: float = 1.0,
    background: Background = "uniform",
) -> tuple[np.ndarray, np.ndarray]:
    """The profile of an alignment's codes: ``(profile float32 [L, 20], has_profile bool [L])``.

    Columns of ``profile`` follow :data:`PROFILE_ALPHABET`; see the module docstring for the formula.
    """
    return compute_profiles([codes], weighting, pseudocount, background)[0]


def compute_profiles(
    codes: Iterable[np.ndarray],
    weighting: Weighting = "henikoff",
    pseudocount: float = 1.0,
    background: Background = "uniform",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`compute_profile` of each alignment's codes, the same values, computed several at a time.

    Most MSAs are small (tens of rows), so one at a time numpy's cost per call outweighs the arithmetic;
    alignments are grouped up to about ``_CHUNK_CELLS`` cells and each group is counted with the same
    few calls (see :class:`_Chunk`). A profile may be a view into its group's array.
    """
    if weighting not in ("henikoff", "none"):
        raise ValueError(f"weighting must be 'henikoff' or 'none', not {weighting!r}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {sorted(BACKGROUNDS)}, not {background!r}")
    pseudocount = float(pseudocount)
    if not pseudocount >= 0:  # also rejects NaN
        raise ValueError(f"pseudocount must be >= 0, not {pseudocount}")
    prior = pseudocount * BACKGROUNDS[background]
    results: list[tuple[np.ndarray, np.ndarray]] = []
    group: list[np.ndarray] = []
    size = 0
    for array in codes:
        array = _check_codes(array)
        if group and size + array.size + array.shape[1] > _CHUNK_CELLS:
            results += _chunk_profiles(_Chunk(group), weighting == "henikoff", pseudocount, prior)
            group, size = [], 0
        group.append(array)
        size += array.size + array.shape[1]  # columns count too: an alignment without rows still has a profile
    if group:
        results += _chunk_profiles(_Chunk(group), weighting == "henikoff", pseudocount, prior)
    return results


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

    def extend(self, other: ProfileSet) -> None:
        """Add every profile of ``other`` (queries already here keep theirs and count as duplicates)."""
        for i, query in enumerate(other.sequences()):
            self.add(other.names[i], query, other._profiles[i], other._has_profile[i])

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

    @classmethod
    def from_alignments(
        cls,
        alignments: Iterable[Alignment],
        weighting: Weighting = "henikoff",
        pseudocount: float = 1.0,
        background: Background = "uniform",
        max_rows: int | None = None,
    ) -> ProfileSet:
        """Profiles of parsed alignments, as :func:`build_profile_set` (which reads them from files).

        Alignments are queued, up to ``_QUEUE_CELLS`` cells, and computed together
        (:func:`compute_profiles`), in order, so the first alignment of a query still wins and
        duplicates are never computed. (Reading and computing in long runs rather than alternating
        every few alignments keeps each one's code and data in the CPU caches: about 8% faster.)
        """
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be >= 1 or None, not {max_rows}")
        profiles = cls()
        queued: dict[str, tuple[str, np.ndarray]] = {}  # query -> (name, codes), in order
        size = 0

        def flush() -> None:
            computed = compute_profiles([codes for _, codes in queued.values()], weighting, pseudocount, background)
            for (query, (name, _)), result in zip(queued.items(), computed):
                profiles.add(name, query, *result)
            queued.clear()

        for alignment in alignments:
            if alignment.query in queued or alignment.query in profiles:
                profiles.alignments_read += 1
                profiles.duplicates += 1
                continue
            codes = alignment.codes if max_rows is None else alignment.codes[:max_rows]
            if queued and size + codes.size + codes.shape[1] > _QUEUE_CELLS:
                flush()
                size = 0
            queued[alignment.query] = alignment.name, codes
            size += codes.size + codes.shape[1]
        flush()
        return profiles


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
    return ProfileSet.from_alignments(iter_alignment_sources(sources, base_dir), weighting, pseudocount, background,
                                      max_rows)


# -- helpers --------------------------------------------------------------------------------------------
def _check_codes(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.dtype.kind not in "iu":  # (integer dtypes; not bool)
        raise ValueError(f"codes must be a 2-D integer array [rows, columns], got {codes.dtype} {codes.shape}")
    if codes.size and ((codes.dtype.kind == "i" and codes.min() < 0) or codes.max() > GAP):
        raise ValueError(f"codes must lie in 0..{GAP} (PROFILE_ALPHABET indices or GAP)")
    return codes.astype(np.uint8, copy=False)


class _Chunk:
    """Alignments side by side on one column axis, their residues as flat indices ``column * 20 + code``.

    The indices feed ``np.add.at`` (counts per column and amino acid) and ``take`` (a per-column table
    looked up for every residue). Gaps and non-standard letters, often most of an MSA's cells, are left
    out once, here, so no later pass touches them; a block's residues come row after row, ``nnz[i]`` of
    them for its row ``i``. A chunk of small alignments is one block, indexed once; a single alignment of
    more than ``_CHUNK_CELLS`` cells is indexed again in row blocks on every pass, so the ``intp``
    temporaries stay near ``_CHUNK_CELLS`` cells.
    """

    def __init__(self, codes: list[np.ndarray]):
        self.codes = codes
        self.rows = np.array([array.shape[0] for array in codes])
        self.col_starts = list(accumulate((array.shape[1] for array in codes), initial=0))
        self.num_rows, self.num_cols = int(self.rows.sum()), self.col_starts[-1]
        self.size = self.num_cols * NUM_AMINO_ACIDS
        # the narrowest index type that holds them: adding uint8 codes to uint16 is the cheapest cast
        dtype = np.uint16 if self.size <= 1 << 16 else np.int32 if self.size <= 1 << 31 else np.intp
        self.offsets = np.arange(0, self.size, NUM_AMINO_ACIDS, dtype=dtype)
        if len(codes) == 1 and codes[0].size > _CHUNK_CELLS:
            step = max(1, _CHUNK_CELLS // self.num_cols)
            self.spans = [(start, min(start + step, self.num_rows)) for start in range(0, self.num_rows, step)]
        else:
            self.spans = [(0, self.num_rows)]
        self._whole = self._index(0, self.num_rows) if len(self.spans) == 1 else None

    def _index(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        pieces = self.codes if len(self.spans) == 1 else [self.codes[0][start:stop]]
        cells = sum(piece.size for piece in pieces)
        index = np.empty(cells, dtype=self.offsets.dtype)
        kept = np.empty(cells, dtype=bool)
        nnz = []
        end = 0
        for piece, col in zip(pieces, self.col_starts):
            begin, end = end, end + piece.size
            np.add(piece, self.offsets[col : col + piece.shape[1]], out=index[begin:end].reshape(piece.shape))
            nnz.append(np.not_equal(piece, GAP, out=kept[begin:end].reshape(piece.shape)).sum(axis=1))
        return index[kept].astype(np.intp), nnz[0] if len(nnz) == 1 else np.concatenate(nnz)

    def blocks(self) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """``(first row, end row, indices, nnz per row)`` of each row block (one, unless the chunk is large)."""
        if self._whole is not None:
            yield 0, self.num_rows, *self._whole
            return
        for start, stop in self.spans:
            yield start, stop, *self._index(start, stop)

    def counts(self, weights: np.ndarray | None = None) -> np.ndarray:
        """``[columns, 20]`` (weighted) counts of each amino acid per column, float64.

        ``np.add.at`` adds in index order, as ``np.bincount`` does, but into float64 directly, and since
        numpy 1.25 it is the faster of the two.
        """
        counts = np.zeros(self.size)
        for start, stop, index, nnz in self.blocks():
            np.add.at(counts, index, 1.0 if weights is None else np.repeat(weights[start:stop], nnz))
        return counts.reshape(self.num_cols, NUM_AMINO_ACIDS)


def _segment_sums(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Sums of consecutive segments of ``values`` of the given lengths (0 for an empty one).

    ``values`` ends with one extra 0, so every segment start is a valid ``reduceat`` index.
    """
    sums = np.add.reduceat(values, np.cumsum(lengths) - lengths)
    sums[lengths == 0] = 0.0
    return sums


def _henikoff(chunk: _Chunk) -> np.ndarray:
    counts = chunk.counts()
    distinct = np.minimum(counts, 1.0) @ _ONES
    counts *= distinct[:, None]  # r_j * n_ja, inverted below only where looked up (n_ja > 0 there)
    flat = counts.ravel()
    weights = np.zeros(chunk.num_rows + 1)  # the extra 0 ends the last segment (see _segment_sums)
    for start, stop, index, nnz in chunk.blocks():
        values = np.zeros(index.size + 1)
        terms = values[:-1]
        flat.take(index, out=terms, mode="clip")  # (indices are in range; "raise" would buffer ``out``)
        np.divide(1.0, terms, out=terms)
        weights[start:stop] = _segment_sums(values, nnz)
    totals = _segment_sums(weights, chunk.rows)  # per alignment
    scale = np.divide(chunk.rows, totals, out=np.ones_like(totals), where=totals > 0)
    weights = weights[:-1]
    weights *= np.repeat(scale, chunk.rows)
    return weights


def _chunk_profiles(
    chunk: _Chunk, henikoff: bool, pseudocount: float, prior: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    counts = chunk.counts(_henikoff(chunk) if henikoff else None)
    total = counts @ _ONES + pseudocount  # row sums: a matrix-vector product beats sum(axis=1)
    has_profile = total > 0
    counts += prior
    profile = np.empty(counts.shape, dtype=np.float32)
    if has_profile.all():
        np.divide(counts, total[:, None], out=profile)
    else:
        np.divide(counts, np.where(has_profile, total, 1.0)[:, None], out=profile)
        profile[~has_profile] = 0.0
    starts = chunk.col_starts
    return [(profile[a:b], has_profile[a:b]) for a, b in zip(starts, starts[1:])]
