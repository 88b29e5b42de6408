"""Downstream evaluation: each task's head fitted on a model's representations, logged as nested runs.

For every task of the spec and every representation (the model itself, and the reference plugins of
``evaluation.references``: one-hot residues and a randomly initialised model of the same size show
what pretraining buys, a published protein LM where a real one stands), the evaluator builds
:class:`HeadData`, lets the backend fit the head, turns the predictions into metrics with the task,
and logs one nested MLflow run per pair under the parent (pretraining or evaluation) run, named
``<task>·<representation> <parent's short label>``, started before the embedding so that its duration
is the work's. Model and reference runs log the same names (docs/tracking.md): ``task/<label>/<metric>``
with its bootstrap interval, ``task/<label>/validation/<metric>``, ``task/<label>/head/<k>`` per epoch and
``task/<label>/time/embedding_seconds``, ``.../fit_seconds``, ``.../bootstrap_seconds``. The parent gets the
model's test metrics (``task/<label>/<metric>``) and the per-protein outcomes of every representation
(``outcomes/<task>/<representation>.npz``); ``plmforge compare`` reads the references from the child
runs. A reference that cannot be built or fails to embed is reported (tag
``plmforge.reference_error.<ref>``) and left out; the rest of the evaluation goes on.

Frozen embeddings are cached on disk per model weights, prefix and protein set, so several heads on
the same proteins (Q3 and Q8, say) embed them once, and re-evaluating a checkpoint embeds nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from plmforge.core import embedding
from plmforge.core.backend import Backend
from plmforge.core.build import build_model
from plmforge.core.errors import PlmforgeError
from plmforge.core.figures import FigureContext, task_figures
from plmforge.core.heads import HeadData, HeadResult, HeadSettings
from plmforge.core.reference import Reference, ReferenceContext
from plmforge.core.registry import Registry
from plmforge.core.task import SPLITS, Task, TaskData, TaskSplit
from plmforge.core.tracking import (
    Tracker,
    flatten,
    replicate_group,
    run_params,
    run_title,
    source_tags,
    task_params_section,
)
from plmforge.core.uncertainty import Outcomes, task_outcomes, write_outcomes
from plmforge.core.vocab import Vocab

if TYPE_CHECKING:
    from plmforge.core.spec import Spec, TaskSection



class _Titles(dict):
    """Titles of rows in tables and run names; a row not listed shows its label."""

    def __missing__(self, key: str) -> str:
        return key


#: The model's row and the default references; other references show their label (runs use their title).
REFERENCE_NAMES: dict[str, str] = _Titles({"model": "model", "onehot": "one-hot", "random": "random init"})


@dataclass
class TaskOutcome:
    """One task on one representation: its metrics per split (means over head seeds) and test intervals."""

    label: str
    reference: str  # "model" or the reference's label
    metrics: dict[str, dict[str, float]]  # split -> metric -> value ("validation", "test")
    best_epoch: int  # of the first head seed
    seconds: float
    run_id: str | None = None
    figures: list[Path] = field(default_factory=list)
    #: test metric -> (low, high) bootstrap interval over test proteins; empty when intervals are off
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    confidence: float = 0.95
    head_seeds: list[int] = field(default_factory=lambda: [0])
    #: test metric -> standard deviation over head seeds (only with more than one)
    head_sd: dict[str, float] = field(default_factory=dict)
    outcomes_file: Path | None = None  # the per-protein outcomes (also the parent run's artifact)
    #: ``seconds`` in parts: the head's inputs (embedding, or reading the embedding cache; standardising), fitting
    #: the head over all head seeds, and the test metrics with their bootstrap intervals
    embedding_seconds: float = 0.0
    fit_seconds: float = 0.0
    bootstrap_seconds: float = 0.0

    def shown(self, split: str = "test") -> str:
        """``q3 0.6210 [0.5940, 0.6570]  macro_f1 ...``: the metrics of a split, with intervals where known."""
        return "  ".join(f"{k} {format_interval(v, *self.intervals.get(k, (np.nan, np.nan)))}"
                         if split == "test" else f"{k} {v:.4f}" for k, v in self.metrics[split].items())


def format_interval(value: float, low: float, high: float) -> str:
    """``0.6210 [0.5940, 0.6570]``, or the value alone when there is no interval."""
    if np.isfinite(low) and np.isfinite(high):
        return f"{value:.4f} [{low:.4f}, {high:.4f}]"
    return f"{value:.4f}"


@dataclass
class Representation:
    """Where a head's inputs come from: an encoder (``backend``: the model, random init), else a reference.

    An encoder embeds with the task's prefix and can be fine-tuned; a reference without one only
    embeds (:meth:`Reference.embed`), so its heads are always frozen.
    """

    name: str  # "model" or the reference's label: the name in metric keys
    backend: Backend | None
    cache_key: str | None
    reference: Reference | None = None
    title: str = ""  # tables and run names; defaults to REFERENCE_NAMES[name]

    def __post_init__(self) -> None:
        self.title = self.title or REFERENCE_NAMES[self.name]


class _ReferenceFailed(PlmforgeError):
    """A reference failed while embedding: the evaluation drops it and goes on."""


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

    Memory: per-residue states of a wide model (UniRep's 1,900 columns) are gigabytes, so no copy of
    them is made: the statistics are summed one protein at a time in float64 (two passes, as numpy's
    own ``std``), and each float32 array is overwritten, the float64 arithmetic done in numpy's small
    casting buffers. An array that cannot be written (read-only, or not float32) is replaced by a
    standardised float32 copy, one protein at a time. Protein-level inputs are not pooled first:
    heads batch proteins by length, so pooling would change what a head is fitted on.
    """
    train = inputs["train"].inputs
    count = sum(len(x) for x in train)
    mean = sum(np.sum(x, axis=0, dtype=np.float64) for x in train) / count
    variance = sum(np.sum(np.square(x - mean), axis=0) for x in train) / count
    std = np.maximum(np.sqrt(variance), 1e-6)
    for data in inputs.values():
        data.inputs = [_standardized(x, mean, std) for x in data.inputs]


