"""``plmforge compare``: runs side by side, read back from MLflow.

Why this exists next to the MLflow UI: a plmforge run logs its whole resolved spec as ~60 flattened params,
and almost all of them are the same in every run of a study. What one wants after a sweep is "what did I
change, and what did it buy": so the table shows only the params whose values differ among the shown runs,
the final ``train/loss`` and ``val/loss`` and the downstream ``task/*`` metrics, with the best value of each
column marked. It works on any tracking URI because it uses nothing but MlflowClient read calls.

Which runs: the top-level runs (pretraining and checkpoint evaluations) of the experiments asked for, or of
every experiment when none is named (with an ``experiment`` column when they come from several), or exactly
the run ids given (full ids or unique prefixes such as the 8-character short ids the table shows). Child
runs (the per-task runs that ``evaluate`` nests under its run) are never rows of an experiment's table: the
model's task results are on the parent as ``task/<label>/<metric>``. The references' results are on their
own child runs (tag ``plmforge.reference=<ref>``, metrics ``task/<label>/<metric>``, the same names as the
model's child run, see docs/tracking.md); :class:`RunSource` reads them with one search per experiment
and puts them on the parent's summary as ``reference/<ref>/<label>/<metric>``. Parents logged before that
(which carry ``reference/...`` themselves) keep their own values. With ``references``,
:func:`reference_rows` turns those keys into rows ``reference: <ref>`` below the runs, in the same
``task/<label>/<metric>`` columns (``RunSummary.representation`` says whose outcomes file pairs them), so
an arm and a reference are compared like two runs. Given by id, a child run is a row like any other, with
its ``task/<label>/...`` metrics.

Three layers, each testable alone:

* :class:`RunSource` is the only code that talks to MLflow (imported lazily, so ``plmforge --help`` stays
  fast); it turns MLflow runs into plain :class:`RunSummary` records and reads metric histories.
* :func:`build_comparison` turns summaries into a :class:`Comparison`: columns, rows of raw values and the
  best cells, as plain data; no rendering.
* ``render_*`` and :func:`plot_comparison` draw it: a rich table (best cells bold green *and* suffixed with
  ``*``, so pipes, logs and tests see the marks too), CSV (raw values, no marks, for scripts), Markdown
  (best in bold, for docs), and a PNG of loss curves and task metrics with their intervals.

Uncertainty (see docs/comparing-runs.md). A task or reference metric comes with its bootstrap interval over
test proteins (logged as ``<key>_ci_low`` / ``<key>_ci_high``), shown in its cell (``0.6210 [0.594, 0.657]``)
and never as a column of its own. The best mark ``*`` means *significantly* better than every other row: by a
paired bootstrap on the same test proteins, read from the runs' ``outcomes/<task>/<representation>.npz``
artifacts (:func:`plmforge.core.uncertainty.paired_difference`); for runs without them (older runs) by
non-overlapping intervals, with a note. Rows within the uncertainty of the best are marked ``≈`` (a tie).
Metrics with no intervals at all (losses) keep the plain best mark. ``baseline`` adds rows of differences to
one run, each with its interval. Seed replicates (runs whose specs differ only in the seed: the
``plmforge.replicate_group`` tag, else the params) are pooled into one row, ``mean ± sd [low, high]``, whose
interval includes the seed spread (:func:`plmforge.core.uncertainty.pooled_over_seeds`).

Own code beyond :mod:`plmforge.core.uncertainty`: the difference between two *groups* of seed replicates
(:func:`pooled_difference`), a two-level bootstrap like ``pooled_over_seeds`` but on a difference; scipy has
no hierarchical bootstrap.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import unquote, urlparse

from plmforge.core.errors import PlmforgeError
from plmforge.core.tracking import replicate_group

if TYPE_CHECKING:
    from plmforge.core.uncertainty import Outcomes

DEFAULT_METRICS = ("train/loss", "val/loss", "task/*")
LOSS_CURVES = ("train/loss", "val/loss")
#: Params never shown: they differ in every run without saying anything about it.
IGNORED_PARAMS = ("name", "output_dir", "tracking.*")
#: A metric whose name (last path segment) contains one of these is better when lower.
LOWER_IS_BETTER = ("loss", "mse", "perplexity", "error", "kl")
#: Name endings of lower-is-better metrics too short to match inside a word (``masked_residue_ce``: cross-entropy).
LOWER_IS_BETTER_SUFFIXES = ("_ce", "_nll", "_rmse", "_mae")
#: Metrics with no better direction: their columns get no best mark.
NEUTRAL_METRICS = ("lr", "cropped_proteins", "best_epoch")
#: Metric name endings with no better direction either: spreads (a task run's ``<metric>_head_sd``), timings.
NEUTRAL_SUFFIXES = ("_sd", "_seconds")
MISSING = "—"
PARENT_TAG = "mlflow.parentRunId"
KIND_TAG = "plmforge.kind"
GROUP_TAG = "plmforge.replicate_group"
SEED_TAG = "plmforge.seed"
TASK_TAG = "plmforge.task"
REFERENCE_TAG = "plmforge.reference"  # task child runs: "model" or the reference's label
TASKS_TAG = "plmforge.tasks"  # evaluation runs: which tasks ran (runs of other tasks are no replicates)
#: Params that may differ between seed replicates of one spec.
CI_LOW, CI_HIGH = "_ci_low", "_ci_high"
OUTCOMES_DIR = "outcomes"
DEFAULT_CONFIDENCE = 0.95


class NoRuns(Exception):  # noqa: N818 - an outcome, not an error: the CLI prints it and exits 0
    """Nothing to compare (empty store or experiments); the message says where it looked."""


@dataclass
class RunSummary:
    """One MLflow run as plain data: what the comparison needs and nothing else."""

    run_id: str
    name: str
    experiment: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # the last logged value of each
    tags: dict[str, str] = field(default_factory=dict)

    members: list[RunSummary] = field(default_factory=list)  # a pooled row: its seed replicates
    #: Whose scores the row holds: "model", or a reference's label (a reference row, see :func:`reference_rows`);
    #: its per-protein outcomes are the parent's ``outcomes/<task>/<representation>.npz``.
    representation: str = "model"
    parent: RunSummary | None = None  # a reference row: the run that scored it (its run_id is the parent's)

    @property
    def kind(self) -> str | None:
        return self.tags.get(KIND_TAG)

    @property
    def seed(self) -> str | None:
        return self.tags.get(SEED_TAG) or self.params.get("seed")

    @property
    def label(self) -> str:
        if self.members:
            return f"{self.name} [seeds {','.join(str(m.seed) for m in self.members)}]"
        return f"{self.name} ({self.run_id[:8]})"

    @property
    def runs(self) -> list[RunSummary]:
        """The MLflow runs behind the row: its replicates, or itself."""
        return self.members or [self]


@dataclass(frozen=True)
class Column:
    """``kind`` is run, experiment, kind (the plmforge.kind tag), param or metric; ``key`` the name shown."""

    kind: str
    key: str
    lower_is_better: bool | None = None  # metrics only; None: no best mark


@dataclass(frozen=True)
class Difference:
    """``value`` = row - baseline (or best - other) with its interval; ``paired``: True for a paired bootstrap
    on the same test proteins, False for the unpaired fallback, None where no interval exists (losses)."""

    value: float
    low: float | None = None
    high: float | None = None
    paired: bool | None = None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


@dataclass
class Comparison:
    """The table as data. ``cells[row][col]`` is a str (run label, experiment, param), a float or None.

    A pooled row (seed replicates) has ``members``; its metric cells hold the mean over seeds and ``spread``
    the (sd, n). Rows in ``member_of`` are replicates listed under their pooled row (``replicates=True``):
    they get no marks. ``best`` marks the significantly best cells (``*``), ``ties`` the best cells within
    the uncertainty (``≈``); ``deltas[row][col]`` is the difference to the ``baseline`` row.
    """

    runs: list[RunSummary]
    columns: list[Column]
    cells: list[list[Any]]
    best: dict[int, set[int]]  # column index -> indices of the rows holding that column's best value
    unmatched: list[str] = field(default_factory=list)  # metric patterns that matched no logged metric
    intervals: dict[tuple[int, int], tuple[float, float]] = field(default_factory=dict)  # (row, col) -> bounds
    spread: dict[tuple[int, int], tuple[float, int]] = field(default_factory=dict)  # pooled cells: (sd, n)
    ties: dict[int, set[int]] = field(default_factory=dict)  # column -> rows tied for best (≈)
    tested: set[int] = field(default_factory=set)  # columns whose marks come from a significance test
    member_of: dict[int, int] = field(default_factory=dict)  # replicate row -> its pooled row
    baseline: int | None = None  # the row the differences are taken to
    deltas: dict[int, dict[int, Difference]] = field(default_factory=dict)  # row -> column -> difference
    notes: list[str] = field(default_factory=list)  # what the marks mean, fallbacks used
    confidence: float = DEFAULT_CONFIDENCE

    def index(self, key: str) -> int:
        for i, column in enumerate(self.columns):
            if column.key == key:
                return i
        raise KeyError(key)

    def values(self, key: str) -> list[Any]:
        i = self.index(key)
        return [row[i] for row in self.cells]

    def best_rows(self, key: str) -> set[int]:
        return self.best.get(self.index(key), set())

    @property
    def metric_columns(self) -> list[Column]:
        return [c for c in self.columns if c.kind == "metric"]


# -- reading MLflow --------------------------------------------------------------------------------------------


def _local_store(uri: str) -> Path | None:
    """The file or folder behind a local sqlite or file-store URI (None for servers and databases)."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        return Path(unquote(path)) if path and path != ":memory:" else None
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if uri.startswith("databricks"):  # "databricks", "databricks-uc": hosted, not folders
        return None
    if "://" not in uri and (not parsed.scheme or len(parsed.scheme) == 1):  # plain path (or C:\...)
        return Path(uri)
    return None


