"""Downstream evaluation: each task's head fitted on a model's representations, logged as nested runs.

For every task of the spec and every representation (the model itself, and the reference rows that
show what pretraining buys: one-hot residues and a randomly initialised model of the same size), the
evaluator builds :class:`HeadData`, lets the backend fit the head, turns the predictions into metrics
with the task, and logs one nested MLflow run per pair under the parent (pretraining or evaluation)
run. The parent also gets the test metrics as ``task/<label>/<metric>`` (model) and
``reference/<name>/<label>/<metric>`` (references), which is what ``plmforge compare`` reads.

Frozen embeddings are cached on disk per model weights, prefix and protein set, so several heads on
the same proteins (Q3 and Q8, say) embed them once, and re-evaluating a checkpoint embeds nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from plmforge.core import embedding
from plmforge.core.backend import Backend
from plmforge.core.build import build_model
from plmforge.core.errors import PlmforgeError
from plmforge.core.heads import HeadData, HeadResult
from plmforge.core.registry import Registry
from plmforge.core.task import SPLITS, Task, TaskData, TaskSplit
from plmforge.core.tracking import Tracker, flatten
from plmforge.core.vocab import Vocab

if TYPE_CHECKING:
    from plmforge.core.spec import Spec, TaskSection

#: One-hot baseline alphabet: the 20 standard residues; anything else (X, U, B, ...) is all zeros.
ONE_HOT_LETTERS = "ACDEFGHIKLMNPQRSTVWY"
REFERENCE_NAMES = {"model": "model", "onehot": "one-hot", "random": "random init"}


@dataclass
class TaskOutcome:
    """One fitted head: which task, on which representation, with its metrics per split."""

    label: str
    reference: str  # "model", "onehot" or "random"
    metrics: dict[str, dict[str, float]]  # split -> metric -> value ("validation", "test")
    best_epoch: int
    seconds: float
    run_id: str | None = None
    figures: list[Path] = field(default_factory=list)


@dataclass
class Representation:
    """Where a head's inputs come from: a backend's encoder, or one-hot residues (``backend`` None)."""

    name: str
    backend: Backend | None
    cache_key: str | None


_ONE_HOT_COLUMN = np.full(256, -1, dtype=np.int64)  # byte -> column, -1 for non-standard letters
_ONE_HOT_COLUMN[np.frombuffer(ONE_HOT_LETTERS.encode(), dtype=np.uint8)] = np.arange(len(ONE_HOT_LETTERS))


def one_hot(sequence: str) -> np.ndarray:
    """[L, 20] float32 indicator of the standard residues (the baseline a model has to beat)."""
    columns = _ONE_HOT_COLUMN[np.frombuffer(sequence.encode(), dtype=np.uint8)]
    out = np.zeros((len(sequence), len(ONE_HOT_LETTERS)), dtype=np.float32)
    known = columns >= 0
    out[np.nonzero(known)[0], columns[known]] = 1.0
    return out


def weights_key(weights: Mapping[str, np.ndarray]) -> str:
    """A digest of model weights: equal weights share cached embeddings, whoever computed them."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        value = np.ascontiguousarray(weights[name], dtype=np.float32)
        digest.update(name.encode())
        digest.update(str(value.shape).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """Per-residue float16 embeddings on disk: ``<dir>/<model key>/<prefix>-<proteins key>.safetensors``."""

    def __init__(self, directory: Path | None):
        self.directory = Path(directory) if directory is not None else None
        self.hits = 0
        self.misses = 0

    def get(self, model_key: str | None, prefix: str | None, sequences: list[str],
            compute: Callable[[list[str]], list[np.ndarray]]) -> list[np.ndarray]:
        if self.directory is None or model_key is None:
            self.misses += 1
            return compute(sequences)
        proteins_key = hashlib.sha256("\n".join(sequences).encode()).hexdigest()[:20]
        path = self.directory / model_key[:20] / f"{prefix or 'none'}-{proteins_key}.safetensors"
        if path.is_file():
            loaded = _read_embeddings(path, len(sequences))
            if loaded is not None:
                self.hits += 1
                return loaded
        self.misses += 1
        vectors = compute(sequences)
        _write_embeddings(path, vectors)
        return vectors


def _read_embeddings(path: Path, count: int) -> list[np.ndarray] | None:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        arrays = load_file(str(path))
    except (OSError, SafetensorError):
        return None  # unreadable: recompute and overwrite
    offsets = arrays.get("offsets")
    if offsets is None or len(offsets) != count + 1:
        return None
    flat = arrays["embeddings"].astype(np.float32)
    return [flat[offsets[i]:offsets[i + 1]] for i in range(count)]


def _write_embeddings(path: Path, vectors: list[np.ndarray]) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in vectors])]).astype(np.int64)
    flat = np.concatenate(vectors).astype(np.float16) if vectors else np.zeros((0, 1), np.float16)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"embeddings": flat, "offsets": offsets}, str(temporary))
    os.replace(temporary, path)  # atomic: a crash never leaves a half-written cache entry