def _standardized(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` in float32, written into ``x`` itself when it is a writable float32 array."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.writeable):
        x = np.array(x, dtype=np.float32)
    np.subtract(x, mean, out=x, casting="same_kind")
    np.divide(x, std, out=x, casting="same_kind")
    return x


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
    references: list[Reference | str]  # reference plugin instances, or plugin names (default options)
    output_dir: Path  # figures, and the embedding cache when it is on
    seed: int = 0
    batch_tokens: int = 8192
    standardize: bool = True
    embedding_cache: bool = True
    backend_name: str | None = None  # the run's backend, for references that build a plmforge model
    bootstrap_resamples: int = 1000  # 0: no intervals (docs/uncertainty.md)
    confidence: float = 0.95
    bootstrap_seed: int = 0  # fixed across runs, so that runs compared later share their resamples

    @classmethod
    def from_spec(cls, spec: Spec, output_dir: Path | None = None) -> EvaluationPlan:
        """The plan of ``spec``'s ``tasks:`` and ``evaluation:`` sections (output in its output_dir by default)."""
        settings = spec.evaluation
        return cls(tasks=load_tasks(spec.tasks), references=[section.build() for section in settings.references],
                   output_dir=Path(output_dir if output_dir is not None else spec.resolved_output_dir),
                   seed=spec.seed, batch_tokens=settings.batch_tokens, standardize=settings.standardize,
                   embedding_cache=settings.embedding_cache, backend_name=spec.backend.name,
                   bootstrap_resamples=settings.bootstrap_resamples, confidence=settings.confidence,
                   bootstrap_seed=settings.bootstrap_seed)


class Evaluator:
    """Runs the tasks of a plan on one model and logs them under ``parent`` (a started Tracker).

    ``random_model`` builds the same model with fresh weights, for references such as ``random``.
    ``model``, when given, is the model's row instead of ``backend``'s encoder (precomputed embeddings,
    ``plmforge evaluate --embeddings``); ``backend`` then only fits the (frozen) heads. ``warn`` (by
    default ``say``) tells of a reference left out.
    """

    def __init__(self, plan: EvaluationPlan, backend: Backend, vocab: Vocab, parent: Tracker,
                 random_model: Callable[[], Backend] | None = None, say: Callable[[str], None] = lambda text: None,
                 on_task_end: Callable[[TaskOutcome], None] = lambda outcome: None, model: Reference | None = None,
                 warn: Callable[[str], None] | None = None):
        self.plan = plan
        self.backend = backend
        self.vocab = vocab
        self.model = model
        # the cache's key: hashing every weight is wasted work when there is no cache
        self.model_key = weights_key(backend.weights()) if plan.embedding_cache and model is None else None
        self.parent = parent
        self.random_model = random_model
        self.cache = EmbeddingCache(default_cache_dir(plan.output_dir) if plan.embedding_cache else None)
        self.say = say
        self.warn = warn or say
        self.on_task_end = on_task_end
        #: references left out, by label, with the reason (also the parent's plmforge.reference_error.* tags)
        self.unavailable: dict[str, str] = {}
        self._widths: dict[str, int] = {}

    def run(self) -> list[TaskOutcome]:
        outcomes = []
        representations = [self._model_representation(), *self._references()]
        for label, task in self.plan.tasks:
            self._check_prefix(label, task)
            data = task.load()
            splits = prepared_splits(task, data, self.plan.seed)
            counts = ", ".join(f"{len(splits[s])} {s}" for s in SPLITS)
            self.say(f"task {label}: {counts} proteins")
            for representation in representations:
                if representation.name in self.unavailable:
                    continue
                try:
                    outcome = self._fit(label, task, data, splits, representation)
                except _ReferenceFailed as exc:
                    self._leave_out(representation.name, str(exc))
                    continue
                outcomes.append(outcome)
                self.on_task_end(outcome)
        return outcomes

    # -- pieces -----------------------------------------------------------------------------------
    def _check_prefix(self, label: str, task: Task) -> None:
        prefix = task.config.prefix
        if prefix and prefix not in self.vocab.extra_tokens:
            raise PlmforgeError(f"task {label}: prefix {prefix!r} is not in this model's vocabulary "
                                f"(it has {list(self.vocab.extra_tokens) or 'no extra tokens'})")

    def _model_representation(self) -> Representation:
        if self.model is not None:
            return Representation("model", None, None, self.model)
        return Representation("model", self.backend, self.model_key)

    def _references(self) -> list[Representation]:
        """The plan's references, each set up once; one that cannot be is reported and left out."""
        context = ReferenceContext(vocab=self.vocab, batch_tokens=self.plan.batch_tokens, seed=self.plan.seed,
                                   random_model=self.random_model, backend_name=self.plan.backend_name)
        out = []
        for item in self.plan.references:
            reference = reference_instance(item)
            label = reference.label
            try:
                reference.setup(context)
                encoder = reference.encoder()
                key = reference.cache_key() if self.plan.embedding_cache else None
            except Exception as exc:  # noqa: BLE001 - the plugin's failure: reported, the evaluation goes on
                self._leave_out(label, _failure(exc))
                continue
            out.append(Representation(label, encoder, key, reference, reference.describe()))
        return out

    def _leave_out(self, label: str, message: str) -> None:
        """One line and one tag on the parent run: the reference is skipped for every task from now on."""
        message = message.removeprefix(f"reference {label}: ")  # the line names it already
        self.unavailable[label] = message
        self.warn(f"reference {label}: unavailable, left out of the evaluation: {message}")
        self.parent.set_tags({f"plmforge.reference_error.{label}": message[:4000]})

    def _inputs(self, task: Task, split: TaskSplit, representation: Representation) -> HeadData:
        config = task.config
        if representation.backend is None:  # a reference's (or precomputed) embeddings: frozen heads only
            vectors = self.cache.get(representation.cache_key, None, split.sequences,
                                     lambda sequences: self._embed(representation, sequences))
            return HeadData(vectors, split.labels)
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

    def _embed(self, representation: Representation, sequences: list[str]) -> list[np.ndarray]:
        """``Reference.embed``, checked: [L, d] finite float32 per protein, one width throughout."""
        name = representation.name
        fail = PlmforgeError if name == "model" else _ReferenceFailed
        try:
            vectors = representation.reference.embed(sequences)
        except Exception as exc:  # noqa: BLE001 - the plugin's failure: reported, the evaluation goes on
            if name == "model":
                raise
            raise _ReferenceFailed(_failure(exc)) from exc
        if len(vectors) != len(sequences):
            raise fail(f"embed() returned {len(vectors)} arrays for {len(sequences)} proteins")
        out = []
        for sequence, vector in zip(sequences, vectors):
            vector = np.asarray(vector, dtype=np.float32)
            width = self._widths.setdefault(name, vector.shape[-1] if vector.ndim == 2 else -1)
            if vector.ndim != 2 or vector.shape[0] != len(sequence):
                raise fail(f"embed() returned shape {list(vector.shape)} for a protein of {len(sequence)} residues; "
                           f"expected [{len(sequence)}, width]")
            if vector.shape[1] != width:
                raise fail(f"embeddings are {width} wide for some proteins and {vector.shape[1]} for others")
            if not np.isfinite(vector).all():
                raise fail(f"embed() returned NaN or infinite values for a protein of {len(sequence)} residues")
            out.append(vector)
        return out

    def _frozen_note(self, task: Task, representation: Representation) -> str | None:
        """Why a head asked to fine-tune was fitted frozen (the representation has no encoder), or None."""
        asked = task.config.head.finetune
        if representation.backend is not None or asked == "frozen":
            return None
        return f"{representation.title} has no encoder to fine-tune: head fitted frozen instead of {asked}"

    def _fit(self, label: str, task: Task, data: TaskData, splits: dict[str, TaskSplit],
             representation: Representation) -> TaskOutcome:
        """One task on one representation, in its own child run: started before the embedding, so its
        duration in MLflow is the work's; ended FAILED (a reference with ``plmforge.reference_error``) on errors."""
        child = self.parent.child(child_run_name(label, representation.name, self.parent))
        if child is not None:
            child.set_tags({"plmforge.kind": "task", "plmforge.task": label, "plmforge.reference": representation.name,
                            "plmforge.task_plugin": type(task).__name__})
            note = self._frozen_note(task, representation)
            if note:
                child.set_tags({"plmforge.note": note})
            child.log_params(self._params(label, task, data, representation, splits))
        status = "FAILED"
        try:
            outcome = self._fit_logged(label, task, data, splits, representation, child)
            status = "FINISHED"
        except _ReferenceFailed as exc:
            if child is not None:
                child.set_tags({"plmforge.reference_error": str(exc)[:4000]})
            raise
        finally:
            if child is not None:
                child.end(status)
        return outcome

    def _params(self, label: str, task: Task, data: TaskData, representation: Representation,
                splits: dict[str, TaskSplit]) -> dict[str, object]:
        """A task run's params: the task's options (those its head uses), its data and the bootstrap settings."""
        config = task.config.model_dump(mode="json")
        if self._frozen_note(task, representation):  # what was fitted, not only what was asked
            config["head"]["finetune"] = "frozen"
        params: dict[str, object] = flatten(task_params_section(config, pair=task.level == "pair"))
        params.update({f"data.{k}": v for k, v in data.notes.items()})
        params.update({"task": label, "reference": representation.name,
                       **{f"proteins.{name}": len(split) for name, split in splits.items()}})
        settings = task.config.head
        params.update({"head.seeds": ",".join(map(str, _head_seeds(settings))),
                       "bootstrap.resamples": self.plan.bootstrap_resamples,
                       "bootstrap.confidence": self.plan.confidence, "bootstrap.seed": self.plan.bootstrap_seed})
        return params

    def _fit_logged(self, label: str, task: Task, data: TaskData, splits: dict[str, TaskSplit],
                    representation: Representation, child: Tracker | None) -> TaskOutcome:
        reference = representation.name
        settings = task.config.head
        if representation.backend is None and settings.finetune != "frozen":
            settings = settings.model_copy(update={"finetune": "frozen"})  # no encoder to tune (one-hot)
        started = time.perf_counter()
        title = f"{label} [{representation.title}]"
        self.say(f"{title}: {'embedding' if settings.finetune == 'frozen' else 'tokenizing'} proteins")
        hits, misses = self.cache.hits, self.cache.misses
        inputs = {name: self._inputs(task, split, representation) for name, split in splits.items()}
        if settings.finetune == "frozen" and self.plan.standardize:
            standardize(inputs)
        embedding_seconds = time.perf_counter() - started
        if child is not None:
            child.set_tags({"plmforge.embedding": _embedding_source(settings.finetune, self.cache.hits - hits,
                                                                    self.cache.misses - misses)})
        fit_started = time.perf_counter()
        problem = task.problem(data)
        seeds = _head_seeds(settings)
        repeats = f", {len(seeds)} head seeds" if len(seeds) > 1 else ""
        self.say(f"{title}: fitting a {settings.kind} head ({settings.finetune}, {settings.epochs} epochs{repeats})")
        fitter = representation.backend or self.backend  # one-hot heads train on the run's backend
        results: list[HeadResult] = [
            fitter.fit_head(problem, settings.model_copy(update={"seed": seed}), inputs["train"], inputs["validation"],
                            [inputs["validation"], inputs["test"]]) for seed in seeds]
        fit_seconds = time.perf_counter() - fit_started
        bootstrap_started = time.perf_counter()
        plan = self.plan
        tested = task_outcomes(task, [r.predictions[1] for r in results], splits["test"], data,
                               plan.bootstrap_resamples, plan.bootstrap_seed, plan.confidence)
        bootstrap_seconds = time.perf_counter() - bootstrap_started
        validation = [task.metrics(r.predictions[0], splits["validation"], data) for r in results]
        metrics = {"validation": _mean_metrics(validation),
                   "test": {name: float(tested.point[m]) for m, name in enumerate(tested.metric_names)}}
        seconds = time.perf_counter() - started
        outcome = TaskOutcome(label, reference, metrics, results[0].best_epoch, seconds, confidence=plan.confidence,
                              head_seeds=seeds, embedding_seconds=embedding_seconds, fit_seconds=fit_seconds,
                              bootstrap_seconds=bootstrap_seconds)
        if plan.bootstrap_resamples > 0:
            outcome.intervals = {name: (float(tested.low[m]), float(tested.high[m]))
                                 for m, name in enumerate(tested.metric_names)}
            outcome.outcomes_file = self._write_outcomes(label, reference, tested)
        if len(results) > 1:
            per_seed = [task.metrics(r.predictions[1], splits["test"], data) for r in results]
            outcome.head_sd = {name: float(np.nanstd([v.get(name, np.nan) for v in per_seed], ddof=1))
                               for name in metrics["test"]}
        figure_dir = plan.output_dir / "figures"  # <task>.<representation>.<what>.png, the names they are logged by
        context = FigureContext(label, reference, self.parent.short_label, metrics["test"], outcome.intervals)
        outcome.figures = task_figures(task, results[0].predictions[1], splits["test"], data, figure_dir, context)
        for figure in outcome.figures:  # at the root, where MLflow's compare view looks for common artifacts
            self.parent.log_artifact(figure)
        outcome.run_id = self._log(label, representation, results, outcome, child)
        self.say(f"{title}: test {outcome.shown()}  ({seconds:.0f} s)")
        return outcome

    def _write_outcomes(self, label: str, reference: str, tested: Outcomes) -> Path:
        """``<output_dir>/outcomes/<task>/<representation>.npz``, logged as the parent's artifact of that name."""
        path = self.plan.output_dir / "outcomes" / label / f"{reference}.npz"
        write_outcomes(path, tested)
        self.parent.log_artifact(path, f"outcomes/{label}")
        return path

    def _log(self, label: str, representation: Representation, results: list[HeadResult], outcome: TaskOutcome,
             child: Tracker | None) -> str | None:
        """The outcome's metrics on its child run (docs/tracking.md names them) and the model's test metrics on the
        parent; a reference's results stay on its child run, where ``plmforge compare`` reads them."""
        parent = self.parent
        reference = representation.name
        result = results[0]  # the first head seed's history and best epoch; metrics are means over all
        bounds = {f"{k}_ci_{side}": value for k, (low, high) in outcome.intervals.items()
                  for side, value in (("low", low), ("high", high))}
        scores = {f"task/{label}/{k}": v for k, v in {**outcome.metrics["test"], **bounds}.items()}
        if child is not None:
            child.set_tags({"plmforge.trainable_parameters": result.trainable_parameters})
            child.log_params({"head.best_epochs": ",".join(str(r.best_epoch) for r in results)})
            for epoch, entry in enumerate(result.history, start=1):
                child.log_metrics({f"task/{label}/head/{k}": v for k, v in entry.items()}, epoch)
            final = dict(scores)
            final.update({f"task/{label}/validation/{k}": v for k, v in outcome.metrics["validation"].items()})
            final.update({f"task/{label}/{k}_head_sd": v for k, v in outcome.head_sd.items()})
            final[f"task/{label}/head/best_epoch"] = float(result.best_epoch)
            final.update({f"task/{label}/time/embedding_seconds": outcome.embedding_seconds,
                          f"task/{label}/time/fit_seconds": outcome.fit_seconds,
                          f"task/{label}/time/bootstrap_seconds": outcome.bootstrap_seconds})
            child.log_metrics(_finite(final), 0)  # step 0 as on the parent, so both line up in MLflow's charts
            child.set_tags({"mlflow.note.content": _task_run_description(label, representation, results, outcome)})
            for figure in outcome.figures:
                child.log_artifact(figure)
        if reference == "model":
            parent.log_metrics(_finite(scores), 0)
        return child.run_id if child is not None else None


def _task_run_description(label: str, representation: Representation, results: list[HeadResult],
                          outcome: TaskOutcome) -> str:
    """The child run's MLflow description: what was fitted on what, and the headline score."""
    seeds = f", mean of {len(results)} head seeds" if len(results) > 1 else ""
    return (f"{label} on {representation.title}: test {outcome.shown()}{seeds}; best epoch {results[0].best_epoch}; "
            f"{outcome.embedding_seconds:.1f} s embedding, {outcome.fit_seconds:.1f} s fitting.")


def child_run_name(label: str, representation: str, parent: Tracker) -> str:
    """``ss3·model lr=0.002``: short, and told apart from the same task's run under another parent."""
    return f"{label}·{representation} {parent.short_label}".rstrip()


def _head_seeds(settings: HeadSettings) -> list[int]:
    return [int(s) for s in getattr(settings, "head_seeds", [settings.seed])]


def _embedding_source(finetune: str, hits: int, misses: int) -> str:
    """Where a task run's inputs came from (its ``plmforge.embedding`` tag): a cached embedding costs no
    embedding time in this run, which ``task/<label>/time/embedding_seconds`` alone does not say."""
    if finetune != "frozen":
        return "token ids (fine-tuning embeds inside the head)"
    if hits and not misses:
        return "cached"
    if hits:
        return f"cached for {hits} of {hits + misses} splits"
    return "computed"


def _mean_metrics(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over head seeds (NaN ones left out of the mean; NaN when all are)."""
    names = list(per_seed[0])
    values = np.array([[v.get(name, np.nan) for name in names] for v in per_seed], dtype=np.float64)
    defined = ~np.isnan(values)
    sums = np.where(defined, values, 0.0).sum(axis=0)
    counts = defined.sum(axis=0)
    return {name: float(sums[i] / counts[i]) if counts[i] else float("nan") for i, name in enumerate(names)}


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    """MLflow rejects NaN in some stores; a metric that could not be computed is left out."""
    return {k: float(v) for k, v in metrics.items() if np.isfinite(v)}


def outcomes_table(outcomes: list[TaskOutcome]) -> str:
    """A plain-text summary: one line per task and representation with its test metrics."""
    lines = []
    for outcome in outcomes:
        lines.append(f"{outcome.label:<24} {REFERENCE_NAMES[outcome.reference]:<12} {outcome.shown()}")
    return "\n".join(lines)


def outcomes_json(outcomes: list[TaskOutcome]) -> str:
    """The outcomes as JSON; ``intervals`` maps each test metric to ``[low, high]`` (null bounds where undefined)."""
    def bound(value: float) -> float | None:
        return float(value) if np.isfinite(value) else None

    return json.dumps([{"task": o.label, "reference": o.reference, "metrics": o.metrics,
                        "intervals": {k: [bound(low), bound(high)] for k, (low, high) in o.intervals.items()},
                        "confidence": o.confidence, "head_seeds": o.head_seeds, "head_sd": o.head_sd,
                        "best_epoch": o.best_epoch, "seconds": round(o.seconds, 2), "run_id": o.run_id,
                        "outcomes_file": str(o.outcomes_file) if o.outcomes_file else None} for o in outcomes],
                      indent=2)


def reference_instance(item: Reference | str) -> Reference:
    """A reference plugin instance: ``item`` itself, or the plugin it names with its default options."""
    if isinstance(item, Reference):
        return item
    cls = Registry().load("reference", item)
    return cls(cls.Config())


def _failure(exc: Exception) -> str:
    """A plugin's error as one line: plmforge errors speak for themselves, others name their type."""
    text = str(exc).strip() or "no message"
    return text if isinstance(exc, PlmforgeError) else f"{type(exc).__name__}: {text}"


def load_tasks(sections: list[TaskSection]) -> list[tuple[str, Task]]:
    """Task instances from resolved spec ``tasks:`` sections, with their labels."""
    return [(section.label or section.name, section.plugin(section.config)) for section in sections]


def default_cache_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "embedding-cache"


def run_tasks(plan: EvaluationPlan, backend: Backend, vocab: Vocab, parent: Tracker,
              random_model: Callable[[], Backend] | None = None, say: Callable[[str], None] = lambda text: None,
              on_task_end: Callable[[TaskOutcome], None] = lambda outcome: None,
              warn: Callable[[str], None] | None = None) -> list[TaskOutcome]:
    """The tasks of ``plan`` on ``backend``, logged under ``parent`` (see :class:`Evaluator`)."""
    return Evaluator(plan, backend, vocab, parent, random_model, say, on_task_end, warn=warn).run()


#: Evaluation options that do not change its results: left out of :func:`evaluation_group`.
GROUP_IGNORED = ("batch_tokens", "embedding_cache")


def evaluation_group(model: Mapping[str, str], spec: Spec) -> str:
    """The ``plmforge.replicate_group`` of an evaluation run: :func:`~plmforge.core.tracking.replicate_group` of
    the model's flattened spec (``model``; its seed left out) together with what the evaluation did (``spec``'s
    backend, tasks, references, standardising and bootstrap settings), so compare pools the seed replicates of
    a model only when they were evaluated alike."""
    evaluation = {k: v for k, v in spec.evaluation.model_dump(mode="json").items() if k not in GROUP_IGNORED}
    tasks = [task_params_section(section.model_dump(mode="json")) for section in spec.tasks]  # options heads use
    done = {"backend": spec.backend.name, "tasks": tasks, "evaluation": evaluation}
    return replicate_group({**model, **flatten(done, "evaluated")})


def evaluate_checkpoint(spec: Spec, checkpoint: Path, registry: Registry | None = None,
                        say: Callable[[str], None] = print, tracking: bool = True,
                        warn: Callable[[str], None] | None = None, spec_path: Path | None = None,
                        overrides: Sequence[str] = ()) -> tuple[list[TaskOutcome], str | None]:
    """``plmforge evaluate``: the tasks of ``spec`` on a checkpoint, as a top-level MLflow evaluation run.

    The model (size, vocabulary, weights) comes from the checkpoint; the backend, tasks, references and
    tracking come from ``spec``. Returns the outcomes and the evaluation run's id. ``warn`` (default
    ``say``) tells of references left out. ``spec_path`` and ``overrides`` (the ``--set`` texts) are recorded
    on the run, and the overrides name it apart from other evaluations of the same model.
    """
    if not spec.tasks:
        raise PlmforgeError(f"spec {spec.name!r} lists no tasks: add a 'tasks:' section to evaluate")
    registry = registry or Registry()
    backend_section = {"name": spec.backend.name, **spec.backend.plugin_options()}
    backend, vocab, model_spec, path = embedding.load_model_and_spec(checkpoint, backend_section, registry)
    tracker = Tracker(spec.tracking.enabled and tracking, spec.tracking.tracking_uri, spec.tracking.experiment,
                      spec.tracking.run_name or run_title(f"{model_spec.name} evaluation", overrides),
                      warn=say, overrides=overrides)
    run_id = tracker.start()
    tracker.log_params(run_params(model_spec.to_dict()))
    tracker.set_tags(source_tags(spec_path, overrides))
    tracker.set_tags({"plmforge.kind": "evaluation", "plmforge.checkpoint": str(path.resolve()),
                      "plmforge.backend": spec.backend.name, "plmforge.spec_name": model_spec.name,
                      "plmforge.tasks": ",".join(section.label or section.name for section in spec.tasks),
                      "plmforge.replicate_group": evaluation_group(flatten(model_spec.to_dict()), spec),
                      "plmforge.seed": model_spec.seed})
    status = "FAILED"
    try:
        outcomes = run_tasks(EvaluationPlan.from_spec(spec), backend, vocab, tracker,
                             random_model=lambda: build_model(model_spec, registry)[0], say=say, warn=warn)
        status = "FINISHED"
    finally:
        tracker.end(status)
    return outcomes, run_id