class RunSource:
    """Read-only access to the runs at one tracking URI.

    Opening a missing local store (``sqlite:///mlflow.db`` in the wrong folder) would make MLflow create an
    empty one; that is checked first and reported instead.
    """

    def __init__(self, tracking_uri: str):
        self.uri = tracking_uri
        store = _local_store(tracking_uri)
        self.missing_store = store if store is not None and not store.exists() else None
        self._client: Any = None
        self._experiment_names: dict[str, str] = {}
        self._outcomes: dict[str, dict[tuple[str, str], Outcomes] | None] = {}
        self.problems: list[str] = []  # outcomes artifacts that could not be read (compare says so)

    @property
    def client(self) -> Any:
        if self._client is None:
            # a dead server must fail in seconds, not after minutes of HTTP retries
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            from mlflow.tracking import MlflowClient

            self._client = self._call(MlflowClient, tracking_uri=self.uri)
        return self._client

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure to read the store is the user's URI or server
            raise self._unreadable(exc) from exc

    def _unreadable(self, exc: Exception) -> PlmforgeError:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return PlmforgeError(f"cannot read MLflow runs at {self.uri}: {type(exc).__name__}: {first}")

    # -- selection --------------------------------------------------------------------------------------------
    def select(self, experiments: Sequence[str] = (), run_ids: Sequence[str] = (),
               limit: int | None = None, kinds: Sequence[str] = ()) -> list[RunSummary]:
        """The runs to compare; raises PlmforgeError for unknown names or ids, NoRuns when there are none.

        ``limit``: only the most recent top-level runs of the experiments (still shown oldest first), so an
        experiment with hundreds of runs gives a readable table without fetching every run's details.
        ``kinds``: only runs whose ``plmforge.kind`` tag is one of these (before ``limit``), e.g. only the
        ``evaluation`` runs of an experiment that also holds their pretraining runs.
        """
        if experiments and run_ids:
            raise PlmforgeError("give either --experiment or run ids, not both")
        if limit is not None and run_ids:
            raise PlmforgeError("--limit picks among an experiment's runs; with run ids, name only the ones to show")
        where = f"{self.missing_store} does not exist (tracking URI {self.uri}; "\
                f"set --tracking-uri or MLFLOW_TRACKING_URI)" if self.missing_store else ""
        if run_ids:
            if self.missing_store:
                raise PlmforgeError(f"unknown run id {run_ids[0]!r}: {where}")
            chosen_runs = self._of_kinds(self._runs_by_id(run_ids), kinds, "of the runs given")
            references = self._references(chosen_runs)
            return [self._summary(run, references.get(run.info.run_id)) for run in chosen_runs]
        if self.missing_store:
            if experiments:
                raise PlmforgeError(f"unknown experiment {experiments[0]!r}: {where}")
            raise NoRuns(f"no runs to compare: {where}")
        if experiments:
            chosen = [self._experiment(name) for name in dict.fromkeys(experiments)]
        else:
            chosen = self._paged(lambda token: self.client.search_experiments(max_results=1000, page_token=token))
        ids = [e.experiment_id for e in chosen]
        self._experiment_names.update({e.experiment_id: e.name for e in chosen})
        runs = [run for run in self._search(ids) if PARENT_TAG not in run.data.tags] if ids else []
        if kinds and runs:
            scope = ", ".join(repr(e.name) for e in chosen) if experiments else "any experiment"
            runs = self._of_kinds(runs, kinds, f"in {scope}")
        if limit is not None:
            runs = runs[-limit:] if limit > 0 else []
        if not runs:
            names = ", ".join(repr(e.name) for e in chosen)
            scope = f"experiment{'s' if len(chosen) > 1 else ''} {names}" if experiments else "any experiment"
            raise NoRuns(f"no runs to compare in {scope} at {self.uri}")
        references = self._references(runs)
        return [self._summary(run, references.get(run.info.run_id)) for run in runs]

    def _of_kinds(self, runs: list[Any], kinds: Sequence[str], scope: str) -> list[Any]:
        """The runs whose plmforge.kind is one of ``kinds`` (all for none); NoRuns naming the kinds there are."""
        if not kinds:
            return runs
        kept = [run for run in runs if run.data.tags.get(KIND_TAG) in kinds]
        if not kept:
            there = sorted({str(run.data.tags.get(KIND_TAG)) for run in runs})
            raise NoRuns(f"no runs of kind {', '.join(kinds)} {scope} at {self.uri} (kinds there: {', '.join(there)})")
        return kept

    def _experiment(self, name: str) -> Any:
        experiment = self._call(self.client.get_experiment_by_name, name)
        if experiment is None or experiment.lifecycle_stage == "deleted":
            known = self._paged(lambda token: self.client.search_experiments(max_results=1000, page_token=token))
            listed = ", ".join(sorted(repr(e.name) for e in known)) or "none"
            state = "deleted" if experiment is not None else "unknown"
            raise PlmforgeError(f"{state} experiment {name!r} at {self.uri} (experiments there: {listed})")
        return experiment

    def _search(self, experiment_ids: list[str], filter_string: str = "") -> list[Any]:
        return self._paged(lambda token: self.client.search_runs(
            experiment_ids, filter_string, max_results=1000, order_by=["attributes.start_time ASC"],
            page_token=token))

    def _references(self, runs: Sequence[Any]) -> dict[str, dict[str, float]]:
        """The reference metrics of each top-level run in ``runs``, read from its reference task child runs.

        By parent run id: ``reference/<ref>/<label>/<metric>`` (and ``_ci_low`` / ``_ci_high``) for each
        child's ``task/<label>/<metric>``; its ``validation/...`` scores and ``_head_sd`` spreads stay on the
        child (the parent never logged them). One paged search per experiment for the reference task runs
        started no earlier than the first parent asked for (a child starts after its parent): MLflow's search
        has no ``IN`` for tags, and a request per parent would make a sweep of 100 runs cost 100 round trips.
        A later child of the same task and reference (a re-evaluation) replaces an earlier one.
        """
        parents: dict[str, list[Any]] = {}
        for run in runs:
            if PARENT_TAG not in run.data.tags and run.data.tags.get(KIND_TAG) != "task":
                parents.setdefault(run.info.experiment_id, []).append(run)
        found: dict[str, dict[str, float]] = {}
        for experiment_id, tops in parents.items():
            wanted = {run.info.run_id for run in tops}
            since = min((run.info.start_time or 0) for run in tops)
            children = self._search([experiment_id], f"tags.`{KIND_TAG}` = 'task' AND tags.`{REFERENCE_TAG}` != "
                                    f"'model' AND attributes.start_time >= {int(since)}")
            for child in children:
                tags = child.data.tags
                parent, label, reference = tags.get(PARENT_TAG), tags.get(TASK_TAG), tags.get(REFERENCE_TAG)
                if parent not in wanted or not label or not reference or reference == "model":
                    continue
                prefix = f"task/{label}/"
                for key, value in child.data.metrics.items():
                    name = key[len(prefix):] if key.startswith(prefix) else ""
                    if name and "/" not in name and not name.endswith("_head_sd"):
                        found.setdefault(parent, {})[f"reference/{reference}/{label}/{name}"] = value
        return found

    def _paged(self, fetch: Callable[[str | None], Any]) -> list[Any]:
        out: list[Any] = []
        token = None
        while True:
            page = self._call(fetch, token)
            out += list(page)
            token = getattr(page, "token", None)
            if not token:
                return out

    def _runs_by_id(self, run_ids: Sequence[str]) -> list[Any]:
        runs: dict[str, Any] = {}
        everything: list[Any] = []
        for run_id in run_ids:
            run = self._get_run(run_id)
            if run is None:  # not a full id: maybe a short one; look it up among all runs (once)
                if not everything:
                    experiments = self._paged(
                        lambda token: self.client.search_experiments(max_results=1000, page_token=token))
                    everything = self._search([e.experiment_id for e in experiments]) if experiments else []
                matches = [r for r in everything if r.info.run_id.startswith(run_id)] if len(run_id) >= 4 else []
                if len(matches) > 1:
                    raise PlmforgeError(f"run id prefix {run_id!r} is ambiguous at {self.uri}: "
                                        f"{', '.join(r.info.run_id for r in matches)}")
                if not matches:
                    raise PlmforgeError(f"unknown run id {run_id!r} at {self.uri}")
                run = matches[0]
            runs.setdefault(run.info.run_id, run)
        return list(runs.values())

    def _get_run(self, run_id: str) -> Any:
        """The run, or None when MLflow does not know the id (any other failure is an error)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            return None  # not found or malformed; if the server is down, the search that follows says so
        except Exception as exc:  # noqa: BLE001 - server down, bad URI
            raise self._unreadable(exc) from exc

    def _summary(self, run: Any, references: Mapping[str, float] | None = None) -> RunSummary:
        """``references``: metrics read from the run's reference child runs; the run's own metrics of the same
        name (a parent that logged ``reference/...`` itself) win."""
        experiment_id = run.info.experiment_id
        if experiment_id not in self._experiment_names:
            self._experiment_names[experiment_id] = self._call(self.client.get_experiment, experiment_id).name
        tags = dict(run.data.tags)
        name = run.info.run_name or tags.get("mlflow.runName") or run.info.run_id[:8]
        return RunSummary(run_id=run.info.run_id, name=name, experiment=self._experiment_names[experiment_id],
                          params=dict(run.data.params), metrics={**(references or {}), **run.data.metrics},
                          tags=tags)

    def outcomes(self, run: RunSummary) -> dict[tuple[str, str], Outcomes] | None:
        """The run's per-protein outcomes by (task label, representation label), or None when it has none.

        Downloaded once per run into a temporary folder that is removed as soon as the files are read. A run
        without the artifacts (older runs) or whose files cannot be read is None: compare falls back to its
        logged intervals; the reason is kept in :attr:`problems`.

        A task child run (shown by id) has its outcomes on its parent, as ``outcomes/<task>/<representation>.npz``:
        that file is its ``(task, "model")`` entry, since the child logs its metrics as ``task/<label>/...``
        whichever representation it scored; so two child runs are compared paired too.
        """
        parent, task, reference = (run.tags.get(k) for k in (PARENT_TAG, TASK_TAG, REFERENCE_TAG))
        if run.kind == "task" and parent and task and reference and not run.members:
            found = self._outcomes_of(parent, f"{run.label} (its parent run {parent[:8]})")
            outcome = found.get((task, reference)) if found else None
            return {(task, "model"): outcome} if outcome is not None else None
        return self._outcomes_of(run.run_id, run.label)

    def _outcomes_of(self, run_id: str, label: str) -> dict[tuple[str, str], Outcomes] | None:
        if run_id in self._outcomes:
            return self._outcomes[run_id]
        from plmforge.core.uncertainty import read_outcomes

        found: dict[tuple[str, str], Outcomes] = {}
        try:
            listed = self.client.list_artifacts(run_id, OUTCOMES_DIR)
        except Exception:  # noqa: BLE001 - an artifact store it cannot list: no outcomes, compare unpaired
            listed = []
        if listed:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars amid the table
            with tempfile.TemporaryDirectory(prefix="plmforge-compare-") as folder:
                try:
                    local = Path(self.client.download_artifacts(run_id, OUTCOMES_DIR, folder))
                except Exception as exc:  # noqa: BLE001 - same: fall back, and say why
                    self.problems.append(f"outcomes of run {label} cannot be downloaded: "
                                         f"{type(exc).__name__}: {str(exc).strip()[:200]}")
                    local = None
                for file in sorted(local.glob("*/*.npz")) if local is not None else ():
                    try:
                        outcome = read_outcomes(file)
                    except PlmforgeError as exc:
                        where = f"artifact {OUTCOMES_DIR}/{file.parent.name}/{file.name} of run {label}"
                        self.problems.append(str(exc).replace(f"outcomes file {file}", where))
                        continue
                    outcome.labels = outcome.predictions = outcome.offsets = None  # compare needs the replicates
                    found[(file.parent.name, file.stem)] = outcome
        self._outcomes[run_id] = found or None
        return self._outcomes[run_id]

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of every logged value of one metric, in step order."""
        points = self._call(self.client.get_metric_history, run_id, key)
        return sorted((m.step, m.value) for m in points)


