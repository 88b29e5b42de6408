"""One run: spec -> plugins -> train -> checkpoints -> MLflow.

The loop is backend-agnostic: it owns data streams, the learning-rate schedule, metric windows,
evaluation, checkpoints, hooks and tracking; the backend only runs steps. Resuming restores weights,
optimizer and RNG state and each stream's (epoch, position), so a resumed run computes the same
losses as one that never stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plmforge.core import __version__, checkpoint
from plmforge.core.backend import Backend, MicroBatch, ObjectiveSlot, add_metric
from plmforge.core.build import (  # the assembly layer; imported here by name so Trainer.run calls them
    build_backend,
    build_model,
    build_objectives,
    build_streams,
)
from plmforge.core.data.stream import ExampleStream
from plmforge.core.errors import CheckpointError, PlmforgeError, TrainingDiverged
from plmforge.core.hookspecs import plugin_manager
from plmforge.core.progress import Progress
from plmforge.core.registry import Registry
from plmforge.core.run_failures import describe_objective, is_disk_full, objective_failure
from plmforge.core.schedule import rate_for
from plmforge.core.spec import Spec, spec_warnings
from plmforge.core.tracking import (
    DatasetRecord,
    Tracker,
    flatten,
    git_commit,
    replicate_group,
    run_params,
    run_title,
    source_tags,
    spec_sha256,
)
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
    tracking_experiment_id: str | None = None
    tracking_failure: str | None = None
    data_report: dict[str, int] = field(default_factory=dict)
    tasks: list[Any] = field(default_factory=list)  # plmforge.core.evaluation.TaskOutcome, one per head
    main_process: bool = True  # False on the other processes of a multi-process run


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


def _must_stay_finite(name: str) -> bool:
    """The step values a divergence check reads: total loss, gradient norm and each objective's loss."""
    return name in ("loss", "grad_norm") or (name.endswith("/loss") and name.count("/") == 1)


class MetricWindow:
    """Sums (value, count) pairs on the device across steps; converts to floats only when asked.

    It also keeps references to each training step's values that must stay finite (total loss,
    gradient norm, each objective's loss) until :meth:`first_non_finite` has looked at them, so a run
    that diverges is stopped at a log step or before a checkpoint, naming its first bad step, without
    a host sync per step.
    """

    def __init__(self) -> None:
        self._sums: dict[str, tuple[Any, Any]] = {}
        self._unchecked: list[tuple[int, dict[str, Any]]] = []
        self.steps = 0
        self.residues = 0
        self.started = time.perf_counter()

    def add(self, metrics: Mapping[str, tuple[Any, Any]]) -> None:
        for name, (value, count) in metrics.items():
            add_metric(self._sums, name, value, count)

    def add_step(self, step: int, metrics: Mapping[str, tuple[Any, Any]]) -> None:
        """A training step's metrics; ``step`` is the number of optimizer steps done after it."""
        self.add(metrics)
        self._unchecked.append((step, {name: value for name, (value, _) in metrics.items()
                                       if _must_stay_finite(name)}))

    def first_non_finite(self) -> tuple[int, dict[str, float]] | None:
        """The first step since the last check with a non-finite watched value: (step, all its watched values).

        The window's running sums answer for all its steps at once (a non-finite value makes its sum
        non-finite); only when one is not finite are the steps read one by one.
        """
        if not self._unchecked:
            return None
        watched = {name for _, values in self._unchecked for name in values}
        if not all(math.isfinite(float(self._sums[name][0])) for name in watched if name in self._sums):
            for step, values in self._unchecked:
                read = {name: float(value) for name, value in values.items()}
                if not all(math.isfinite(value) for value in read.values()):
                    return step, read
        self._unchecked.clear()  # all finite (a sum can overflow where no single value does)
        return None

    def averages(self) -> dict[str, float]:
        out = {}
        for name, (value, count) in self._sums.items():
            c = float(count)
            if c > 0:
                out[name] = float(value) / c
        return out


