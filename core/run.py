"""One run: spec -> plugins -> train -> checkpoints -> MLflow.

The loop is backend-agnostic: it owns data streams, the learning-rate schedule, metric windows,
evaluation, checkpoints, hooks and tracking; the backend only runs steps. Resuming restores weights,
optimizer and RNG state and each stream's (epoch, position), so a resumed run computes the same
losses as one that never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plmforge.core import __version__, checkpoint
from plmforge.core.backend import Backend, BackendContext, ObjectiveSlot, add_metric
from plmforge.core.data.batching import BatchPlanner
from plmforge.core.data.proteins import ProteinSet
from plmforge.core.data.stream import ExampleStream
from plmforge.core.errors import CheckpointError, PlmforgeError
from plmforge.core.hookspecs import plugin_manager
from plmforge.core.objective import ModelNeeds, ProteinSource
from plmforge.core.progress import Progress
from plmforge.core.registry import Registry
from plmforge.core.schedule import rate_for
from plmforge.core.spec import Spec
from plmforge.core.tracking import Tracker, flatten, git_commit, spec_sha256
from plmforge.core.vocab import Vocab


@dataclass
class RunInfo:
    """What hooks get as ``run``."""

    spec: Spec
    output_dir: Path
    tracking_run_id: str | None = None


@dataclass
class RunResult:
    step: int
    status: str
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    checkpoint: Path | None = None
    tracking_run_id: str | None = None
    tracking_failure: str | None = None
    data_report: dict[str, int] = field(default_factory=dict)
    tasks: list[Any] = field(default_factory=list)  # plmforge.core.evaluation.TaskOutcome, one per head
    main_process: bool = True  # False on the other processes of a multi-process run


# -- building blocks (also used by `embed` and tests) ------------------------------------------------
def build_objectives(spec: Spec) -> tuple[Vocab, list[ObjectiveSlot]]:
    """The vocabulary (with every special token the objectives use) and the objective instances."""
    entries = spec.objectives
    extra = [tok for e in entries for tok in e.plugin.special_tokens(e.config)]
    vocab = Vocab(extra)
    slots = [ObjectiveSlot(label=label, objective=e.plugin(e.config, vocab), weight=e.weight)
             for e, label in zip(entries, spec.objective_labels())]
    return vocab, slots


def merged_needs(slots: Iterable[ObjectiveSlot]) -> ModelNeeds:
    heads: dict[str, int] = {}
    decoder = encoder = False
    for slot in slots:
        needs = slot.objective.needs()
        decoder |= needs.decoder_lm
        encoder |= needs.encoder_lm
        for name, width in needs.per_residue_heads.items():
            if heads.setdefault(name, width) != width:
                raise PlmforgeError(f"objectives ask for head {name!r} with widths {heads[name]} and {width}")
    return ModelNeeds(decoder_lm=decoder, encoder_lm=encoder, per_residue_heads=heads)


def build_backend(spec: Spec, vocab: Vocab, slots: list[ObjectiveSlot], registry: Registry,
                  one_process: bool = False) -> Backend:
    """The spec's backend, set up for ``slots``; ``one_process`` for work outside a multi-process run."""
    options = spec.backend.config.for_one_process() if one_process else spec.backend.config
    return make_backend(registry.load("backend", spec.backend.name), options, spec, len(vocab), slots)


def make_backend(backend_cls: type[Backend], options: Any, spec: Spec, vocab_size: int,
                 slots: Iterable[ObjectiveSlot]) -> Backend:
    """A set-up backend of ``backend_cls`` for objective instances that need not be registered plugins."""
    slots = tuple(slots)
    needs = merged_needs(slots)
    if needs.decoder_lm and not spec.model.has_decoder:
        raise PlmforgeError("an objective needs decoder logits but model.num_decoder_layers is 0")
    context = BackendContext(model=spec.model, vocab_size=vocab_size, needs=needs, objectives=slots,
                             training=spec.training, seed=spec.seed)
    backend = backend_cls(options, context)
    backend.setup()
    return backend


def prepared_source(slot: ObjectiveSlot, proteins: ProteinSet, split: str, spec: Spec,
                    data_report: dict[str, int]) -> ProteinSource | None:
    """The objective's own view of a split; None for an empty validation split (it is then not evaluated)."""
    source = slot.objective.prepare(proteins, split)
    if len(source.proteins) != len(proteins):  # the objective chose; say so in the run's data tags
        data_report[f"{slot.label}.{split}.proteins"] = len(source.proteins)
    if len(source.proteins) == 0:
        if split == "train":
            raise PlmforgeError(f"objective {slot.label!r} kept none of the {len(proteins)} training proteins of "
                                f"{spec.data.source!r} (see its options, e.g. where its MSAs come from)")
        return None
    return source


