"""Scoring embeddings made elsewhere: ``plmforge evaluate SPEC --embeddings FILE``.

Any model's per-residue features can sit in the same table as plmforge's own, scored by the same
heads on the same proteins with the same references. Three steps (docs/references.md):

1. ``plmforge evaluate SPEC --write-proteins proteins.fasta`` writes every protein the spec's tasks
   use (after their subsampling and cropping), each once;
2. embed that FASTA with any model into the safetensors layout ``plmforge embed`` writes: one
   float32 ``[L, d]`` tensor per protein, named by its FASTA id, one row per residue;
3. ``plmforge evaluate SPEC --embeddings embeddings.safetensors``.

The FASTA ids are digests of the sequences (``seq-<sha256 prefix>``), so proteins are matched by
sequence: the same protein in two tasks is embedded once, and a file made for one spec serves any
spec whose tasks use the same sequences. The embeddings are the "model" row; the heads (frozen: a
file has no encoder to fine-tune) are fitted by the spec's backend around a one-layer stand-in model
that fitting a frozen head never runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from plmforge.core.backend import Backend
from plmforge.core.build import make_backend
from plmforge.core.errors import PlmforgeError
from plmforge.core.evaluation import EvaluationPlan, Evaluator, TaskOutcome, evaluation_group, prepared_splits
from plmforge.core.model_config import ModelConfig
from plmforge.core.reference import Reference, ReferenceConfig
from plmforge.core.registry import Registry
from plmforge.core.spec import Spec
from plmforge.core.tracking import Tracker
from plmforge.core.vocab import Vocab

#: How many missing ids an error lists.
SHOWN = 3


def protein_id(sequence: str) -> str:
    """The FASTA id of a task protein: a digest of its sequence, so a file is matched by sequence."""
    return "seq-" + hashlib.sha256(sequence.encode()).hexdigest()[:20]


def task_proteins(plan: EvaluationPlan) -> dict[str, tuple[str, str]]:
    """Every protein the plan's tasks use, each once: id -> (sequence, its first use 'task/split/id')."""
    proteins: dict[str, tuple[str, str]] = {}
    for label, task in plan.tasks:
        for split_name, split in prepared_splits(task, task.load(), plan.seed).items():
            for ident, sequence in zip(split.ids, split.sequences):
                proteins.setdefault(protein_id(sequence), (sequence, f"{label}/{split_name}/{ident}"))
    return proteins


def write_task_proteins(spec: Spec, fasta: Path) -> tuple[int, int]:
    """Write the proteins of ``spec``'s tasks to ``fasta``; returns (proteins, tasks)."""
    if not spec.tasks:
        raise PlmforgeError(f"spec {spec.name!r} lists no tasks: add a 'tasks:' section first")
    plan = EvaluationPlan.from_spec(spec)
    proteins = task_proteins(plan)
    fasta = Path(fasta)
    fasta.parent.mkdir(parents=True, exist_ok=True)
    fasta.write_text("".join(f">{ident} {where}\n{sequence}\n" for ident, (sequence, where) in proteins.items()))
    return len(proteins), len(plan.tasks)


