"""``plmforge.train``: pretrain as ``plmforge train`` does, and the :class:`Run` it returns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plmforge._spec import Overrides, Spec

if TYPE_CHECKING:
    from plmforge._model import Model
    from plmforge.core import spec as core_spec
    from plmforge.core.run import RunResult


@dataclass
class Run:
    """A finished (or interrupted) pretraining run: its resolved spec and what :class:`RunResult` recorded."""

    spec: core_spec.Spec
    result: RunResult

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def step(self) -> int:
        return self.result.step

    @property
    def output_dir(self) -> Path:
        return self.spec.resolved_output_dir

    @property
    def checkpoint(self) -> Path | None:
        """The last checkpoint written (the run's latest)."""
        return self.result.checkpoint

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (None when tracking was off or failed)."""
        return self.result.tracking_run_id

    @property
    def tracking_uri(self) -> str:
        from plmforge.core.tracking import resolve_tracking_uri

        return resolve_tracking_uri(self.spec.tracking.tracking_uri)

    @property
    def metrics(self) -> dict[str, float]:
        """The last logged training metrics and the final validation metrics (``train/loss``, ``val/loss``, ...)."""
        return {**self.result.train_metrics, **self.result.eval_metrics}

    @property
    def tasks(self) -> list[Any]:
        """The downstream task outcomes of the spec's ``tasks:`` (:class:`plmforge.core.evaluation.TaskOutcome`)."""
        return self.result.tasks

    def load(self, backend: str | dict | None = None) -> Model:
        """The trained model (its latest checkpoint), as :func:`plmforge.load` gives it."""
        from plmforge._model import load

        return load(self.checkpoint or self.output_dir, backend=backend)

    def __repr__(self) -> str:
        loss = self.metrics.get("train/loss")
        shown = f", train/loss {loss:.4f}" if loss is not None else ""
        run = f", MLflow run {self.run_id[:8]}" if self.run_id else ""
        return f"Run({self.name!r}: {self.status} at step {self.step}{shown}, output {self.output_dir}{run})"


def train(spec: str | Path | dict | Spec | Any, overrides: Overrides = None, *, resume: bool = False,
          seeds: Sequence[int] | str | None = None, progress: bool = True, hooks: Iterable[Any] = ()) -> Any:
    """Pretrain ``spec`` (a path, mapping or :class:`Spec`) with ``overrides``, as ``plmforge train`` does.

    Returns a :class:`Run`; with ``seeds`` (a list, or a text such as ``"0-2"`` as ``--seeds`` takes) one
    replicate is trained per seed, each in ``<output_dir>/seed-<s>``, and the list of their Runs is
    returned (replicates that ``resume`` finds finished are skipped, as the command skips them).
    ``progress`` shows the progress bar; ``hooks`` are extra hook implementations (see docs/hooks.md).
    """
    from plmforge.core import run as running

    given = Spec(spec, overrides, check_machine=True)
    loaded = given.resolved
    # recorded on the MLflow run as ``plmforge train`` records them: the spec file (when one) and the overrides
    origin = {"spec_path": given.path, "overrides": given.overrides}
    if seeds is None:
        return Run(loaded, running.train(loaded, resume=resume, show_progress=progress, hooks=hooks, **origin))
    # one reading of seeds for both: the same checks (range, repeats) and messages as --seeds
    chosen = running.parse_seeds(seeds if isinstance(seeds, str) else ",".join(str(int(s)) for s in seeds))
    runs: list[Run] = []
    running.train_replicates(loaded, chosen, resume=resume, show_progress=progress, hooks=hooks, **origin,
                             on_result=lambda seed, replicate, result: runs.append(Run(replicate, result)))
    return runs
