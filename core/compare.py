"""``plmforge compare``: runs side by side, read back from MLflow.

Why this exists next to the MLflow UI: a plmforge run logs its whole resolved spec as ~60 flattened params,
and almost all of them are the same in every run of a study. What one wants after a sweep is "what did I
change, and what did it buy": so the table shows only the params whose values differ among the shown runs,
the final ``train/loss`` and ``val/loss`` and the downstream ``task/*`` metrics, with the best value of each
column marked. It works on any tracking URI because it uses nothing but MlflowClient read calls.

Which runs: the top-level runs (pretraining and checkpoint evaluations) of the experiments asked for, or of
every experiment when none is named (with an ``experiment`` column when they come from several), or exactly
the run ids given (full ids or unique prefixes such as the 8-character short ids the table shows). Child
runs (the per-task runs that ``evaluate`` nests under its run) are never rows: their summaries are already
on the parent as ``task/<label>/<metric>`` and ``reference/<kind>/<label>/<metric>``.

Three layers, each testable alone:

* :class:`RunSource` is the only code that talks to MLflow (imported lazily, so ``plmforge --help`` stays
  fast); it turns MLflow runs into plain :class:`RunSummary` records and reads metric histories.
* :func:`build_comparison` turns summaries into a :class:`Comparison`: columns, rows of raw values and the
  best cells, as plain data; no rendering.
* ``render_*`` and :func:`plot_comparison` draw it: a rich table (best cells bold green *and* suffixed with
  ``*``, so pipes, logs and tests see the marks too), CSV (raw values, no marks, for scripts), Markdown
  (best in bold, for docs), and a PNG of loss curves and task metrics.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import unquote, urlparse

from plmforge.core.errors import PlmforgeError

DEFAULT_METRICS = ("train/loss", "val/loss", "task/*")
REFERENCE_METRICS = "reference/*"
LOSS_CURVES = ("train/loss", "val/loss")
#: Params never shown: they differ in every run without saying anything about it.
IGNORED_PARAMS = ("name", "output_dir", "tracking.*")
#: A metric whose name (last path segment) contains one of these is better when lower.
LOWER_IS_BETTER = ("loss", "mse", "perplexity", "error", "kl")
#: Metrics with no better direction: their columns get no best mark.
NEUTRAL_METRICS = ("lr", "cropped_proteins")
MISSING = "—"
PARENT_TAG = "mlflow.parentRunId"
KIND_TAG = "plmforge.kind"


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

    @property
    def kind(self) -> str | None:
        return self.tags.get(KIND_TAG)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.run_id[:8]})"


@dataclass(frozen=True)
class Column:
    """``kind`` is run, experiment, kind (the plmforge.kind tag), param or metric; ``key`` the name shown."""

    kind: str
    key: str
    lower_is_better: bool | None = None  # metrics only; None: no best mark


@dataclass
class Comparison:
    """The table as data. ``cells[row][col]`` is a str (run label, experiment, param), a float or None."""

    runs: list[RunSummary]
    columns: list[Column]
    cells: list[list[Any]]
    best: dict[int, set[int]]  # column index -> indices of the rows holding that column's best value
    unmatched: list[str] = field(default_factory=list)  # metric patterns that matched no logged metric

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
               limit: int | None = None) -> list[RunSummary]:
        """The runs to compare; raises PlmforgeError for unknown names or ids, NoRuns when there are none.

        ``limit``: only the most recent top-level runs of the experiments (still shown oldest first), so an
        experiment with hundreds of runs gives a readable table without fetching every run's details.
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
            return [self._summary(run) for run in self._runs_by_id(run_ids)]
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
        if limit is not None:
            runs = runs[-limit:] if limit > 0 else []
        if not runs:
            names = ", ".join(repr(e.name) for e in chosen)
            scope = f"experiment{'s' if len(chosen) > 1 else ''} {names}" if experiments else "any experiment"
            raise NoRuns(f"no runs to compare in {scope} at {self.uri}")
        return [self._summary(run) for run in runs]

    def _experiment(self, name: str) -> Any:
        experiment = self._call(self.client.get_experiment_by_name, name)
        if experiment is None or experiment.lifecycle_stage == "deleted":
            known = self._paged(lambda token: self.client.search_experiments(max_results=1000, page_token=token))
            listed = ", ".join(sorted(repr(e.name) for e in known)) or "none"
            state = "deleted" if experiment is not None else "unknown"
            raise PlmforgeError(f"{state} experiment {name!r} at {self.uri} (experiments there: {listed})")
        return experiment

    def _search(self, experiment_ids: list[str]) -> list[Any]:
        return self._paged(lambda token: self.client.search_runs(
            experiment_ids, max_results=1000, order_by=["attributes.start_time ASC"], page_token=token))

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

    def _summary(self, run: Any) -> RunSummary:
        experiment_id = run.info.experiment_id
        if experiment_id not in self._experiment_names:
            self._experiment_names[experiment_id] = self._call(self.client.get_experiment, experiment_id).name
        tags = dict(run.data.tags)
        name = run.info.run_name or tags.get("mlflow.runName") or run.info.run_id[:8]
        return RunSummary(run_id=run.info.run_id, name=name, experiment=self._experiment_names[experiment_id],
                          params=dict(run.data.params), metrics=dict(run.data.metrics), tags=tags)

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
    if name in NEUTRAL_METRICS:
        return None
    return any(word in name for word in LOWER_IS_BETTER)