def standardize(inputs: dict[str, HeadData]) -> None:
    """Z-score every input feature with the train split's residue statistics, in place.

    Heads then see inputs of one scale whatever produced them (one-hot columns, embeddings of any
    norm), so a fixed learning rate and epoch budget is fair to every representation.
    """
    flat = np.concatenate(inputs["train"].inputs).astype(np.float64)
    mean = flat.mean(axis=0)
    std = np.maximum(flat.std(axis=0), 1e-6)
    for data in inputs.values():
        data.inputs = [((x - mean) / std).astype(np.float32) for x in data.inputs]


def subsample(split: TaskSplit, limit: int | None, seed: int) -> TaskSplit:
    """At most ``limit`` proteins, drawn without replacement by a seeded generator (order kept)."""
    if limit is None or len(split) <= limit:
        return split
    chosen = np.sort(np.random.default_rng(seed).choice(len(split), size=limit, replace=False))
    return split.subset(chosen)


def prepared_splits(task: Task, data: TaskData, seed: int) -> dict[str, TaskSplit]:
    """The task's splits cropped to ``max_length`` and subsampled as its config says."""
    config = task.config
    out = {}
    for index, name in enumerate(SPLITS):
        if name not in data.splits or len(data.splits[name]) == 0:
            raise PlmforgeError(f"task {type(task).__name__}: the {name} split is empty")
        limit = config.max_train_proteins if name == "train" else config.max_test_proteins
        split = subsample(data.splits[name], limit, seed + index)
        out[name] = split.cropped(config.max_length, task.level)
    return out


@dataclass(frozen=True)
class EvaluationPlan:
    """What evaluating takes from a spec: its tasks and how to run them (references, cache, batches, seed)."""

    tasks: list[tuple[str, Task]]
    references: list[str]
    output_dir: Path  # figures, and the embedding cache when it is on
    seed: int = 0
    batch_tokens: int = 8192
    standardize: bool = True
    embedding_cache: bool = True

    @classmethod
    def from_spec(cls, spec: Spec, output_dir: Path | None = None) -> EvaluationPlan:
        """The plan of ``spec``'s ``tasks:`` and ``evaluation:`` sections (output in its output_dir by default)."""
        settings = spec.evaluation
        return cls(tasks=load_tasks(spec.tasks), references=list(settings.references),
                   output_dir=Path(output_dir if output_dir is not None else spec.resolved_output_dir),
                   seed=spec.seed, batch_tokens=settings.batch_tokens, standardize=settings.standardize,
                   embedding_cache=settings.embedding_cache)


