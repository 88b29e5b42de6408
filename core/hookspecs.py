"""Lifecycle hooks of a run, carried by pluggy.

Implement any of these in a hook-only plugin (entry point group ``plmforge.hooks``, value a module
or object) or as methods of an objective/backend/task plugin class; decorate them with
``plmforge.core.hookspecs.hookimpl``. Hooks observe a run; they must not change it. An exception in a
hook is a bug in that plugin and stops the run, as it should.

Every hook receives ``run``: a :class:`plmforge.core.run.RunInfo` with ``spec`` (the resolved
Spec), ``output_dir`` (a Path) and ``tracking_run_id`` (the MLflow run id, or None when tracking is
off or unreachable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pluggy

PROJECT = "plmforge"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def plmforge_run_start(run: Any, resumed_from_step: int) -> None:
    """A run begins, after plugins are built and before the first step.

    ``resumed_from_step`` is 0 for a fresh run, else the step of the checkpoint it resumed from.
    """


@hookspec
def plmforge_step_end(run: Any, step: int, metrics: dict[str, float]) -> None:
    """Training metrics were materialised on the host, every ``training.log_every`` steps.

    ``step`` is the number of optimizer steps done; ``metrics`` maps names such as ``train/loss``,
    ``train/mlm/loss``, ``train/lr``, ``train/tokens_per_second`` and ``train/grad_norm`` to floats
    averaged over the steps since the last call.
    """


@hookspec
def plmforge_evaluation_end(run: Any, step: int, metrics: dict[str, float]) -> None:
    """An evaluation on the validation split finished; ``metrics`` keys start with ``val/``."""


@hookspec
def plmforge_checkpoint_saved(run: Any, step: int, path: Path) -> None:
    """A checkpoint was written completely (atomically) at ``path`` after ``step`` optimizer steps."""


@hookspec
def plmforge_task_end(run: Any, task: str, reference: str, metrics: dict[str, float]) -> None:
    """A downstream task's head was fitted and scored, after pretraining (``spec.tasks``).

    ``task`` is the task label, ``reference`` is ``"model"`` for the trained model or the reference
    row (a reference label: ``"onehot"``, ``"random"``, ``"unirep1900"``, ...), and ``metrics`` are its
    test metrics (e.g. ``q3``, ``accuracy``).
    """


@hookspec
def plmforge_run_end(run: Any, status: str, summary: dict[str, Any]) -> None:
    """A run ends. ``status`` is ``"finished"``, ``"failed"`` or ``"interrupted"``.

    ``"failed"``: an error stopped it (a diverged loss, a plugin objective that raised, a full disk);
    the hook is called before the error reaches the caller.

    ``summary`` holds the final step, last metrics and the path of the last checkpoint (if any).
    """


def plugin_manager() -> pluggy.PluginManager:
    """A plugin manager knowing these hookspecs (hook implementations are registered by the run)."""
    import sys

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(sys.modules[__name__])
    return pm