def _number(value: Any) -> float | None:
    return value if isinstance(value, float) and math.isfinite(value) else None


def build_comparison(runs: Sequence[RunSummary], metrics: Sequence[str] = DEFAULT_METRICS,
                     references: bool = False) -> Comparison:
    """Columns: run, [experiment], [kind], differing params, metrics matching the patterns (in pattern order).

    ``experiment`` and ``kind`` appear only when they differ among the runs. The best cell of a metric
    column is marked only where at least two runs have values and they are not all equal; ties are all marked.
    """
    runs = list(runs)
    columns = [Column("run", "run")]
    if len({r.experiment for r in runs}) > 1:
        columns.append(Column("experiment", "experiment"))
    if len({r.kind for r in runs}) > 1:
        columns.append(Column("kind", "kind"))

    param_keys = {k for r in runs for k in r.params if not any(fnmatchcase(k, p) for p in IGNORED_PARAMS)}
    for key in sorted(param_keys, key=_natural):
        if len({r.params.get(key) for r in runs}) > 1:
            columns.append(Column("param", key))

    logged = {k for r in runs for k in r.metrics}
    patterns = list(metrics) + ([REFERENCE_METRICS] if references else [])
    chosen: dict[str, None] = {}
    unmatched = []
    for pattern in patterns:
        matched = sorted((k for k in logged if fnmatchcase(k, pattern)), key=_natural)
        if not matched:
            unmatched.append(pattern)
        chosen.update(dict.fromkeys(matched))
    columns += [Column("metric", key, lower_is_better(key)) for key in chosen]

    def cell(run: RunSummary, column: Column) -> Any:
        if column.kind == "run":
            return run.label
        if column.kind == "experiment":
            return run.experiment
        if column.kind == "kind":
            return run.kind
        if column.kind == "param":
            return run.params.get(column.key)
        value = run.metrics.get(column.key)
        return float(value) if value is not None else None

    cells = [[cell(run, column) for column in columns] for run in runs]
    best: dict[int, set[int]] = {}
    for col, column in enumerate(columns):
        if column.kind != "metric" or column.lower_is_better is None:
            continue
        values = [(row, v) for row, v in ((row, _number(cells[row][col])) for row in range(len(runs)))
                  if v is not None]
        if len(values) >= 2 and len({v for _, v in values}) > 1:  # all equal: nothing to point out
            target = (min if column.lower_is_better else max)(v for _, v in values)
            best[col] = {row for row, v in values if v == target}
    return Comparison(runs=runs, columns=columns, cells=cells, best=best, unmatched=unmatched)


# -- rendering -------------------------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    if value is None:
        return MISSING
    if not isinstance(value, float):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    size = abs(value)
    if size >= 1e4:
        return f"{value:,.0f}"
    if 0 < size < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4f}"