class Evaluator:
    """Runs the tasks of a plan on one model and logs them under ``parent`` (a started Tracker).

    ``random_model`` builds the same model with fresh weights, for the ``random`` reference.
    """

    def __init__(self, plan: EvaluationPlan, backend: Backend, vocab: Vocab, parent: Tracker,
                 random_model: Callable[[], Backend] | None = None, say: Callable[[str], None] = lambda text: None,
                 on_task_end: Callable[[TaskOutcome], None] = lambda outcome: None):
        self.plan = plan
        self.backend = backend
        self.vocab = vocab
        # the cache's key: hashing every weight is wasted work when there is no cache
        self.model_key = weights_key(backend.weights()) if plan.embedding_cache else None
        self.parent = parent
        self.random_model = random_model
        self.cache = EmbeddingCache(default_cache_dir(plan.output_dir) if plan.embedding_cache else None)
        self.say = say
        self.on_task_end = on_task_end
        self._random: Representation | None = None

    def run(self) -> list[TaskOutcome]:
        outcomes = []
        for label, task in self.plan.tasks:
            self._check_prefix(label, task)
            data = task.load()
            splits = prepared_splits(task, data, self.plan.seed)
            counts = ", ".join(f"{len(splits[s])} {s}" for s in SPLITS)
            self.say(f"task {label}: {counts} proteins")
            for reference in ["model", *self.plan.references]:
                outcome = self._fit(label, task, data, splits, self._representation(reference))
                outcomes.append(outcome)
                self.on_task_end(outcome)
        return outcomes

    # -- pieces -----------------------------------------------------------------------------------
    def _check_prefix(self, label: str, task: Task) -> None:
        prefix = task.config.prefix
        if prefix and prefix not in self.vocab.extra_tokens:
            raise PlmforgeError(f"task {label}: prefix {prefix!r} is not in this model's vocabulary "
                                f"(it has {list(self.vocab.extra_tokens) or 'no extra tokens'})")

    def _representation(self, reference: str) -> Representation:
        if reference == "model":
            return Representation("model", self.backend, self.model_key)
        if reference == "onehot":
            return Representation("onehot", None, None)
        if reference == "random":
            if self._random is None:
                if self.random_model is None:
                    raise PlmforgeError("the random-init reference needs the model's spec")
                backend = self.random_model()
                key = "random-" + weights_key(backend.weights()) if self.plan.embedding_cache else None
                self._random = Representation("random", backend, key)
            return self._random
        raise PlmforgeError(f"unknown reference {reference!r}; use 'onehot' or 'random'")

    def _inputs(self, task: Task, split: TaskSplit, representation: Representation) -> HeadData:
        config = task.config
        if representation.backend is None:
            return HeadData([one_hot(s) for s in split.sequences], split.labels)
        if config.head.finetune != "frozen":
            prefix = config.prefix
            ids = [self.vocab.encode(s, add_eos=True, prefix=prefix).astype(np.int32) for s in split.sequences]
            return HeadData(ids, split.labels, offset=1 if prefix else 0)
        backend = representation.backend

        def compute(sequences: list[str]) -> list[np.ndarray]:
            return embedding.embed_sequences(backend, self.vocab, sequences, prefix=config.prefix,
                                             batch_tokens=self.plan.batch_tokens)
        vectors = self.cache.get(representation.cache_key, config.prefix, split.sequences, compute)
        return HeadData(vectors, split.labels)

    def _fit(self, label: str, task: Task, data: TaskData, splits: dict[str, TaskSplit],
             representation: Representation) -> TaskOutcome:
        reference = representation.name
        settings = task.config.head
        if representation.backend is None and settings.finetune != "frozen":
            settings = settings.model_copy(update={"finetune": "frozen"})  # one-hot vectors have no encoder
        started = time.perf_counter()
        title = f"{label} [{REFERENCE_NAMES[reference]}]"
        self.say(f"{title}: {'embedding' if settings.finetune == 'frozen' else 'tokenizing'} proteins")
        inputs = {name: self._inputs(task, split, representation) for name, split in splits.items()}
        if settings.finetune == "frozen" and self.plan.standardize:
            standardize(inputs)
        problem = task.problem(data)
        self.say(f"{title}: fitting a {settings.kind} head ({settings.finetune}, {settings.epochs} epochs)")
        fitter = representation.backend or self.backend  # one-hot heads train on the run's backend
        result: HeadResult = fitter.fit_head(problem, settings, inputs["train"], inputs["validation"],
                                             [inputs["validation"], inputs["test"]])
        metrics = {name: task.metrics(predictions, splits[name], data)
                   for name, predictions in zip(("validation", "test"), result.predictions)}
        seconds = time.perf_counter() - started
        outcome = TaskOutcome(label, reference, metrics, result.best_epoch, seconds)
        figure_dir = self.plan.output_dir / "tasks" / label / reference
        outcome.figures = task.figures(result.predictions[1], splits["test"], data, figure_dir)
        outcome.run_id = self._log(label, task, data, representation, splits, result, outcome)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics["test"].items())
        self.say(f"{title}: test {shown}  ({seconds:.0f} s)")
        return outcome

    def _log(self, label: str, task: Task, data: TaskData, representation: Representation, splits: dict[str, TaskSplit],
             result: HeadResult, outcome: TaskOutcome) -> str | None:
        parent = self.parent
        reference = representation.name
        child = parent.child(f"{label} [{REFERENCE_NAMES[reference]}]")
        if child is not None:
            child.set_tags({"plmforge.kind": "task", "plmforge.task": label, "plmforge.reference": reference,
                            "plmforge.task_plugin": type(task).__name__,
                            "plmforge.trainable_parameters": result.trainable_parameters})
            params = flatten(task.config.model_dump(mode="json"))
            params.update({f"data.{k}": v for k, v in data.notes.items()})
            params.update({"task": label, "reference": reference,
                           **{f"proteins.{name}": len(split) for name, split in splits.items()}})
            child.log_params(params)
            for epoch, entry in enumerate(result.history, start=1):
                child.log_metrics({f"head/{k}": v for k, v in entry.items()}, epoch)
            final = {f"{split}/{k}": v for split, values in outcome.metrics.items() for k, v in values.items()}
            final["head/best_epoch"] = float(result.best_epoch)
            final["head/seconds"] = outcome.seconds
            child.log_metrics(_finite(final), result.best_epoch)
            for figure in outcome.figures:
                child.log_artifact(figure, "figures")
            child.end()
        prefix = f"task/{label}" if reference == "model" else f"reference/{reference}/{label}"
        parent.log_metrics(_finite({f"{prefix}/{k}": v for k, v in outcome.metrics["test"].items()}), 0)
        return child.run_id if child is not None else None


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    """MLflow rejects NaN in some stores; a metric that could not be computed is left out."""
    return {k: float(v) for k, v in metrics.items() if np.isfinite(v)}