class ObjectiveMixer:
    """Which objectives a step trains and with what loss weights.

    ``sum``: every objective, every step, each with its spec weight. ``sample``: one objective per step,
    drawn with probability weight / total from a generator seeded by (seed, step) — so a resumed run
    draws the same sequence — with loss weight 1 (the weight already set how often it is drawn).
    """

    def __init__(self, mode: str, weights: Mapping[str, float], seed: int):
        self.mode, self.weights, self.seed = mode, dict(weights), seed
        self.labels = list(weights)
        total = sum(self.weights.values())
        self.probabilities = np.asarray([self.weights[label] / total for label in self.labels])

    def labels_for(self, step: int) -> list[str]:
        if self.mode == "sum" or len(self.labels) == 1:
            return self.labels
        rng = np.random.default_rng([self.seed, 0x313, step])
        return [self.labels[int(rng.choice(len(self.labels), p=self.probabilities))]]

    def loss_weights(self, chosen: list[str]) -> dict[str, float]:
        return {label: self.weights[label] if self.mode == "sum" else 1.0 for label in chosen}

    def step_metrics(self, chosen: list[str]) -> dict[str, tuple[float, float]]:
        """``<label>/sampled``: the share of steps that trained the objective (sample mode only)."""
        if self.mode == "sum":
            return {}
        return {f"{label}/sampled": (float(label in chosen), 1.0) for label in self.labels}

    def expected_weights(self) -> dict[str, float]:
        """Each objective's weight in the expected loss of a step (for ``val/loss``)."""
        if self.mode == "sum":
            return self.weights
        return dict(zip(self.labels, self.probabilities.tolist()))


def make_planner(spec: Spec) -> BatchPlanner:
    bs = spec.training.batch_size
    return BatchPlanner(max_length=spec.data.max_length, pad_to_multiple=spec.training.pad_to_multiple,
                        tokens=bs.tokens, sequences=bs.sequences)


class MetricWindow:
    """Sums (value, count) pairs on the device across steps; converts to floats only when asked."""

    def __init__(self) -> None:
        self._sums: dict[str, tuple[Any, Any]] = {}
        self.steps = 0
        self.residues = 0
        self.started = time.perf_counter()

    def add(self, metrics: Mapping[str, tuple[Any, Any]]) -> None:
        for name, (value, count) in metrics.items():
            add_metric(self._sums, name, value, count)

    def averages(self) -> dict[str, float]:
        out = {}
        for name, (value, count) in self._sums.items():
            c = float(count)
            if c > 0:
                out[name] = float(value) / c
        return out