# -- the run ---------------------------------------------------------------------------------------
@dataclass
class _Loop:
    """One run's moving parts and where its loop stands: what the step methods of :class:`Trainer` share."""

    vocab: Vocab
    slots: list[ObjectiveSlot]
    train_streams: dict[str, ExampleStream]
    eval_streams: dict[str, ExampleStream]
    backend: Backend
    data_report: dict[str, int]
    main: bool  # multi-process runs: one process writes files and logs
    step: int = 0  # optimizer steps done
    saved_step: int = 0  # the step of the last checkpoint written (or resumed from)
    resumed_state: dict[str, Any] = field(default_factory=dict)  # trainer state of the checkpoint resumed from
    lr: float = 0.0  # learning rate of the last step
    inside_step: bool = False  # state is half-updated: an interrupt now must not save it
    # set when the run starts (tracking, hooks)
    tracker: Tracker = field(init=False)
    info: RunInfo = field(init=False)
    hooks: Any = field(init=False)  # the pluggy hook relay
    mixer: ObjectiveMixer = field(init=False)
    progress: Progress = field(init=False)
    result: RunResult = field(init=False)
    window: MetricWindow = field(init=False)

    @contextlib.contextmanager
    def stepping(self) -> Iterator[None]:
        """Marks a step in progress; an exception or interrupt inside leaves the mark, so nothing saves that state."""
        self.inside_step = True
        yield
        self.inside_step = False