# -- the table as data -----------------------------------------------------------------------------------------


def _natural(key: str) -> list[Any]:
    """Sort key that puts objectives.2 before objectives.10 (even positions are text, odd are numbers)."""
    return [int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", key))]


def lower_is_better(metric: str) -> bool | None:
    """True for losses and errors, False for scores, None for metrics with no better direction (lr)."""
    name = metric.rsplit("/", 1)[-1].lower()
    if name in NEUTRAL_METRICS or name.endswith(NEUTRAL_SUFFIXES):
        return None
    return any(word in name for word in LOWER_IS_BETTER) or name == "ce" or name.endswith(LOWER_IS_BETTER_SUFFIXES)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _bound_key(key: str) -> str | None:
    """``task/ss3/q3`` for ``task/ss3/q3_ci_low`` or ``..._ci_high``; None for other keys."""
    for suffix in (CI_LOW, CI_HIGH):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


def outcomes_key(metric: str) -> tuple[str, str, str] | None:
    """(task label, representation label, metric name) of a task or reference metric key, else None."""
    parts = metric.split("/")
    if parts[0] == "task" and len(parts) >= 3:
        return parts[1], "model", "/".join(parts[2:])
    if parts[0] == "reference" and len(parts) >= 4:
        return parts[2], parts[1], "/".join(parts[3:])
    return None


def group_replicates(runs: Sequence[RunSummary]) -> tuple[list[RunSummary], list[str]]:
    """Runs whose specs differ only in the seed, pooled into one row each (at the first one's place).

    Same experiment, kind, evaluated tasks and ``replicate_group`` (the tag, else the digest of the params),
    distinct seeds. Runs that share spec *and* seed (a rerun) are left as they are, with a note.
    """
    keyed: dict[tuple[Any, ...], list[RunSummary]] = {}
    order: list[tuple[Any, ...] | RunSummary] = []
    for run in runs:
        group = run.tags.get(GROUP_TAG) or (replicate_group(run.params) if run.params else None)
        if group is None or run.seed is None:
            order.append(run)
            continue
        key = (run.experiment, run.kind, run.tags.get(TASKS_TAG), group)
        if key not in keyed:
            order.append(key)
        keyed.setdefault(key, []).append(run)
    rows, notes = [], []
    for item in order:
        if isinstance(item, RunSummary):
            rows.append(item)
            continue
        members = keyed[item]
        seeds = [m.seed for m in members]
        if len(members) > 1 and len(set(seeds)) < len(seeds):
            repeated = next(s for s in seeds if seeds.count(s) > 1)
            notes.append(f"not pooled: {', '.join(m.label for m in members if m.seed == repeated)} share spec and "
                         f"seed {repeated} (reruns, not replicates)")
        if len(members) < 2 or len(set(seeds)) < len(seeds):
            rows += members
            continue
        members = sorted(members, key=lambda m: _natural(str(m.seed)))
        first = members[0]
        name = first.tags.get("plmforge.spec_name") or first.params.get("name") or first.name
        params = {k: v if len({m.params.get(k) for m in members}) == 1 else
                  ",".join(str(m.params.get(k)) for m in members) for k, v in first.params.items()}
        tags = {k: v for k, v in first.tags.items() if all(m.tags.get(k) == v for m in members)}
        rows.append(RunSummary(run_id=";".join(m.run_id for m in members), name=name, experiment=first.experiment,
                               params=params, metrics={}, tags=tags, members=members,
                               representation=first.representation))
    return rows, notes


def reference_rows(runs: Sequence[RunSummary]) -> list[RunSummary]:
    """The references scored by ``runs`` as rows of their own: one per run and reference label.

    A row's metrics are the parent's ``reference/<ref>/<label>/<metric>`` (and ``_ci_low`` / ``_ci_high``) as
    ``task/<label>/<metric>``, so they fall in the same task columns as the models; ``representation`` is
    the reference's label, so its per-protein outcomes are the parent's ``outcomes/<task>/<ref>.npz`` and
    paired tests against the models work as between runs. Kind ``reference``, no params.

    Several parents often score the same reference (every arm, every seed): a reference whose scores are
    identical to one already listed (same experiment, label and every value: one-hot features, a reference
    that does not depend on the seed) is listed once; the others carry their parent's replicate group, tasks
    and seed, so :func:`group_replicates` pools those of one parent group over seeds like the parents
    (random init, whose weights follow the seed). Ordered by reference label, then run; the caller puts
    them below the runs.
    """
    found: dict[str, list[RunSummary]] = {}
    seen: set[tuple[Any, ...]] = set()
    for run in runs:
        by_reference: dict[str, dict[str, float]] = {}
        for key, value in run.metrics.items():
            parts = key.split("/")
            if parts[0] == "reference" and len(parts) >= 4:
                by_reference.setdefault(parts[1], {})["/".join(["task", *parts[2:]])] = value
        for reference, metrics in by_reference.items():
            identity = (run.experiment, reference, tuple(sorted((k, repr(v)) for k, v in metrics.items())))
            if identity in seen:
                continue
            seen.add(identity)
            tags = {KIND_TAG: "reference", REFERENCE_TAG: reference}
            group = run.tags.get(GROUP_TAG) or (replicate_group(run.params) if run.params else None)
            if group is not None:
                tags[GROUP_TAG] = f"{group}/{reference}"
            if run.seed is not None:
                tags[SEED_TAG] = str(run.seed)
            if TASKS_TAG in run.tags:
                tags[TASKS_TAG] = run.tags[TASKS_TAG]
            found.setdefault(reference, []).append(RunSummary(
                run_id=run.run_id, name=f"reference: {reference}", experiment=run.experiment, metrics=metrics,
                tags=tags, representation=reference, parent=run))
    return [row for reference in sorted(found, key=_natural) for row in found[reference]]


def _parent_name(row: RunSummary) -> str:
    """The name of the parent (row) behind a reference row: the spec's for a pooled one, else the run's."""
    parents = [run.parent for run in row.runs if run.parent is not None]
    if not parents:
        return ""
    if len(parents) == 1:
        return parents[0].name
    first = parents[0]
    return first.tags.get("plmforge.spec_name") or first.params.get("name") or first.name


OutcomesOf = Callable[[RunSummary], "Mapping[tuple[str, str], Outcomes] | None"]


@dataclass
class _Evidence:
    """What one row holds for one metric: the value (mean over seeds for a pooled row), its interval, the
    seed spread, the per-protein outcomes of all its runs (None when one lacks them) and which runs lack them."""

    value: float | None
    low: float | None = None
    high: float | None = None
    sd: float | None = None
    n: int = 0
    outcomes: list[Outcomes] | None = None
    missing: list[RunSummary] = field(default_factory=list)

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def uncertain(self) -> bool:
        return self.has_interval or bool(self.outcomes)


def _evidence(row: RunSummary, key: str, outcomes_of: OutcomesOf | None, confidence: float) -> _Evidence:
    where = outcomes_key(key)
    values = [(run, v) for run in row.runs if (v := _number(run.metrics.get(key))) is not None]
    if not values:
        return _Evidence(None)
    found: list[Outcomes | None] = []
    for run, _ in values:
        table = outcomes_of(run) if where and outcomes_of else None
        wanted = (where[0], run.representation if where[1] == "model" else where[1]) if where else None
        outcome = table.get(wanted) if table else None
        found.append(outcome if outcome is not None and where[2] in outcome.metric_names else None)
    missing = [run for (run, _), o in zip(values, found) if o is None] if where else []
    complete = [o for o in found if o is not None] if where and not missing else None
    if not row.members:
        (run, value), = values
        low, high = _number(run.metrics.get(key + CI_LOW)), _number(run.metrics.get(key + CI_HIGH))
        if (low is None or high is None) and complete:
            _, low, high = (_number(v) for v in complete[0].interval(where[2]))
        if low is None or high is None:
            low = high = None
        return _Evidence(value, low, high, n=1, outcomes=complete, missing=missing)
    points = [v for _, v in values]
    if complete:
        from plmforge.core.uncertainty import pooled_over_seeds

        mean, sd, low, high = pooled_over_seeds(complete, where[2], confidence)
        low, high = (_number(low), _number(high)) if _number(low) is not None and _number(high) is not None \
            else (None, None)
        return _Evidence(mean, low, high, _number(sd), len(points), complete, missing)
    mean = math.fsum(points) / len(points)
    sd = math.sqrt(math.fsum((p - mean) ** 2 for p in points) / (len(points) - 1)) if len(points) > 1 else None
    return _Evidence(mean, sd=sd, n=len(points), missing=missing)


def pooled_difference(a: Sequence[Outcomes], b: Sequence[Outcomes], metric: str, confidence: float,
                      seed: int = 0) -> tuple[float, float, float] | None:
    """``(mean a - mean b, low, high)`` of two groups of seed replicates scored on the same test proteins.

    A two-level bootstrap, as :func:`~plmforge.core.uncertainty.pooled_over_seeds` for one group: replicate
    b draws each group's runs with replacement and takes the difference of their mean replicate b, so the
    choice of seeds and of test proteins both vary, and the protein resample stays paired across the groups.
    None when the runs do not share their resamples (then the caller compares the pooled intervals).
    """
    import numpy as np

    from plmforge.core.uncertainty import paired, percentile_bounds

    runs = [*a, *b]
    if not all(paired(runs[0], run) for run in runs[1:]) or not runs[0].resamples:
        return None
    count = runs[0].resamples
    rng = np.random.default_rng(seed)

    def pooled(group: Sequence[Outcomes]) -> tuple[float, np.ndarray]:
        table = np.stack([o.replicates[:count, o.column(metric)] for o in group], axis=1)  # [B, R]
        drawn = rng.integers(0, len(group), size=(count, len(group)))
        with np.errstate(all="ignore"):
            return (float(np.mean([o.point[o.column(metric)] for o in group])),
                    np.nanmean(table[np.arange(count)[:, None], drawn], axis=1))

    (mean_a, pooled_a), (mean_b, pooled_b) = pooled(a), pooled(b)
    low, high = percentile_bounds(pooled_a - pooled_b, confidence)
    return mean_a - mean_b, float(low[0]), float(high[0])


def _difference(a: _Evidence, b: _Evidence, metric: str, confidence: float) -> tuple[Difference, str | None]:
    """a - b, paired where both rows have outcomes on the same proteins; and why not paired (None: it is,
    or neither row has any uncertainty)."""
    from plmforge.core.uncertainty import paired_difference, unpaired_difference

    assert a.value is not None and b.value is not None
    why = None
    if a.outcomes and b.outcomes:
        if len(a.outcomes) == len(b.outcomes) == 1:
            found = paired_difference(a.outcomes[0], b.outcomes[0], metric, confidence)
        else:
            found = pooled_difference(a.outcomes, b.outcomes, metric, confidence)
        if found is not None:
            value, low, high = found
            return Difference(value, _number(low), _number(high), True), None
        why = "other proteins"
    elif a.uncertain or b.uncertain:
        why = "no outcomes"
    if a.has_interval and b.has_interval:
        value, low, high = unpaired_difference((a.value, a.low, a.high), (b.value, b.low, b.high), confidence)
        return Difference(value, _number(low), _number(high), False), why
    return Difference(a.value - b.value, paired=None if why is None else False), why


def _overlap(a: _Evidence, b: _Evidence) -> bool:
    """Whether the intervals overlap (a row without one counts as its point value)."""
    la, ha = (a.low, a.high) if a.has_interval else (a.value, a.value)
    lb, hb = (b.low, b.high) if b.has_interval else (b.value, b.value)
    return not (ha < lb or hb < la)


class _Notes:
    """Footer lines, each once, in the order first said."""

    def __init__(self) -> None:
        self.lines: dict[str, None] = {}

    def add(self, line: str) -> None:
        self.lines.setdefault(line)

    def unpaired(self, why: str | None, a: tuple[RunSummary, _Evidence], b: tuple[RunSummary, _Evidence],
                 key: str) -> None:
        if why == "no outcomes":
            for _, evidence in (a, b):
                for run in evidence.missing:
                    self.add(f"unpaired: no per-protein outcomes for run {run.label}; its intervals are compared "
                             f"unpaired (non-overlapping = significant)")
        elif why == "other proteins":
            self.add(f"unpaired: {a[0].label} and {b[0].label} were not scored on the same test proteins and "
                     f"resamples ({key}); their intervals are compared unpaired")


def build_comparison(runs: Sequence[RunSummary], metrics: Sequence[str] = DEFAULT_METRICS,
                     references: bool = False, outcomes: OutcomesOf | None = None, baseline: str | None = None,
                     group: bool = True, replicates: bool = False, params: Sequence[str] | None = None
                     ) -> Comparison:
    """Columns: run, [experiment], [kind], differing params, metrics matching the patterns (in pattern order).

    ``references``: the references the runs scored become rows below them (:func:`reference_rows`), in the
    same metric columns, with kind ``reference`` and no params. ``params``: fnmatch patterns choosing which
    of the differing params are columns (None: all of them; empty: none).
    ``experiment`` and ``kind`` appear only when they differ among the rows. A metric's ``_ci_low`` /
    ``_ci_high`` are its interval, not columns. The best cell of a metric column is marked only where at
    least two rows have values and they are not all equal; where the column has intervals, only when the
    best is significantly better than every other row (else the tied cells are marked, see the module
    docstring). ``outcomes(run)`` gives a run's per-protein outcomes (None: it has none; paired tests need
    them). ``group`` pools seed replicates into one row; ``replicates`` also lists them under it.
    ``baseline`` (a run id of the shown runs, or ``reference:<label>`` for a reference row) adds the
    differences of every other row to it.
    """
    notes = _Notes()
    rows, grouping_notes = group_replicates(runs) if group else (list(runs), [])
    if references:
        scored, more = group_replicates(reference_rows(runs)) if group else (reference_rows(runs), [])
        grouping_notes += more
        labels = [row.representation for row in scored]
        for row in scored:  # one reference scored differently by several parents: say whose each row is
            if labels.count(row.representation) > 1 and _parent_name(row):
                row.name = f"reference: {row.representation} · {_parent_name(row)}"
        rows += scored
    for line in grouping_notes:
        notes.add(line)
    shown: list[RunSummary] = []
    member_of: dict[int, int] = {}
    for row in rows:
        shown.append(row)
        if replicates and row.members:
            top = len(shown) - 1
            for member in row.members:
                member_of[len(shown)] = top
                shown.append(member)
    tops = [i for i in range(len(shown)) if i not in member_of]

    columns = [Column("run", "run")]
    if len({shown[i].experiment for i in tops}) > 1:
        columns.append(Column("experiment", "experiment"))
    if len({shown[i].kind for i in tops}) > 1:
        columns.append(Column("kind", "kind"))
    runs_with_params = [i for i in tops if shown[i].kind != "reference"]
    param_keys = {k for i in runs_with_params for k in shown[i].params
                  if not any(fnmatchcase(k, p) for p in IGNORED_PARAMS)
                  and (params is None or any(fnmatchcase(k, p) for p in params))}
    for key in sorted(param_keys, key=_natural):
        if len({shown[i].params.get(key) for i in runs_with_params}) > 1:
            columns.append(Column("param", key))

    logged = {k for row in shown for run in row.runs for k in run.metrics}
    patterns = list(metrics)
    chosen: dict[str, None] = {}
    unmatched = []
    for pattern in patterns:
        matched = sorted({_bound_key(k) or k for k in logged if fnmatchcase(k, pattern)}, key=_natural)
        if not matched:
            unmatched.append(pattern)
        chosen.update(dict.fromkeys(matched))
    columns += [Column("metric", key, lower_is_better(key)) for key in chosen]

    confidence = _confidence(shown, columns, outcomes)
    evidence: dict[tuple[int, int], _Evidence] = {}
    cells: list[list[Any]] = []
    intervals: dict[tuple[int, int], tuple[float, float]] = {}
    spread: dict[tuple[int, int], tuple[float, int]] = {}
    for r, row in enumerate(shown):
        values: list[Any] = []
        for col, column in enumerate(columns):
            if column.kind == "run":
                values.append(row.label)
            elif column.kind == "experiment":
                values.append(row.experiment)
            elif column.kind == "kind":
                values.append(row.kind)
            elif column.kind == "param":
                values.append(row.params.get(column.key))
            else:
                found = evidence[r, col] = _evidence(row, column.key, outcomes, confidence)
                values.append(found.value)
                if found.has_interval:
                    intervals[r, col] = (found.low, found.high)
                if row.members and found.value is not None:
                    spread[r, col] = (found.sd if found.sd is not None else math.nan, found.n)
        cells.append(values)

    comparison = Comparison(runs=shown, columns=columns, cells=cells, best={}, unmatched=unmatched,
                            intervals=intervals, spread=spread, member_of=member_of, confidence=confidence)
    _mark_best(comparison, tops, evidence, notes)
    if baseline is not None:
        _baseline_differences(comparison, tops, evidence, baseline, notes)
    comparison.notes = _footer(comparison, notes)
    return comparison


def _confidence(rows: Sequence[RunSummary], columns: Sequence[Column], outcomes: OutcomesOf | None) -> float:
    """The confidence level of the intervals: the outcomes files', else the spec's, else 95 %."""
    with_tasks = [run for row in rows for run in row.runs
                  if any(outcomes_key(c.key) and c.key in run.metrics for c in columns if c.kind == "metric")]
    for run in with_tasks[:1] if outcomes else ():
        table = outcomes(run)
        if table:
            return float(next(iter(table.values())).confidence)
    for run in with_tasks:
        value = _number(_float(run.params.get("evaluation.confidence")))
        if value is not None and 0 < value < 1:
            return value
    return DEFAULT_CONFIDENCE


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _mark_best(comparison: Comparison, tops: list[int], evidence: Mapping[tuple[int, int], _Evidence],
               notes: _Notes) -> None:
    """``best`` (``*``) and ``ties`` (``≈``) of each metric column with a better direction, among the top rows."""
    for col, column in enumerate(comparison.columns):
        if column.kind != "metric" or column.lower_is_better is None:
            continue
        values = [(r, evidence[r, col]) for r in tops if evidence[r, col].value is not None]
        if len(values) < 2 or len({e.value for _, e in values}) == 1:  # all equal: nothing to point out
            continue
        target = (min if column.lower_is_better else max)(e.value for _, e in values)
        best = {r for r, e in values if e.value == target}
        if not any(e.uncertain for _, e in values):  # losses: no intervals anywhere, the plain best mark
            comparison.best[col] = best
            continue
        comparison.tested.add(col)
        lead = min(best)
        metric = outcomes_key(column.key)[2] if outcomes_key(column.key) else column.key
        tied = set(best) if len(best) > 1 else set()
        for r, other in values:
            if r in best:
                continue
            difference, why = _difference(evidence[lead, col], other, metric, comparison.confidence)
            if why is not None:
                notes.unpaired(why, (comparison.runs[lead], evidence[lead, col]), (comparison.runs[r], other),
                               column.key)
            if difference.paired:
                if difference.low is None or difference.high is None:
                    better = False
                else:
                    better = difference.high < 0 if column.lower_is_better else difference.low > 0
            else:
                better = not _overlap(evidence[lead, col], other)
            if not better:
                tied |= {lead, r}
        if tied:
            comparison.ties[col] = tied
        else:
            comparison.best[col] = best


def _baseline_differences(comparison: Comparison, tops: list[int], evidence: Mapping[tuple[int, int], _Evidence],
                          baseline: str, notes: _Notes) -> None:
    """``deltas[row][col]``: each top row minus the baseline row, with the interval of the difference."""
    if baseline.startswith("reference:"):
        label = baseline[len("reference:"):].strip()
        matches = [r for r in tops if comparison.runs[r].representation == label]
    else:
        matches = [r for r in tops if comparison.runs[r].representation == "model"
                   and any(run.run_id.startswith(baseline) for run in comparison.runs[r].runs)]
    if not matches:
        raise PlmforgeError(f"--baseline {baseline!r} is not one of the compared runs")
    base = comparison.baseline = matches[0]
    if comparison.runs[base].members and comparison.runs[base].representation == "model" \
            and not comparison.runs[base].run_id.startswith(baseline):
        notes.add(f"baseline: run {baseline[:8]} is a seed replicate; the differences are to its pooled row "
                  f"{comparison.runs[base].label}")
    for r in tops:
        if r == base:
            continue
        row: dict[int, Difference] = {}
        for col, column in enumerate(comparison.columns):
            if column.kind != "metric":
                continue
            a, b = evidence[r, col], evidence[base, col]
            if a.value is None or b.value is None:
                continue
            metric = outcomes_key(column.key)[2] if outcomes_key(column.key) else column.key
            row[col], why = _difference(a, b, metric, comparison.confidence)
            if why is not None:
                notes.unpaired(why, (comparison.runs[r], a), (comparison.runs[base], b), column.key)
        comparison.deltas[r] = row


def _percent(confidence: float) -> str:
    return f"{100 * confidence:g} %"


def _footer(comparison: Comparison, notes: _Notes) -> list[str]:
    """What the marks, pooled rows and differences mean, then the fallbacks that were used."""
    lines = []
    plain = [comparison.columns[c].key for c in comparison.best if c not in comparison.tested]
    percent = _percent(comparison.confidence)
    if comparison.tested:
        parts = []
        if any(c in comparison.tested for c in comparison.best):
            parts.append(f"* best in column, significantly better than every other row (paired bootstrap over the "
                         f"same test proteins, {percent})")
        if comparison.ties:
            parts.append("≈ best within the uncertainty: not significantly different from the best")
        lines.append("; ".join(parts + [f"[low, high]: {percent} interval over test proteins"]))
        if plain:
            lines.append(f"* on {', '.join(plain)} (no intervals): the best value; {MISSING} not logged")
    elif comparison.best:
        lines.append(BEST_NOTE)
    if comparison.intervals and not comparison.tested:
        lines.append(f"[low, high]: {percent} interval over test proteins")
    if comparison.spread:
        lines.append("[seeds ...] rows: seed replicates pooled, mean ± sd over seeds; their interval includes the "
                     "seed spread (two-level bootstrap over seeds and test proteins)")
    if comparison.baseline is not None:
        unpaired = any(d.paired is False for row in comparison.deltas.values() for d in row.values())
        lines.append(f"Δ rows: difference to the baseline {comparison.runs[comparison.baseline].label} (row − "
                     f"baseline) with its {percent} interval, paired over the same test proteins"
                     + ("; † unpaired (normal approximation from both intervals)" if unpaired else ""))
    return lines + list(notes.lines)


# -- rendering -------------------------------------------------------------------------------------------------


def format_value(value: Any, signed: bool = False) -> str:
    if value is None:
        return MISSING
    if not isinstance(value, float):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    sign = "+" if signed else ""
    size = abs(value)
    if size >= 1e4:
        return f"{value:{sign},.0f}"
    if 0 < size < 1e-3:
        return f"{value:{sign}.3e}"
    return f"{value:{sign}.4f}"


def _format_bound(value: float, like: float, signed: bool = False) -> str:
    """Interval bounds one decimal shorter than the values (they are less certain than a point), in the
    notation of the value ``like`` they belong to, so a bound near 0 reads 0.000, not 5.55e-17."""
    sign = "+" if signed else ""
    size = abs(like) if like else abs(value)
    if not math.isfinite(value):
        return str(value)
    if size >= 1e4:
        return f"{value:{sign},.0f}"
    if 0 < size < 1e-3:
        return f"{value:{sign}.2e}"
    return f"{value:{sign}.3f}"


def cell_text(comparison: Comparison, row: int, col: int) -> str:
    """A cell without marks: ``0.6210 [0.594, 0.657]``, pooled ``0.6210 ± 0.0120 [0.594, 0.657]``."""
    value = comparison.cells[row][col]
    text = format_value(value)
    if value is None or comparison.columns[col].kind != "metric":
        return text
    sd, n = comparison.spread.get((row, col), (None, 0))
    if sd is not None:
        text += f" ± {format_value(sd)}"
    if (row, col) in comparison.intervals:
        low, high = comparison.intervals[row, col]
        text += f" [{_format_bound(low, value)}, {_format_bound(high, value)}]"
    members = len(comparison.runs[row].members)
    if sd is not None and n < members:  # a replicate without this metric: say how many the mean has
        text += f" (n={n})"
    return text


def delta_text(difference: Difference) -> str:
    """``+0.0294 [+0.028, +0.031]``, with † when unpaired; rounding noise (|x| < 1e-12) reads as 0."""
    def clean(x: float) -> float:
        return 0.0 if abs(x) < 1e-12 else x

    value = clean(difference.value)
    text = format_value(value, signed=True)
    if difference.low is not None and difference.high is not None:
        low, high = clean(difference.low), clean(difference.high)
        text += f" [{_format_bound(low, value or max(abs(low), abs(high)), True)}, " \
                f"{_format_bound(high, value or max(abs(low), abs(high)), True)}]"
        if difference.paired is False:
            text += "†"
    return text


BEST_NOTE = ("* best in column: lowest for loss, mse, perplexity, error, kl and *_ce cross-entropy metrics, "
             f"highest for the others; {MISSING} not logged")


def _mark(comparison: Comparison, row: int, col: int) -> str:
    """``*``, ``≈`` or "" for one cell."""
    if row in comparison.best.get(col, ()):
        return "*"
    if row in comparison.ties.get(col, ()):
        return "≈"
    return ""


def _row_label(comparison: Comparison, row: int) -> str:
    run = comparison.runs[row]
    if row in comparison.member_of:
        return f"  └ seed {run.seed}: {run.label}"
    return run.label + (" (baseline)" if row == comparison.baseline else "")


def _fitted_widths(headers: list[int], cells: list[int], space: int) -> list[int] | None:
    """Column widths that keep every cell on one line and fold only headers, or None when even the cells
    do not fit (then rich folds everything). Rich alone would squeeze cells as readily as headers."""
    frame = 3 * len(cells) + 1  # borders and padding
    widths = list(cells)
    if sum(widths) + frame > space:
        return None
    spare = space - frame - sum(widths)
    while spare > 0 and any(w < h for w, h in zip(widths, headers)):
        for i, header in enumerate(headers):
            if widths[i] < header and spare > 0:
                widths[i] += 1
                spare -= 1
    return widths


def render_table(comparison: Comparison, file: TextIO | None = None) -> None:
    """A rich table. Elsewhere than on a terminal (pipes, files) it is printed at its natural width, so no
    name or value is ever cut; on a narrow terminal the headers fold first, the cells only when they must.

    Differences to a baseline are rows below the runs, in the metric columns they belong to: a column per
    difference would double the width of a table that is already wide with intervals.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=file, highlight=False)
    if not console.is_terminal:
        console = Console(file=file, highlight=False, width=100_000)
    marked = set(comparison.best) | set(comparison.ties)  # keep decimals aligned with the marks
    rows: list[list[Text]] = []
    for row, values in enumerate(comparison.cells):
        texts = []
        for col, value in enumerate(values):
            column = comparison.columns[col]
            mark = "" if row in comparison.member_of else _mark(comparison, row, col)
            pad = " " if col in marked else ""
            if column.kind == "run":
                texts.append(Text(_row_label(comparison, row), style="dim" if row in comparison.member_of else "bold"))
            elif value is None:
                texts.append(Text(MISSING + pad, style="dim"))
            elif mark:
                texts.append(Text(cell_text(comparison, row, col) + mark,
                                  style="bold green" if mark == "*" else "bold yellow"))
            else:
                texts.append(Text(cell_text(comparison, row, col) + pad,
                                  style="dim" if row in comparison.member_of else ""))
        rows.append(texts)
    differences: list[list[Text]] = []
    for row, found in comparison.deltas.items():
        texts = [Text(f"Δ {comparison.runs[row].label}", style="italic")]
        for col, column in enumerate(comparison.columns[1:], 1):
            if column.kind == "metric" and col in found:
                text = delta_text(found[col])
                texts.append(Text(text + (" " if col in marked and not text.endswith("†") else ""),
                                  style="cyan" if found[col].excludes_zero else ""))
            else:
                texts.append(Text(""))
        differences.append(texts)
    everything = rows + differences
    widths = _fitted_widths([len(c.key) for c in comparison.columns],
                            [max((len(texts[col]) for texts in everything), default=1)
                             for col in range(len(comparison.columns))] if everything
                            else [1] * len(comparison.columns), console.width)
    table = Table(header_style="bold")
    for col, column in enumerate(comparison.columns):
        table.add_column(Text(column.key, style={"param": "cyan"}.get(column.kind, "")), overflow="fold",
                         width=widths[col] if widths else None,
                         justify="right" if column.kind == "metric" else "left")
    for texts in rows:
        table.add_row(*texts)
    if differences:
        table.add_section()
        for texts in differences:
            table.add_row(*texts)
    console.print(table)
    for line in comparison.notes:
        console.print(Text(line, style="dim"))


def render_csv(comparison: Comparison) -> str:
    """run, run_id, experiment, then the other columns; raw values (full precision), empty when missing.

    A metric with intervals gets ``<key>_ci_low`` / ``<key>_ci_high`` beside it; pooled rows (run ids joined
    by ``;``) ``<key>_sd`` and ``<key>_n``; with a baseline, ``<key>_delta``, ``_delta_low``, ``_delta_high``
    and ``_delta_paired`` (true, false, or empty for a plain difference). No marks: scripts decide.
    """
    def number(value: Any) -> str:
        return "" if value is None else repr(float(value)) if isinstance(value, float | int) else str(value)

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    rest = [(i, c) for i, c in enumerate(comparison.columns) if c.kind not in ("run", "experiment")]
    pooled = any(run.members for run in comparison.runs)
    header = ["run", "run_id", "experiment"] + (["seeds"] if pooled else [])
    fields: list[Callable[[int], str]] = []
    for i, column in rest:
        header.append(column.key)
        fields.append(lambda r, i=i: number(comparison.cells[r][i]))
        if column.kind != "metric":
            continue
        if any((r, i) in comparison.intervals for r in range(len(comparison.runs))):
            header += [column.key + CI_LOW, column.key + CI_HIGH]
            fields += [lambda r, i=i: number(comparison.intervals.get((r, i), (None, None))[0]),
                       lambda r, i=i: number(comparison.intervals.get((r, i), (None, None))[1])]
        if any((r, i) in comparison.spread for r in range(len(comparison.runs))):
            header += [column.key + "_sd", column.key + "_n"]
            fields += [lambda r, i=i: number(_number(comparison.spread.get((r, i), (None, 0))[0])),
                       lambda r, i=i: str(comparison.spread[r, i][1]) if (r, i) in comparison.spread else ""]
        if comparison.baseline is not None:
            def delta(r: int, i: int = i) -> Difference | None:
                return comparison.deltas.get(r, {}).get(i)

            header += [column.key + suffix for suffix in ("_delta", "_delta_low", "_delta_high", "_delta_paired")]
            fields += [lambda r, delta=delta: number(d.value) if (d := delta(r)) else "",
                       lambda r, delta=delta: number(d.low) if (d := delta(r)) else "",
                       lambda r, delta=delta: number(d.high) if (d := delta(r)) else "",
                       lambda r, delta=delta: "" if (d := delta(r)) is None or d.paired is None
                       else str(d.paired).lower()]
    writer.writerow(header)
    for r, run in enumerate(comparison.runs):
        seeds = [";".join(str(m.seed) for m in run.members) if run.members else run.seed or ""] if pooled else []
        writer.writerow([run.name, run.run_id, run.experiment, *seeds, *(f(r) for f in fields)])
    return out.getvalue()


def render_markdown(comparison: Comparison) -> str:
    """A GitHub-flavoured Markdown table; the significantly best value of each column in bold, ties with ≈,
    differences to a baseline as rows below; then the notes (when there is more to say than the bold)."""
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|")

    lines = ["| " + " | ".join(escape(c.key) for c in comparison.columns) + " |",
             "|" + "|".join(" ---: " if c.kind == "metric" else " --- " for c in comparison.columns) + "|"]
    for row, values in enumerate(comparison.cells):
        cells = []
        for col in range(len(values)):
            text = escape(_row_label(comparison, row).strip() if col == 0 else cell_text(comparison, row, col))
            mark = "" if row in comparison.member_of else _mark(comparison, row, col)
            cells.append(f"**{text}**" if mark == "*" else f"{text} ≈" if mark else text)
        lines.append("| " + " | ".join(cells) + " |")
    for row, found in comparison.deltas.items():
        cells = [escape(f"Δ {comparison.runs[row].label}")]
        cells += [escape(delta_text(found[col])) if col in found else "" for col in range(1, len(comparison.columns))]
        lines.append("| " + " | ".join(cells) + " |")
    extra = [line for line in comparison.notes if line != BEST_NOTE]
    if extra:
        lines += ["", *(f"- {escape(line).replace('*', chr(92) + '*')}" for line in comparison.notes)]
    return "\n".join(lines) + "\n"


def _bar_name(key: str) -> str:
    """``ss3/q3`` for ``task/ss3/q3``, ``ss3/q3 (onehot)`` for ``reference/onehot/ss3/q3``."""
    where = outcomes_key(key)
    if where is None:
        return key
    task, representation, metric = where
    return f"{task}/{metric}" + ("" if representation == "model" else f" ({representation})")


def plot_comparison(comparison: Comparison, path: Path,
                    history: Callable[[str, str], list[tuple[int, float]]]) -> None:
    """One PNG: left, train/loss (solid) and val/loss (dashed) over steps per run; right, the shown task/* (and
    reference/*, with ``--references``) metrics as grouped bars, one bar per row, each with its value and
    interval. ``history(run_id, key)`` gives a metric's (step, value) list. Pooled rows draw their mean and
    pooled interval; their curves are the replicates', in the row's colour. The legend names each row with
    the params that differ.

    Drawn on a bare matplotlib Figure with the Agg canvas: no pyplot, so nothing global is switched or left
    open (the figure is freed with its last reference, and cleared explicitly all the same).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in range(len(comparison.runs)) if r not in comparison.member_of]
    runs = [comparison.runs[r] for r in rows]
    bar_columns = [(c, col.key) for c, col in enumerate(comparison.columns)
                   if col.kind == "metric" and col.key.startswith(("task/", "reference/"))]
    width = 6.5 + max(4.5, 0.3 * len(bar_columns) * max(len(runs), 2))
    figure = Figure(figsize=(width, 5.6 + 0.25 * math.ceil(len(runs) / 3)), layout="constrained")
    FigureCanvasAgg(figure)
    curves, bars = figure.subplots(1, 2, width_ratios=[6.5, width - 6.5])
    colors = [f"C{i % 10}" for i in range(len(runs))]

    drawn = False
    for run, color in zip(runs, colors):
        for member in run.runs:
            for key, style in zip(LOSS_CURVES, ("-", "--")):
                points = history(member.run_id, key) if key in member.metrics else []
                if points:
                    steps, values = zip(*points)
                    curves.plot(steps, values, style, color=color, marker="o" if len(points) < 30 else None,
                                markersize=3, alpha=0.6 if run.members else 1.0)
                    drawn = True
    curves.set_title("loss")
    curves.set_xlabel("step")
    if drawn:
        curves.legend(handles=[Line2D([], [], color="black", linestyle=s, label=k)
                               for k, s in zip(LOSS_CURVES, ("-", "--"))], fontsize="small")
        curves.xaxis.set_major_locator(MaxNLocator(integer=True))
        curves.grid(alpha=0.3)
    else:
        curves.text(0.5, 0.5, "no train/loss or val/loss logged", ha="center", va="center",
                    transform=curves.transAxes)

    bars.set_title("downstream tasks" + (f" ({_percent(comparison.confidence)} intervals)"
                                         if comparison.intervals else ""))
    if bar_columns:
        step = 0.8 / len(runs)
        many = len(bar_columns) * len(runs) > 12
        for i, (row, color) in enumerate(zip(rows, colors)):
            heights = [comparison.cells[row][c] if comparison.cells[row][c] is not None else math.nan
                       for c, _ in bar_columns]
            errors = [[h - comparison.intervals[row, c][0] if (row, c) in comparison.intervals else 0.0
                       for (c, _), h in zip(bar_columns, heights)],
                      [comparison.intervals[row, c][1] - h if (row, c) in comparison.intervals else 0.0
                       for (c, _), h in zip(bar_columns, heights)]]
            errors = [[max(e, 0.0) if math.isfinite(e) else 0.0 for e in side] for side in errors]
            container = bars.bar([t - 0.4 + step * (i + 0.5) for t in range(len(bar_columns))], heights, step,
                                 color=color, yerr=errors if comparison.intervals else None, capsize=2,
                                 error_kw={"elinewidth": 0.8, "alpha": 0.8})
            bars.bar_label(container, labels=["" if not math.isfinite(h) else f"{h:.3f}" for h in heights],
                           fontsize="x-small", rotation=90 if many else 0, padding=2,
                           label_type="center" if comparison.intervals else "edge")
        bars.set_xticks(range(len(bar_columns)), [_bar_name(k) for _, k in bar_columns], rotation=30, ha="right",
                        fontsize="small")
        bars.grid(axis="y", alpha=0.3)
    else:
        bars.set_axis_off()
        bars.text(0.5, 0.5, "no task/* metrics shown", ha="center", va="center", transform=bars.transAxes)

    params = [(c, col.key) for c, col in enumerate(comparison.columns) if col.kind == "param"]

    def legend(row: int) -> str:
        differing = ", ".join(f"{key.rsplit('.', 1)[-1]}={comparison.cells[row][c]}" for c, key in params
                              if comparison.cells[row][c] is not None)
        return comparison.runs[row].label + (f": {differing}" if differing else "")

    figure.legend(handles=[Patch(color=c, label=legend(r)) for r, c in zip(rows, colors)], loc="outside lower center",
                  ncols=min(len(runs), 3), fontsize="small", frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=120)
    figure.clear()