# -- the run ---------------------------------------------------------------------------------------
class Trainer:
    """Trains one spec. ``hooks`` are extra hook implementations (objects or modules) to register."""

    def __init__(self, spec: Spec, registry: Registry | None = None, hooks: Iterable[Any] = (),
                 show_progress: bool = True, console: Any = None):
        self.spec = spec
        self.registry = registry or Registry()
        self.output_dir = spec.resolved_output_dir
        self.extra_hooks = list(hooks)
        self.show_progress = show_progress
        self.console = console

    def run(self, resume: bool = False) -> RunResult:
        spec = self.spec
        training = spec.training
        previous = checkpoint.latest_checkpoint(self.output_dir)
        if previous is not None and not resume:
            raise PlmforgeError(
                f"{self.output_dir} already holds checkpoints (latest {previous.name}); continue it with --resume, "
                f"or choose another output_dir (e.g. --set output_dir=runs/new)")
        if resume and previous is None:
            raise CheckpointError(f"--resume: no checkpoint found under {checkpoint.checkpoint_root(self.output_dir)}")

        from plmforge.core.data.sources import load_splits

        vocab, slots = build_objectives(spec)
        data = load_splits(spec.data)
        if len(data.splits.get("train", ())) == 0:
            raise PlmforgeError(f"data source {spec.data.source!r} yielded no training proteins")
        planner = make_planner(spec)
        train_streams: dict[str, ExampleStream] = {}
        eval_streams: dict[str, ExampleStream] = {}
        validation = data.splits.get("validation")
        for i, slot in enumerate(slots):
            train_source = prepared_source(slot, data.splits["train"], "train", spec, data.report)
            train_streams[slot.label] = ExampleStream(slot.objective, train_source, planner, spec.seed, stream=i)
            eval_source = (prepared_source(slot, validation, "validation", spec, data.report)
                           if validation is not None else None)
            if eval_source is not None:
                eval_streams[slot.label] = ExampleStream(slot.objective, eval_source, planner, spec.seed, stream=i)
        backend = build_backend(spec, vocab, slots, self.registry)
        if spec.model.init_from is not None and not resume:  # resuming continues from the run's own weights
            from plmforge.core.hf_checkpoint import load_init_from

            load_init_from(backend, spec.model.init_from, vocab.tokens)

        step, state = 0, {}
        if resume:
            ckpt = checkpoint.load_checkpoint(previous)
            backend.load_weights(ckpt.weights)
            backend.load_training_state(ckpt.training_arrays, ckpt.state.get("backend", {}))
            for label, stream in train_streams.items():
                stream.load_state(ckpt.state["streams"][label])
            step, state = ckpt.step, ckpt.state

        main = backend.is_main_process()  # multi-process runs: one process writes files and logs
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "spec.yaml").write_text(spec.to_yaml())
        tracker = Tracker(spec.tracking.enabled and main, spec.tracking.tracking_uri, spec.tracking.experiment,
                          spec.tracking.run_name or spec.name, warn=self._warn)
        run_id = tracker.start(resume_run_id=state.get("tracking_run_id"))
        info = RunInfo(spec=spec, output_dir=self.output_dir, tracking_run_id=run_id)
        if not resume:
            tracker.log_params(flatten(spec.to_dict()))
            tracker.log_text(spec.to_yaml(), "spec.yaml")
        tracker.set_tags(self._tags(backend, slots, data.report))

        pm = plugin_manager()
        for hook_info in self.registry.infos("hooks"):
            if not hook_info.disabled:
                pm.register(self.registry.load("hooks", hook_info.name), name=f"hooks:{hook_info.name}")
        for obj in [backend, *(s.objective for s in slots), *self.extra_hooks]:
            pm.register(obj)

        result = RunResult(step=step, status="running", tracking_run_id=run_id, data_report=data.report,
                           main_process=main)
        pm.hook.plmforge_run_start(run=info, resumed_from_step=step)
        window = MetricWindow()
        mixer = ObjectiveMixer(training.objective_mixing, {s.label: s.weight for s in slots}, spec.seed)
        progress = Progress(total=training.steps, start=step, enabled=self.show_progress and main,
                            console=self.console)
        status = "failed"
        saved_step = step
        in_step = False  # an interrupt inside a step leaves state half-updated: do not save it then
        try:
            with progress:
                while step < training.steps:
                    in_step = True
                    lr = rate_for(training, step)
                    chosen = mixer.labels_for(step)
                    micro = {label: [train_streams[label].next() for _ in range(training.gradient_accumulation)]
                             for label in chosen}
                    window.add(backend.train_step(micro, lr, mixer.loss_weights(chosen)))
                    window.add(mixer.step_metrics(chosen))
                    window.steps += 1
                    window.residues += sum(b.residues for batches in micro.values() for b in batches)
                    step += 1
                    in_step = False
                    result.step = step
                    last = step == training.steps
                    if step % training.log_every == 0 or last:
                        metrics = self._close_window(window, lr)
                        metrics["train/cropped_proteins"] = float(sum(s.cropped for s in train_streams.values()))
                        metrics.update({f"backend/{k}": v for k, v in backend.counters().items()})
                        window = MetricWindow()
                        result.train_metrics = metrics
                        result.history.append((step, metrics))
                        tracker.log_metrics(metrics, step)
                        pm.hook.plmforge_step_end(run=info, step=step, metrics=metrics)
                        progress.update(step, metrics)
                    else:
                        progress.update(step)
                    if eval_streams and (step % training.eval_every == 0 or last):
                        result.eval_metrics = self._evaluate(backend, slots, eval_streams, mixer)
                        tracker.log_metrics(result.eval_metrics, step)
                        pm.hook.plmforge_evaluation_end(run=info, step=step, metrics=result.eval_metrics)
                        progress.note(step, result.eval_metrics)
                    if step % training.checkpoint_every == 0 or last:
                        result.checkpoint = self._save(backend, vocab, step, train_streams, run_id, result)
                        saved_step = step
                        pm.hook.plmforge_checkpoint_saved(run=info, step=step, path=result.checkpoint)
            if spec.tasks:
                alone = backend.single_process()  # every process takes part; only the main one gets it
                if alone is not None:
                    result.tasks = self._run_tasks(alone, vocab, tracker, info, pm)
            status = "finished"
        except KeyboardInterrupt:
            status = "interrupted"
            if step > saved_step and not in_step:
                result.checkpoint = self._save(backend, vocab, step, train_streams, run_id, result)
                if main:
                    self._warn(f"interrupted: checkpoint written at step {step}; continue with --resume")
            raise
        finally:
            result.status = status
            if status == "finished" and result.checkpoint is not None and spec.tracking.log_checkpoint:
                tracker.log_artifact(result.checkpoint, "checkpoint")
            summary = {"step": result.step, "train": result.train_metrics, "eval": result.eval_metrics,
                       "backend": backend.counters(),
                       "checkpoint": str(result.checkpoint) if result.checkpoint else None}
            pm.hook.plmforge_run_end(run=info, status=status, summary=summary)
            tracker.end({"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED"))
            result.tracking_failure = tracker.failure
        return result

    # -- pieces -----------------------------------------------------------------------------------
    def _close_window(self, window: MetricWindow, lr: float) -> dict[str, float]:
        elapsed = max(time.perf_counter() - window.started, 1e-9)
        metrics = {f"train/{k}": v for k, v in window.averages().items()}
        metrics["train/lr"] = lr
        metrics["train/tokens_per_second"] = window.residues / elapsed
        metrics["train/steps_per_second"] = window.steps / elapsed
        return metrics

    def _run_tasks(self, backend: Backend, vocab: Vocab, tracker: Tracker, info: RunInfo, pm: Any) -> list[Any]:
        """Downstream tasks on the trained model, each a nested MLflow run under this one."""
        from plmforge.core.evaluation import run_tasks
        from plmforge.core.progress import say

        def task_end(outcome: Any) -> None:
            pm.hook.plmforge_task_end(run=info, task=outcome.label, reference=outcome.reference,
                                      metrics=outcome.metrics["test"])

        return run_tasks(self.spec, self.spec, backend, vocab, tracker, self.output_dir, self.registry,
                         say=lambda text: say(text, self.console) if self.show_progress else None,
                         on_task_end=task_end)

    def _evaluate(self, backend: Backend, slots: list[ObjectiveSlot], streams: Mapping[str, ExampleStream],
                  mixer: ObjectiveMixer) -> dict[str, float]:
        window = MetricWindow()
        for label, stream in streams.items():
            for batch in stream.evaluation_batches(self.spec.training.eval_batches):
                window.add(backend.eval_step({label: batch}))
        averages = window.averages()
        metrics = {f"val/{k}": v for k, v in averages.items()}
        weights = mixer.expected_weights()
        total = [weights[s.label] * averages[f"{s.label}/loss"] for s in slots if f"{s.label}/loss" in averages]
        if total:
            metrics["val/loss"] = float(sum(total))
        return metrics

    def _save(self, backend: Backend, vocab: Vocab, step: int, streams: Mapping[str, ExampleStream],
              run_id: str | None, result: RunResult) -> Path:
        arrays, backend_meta = backend.training_state()
        state = {
            "streams": {label: stream.state() for label, stream in streams.items()},
            "backend": backend_meta,
            "backend_name": self.spec.backend.name,
            "tracking_run_id": run_id,
            "vocab": vocab.tokens[144:],
            "metrics": {**result.train_metrics, **result.eval_metrics},
            "plmforge_version": __version__,
        }
        weights = backend.weights()  # a collective in multi-process runs: every process takes part
        if not backend.is_main_process():
            return checkpoint.checkpoint_path(self.output_dir, step)
        return checkpoint.save_checkpoint(
            self.output_dir, step, weights, self.spec.model.hf_config(len(vocab)), arrays, state,
            self.spec.to_yaml(), keep=self.spec.training.keep_checkpoints)

    def _tags(self, backend: Backend, slots: list[ObjectiveSlot], report: Mapping[str, int]) -> dict[str, Any]:
        spec = self.spec
        commit = git_commit(Path(__file__).resolve().parent)
        tags: dict[str, Any] = {
            "plmforge.kind": "pretrain",
            "plmforge.version": __version__,
            "plmforge.backend": spec.backend.name,
            "plmforge.objectives": ",".join(spec.objective_labels()),
            "plmforge.spec_sha256": spec_sha256(spec.to_dict()),
            "plmforge.spec_name": spec.name,
            "plmforge.num_parameters": backend.num_parameters(),
            **({"plmforge.init_from": str(Path(spec.model.init_from).expanduser().resolve())}
               if spec.model.init_from else {}),
            "mlflow.source.git.commit": commit,
            "plmforge.git_commit": commit,
        }
        used = [("backend", spec.backend.name), *(("objective", e.name) for e in spec.objectives)]
        for kind, name in used:
            info = self.registry.info(kind, name)
            tags[f"plmforge.plugin.{kind}.{name}"] = f"{info.distribution} {info.version}"
        tags.update({f"plmforge.backend.{k}": v for k, v in backend.describe().items()})
        tags.update({f"plmforge.data.{k}": v for k, v in report.items()})
        return tags

    def _warn(self, message: str) -> None:
        from plmforge.core.progress import warn

        warn(message, self.console)


def train(spec: Spec, resume: bool = False, **kwargs: Any) -> RunResult:
    """Train ``spec`` (see :class:`Trainer`)."""
    return Trainer(spec, **kwargs).run(resume=resume)