def outcomes_table(outcomes: list[TaskOutcome]) -> str:
    """A plain-text summary: one line per task and representation with its test metrics."""
    lines = []
    for outcome in outcomes:
        values = "  ".join(f"{k} {v:.4f}" for k, v in outcome.metrics["test"].items())
        lines.append(f"{outcome.label:<24} {REFERENCE_NAMES[outcome.reference]:<12} {values}")
    return "\n".join(lines)


def outcomes_json(outcomes: list[TaskOutcome]) -> str:
    return json.dumps([{"task": o.label, "reference": o.reference, "metrics": o.metrics, "best_epoch": o.best_epoch,
                        "seconds": round(o.seconds, 2), "run_id": o.run_id} for o in outcomes], indent=2)


def load_tasks(sections: list[TaskSection]) -> list[tuple[str, Task]]:
    """Task instances from resolved spec ``tasks:`` sections, with their labels."""
    return [(section.label or section.name, section.plugin(section.config)) for section in sections]


def default_cache_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "embedding-cache"


def run_tasks(plan: EvaluationPlan, backend: Backend, vocab: Vocab, parent: Tracker,
              random_model: Callable[[], Backend] | None = None, say: Callable[[str], None] = lambda text: None,
              on_task_end: Callable[[TaskOutcome], None] = lambda outcome: None) -> list[TaskOutcome]:
    """The tasks of ``plan`` on ``backend``, logged under ``parent`` (see :class:`Evaluator`)."""
    return Evaluator(plan, backend, vocab, parent, random_model, say, on_task_end).run()


def evaluate_checkpoint(spec: Spec, checkpoint: Path, registry: Registry | None = None,
                        say: Callable[[str], None] = print,
                        tracking: bool = True) -> tuple[list[TaskOutcome], str | None]:
    """``plmforge evaluate``: the tasks of ``spec`` on a checkpoint, as a top-level MLflow evaluation run.

    The model (size, vocabulary, weights) comes from the checkpoint; the backend, tasks, references and
    tracking come from ``spec``. Returns the outcomes and the evaluation run's id.
    """
    if not spec.tasks:
        raise PlmforgeError(f"spec {spec.name!r} lists no tasks: add a 'tasks:' section to evaluate")
    registry = registry or Registry()
    backend_section = {"name": spec.backend.name, **spec.backend.plugin_options()}
    backend, vocab, model_spec, path = embedding.load_model_and_spec(checkpoint, backend_section, registry)
    tracker = Tracker(spec.tracking.enabled and tracking, spec.tracking.tracking_uri, spec.tracking.experiment,
                      spec.tracking.run_name or f"{model_spec.name} evaluation", warn=say)
    run_id = tracker.start()
    tracker.log_params(flatten(model_spec.to_dict()))
    tracker.set_tags({"plmforge.kind": "evaluation", "plmforge.checkpoint": str(path.resolve()),
                      "plmforge.backend": spec.backend.name, "plmforge.spec_name": model_spec.name,
                      "plmforge.tasks": ",".join(section.label or section.name for section in spec.tasks)})
    status = "FAILED"
    try:
        outcomes = run_tasks(EvaluationPlan.from_spec(spec), backend, vocab, tracker,
                             random_model=lambda: build_model(model_spec, registry)[0], say=say)
        status = "FINISHED"
    finally:
        tracker.end(status)
    return outcomes, run_id
