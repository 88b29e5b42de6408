"""A Hugging Face T5 encoder directory (e.g. a downloaded Ankh) as a reference representation.

The directory is read by plmforge's own checkpoint reader (:func:`plmforge.core.checkpoint.read_hf_checkpoint`,
the one ``plmforge convert`` and ``model.init_from`` use): ``config.json`` plus ``model.safetensors``
(or safetensors shards with their index), from a ``T5ForConditionalGeneration`` or ``T5EncoderModel``,
Ankh's format or what ``plmforge convert --to hf`` writes. Weights in pickle formats
(``pytorch_model.bin``) are refused, never unpickled; only the gated feed-forward of T5 v1.1 / Ankh is
supported (as everywhere in plmforge). Ids follow the Ankh tokenizer, as plmforge's vocabulary does.

Only the encoder is built (a full T5's decoder is not needed for embeddings), as a plmforge model on
the run's backend, and embedded by :func:`plmforge.core.embedding.embed_sequences` exactly as a
plmforge checkpoint is: residues then ``</s>``, without a task prefix (an Ankh3 checkpoint's ``[NLU]``
is not prepended), the ``</s>`` row dropped. Heads on it are trained frozen.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
from pydantic import Field

from plmforge.core.errors import PlmforgeError
from plmforge.core.reference import Reference, ReferenceConfig, ReferenceContext, ReferenceUnavailable
from plmforge.core.strict import checked_path
from plmforge.core.vocab import BASE_SIZE, RESIDUES, TASK_PREFIXES, Vocab

if TYPE_CHECKING:
    from plmforge.core.backend import Backend

#: Ids a checkpoint must have rows for: <pad>, </s>, <unk> and the residue letters.
MIN_VOCAB = 3 + len(RESIDUES)


def directory_problem(text: str) -> str | None:
    """Why ``text`` is not a directory here (``~`` expanded, relative to the working directory), or None."""
    path = Path(text).expanduser()
    if not path.exists():
        return f"directory {text!r} not found (looked at {path.absolute()})"
    if not path.is_dir():
        return f"{text!r} is not a directory: give a Hugging Face T5 directory (config.json and model.safetensors)"
    return None


class T5EncoderConfig(ReferenceConfig):
    path: Annotated[str, checked_path(directory_problem)] = Field(
        description="A Hugging Face T5 directory (config.json + model.safetensors), e.g. a downloaded Ankh.")
    backend: str | None = Field(None, description="Backend that runs the encoder; defaults to the run's.")


class T5Encoder(Reference):
    """The per-residue encoder states of a Hugging Face T5 / Ankh checkpoint, computed by plmforge."""

    Config = T5EncoderConfig
    config: T5EncoderConfig
    title = "T5 encoder"

    def __init__(self, config: T5EncoderConfig):
        super().__init__(config)
        self._backend: Backend | None = None
        self._vocab = Vocab()
        self._batch_tokens = 8192
        self._key: str | None = None

    def default_label(self) -> str:
        name = Path(self.config.path).expanduser().resolve().name or "encoder"
        return "t5-" + "".join(c if c.isalnum() or c in "_.-" else "_" for c in name)

    def describe(self) -> str:
        return f"T5 encoder {Path(self.config.path).name}"

    def _unavailable(self, why: str) -> ReferenceUnavailable:
        return ReferenceUnavailable(f"reference {self.label}: {why}")

    def setup(self, context: ReferenceContext | None = None) -> None:
        """Read the directory, check it fits a plmforge encoder, and load it into a backend."""
        from plmforge.core.build import make_backend
        from plmforge.core.checkpoint import read_hf_checkpoint
        from plmforge.core.conversion import conversion_objective, parameter_shapes
        from plmforge.core.model_config import ModelConfig
        from plmforge.core.registry import Registry
        from plmforge.core.spec import validate_spec

        problem = directory_problem(self.config.path)
        if problem:
            raise self._unavailable(problem)
        path = Path(self.config.path).expanduser()
        try:
            shape, weights, vocab_size = read_hf_checkpoint(path)
        except PlmforgeError as exc:  # no config.json, no safetensors (a .bin is refused), not a T5 v1.1, ...
            raise self._unavailable(str(exc)) from None
        known = BASE_SIZE + len(TASK_PREFIXES)
        if vocab_size > known:
            raise self._unavailable(f"{path} has a vocabulary of {vocab_size} tokens, larger than plmforge's "
                                    f"{known} (Ankh's {BASE_SIZE} and {', '.join(TASK_PREFIXES)}): its ids would "
                                    f"not mean plmforge's tokens")
        if vocab_size < MIN_VOCAB:
            raise self._unavailable(f"{path} has a vocabulary of {vocab_size} tokens, too few for the Ankh "
                                    f"residue ids (plmforge needs at least {MIN_VOCAB})")
        model = {**shape, "preset": None, "num_decoder_layers": 0}
        expected = parameter_shapes(ModelConfig(**model), vocab_size)
        missing = sorted(n for n in expected if n not in weights)
        wrong = [f"{n} {tuple(weights[n].shape)} vs config {expected[n]}" for n in expected
                 if n in weights and tuple(weights[n].shape) != tuple(expected[n])]
        if wrong:
            raise self._unavailable(f"width mismatch: {path}/config.json does not describe its weights "
                                    f"({'; '.join(wrong[:3])})")
        if missing:
            raise self._unavailable(f"{path} lacks encoder weights {', '.join(missing[:4])}")
        registry = Registry()
        backend_name = self.config.backend or (context.backend_name if context else None) or "torch"
        try:
            spec = validate_spec({"name": self.label, "model": model, "backend": {"name": backend_name},
                                  "objectives": [{"name": conversion_objective(registry, has_decoder=False)}],
                                  "tracking": {"enabled": False}}, source=f"reference {self.label}",
                                 registry=registry)
            options = spec.backend.config.for_one_process()
            backend = make_backend(registry.load("backend", backend_name), options, spec, vocab_size, ())
            backend.load_weights({n: weights[n] for n in expected}, strict=True)
        except PlmforgeError as exc:  # an unknown or uninstalled backend, weights it refuses
            raise self._unavailable(str(exc)) from None
        self._backend = backend
        if context is not None:
            self._batch_tokens = context.batch_tokens
        self._key = None

    def embed(self, sequences: list[str]) -> list[np.ndarray]:
        """Per-residue encoder states, without task prefix, the ``</s>`` row dropped."""
        from plmforge.core.embedding import embed_sequences

        if self._backend is None:
            self.setup(None)
        assert self._backend is not None
        return [np.asarray(e, dtype=np.float32) for e in
                embed_sequences(self._backend, self._vocab, sequences, batch_tokens=self._batch_tokens)]

    def cache_key(self) -> str:
        """``t5-`` and the sha256 of config.json and the weight files (a checkpoint edited in place changes it)."""
        if self._key is None:
            from plmforge.core.checkpoint import MODEL_CONFIG, read_shape

            try:
                files = [Path(self.config.path).expanduser() / MODEL_CONFIG, *read_shape(self.config.path).files]
            except PlmforgeError as exc:
                raise self._unavailable(str(exc)) from None
            digest = hashlib.sha256()
            for file in files:
                with open(file, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 22), b""):
                        digest.update(chunk)
            self._key = "t5-" + digest.hexdigest()
        return self._key