BEST_NOTE = ("* best in column: lowest for loss, mse, perplexity, error and kl metrics, highest for the others; "
             f"{MISSING} not logged")


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
    name or value is ever cut; on a narrow terminal the headers fold first, the cells only when they must."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=file, highlight=False)
    if not console.is_terminal:
        console = Console(file=file, highlight=False, width=100_000)
    rows: list[list[Text]] = []
    for row, values in enumerate(comparison.cells):
        texts = []
        for col, value in enumerate(values):
            marked = col in comparison.best  # keep decimals aligned with the * of the best cell
            if comparison.columns[col].kind == "run":
                texts.append(Text(value, style="bold"))
            elif value is None:
                texts.append(Text(MISSING + (" " if marked else ""), style="dim"))
            elif row in comparison.best.get(col, ()):
                texts.append(Text(f"{format_value(value)}*", style="bold green"))
            else:
                texts.append(Text(format_value(value) + (" " if marked else "")))
        rows.append(texts)
    widths = _fitted_widths([len(c.key) for c in comparison.columns],
                            [max((len(texts[col]) for texts in rows), default=1) for col in range(len(rows[0]))]
                            if rows else [1] * len(comparison.columns), console.width)
    table = Table(header_style="bold")
    for col, column in enumerate(comparison.columns):
        table.add_column(Text(column.key, style={"param": "cyan"}.get(column.kind, "")), overflow="fold",
                         width=widths[col] if widths else None,
                         justify="right" if column.kind == "metric" else "left")
    for texts in rows:
        table.add_row(*texts)
    console.print(table)
    if comparison.best:
        console.print(Text(BEST_NOTE, style="dim"))


def render_csv(comparison: Comparison) -> str:
    """run, run_id, experiment, then the other columns; raw values (full precision), empty when missing."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    rest = [(i, c) for i, c in enumerate(comparison.columns) if c.kind not in ("run", "experiment")]
    writer.writerow(["run", "run_id", "experiment", *(c.key for _, c in rest)])
    for run, values in zip(comparison.runs, comparison.cells):
        writer.writerow([run.name, run.run_id, run.experiment,
                         *("" if values[i] is None else repr(values[i]) if isinstance(values[i], float)
                           else values[i] for i, _ in rest)])
    return out.getvalue()


def render_markdown(comparison: Comparison) -> str:
    """A GitHub-flavoured Markdown table; the best value of each column in bold."""
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|")

    lines = ["| " + " | ".join(escape(c.key) for c in comparison.columns) + " |",
             "|" + "|".join(" ---: " if c.kind == "metric" else " --- " for c in comparison.columns) + "|"]
    for row, values in enumerate(comparison.cells):
        cells = []
        for col, value in enumerate(values):
            text = escape(format_value(value))
            cells.append(f"**{text}**" if row in comparison.best.get(col, ()) else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(comparison: Comparison, path: Path,
                    history: Callable[[str, str], list[tuple[int, float]]]) -> None:
    """One PNG: left, train/loss (solid) and val/loss (dashed) over steps per run; right, the shown task/*
    metrics as grouped bars, one bar per run. ``history(run_id, key)`` gives a metric's (step, value) list.

    Drawn on a bare matplotlib Figure with the Agg canvas: no pyplot, so nothing global is switched or left
    open (the figure is freed with its last reference, and cleared explicitly all the same).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    runs = comparison.runs
    tasks = [c.key for c in comparison.metric_columns if c.key.startswith("task/")]
    width = 6.5 + max(4.5, 0.25 * len(tasks) * max(len(runs), 2))
    figure = Figure(figsize=(width, 5.2 + 0.25 * math.ceil(len(runs) / 3)), layout="constrained")
    FigureCanvasAgg(figure)
    curves, bars = figure.subplots(1, 2, width_ratios=[6.5, width - 6.5])
    colors = [f"C{i % 10}" for i in range(len(runs))]

    drawn = False
    for run, color in zip(runs, colors):
        for key, style in zip(LOSS_CURVES, ("-", "--")):
            points = history(run.run_id, key) if key in run.metrics else []
            if points:
                steps, values = zip(*points)
                curves.plot(steps, values, style, color=color, marker="o" if len(points) < 30 else None,
                            markersize=3)
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

    bars.set_title("downstream tasks")
    if tasks:
        step = 0.8 / len(runs)
        for i, (run, color) in enumerate(zip(runs, colors)):
            heights = [run.metrics.get(key, math.nan) for key in tasks]
            bars.bar([t - 0.4 + step * (i + 0.5) for t in range(len(tasks))], heights, step, color=color)
        bars.set_xticks(range(len(tasks)), [k.removeprefix("task/") for k in tasks], rotation=30, ha="right",
                        fontsize="small")
        bars.grid(axis="y", alpha=0.3)
    else:
        bars.set_axis_off()
        bars.text(0.5, 0.5, "no task/* metrics shown", ha="center", va="center", transform=bars.transAxes)

    figure.legend(handles=[Patch(color=c, label=r.label) for r, c in zip(runs, colors)], loc="outside lower center",
                  ncols=min(len(runs), 3), fontsize="small", frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=120)
    figure.clear()

