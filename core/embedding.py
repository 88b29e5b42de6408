"""Embeddings from a checkpoint: rebuild the model from the checkpoint's own spec, on any backend.

Per-residue embeddings drop the ``</s>`` position (and any task prefix), as Ankh's downstream
protocol does; per-protein embeddings are the mean over residues.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from plmforge.core import checkpoint as ckpt
from plmforge.core.backend import Backend
from plmforge.core.build import build_model
from plmforge.core.data.batching import BatchPlanner, round_up
from plmforge.core.errors import DataError, PlmforgeError
from plmforge.core.registry import Registry
from plmforge.core.spec import Spec, validate_spec
from plmforge.core.vocab import InvalidSequenceError, Vocab


def checkpoint_dir(path: Path) -> Path:
    """The checkpoint directory ``path`` names: itself, or a run directory's latest checkpoint."""
    path = Path(path)
    if not (path / ckpt.WEIGHTS).is_file():
        path = ckpt.latest_checkpoint(path) or path
    if not (path / ckpt.SPEC).is_file():
        raise PlmforgeError(f"{path}: not a plmforge checkpoint directory (no {ckpt.SPEC})")
    return path


def checkpoint_spec(path: Path, backend: str | dict | None = None, registry: Registry | None = None) -> Spec:
    """The spec a checkpoint was trained with; ``backend`` (a name or a backend section) replaces its own."""
    spec_file = Path(path) / ckpt.SPEC
    raw = yaml.safe_load(spec_file.read_text())
    if backend:
        raw["backend"] = {"name": backend} if isinstance(backend, str) else dict(backend)
    raw["tasks"] = []  # the model's spec, not its evaluation: tasks come from the evaluation spec
    return validate_spec(raw, source=str(spec_file), registry=registry or Registry())


def load_model(checkpoint_path: Path, backend_name: str | dict | None = None,
               registry: Registry | None = None) -> tuple[Backend, Vocab]:
    """A backend holding the checkpoint's weights, and the vocabulary it was trained with.

    ``checkpoint_path`` is a checkpoint directory or a run's output directory (its latest checkpoint);
    ``backend_name`` (a name or a backend section) replaces the backend it was trained on.
    """
    backend, vocab, _, _ = load_model_and_spec(checkpoint_path, backend_name, registry)
    return backend, vocab


def load_model_and_spec(checkpoint_path: Path, backend_name: str | dict | None = None,
                        registry: Registry | None = None) -> tuple[Backend, Vocab, Spec, Path]:
    """:func:`load_model`, plus the checkpoint's spec and the checkpoint directory it resolved to."""
    registry = registry or Registry()
    path = checkpoint_dir(checkpoint_path)
    spec = checkpoint_spec(path, backend_name, registry)
    loaded = ckpt.load_checkpoint(path, with_training_state=False)
    backend, vocab = build_model(spec, registry)  # in this process alone, even from a torchrun run
    backend.load_weights(loaded.weights)
    return backend, vocab, spec, path


def check_prefix(vocab: Vocab, prefix: str | None) -> None:
    """A task prefix must be a token of the model's vocabulary (one its run trained with)."""
    if prefix and prefix not in vocab.extra_tokens:
        raise PlmforgeError(f"prefix {prefix!r} is not in this model's vocabulary (it has {list(vocab.extra_tokens)})")


def encode_proteins(vocab: Vocab, sequences: list[str], prefix: str | None = None) -> list[np.ndarray]:
    """Model inputs ``[prefix] residues </s>``; a sequence with letters outside the vocabulary is a DataError."""
    check_prefix(vocab, prefix)
    encoded = []
    for number, sequence in enumerate(sequences, 1):
        try:
            encoded.append(vocab.encode(sequence, add_eos=True, prefix=prefix))
        except InvalidSequenceError as exc:
            raise DataError(f"sequence {number} of {len(sequences)}: {exc}") from None
    return encoded


def embed_sequences(backend: Backend, vocab: Vocab, sequences: list[str], prefix: str | None = None,
                    batch_tokens: int = 8192, per_protein: bool = False) -> list[np.ndarray]:
    """One array per sequence: [L, d_model] per residue, or [d_model] per protein."""
    offset = 1 if prefix else 0
    encoded = encode_proteins(vocab, sequences, prefix)
    lengths = np.array([len(e) for e in encoded])
    planner = BatchPlanner(max_length=int(lengths.max(initial=1)), pad_to_multiple=8, tokens=batch_tokens)
    out: list[np.ndarray | None] = [None] * len(sequences)
    for batch in planner.plan(lengths, np.random.default_rng(0), shuffle=False):
        width = int(round_up(int(lengths[batch].max()), 8))
        ids = np.zeros((len(batch), width), dtype=np.int32)
        for row, index in enumerate(batch):
            ids[row, : lengths[index]] = encoded[index]
        hidden = backend.embed(ids)
        for row, index in enumerate(batch):
            residues = hidden[row, offset: lengths[index] - 1]  # drop prefix and </s>
            out[index] = residues.mean(axis=0) if per_protein else residues
    return out  # type: ignore[return-value]


def embed_fasta(checkpoint_path: Path, fasta: Path, output: Path, per_protein: bool = False,
                prefix: str | None = None, backend_name: str | None = None, batch_tokens: int = 8192) -> int:
    """Write embeddings of every record of ``fasta``; returns the number of proteins."""
    from safetensors.numpy import save_file

    from plmforge.core.data.fasta import read_fasta

    output = Path(output)
    if output.suffix not in (".npy", ".safetensors"):
        raise PlmforgeError(f"{output}: output must end in .npy or .safetensors")
    if output.suffix == ".npy" and not per_protein:
        raise PlmforgeError(f"{output}: per-residue embeddings vary in length; write .safetensors, "
                            f"or add --per-protein for one .npy matrix")
    backend, vocab = load_model(checkpoint_path, backend_name)
    check_prefix(vocab, prefix)
    records = read_fasta(fasta, vocab=vocab)
    vectors = embed_sequences(backend, vocab, records.sequences, prefix=prefix, batch_tokens=batch_tokens,
                              per_protein=per_protein)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".npy":
        np.save(output, np.stack(vectors).astype(np.float32), allow_pickle=False)
        output.with_suffix(".ids.txt").write_text("\n".join(records.ids) + "\n")
    else:
        names = _unique(records.ids)
        save_file({name: np.ascontiguousarray(v, dtype=np.float32) for name, v in zip(names, vectors)},
                  str(output), metadata={"order": "\n".join(names),
                                         "kind": "per-protein" if per_protein else "per-residue"})
    return len(vectors)


def _unique(ids: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in ids:
        n = seen.get(name, 0)
        seen[name] = n + 1
        out.append(name if n == 0 else f"{name}#{n}")
    return out