class Trainer:
    """Trains one spec. ``hooks`` are extra hook implementations (objects or modules) to register.

    ``spec_path`` (the spec file) and ``overrides`` (its ``--set`` texts) are recorded on the MLflow run.
    """

    def __init__(self, spec: Spec, registry: Registry | None = None, hooks: Iterable[Any] = (),
                 show_progress: bool = True, console: Any = None, spec_path: str | Path | None = None,
                 overrides: Sequence[str] = ()):
        self.spec = spec
        # where the spec came from, recorded on the MLflow run (its Source column, tags and name)
        self.spec_path = Path(spec_path).expanduser().resolve() if spec_path is not None else None
        self.overrides = list(overrides)
        self.registry = registry or Registry()
        self.output_dir = spec.resolved_output_dir
        self.extra_hooks = list(hooks)
        self.show_progress = show_progress
        self.console = console
        self._objective_names: dict[str, str] = {}  # label -> how messages name it
        self._objective_ids: dict[int, str] = {}  # id(objective instance) -> how messages name it

    def run(self, resume: bool = False) -> RunResult:
        """Set up (and resume), then train step by step with the log/eval/checkpoint cadence, tasks, finish."""
        with self._naming_failed_objectives():
            loop = self._set_up(resume)
            self._start(loop, resumed=resume)
            status = "failed"
            try:
                with loop.progress:
                    while loop.step < self.spec.training.steps:
                        self._train_one_step(loop)
                        self._on_cadence(loop)
                self._tasks(loop)
                status = "finished"
            except KeyboardInterrupt:
                status = "interrupted"
                self._save_on_interrupt(loop)
                raise
            finally:
                self._finish(loop, status)
            return loop.result

    # -- set up, resume, start ----------------------------------------------------------------------
    def _set_up(self, resume: bool) -> _Loop:
        """Objectives, data streams and the backend (from the run's last checkpoint when resuming)."""
        from plmforge.core.data.sources import load_splits

        spec = self.spec
        previous = self._checkpoint_to_resume(resume)
        vocab, slots = build_objectives(spec)
        self._name_objectives(slots)
        data = load_splits(spec.data)
        train_streams, eval_streams = build_streams(spec, slots, data)
        backend = build_backend(spec, vocab, slots, self.registry)
        if spec.model.init_from is not None and not resume:  # resuming continues from the run's own weights
            from plmforge.core.conversion import load_init_from

            load_init_from(backend, spec.model.init_from, vocab.tokens)
        loop = _Loop(vocab=vocab, slots=slots, train_streams=train_streams, eval_streams=eval_streams,
                     backend=backend, data_report=data.report, main=backend.is_main_process())
        if previous is not None:
            self._resume(loop, previous)
        if loop.main:
            self._prepare_output_dir()
            for message in spec_warnings(spec):
                self._warn(message)
        return loop

    def _prepare_output_dir(self) -> None:
        """The resolved spec beside the checkpoints; writes a killed run left unfinished are removed."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "spec.yaml").write_text(self.spec.to_yaml())
        removed = checkpoint.remove_unfinished_writes(self.output_dir)
        if removed:
            self._warn(f"removed {len(removed)} unfinished checkpoint write(s) of a run stopped while saving: "
                       + ", ".join(p.name for p in removed))

    def _checkpoint_to_resume(self, resume: bool) -> Path | None:
        """The checkpoint ``--resume`` continues from; refuses to train over a run's checkpoints without it."""
        previous = checkpoint.latest_checkpoint(self.output_dir)
        if previous is not None and not resume:
            raise PlmforgeError(
                f"{self.output_dir} already holds checkpoints (latest {previous.name}); continue it with --resume, "
                f"or choose another output_dir (e.g. --set output_dir=runs/new)")
        if resume and previous is None:
            raise CheckpointError(f"--resume: no checkpoint found under {checkpoint.checkpoint_root(self.output_dir)}")
        return previous if resume else None

    def _resume(self, loop: _Loop, previous: Path) -> None:
        """Weights, optimizer and RNG state and each stream's position, as the checkpoint left them."""
        ckpt = checkpoint.load_checkpoint(previous)
        loop.backend.load_weights(ckpt.weights)
        loop.backend.load_training_state(ckpt.training_arrays, ckpt.state.get("backend", {}))
        for label, stream in loop.train_streams.items():
            stream.load_state(ckpt.state["streams"][label])
        loop.step = loop.saved_step = ckpt.step
        loop.resumed_state = ckpt.state

    def _start(self, loop: _Loop, resumed: bool) -> None:
        """Tracking (the resumed MLflow run continues), hook registration and ``plmforge_run_start``."""
        spec, training = self.spec, self.spec.training
        tracker = Tracker(spec.tracking.enabled and loop.main, spec.tracking.tracking_uri, spec.tracking.experiment,
                          run_name(spec, self.overrides), warn=self._warn, overrides=self.overrides)
        run_id = tracker.start(resume_run_id=loop.resumed_state.get("tracking_run_id"))
        loop.tracker = tracker
        loop.info = RunInfo(spec=spec, output_dir=self.output_dir, tracking_run_id=run_id)
        if not resumed:
            tracker.log_params(run_params(spec.to_dict()))
            tracker.log_text(spec.to_yaml(), "spec.yaml")
            if run_id is not None:  # digests read the data files: only when someone records them
                tracker.log_inputs(data_inputs(spec, loop.data_report))
        tracker.set_tags(self._tags(loop.backend, loop.slots, loop.data_report))

        loop.hooks = self._hook_relay(loop)
        loop.result = RunResult(step=loop.step, status="running", tracking_run_id=run_id,
                                tracking_experiment_id=tracker.experiment_id, data_report=loop.data_report,
                                main_process=loop.main)
        loop.hooks.plmforge_run_start(run=loop.info, resumed_from_step=loop.step)
        loop.window = MetricWindow()
        loop.mixer = ObjectiveMixer(training.objective_mixing, {s.label: s.weight for s in loop.slots}, spec.seed)
        loop.progress = Progress(total=training.steps, start=loop.step, enabled=self.show_progress and loop.main,
                                 console=self.console)

    def _hook_relay(self, loop: _Loop) -> Any:
        """Hook-only plugins, then the backend, the objectives and the caller's ``hooks``."""
        pm = plugin_manager()
        for hook_info in self.registry.infos("hooks"):
            if not hook_info.disabled:
                pm.register(self.registry.load("hooks", hook_info.name), name=f"hooks:{hook_info.name}")
        for obj in [loop.backend, *(s.objective for s in loop.slots), *self.extra_hooks]:
            pm.register(obj)
        return pm.hook

    # -- one training step and its cadence ----------------------------------------------------------
    def _train_one_step(self, loop: _Loop) -> None:
        """One optimizer step; its metrics stay on the device until a log step reads them."""
        training = self.spec.training
        with loop.stepping():
            loop.lr = rate_for(training, loop.step)
            chosen = loop.mixer.labels_for(loop.step)
            micro, residues = self._micro_batches(loop, chosen)
            metrics = loop.backend.train_step(micro, loop.lr, loop.mixer.loss_weights(chosen))
            loop.window.add_step(loop.step + 1, metrics)
            loop.window.add(loop.mixer.step_metrics(chosen))
            loop.window.steps += 1
            loop.window.residues += residues
            loop.step += 1
        loop.result.step = loop.step

    def _micro_batches(self, loop: _Loop, chosen: list[str]) -> tuple[dict[str, list[MicroBatch]], int]:
        """This process's micro-batches of the step for each chosen objective, and the global batch's residues.

        Every stream advances by the whole global batch (``training.gradient_accumulation`` micro-batches)
        on every process, but a process makes only the positions of its :meth:`Backend.data_shard`.
        """
        index, count = loop.backend.data_shard()
        micro, residues = {}, 0
        for label in chosen:
            micro[label], made = loop.train_streams[label].next_share(
                self.spec.training.gradient_accumulation, index, count)
            residues += made
        return micro, residues

    def _on_cadence(self, loop: _Loop) -> None:
        """What is due after this step: logging (progress otherwise), evaluation, a checkpoint."""
        training = self.spec.training
        step = loop.step
        last = step == training.steps
        if step % training.log_every == 0 or last:
            self._log(loop)
        else:
            loop.progress.update(step)
        if loop.eval_streams and (step % training.eval_every == 0 or last):
            self._evaluate_now(loop)
        if step % training.checkpoint_every == 0 or last:
            self._checkpoint(loop)

    def _log(self, loop: _Loop) -> None:
        """Training metrics since the last log step, on the host: checked, logged, handed to hooks."""
        self._stop_if_diverged(loop)
        metrics = self._close_window(loop.window, loop.lr)
        metrics["train/cropped_proteins"] = float(sum(s.cropped for s in loop.train_streams.values()))
        loop.window = MetricWindow()
        result = loop.result
        result.train_metrics = metrics
        result.history.append((loop.step, metrics))
        loop.tracker.log_metrics(metrics, loop.step)
        loop.hooks.plmforge_step_end(run=loop.info, step=loop.step, metrics=metrics)
        loop.progress.update(loop.step, metrics)

    def _evaluate_now(self, loop: _Loop) -> None:
        result = loop.result
        result.eval_metrics = self._evaluate(loop.backend, loop.slots, loop.eval_streams, loop.mixer)
        loop.tracker.log_metrics(result.eval_metrics, loop.step)
        loop.hooks.plmforge_evaluation_end(run=loop.info, step=loop.step, metrics=result.eval_metrics)
        loop.progress.note(loop.step, result.eval_metrics)

    def _checkpoint(self, loop: _Loop) -> None:
        """A checkpoint of the weights after this step, unless they came from a diverged step."""
        self._stop_if_diverged(loop)
        loop.result.checkpoint = self._write_checkpoint(loop)
        loop.saved_step = loop.step
        loop.hooks.plmforge_checkpoint_saved(run=loop.info, step=loop.step, path=loop.result.checkpoint)

    def _write_checkpoint(self, loop: _Loop) -> Path:
        """``_save``, with a full disk said plainly (the write is atomic: the last good checkpoint stays)."""
        try:
            return self._save(loop.backend, loop.vocab, loop.step, loop.train_streams, loop.info.tracking_run_id,
                              loop.result)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            raise CheckpointError(
                f"no space left on device while writing the checkpoint of step {loop.step} under "
                f"{checkpoint.checkpoint_root(self.output_dir)}; {self._kept_checkpoint()}. Free some space, then "
                f"continue with --resume") from exc

    def _stop_if_diverged(self, loop: _Loop) -> None:
        """Stops the run at the first step whose loss or gradient norm is not finite (steps stay sync-free)."""
        found = loop.window.first_non_finite()
        if found is not None:
            step, values = found
            raise TrainingDiverged(f"training diverged at step {step}: {self._what_diverged(values)}; "
                                   f"{self._kept_checkpoint()}. Lower training.optimizer.lr, keep "
                                   f"training.max_grad_norm set, or check the objective's loss")

    def _what_diverged(self, values: Mapping[str, float]) -> str:
        """``the loss of objective 'mlm' (plugin mlm from plmforge 0.1.0) is nan``, from one step's values."""
        losses = {name.split("/")[0]: value for name, value in values.items() if name.endswith("/loss")}
        named = {label: self._objective_names.get(label, f"objective {label!r}") for label in losses}
        parts = [f"the loss of {named[label]} is {value}" for label, value in losses.items()
                 if not math.isfinite(value)]
        if not parts and not math.isfinite(values.get("loss", 0.0)):
            parts.append(f"the total loss is {values['loss']}")
        grad_norm = values.get("grad_norm", 0.0)
        if not math.isfinite(grad_norm):
            if parts or not losses:
                parts.append(f"the gradient norm is {grad_norm}")
            else:
                finite = ", ".join(f"{named[label]} {value:.4g}" for label, value in losses.items())
                parts.append(f"the gradient norm is {grad_norm} (the step's losses were finite: {finite})")
        return " and ".join(parts)

    def _kept_checkpoint(self) -> str:
        latest = checkpoint.latest_checkpoint(self.output_dir)
        return f"the last good checkpoint {latest} is kept" if latest else "no checkpoint was written"

    # -- tasks, interrupt, finish ---------------------------------------------------------------------
    def _tasks(self, loop: _Loop) -> None:
        if not self.spec.tasks:
            return
        alone = loop.backend.single_process()  # every process takes part; only the main one gets it
        if alone is not None:
            loop.result.tasks = self._run_tasks(alone, loop.vocab, loop.tracker, loop.info, loop.hooks)

    def _save_on_interrupt(self, loop: _Loop) -> None:
        """Ctrl-C between steps saves the steps since the last checkpoint; inside a step the state is half-updated."""
        if loop.inside_step or loop.step <= loop.saved_step:
            return
        diverged = loop.window.first_non_finite()
        if diverged is not None:
            if loop.main:
                self._warn(f"interrupted: no checkpoint written, training had diverged at step {diverged[0]}")
            return
        loop.result.checkpoint = self._write_checkpoint(loop)
        if loop.main:
            self._warn(f"interrupted: checkpoint written at step {loop.step}; continue with --resume")

    def _finish(self, loop: _Loop, status: str) -> None:
        """Status, the last checkpoint as an artifact, ``plmforge_run_end`` and the MLflow run's end."""
        result = loop.result
        result.status = status
        if status == "finished" and result.checkpoint is not None and self.spec.tracking.log_checkpoint:
            loop.tracker.log_artifact(result.checkpoint, "checkpoint")
        summary = {"step": result.step, "train": result.train_metrics, "eval": result.eval_metrics,
                   "backend": loop.backend.counters(),
                   "examples": {"planned": sum(s.examples_planned for s in loop.train_streams.values()),
                                "made": sum(s.examples_made for s in loop.train_streams.values())},
                   "checkpoint": str(result.checkpoint) if result.checkpoint else None}
        loop.hooks.plmforge_run_end(run=loop.info, status=status, summary=summary)
        # running totals (compilations, ...): one value per run, not a chart
        loop.tracker.set_tags({f"plmforge.backend.{k}": _number_text(v) for k, v in summary["backend"].items()})
        loop.tracker.end({"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED"))
        result.tracking_failure = loop.tracker.failure

    # -- messages for what a plugin objective did ---------------------------------------------------
    def _name_objectives(self, slots: list[ObjectiveSlot]) -> None:
        """How messages name each objective: label, plugin name and the distribution that ships it."""
        self._objective_names, self._objective_ids = {}, {}
        for slot, entry in zip(slots, self.spec.objectives):
            try:
                info = self.registry.info("objective", entry.name)
                distribution, version = info.distribution, info.version
            except PlmforgeError:
                distribution = version = None
            described = describe_objective(slot.label, entry.name, distribution, version)
            self._objective_names[slot.label] = described
            self._objective_ids[id(slot.objective)] = described

    @contextlib.contextmanager
    def _naming_failed_objectives(self) -> Iterator[None]:
        """An exception raised inside a plugin objective becomes one message naming it; others pass unchanged."""
        try:
            yield
        except PlmforgeError:
            raise
        except Exception as exc:
            failure = objective_failure(exc, self._objective_ids)
            if failure is None:
                raise
            raise failure from exc

    # -- pieces -----------------------------------------------------------------------------------
    def _close_window(self, window: MetricWindow, lr: float) -> dict[str, float]:
        elapsed = max(time.perf_counter() - window.started, 1e-9)
        metrics = {f"train/{k}": v for k, v in window.averages().items()}
        metrics["train/lr"] = lr
        metrics["train/tokens_per_second"] = window.residues / elapsed
        metrics["train/steps_per_second"] = window.steps / elapsed
        return metrics

    def _run_tasks(self, backend: Backend, vocab: Vocab, tracker: Tracker, info: RunInfo, hooks: Any) -> list[Any]:
        """Downstream tasks on the trained model, each a nested MLflow run under this one (``hooks``: the relay)."""
        from plmforge.core.evaluation import EvaluationPlan, TaskOutcome, run_tasks
        from plmforge.core.progress import say

        def task_end(outcome: TaskOutcome) -> None:
            hooks.plmforge_task_end(run=info, task=outcome.label, reference=outcome.reference,
                                    metrics=outcome.metrics["test"])

        return run_tasks(EvaluationPlan.from_spec(self.spec, self.output_dir), backend, vocab, tracker,
                         random_model=lambda: build_model(self.spec, self.registry)[0],
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
        state = checkpoint.trainer_state(
            vocab.tokens, self.spec.backend.name, streams={label: stream.state() for label, stream in streams.items()},
            backend=backend_meta, tracking_run_id=run_id, metrics={**result.train_metrics, **result.eval_metrics})
        weights = backend.weights()  # a collective in multi-process runs: every process takes part
        if not backend.is_main_process():
            return checkpoint.checkpoint_path(self.output_dir, step)
        return checkpoint.save_checkpoint(
            self.output_dir, step, weights, self.spec.model.hf_config(len(vocab)), arrays, state,
            self.spec.to_yaml(), keep=self.spec.training.keep_checkpoints)

    def _tags(self, backend: Backend, slots: list[ObjectiveSlot], report: Mapping[str, int]) -> dict[str, Any]:
        spec = self.spec
        commit = git_commit(Path(__file__).resolve().parent)
        num_parameters = backend.num_parameters()
        tags: dict[str, Any] = {
            "plmforge.kind": "pretrain",
            "plmforge.version": __version__,
            "plmforge.backend": spec.backend.name,
            "plmforge.objectives": ",".join(spec.objective_labels()),
            "plmforge.spec_sha256": spec_sha256(spec.to_dict()),
            "plmforge.spec_name": spec.name,
            # seed replicates (``train --seeds``) and later runs of the same spec share the group; compare pools them
            "plmforge.replicate_group": replicate_group(flatten(spec.to_dict())),
            "plmforge.seed": spec.seed,
            "plmforge.num_parameters": num_parameters,
            **({"plmforge.init_from": str(Path(spec.model.init_from).expanduser().resolve())}
               if spec.model.init_from else {}),
            "mlflow.source.git.commit": commit,
            "plmforge.git_commit": commit,
            "plmforge.output_dir": str(self.output_dir.expanduser().resolve()),
            "mlflow.note.content": run_description(spec, self.overrides, num_parameters),
        }
        tags.update(source_tags(self.spec_path, self.overrides))
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


# -- what the MLflow run records beyond metrics -------------------------------------------------------
def run_name(spec: Spec, overrides: Sequence[str] = ()) -> str:
    """The MLflow run name: ``tracking.run_name``, else the spec name followed by the overrides that change
    the run in short form (``quickstart lr=0.002``), so runs of one spec are told apart in a table."""
    return spec.tracking.run_name or run_title(spec.name, overrides)


def run_description(spec: Spec, overrides: Sequence[str], num_parameters: int) -> str:
    """MLflow's run description (``mlflow.note.content``): the spec's ``description``, then a one-line summary."""
    model = spec.model
    count = f"{num_parameters / 1e6:.3g}M" if num_parameters >= 1e6 else f"{num_parameters / 1e3:.3g}k"
    size = (f"{model.preset or 'custom'} model, {count} parameters (d_model {model.d_model}, "
            f"{model.num_layers}+{model.num_decoder_layers} layers)")
    objectives = ", ".join(spec.objective_labels())
    line = f"{objectives} on {spec.data.source}; {size}; {spec.training.steps} steps"
    if spec.tasks:
        line += "; tasks " + ", ".join(t.label or t.name for t in spec.tasks)
    if overrides:
        line += "; --set " + " ".join(overrides)
    return f"{spec.description.strip()}\n\n{line}" if spec.description else line


def data_inputs(spec: Spec, report: Mapping[str, int]) -> list[DatasetRecord]:
    """The proteins a run trains and validates on, as MLflow dataset inputs (named by the spec's source).

    Digests come from content: a built-in corpus's shipped file, a prepared corpus's manifest (which records
    every file's size and, when prepared with checksums, its sha256), a FASTA file's bytes (sampled beyond
    256 MiB: :func:`~plmforge.core.files.content_digest`, so a large corpus is not read at every start).
    """
    from importlib import resources

    from plmforge.core.data.corpus import MANIFEST
    from plmforge.core.data.sources import BUILTIN_CORPORA, BUILTIN_PREFIX
    from plmforge.core.files import content_digest

    def record(text: str, split: str, context: str) -> DatasetRecord:
        profile = {key: report[f"{split}.{key}"] for key in ("proteins", "residues") if f"{split}.{key}" in report}
        if text.startswith(BUILTIN_PREFIX):
            corpus = BUILTIN_CORPORA[text[len(BUILTIN_PREFIX):]]
            shipped = resources.files("plmforge.core.data").joinpath("corpora", corpus)
            digest = hashlib.sha256(shipped.read_bytes()).hexdigest()
            return DatasetRecord(text, digest, split, context, "code", text, profile)
        path = Path(text).expanduser().resolve()
        digest = content_digest(path / MANIFEST if path.is_dir() else path)
        return DatasetRecord(text, digest, split, context, "local", str(path), profile)

    data = spec.data
    records = [record(data.source, "train", "training")]
    if data.validation_source:
        records.append(record(data.validation_source, "validation", "validation"))
    elif "validation.proteins" in report:
        records.append(record(data.source, "validation", "validation"))
    return records


def _number_text(value: float) -> str:
    """A counter as a tag: ``3`` rather than ``3.0``."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def train(spec: Spec, resume: bool = False, **kwargs: Any) -> RunResult:
    """Train ``spec`` (see :class:`Trainer`)."""
    return Trainer(spec, **kwargs).run(resume=resume)


def check_inputs(spec: Spec, where: str) -> None:
    """What ``plmforge validate`` reads beyond the spec: data files as a run reads them and ``model.init_from``.

    A bad record or an empty split is found now rather than when training starts; ``where`` names the spec.
    """
    data = spec.data
    if any(s and not s.startswith("builtin:") for s in (data.source, data.validation_source)):
        from plmforge.core.data.sources import load_splits

        load_splits(data)
    if spec.model.init_from is not None:  # a fully resolved model section does not need it to validate
        checkpoint.resolve_checkpoint(spec.model.init_from, f"{where}: model.init_from")


# -- seed replicates ---------------------------------------------------------------------------------


class ReplicateFailed(PlmforgeError):
    """One replicate of ``train --seeds`` failed; ``finished`` holds the (seed, result) pairs done before it."""

    def __init__(self, message: str, seed: int, finished: list[tuple[int, RunResult]]):
        super().__init__(message)
        self.seed, self.finished = seed, finished


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"``, ``"0-2"`` or a mix (``"0-2,7"``) as a list of distinct seeds, in the order given."""
    from plmforge.core.spec import MAX_SEED

    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise PlmforgeError(f"--seeds {text!r}: {part!r} is not a seed or a range (use e.g. 0,1,2 or 0-2)")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise PlmforgeError(f"--seeds {text!r}: the range {part!r} runs backwards")
        if last > MAX_SEED:
            raise PlmforgeError(f"--seeds {text!r}: seeds go from 0 to {MAX_SEED}")
        if last - first >= 1000:
            raise PlmforgeError(f"--seeds {text!r}: {part!r} asks for {last - first + 1} replicates; at most 1000")
        seeds += range(first, last + 1)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise PlmforgeError(f"--seeds {text!r}: seed {repeated[0]} is given twice")
    return seeds


def replicate_spec(spec: Spec, seed: int, overrides: Sequence[str] = ()) -> Spec:
    """``spec`` with this seed, output ``<output_dir>/seed-<seed>`` and MLflow run name ``<run name> seed <seed>``
    (the run name :func:`run_name` gives ``spec`` with its ``overrides``).

    The spec's ``name`` stays, so the replicates share it (and ``plmforge.spec_name``); only what must differ
    per replicate changes. Re-validated from its resolved form, as a run's own ``spec.yaml`` would be.
    """
    from plmforge.core.spec import validate_spec

    raw = spec.to_dict()
    raw["seed"] = seed
    raw["output_dir"] = str(spec.resolved_output_dir / f"seed-{seed}")
    raw["tracking"] = {**raw["tracking"], "run_name": f"{run_name(spec, overrides)} seed {seed}"}
    return validate_spec(raw, source=f"{spec.name} (seed {seed})", check_machine=True)


def replicate_finished(spec: Spec) -> bool:
    """Whether a replicate's run is done: its final checkpoint is written and its MLflow run (if any) FINISHED.

    ``train --seeds ... --resume`` skips such replicates instead of re-running their downstream tasks.
    """
    import json

    latest = checkpoint.latest_checkpoint(spec.resolved_output_dir)
    if latest is None or int(latest.name.rsplit("-", 1)[-1]) < spec.training.steps:
        return False
    run_id = json.loads((latest / checkpoint.TRAINER_STATE).read_text()).get("tracking_run_id")
    if not run_id:
        return True
    try:
        from mlflow.tracking import MlflowClient

        from plmforge.core.tracking import resolve_tracking_uri

        status = MlflowClient(resolve_tracking_uri(spec.tracking.tracking_uri)).get_run(run_id).info.status
    except Exception:  # noqa: BLE001 - store unreachable: resume it, which redoes only the tasks
        return False
    return status == "FINISHED"


def train_replicates(spec: Spec, seeds: list[int], resume: bool = False,
                     on_start: Callable[[int, Spec, str], None] = lambda seed, spec, action: None,
                     on_result: Callable[[int, Spec, RunResult], None] = lambda seed, spec, result: None,
                     **kwargs: Any) -> list[tuple[int, RunResult]]:
    """Train one replicate of ``spec`` per seed, one after another (see :func:`replicate_spec`).

    With ``resume`` each replicate continues from its own checkpoints, starts afresh when it has none and is
    skipped when it already finished. A failing replicate stops the loop with :class:`ReplicateFailed` naming
    its seed; the replicates before it keep their checkpoints and MLflow runs. ``on_start(seed, spec, action)``
    (action: "train", "resume" or "skip") and ``on_result`` let a caller report as it goes.
    """
    done: list[tuple[int, RunResult]] = []
    for seed in seeds:
        replicate = replicate_spec(spec, seed, kwargs.get("overrides", ()))
        latest = checkpoint.latest_checkpoint(replicate.resolved_output_dir)
        action = "train" if not resume or latest is None else "skip" if replicate_finished(replicate) else "resume"
        on_start(seed, replicate, action)
        if action == "skip":
            continue
        try:
            result = train(replicate, resume=action == "resume", **kwargs)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            finished = ", ".join(str(s) for s, _ in done) or "none"
            rest = ",".join(str(s) for s in seeds[seeds.index(seed):])
            raise ReplicateFailed(
                f"replicate seed {seed} ({replicate.resolved_output_dir}) failed: {exc}\n"
                f"replicates finished in this call: {finished} (their checkpoints and MLflow runs are kept); "
                f"after fixing the cause, continue with --seeds {rest} --resume", seed, done) from exc
        done.append((seed, result))
        on_result(seed, replicate, result)
    return done