class EmbeddingFile:
    """Per-residue embeddings by FASTA id in a safetensors file (what ``plmforge embed`` writes)."""

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        self.path = Path(path)
        if not self.path.is_file():
            raise PlmforgeError(f"{self.path}: embeddings file not found")
        try:
            with safe_open(str(self.path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                self.shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
        except (OSError, SafetensorError) as exc:
            raise PlmforgeError(f"{self.path}: not a readable safetensors file ({exc}); write per-residue "
                                f"embeddings with `plmforge embed CHECKPOINT FASTA -o FILE.safetensors`") from None
        if metadata.get("kind") == "per-protein" or (self.shapes and all(len(s) == 1 for s in self.shapes.values())):
            raise PlmforgeError(f"{self.path}: holds one vector per protein; heads need per-residue embeddings "
                                f"(run `plmforge embed` without --per-protein)")

    def check(self, proteins: dict[str, tuple[str, str]]) -> int:
        """The embedding width, after checking that every protein is there with one row per residue."""
        missing = [ident for ident in proteins if ident not in self.shapes]
        if missing:
            shown = ", ".join(f"{ident} ({proteins[ident][1]})" for ident in missing[:SHOWN])
            raise PlmforgeError(
                f"{self.path}: {len(missing)} of the {len(proteins)} proteins the spec's tasks use have no embedding, "
                f"e.g. {shown}. Proteins are matched by sequence through their ids: write them with `plmforge "
                f"evaluate SPEC --write-proteins FASTA` (with this spec's tasks, seed and limits), embed that "
                f"FASTA and evaluate again")
        widths: dict[int, list[str]] = {}
        for ident, shape in self.shapes.items():
            if len(shape) != 2:
                raise PlmforgeError(f"{self.path}: {ident!r} has shape {list(shape)}; per-residue embeddings are "
                                    f"[residues, width]")
            widths.setdefault(shape[1], []).append(ident)
        if len(widths) > 1:
            (wide, first), (other, second) = sorted(widths.items(), key=lambda item: -len(item[1]))[:2]
            raise PlmforgeError(f"{self.path}: embeddings must all have one width; {len(first)} are {wide} wide "
                                f"and {len(second)} are {other} wide (e.g. {second[0]!r})")
        for ident, (sequence, where) in proteins.items():
            rows = self.shapes[ident][0]
            if rows != len(sequence):
                raise PlmforgeError(f"{self.path}: {ident!r} ({where}) has {rows} rows for {len(sequence)} residues; "
                                    f"write one row per residue, without start or end token rows")
        return next(iter(widths)) if widths else 0

    def read(self, idents: list[str]) -> list[np.ndarray]:
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="numpy") as handle:
                return [np.asarray(handle.get_tensor(ident), dtype=np.float32) for ident in idents]
        except TypeError as exc:  # e.g. bfloat16, which numpy cannot hold
            raise PlmforgeError(f"{self.path}: cannot read as numpy ({exc}); store float32 or float16") from None


class PrecomputedEmbeddings(Reference):
    """The model's row from an :class:`EmbeddingFile`: each sequence's embedding, found by its id."""

    title = "model"

    def __init__(self, file: EmbeddingFile):
        super().__init__(ReferenceConfig(label="model"))
        self.file = file

    def embed(self, sequences: list[str]) -> list[np.ndarray]:
        return self.file.read([protein_id(s) for s in sequences])


def head_host(spec: Spec, registry: Registry, vocab_size: int) -> Backend:
    """The spec's backend around a one-layer, 8-wide model: a frozen head never runs the model, so this
    is all ``fit_head`` needs when the embeddings come from a file."""
    stand_in = ModelConfig(preset=None, d_model=8, num_layers=1, num_decoder_layers=0, num_heads=1, d_kv=8, d_ff=8)
    backend_cls = registry.load("backend", spec.backend.name)
    return make_backend(backend_cls, spec.backend.config.for_one_process(), spec.model_copy(update={"model": stand_in}),
                        vocab_size, [])


def evaluate_embeddings(spec: Spec, path: Path, registry: Registry | None = None,
                        say: Callable[[str], None] = print, tracking: bool = True,
                        warn: Callable[[str], None] | None = None) -> tuple[list[TaskOutcome], str | None]:
    """``plmforge evaluate --embeddings``: the tasks of ``spec`` on precomputed embeddings, as a top-level
    MLflow evaluation run; the references that need a model (``random``) are left out with a note."""
    if not spec.tasks:
        raise PlmforgeError(f"spec {spec.name!r} lists no tasks: add a 'tasks:' section to evaluate")
    registry = registry or Registry()
    path = Path(path)
    file = EmbeddingFile(path)
    plan = EvaluationPlan.from_spec(spec)
    proteins = task_proteins(plan)
    width = file.check(proteins)
    say(f"embeddings {path}: {len(proteins)} task proteins found by sequence, {width} wide")
    prefixes = [task.config.prefix for _, task in plan.tasks if task.config.prefix]
    vocab = Vocab(extra_tokens=dict.fromkeys(prefixes))  # a file's embeddings have no prefix: accepted, unused
    host = head_host(spec, registry, len(vocab))
    tracker = Tracker(spec.tracking.enabled and tracking, spec.tracking.tracking_uri, spec.tracking.experiment,
                      spec.tracking.run_name or f"{path.stem} evaluation", warn=say)
    run_id = tracker.start()
    tracker.log_params({"embeddings.path": str(path.resolve()), "embeddings.proteins": len(proteins),
                        "embeddings.width": width, "seed": spec.seed})
    tracker.set_tags({"plmforge.kind": "evaluation", "plmforge.embeddings": str(path.resolve()),
                      "plmforge.backend": spec.backend.name, "plmforge.spec_name": spec.name,
                      "plmforge.tasks": ",".join(section.label or section.name for section in spec.tasks),
                      # the file stands for the model: evaluations of one file pool over the spec's seed only
                      "plmforge.replicate_group": evaluation_group({"embeddings.path": str(path.resolve()),
                                                                    "embeddings.width": str(width)}, spec),
                      "plmforge.seed": spec.seed})
    status = "FAILED"
    try:
        outcomes = Evaluator(plan, host, vocab, tracker, say=say, model=PrecomputedEmbeddings(file), warn=warn).run()
        status = "FINISHED"
    finally:
        tracker.end(status)
    return outcomes, run_id
