"""Ankh-compatible vocabulary and vectorised tokenization.

Ids follow the Ankh tokenizer so that Ankh/T5 checkpoints load unchanged:
``<pad>``=0, ``</s>``=1, ``<unk>``=2, 25 residue letters 3..27, then 116 sentinels with the
T5 convention that ``<extra_id_0>`` is the highest id (143) and ``<extra_id_115>`` is 28.
Task prefixes such as Ankh3's ``[NLU]`` and ``[S2S]`` are appended beyond 144 only when a
run uses them, in a canonical order, so the same prefixes always get the same ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
RESIDUES = "ALGVSREDTIPKFQNYMHWCXBOUZ"
NUM_SENTINELS = 116
BASE_SIZE = 3 + len(RESIDUES) + NUM_SENTINELS  # 144
#: Ankh3 task prefixes, in the order they receive ids after the base vocabulary.
TASK_PREFIXES = ("[NLU]", "[S2S]")
#: The 20 standard amino acids, in vocabulary order (used by profile-style heads).
STANDARD_AMINO_ACIDS = "ALGVSREDTIPKFQNYMHWC"


class InvalidSequenceError(ValueError):
    """A sequence holds characters outside the vocabulary."""

    def __init__(self, bad_chars: str, first_position: int):
        self.bad_chars = bad_chars
        self.first_position = first_position
        super().__init__(
            f"invalid residue letter(s) {bad_chars!r} (first at position {first_position + 1})"
        )


class Vocab:
    """Token <-> id mapping; residues are encoded with a 256-entry lookup table (no Python loop)."""

    pad_id = 0
    eos_id = 1
    unk_id = 2
    residue_offset = 3

    def __init__(self, extra_tokens: Iterable[str] = ()):
        extra = _canonical_extra_tokens(extra_tokens)
        sentinels = [f"<extra_id_{i}>" for i in range(NUM_SENTINELS - 1, -1, -1)]
        self.tokens: list[str] = [PAD, EOS, UNK, *RESIDUES, *sentinels, *extra]
        self.extra_tokens: tuple[str, ...] = tuple(extra)
        self._index = {tok: i for i, tok in enumerate(self.tokens)}
        self._lookup = np.full(256, -1, dtype=np.int32)
        for i, letter in enumerate(RESIDUES):
            self._lookup[ord(letter)] = self.residue_offset + i
            self._lookup[ord(letter.lower())] = self.residue_offset + i
        self._strings = np.array(self.tokens, dtype=object)

    # -- sizes and ids -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def size(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.tokens == other.tokens

    def token_id(self, token: str) -> int:
        try:
            return self._index[token]
        except KeyError:
            raise KeyError(f"token {token!r} is not in the vocabulary") from None

    def sentinel_id(self, k: int) -> int:
        """Id of ``<extra_id_k>``: 143 for k=0, decreasing."""
        if not 0 <= k < NUM_SENTINELS:
            raise ValueError(f"sentinel index {k} outside 0..{NUM_SENTINELS - 1}")
        return BASE_SIZE - 1 - k

    def sentinel_ids(self, count: int) -> np.ndarray:
        """Ids of ``<extra_id_0>`` .. ``<extra_id_{count-1}>`` as int32."""
        if count > NUM_SENTINELS:
            raise ValueError(f"{count} sentinels requested; the vocabulary has {NUM_SENTINELS}")
        return (BASE_SIZE - 1 - np.arange(count)).astype(np.int32)

    @property
    def residue_ids(self) -> np.ndarray:
        return np.arange(self.residue_offset, self.residue_offset + len(RESIDUES), dtype=np.int32)

    def is_residue(self, ids: np.ndarray) -> np.ndarray:
        return (ids >= self.residue_offset) & (ids < self.residue_offset + len(RESIDUES))

    def is_sentinel(self, ids: np.ndarray) -> np.ndarray:
        return (ids >= BASE_SIZE - NUM_SENTINELS) & (ids < BASE_SIZE)

    # -- encoding ------------------------------------------------------------------------------
    def encode_residues(self, sequence: str | bytes) -> np.ndarray:
        """Residue letters (any case) to ids, without ``</s>``. Raises InvalidSequenceError."""
        raw = sequence.encode("ascii", errors="replace") if isinstance(sequence, str) else sequence
        ids = self._lookup[np.frombuffer(raw, dtype=np.uint8)]
        bad = ids < 0
        if bad.any():
            positions = np.flatnonzero(bad)
            if isinstance(sequence, str):  # report the real characters, not the '?' of errors="replace"
                chars = "".join(sorted({sequence[p] for p in positions.tolist()}))
            else:
                letters = np.frombuffer(raw, dtype=np.uint8)[positions]
                chars = "".join(sorted({chr(c) for c in letters}))
            raise InvalidSequenceError(chars, int(positions[0]))
        return ids

    def encode(self, sequence: str, add_eos: bool = True, prefix: str | None = None) -> np.ndarray:
        """A protein as model input: optional task prefix, one id per residue, then ``</s>``."""
        parts = []
        if prefix is not None:
            parts.append(np.array([self.token_id(prefix)], dtype=np.int32))
        parts.append(self.encode_residues(sequence))
        if add_eos:
            parts.append(np.array([self.eos_id], dtype=np.int32))
        return np.concatenate(parts).astype(np.int32, copy=False)

    # -- decoding ------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int] | np.ndarray, skip_special: bool = False) -> str:
        """Ids to text. Residues are concatenated; special tokens are written in full."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(f"id outside the vocabulary of {len(self)} tokens")
        if skip_special:
            ids = ids[self.is_residue(ids)]
        return "".join(self._strings[ids])

    def decode_residues(self, ids: np.ndarray) -> str:
        """Residue ids to a plain sequence; every non-residue id is dropped."""
        return self.decode(ids, skip_special=True)


def _canonical_extra_tokens(extra_tokens: Iterable[str]) -> list[str]:
    """Task prefixes first in canonical order (both, if any is used), then others sorted."""
    requested = set(extra_tokens)
    base = {PAD, EOS, UNK, *RESIDUES}
    clash = {t for t in requested if t in base or t.startswith("<extra_id_")}
    if clash:
        raise ValueError(f"extra tokens clash with the base vocabulary: {sorted(clash)}")
    ordered: list[str] = []
    if requested & set(TASK_PREFIXES):
        ordered.extend(TASK_PREFIXES)
    ordered.extend(sorted(requested - set(TASK_PREFIXES)))
    return ordered
