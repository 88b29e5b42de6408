"""``plmforge.compare``: runs side by side, read back from MLflow, as ``plmforge compare`` shows them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from plmforge.core.errors import PlmforgeError


class Comparison:
    """The table of :func:`compare`: differing params, losses and task metrics, one row per run.

    ``data`` is the plain :class:`plmforge.core.compare.Comparison` (columns, cells, best marks);
    :meth:`values` reads a column. It shows as a Markdown table in notebooks (best values in bold).
    """

    def __init__(self, data: Any, source: Any):
        self.data, self._source = data, source

    @property
    def columns(self) -> list[str]:
        return [column.key for column in self.data.columns]

    @property
    def run_ids(self) -> list[str]:
        """One per row; a reference row has the id of the run that scored it (a pooled row: ids joined by ;)."""
        return [run.run_id for run in self.data.runs]

    @property
    def rows(self) -> list[str]:
        """The row labels as the table shows them (``reference: onehot (3fa2c1d0)`` for a reference row)."""
        return [run.label for run in self.data.runs]

    @property
    def unmatched(self) -> list[str]:
        """Metric patterns that matched no logged metric."""
        return list(self.data.unmatched)

    def values(self, column: str) -> list[Any]:
        """One column's values, one per run (None where a run did not log it)."""
        return self.data.values(column)

    def to_markdown(self) -> str:
        from plmforge.core.compare import render_markdown

        return render_markdown(self.data)

    def to_csv(self) -> str:
        from plmforge.core.compare import render_csv

        return render_csv(self.data)

    def show(self) -> None:
        """The rich table ``plmforge compare`` prints (best values marked with *)."""
        from plmforge.core.compare import render_table

        render_table(self.data)

    def plot(self, path: str | Path) -> Path:
        """A PNG of loss curves and task metrics, as ``plmforge compare --plot`` writes it."""
        from plmforge.core.compare import plot_comparison

        plot_comparison(self.data, Path(path), self._source.history)
        return Path(path)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def __str__(self) -> str:
        return self.to_markdown()


def _ids_and_uri(runs: Iterable[Any]) -> tuple[list[str], str | None]:
    """Run ids of ``runs`` (Run objects, lists of them as ``train(seeds=...)`` returns, or ids) and the tracking
    URI the first Run object was logged to."""
    ids: list[str] = []
    uri = None
    for item in runs:
        if isinstance(item, str):
            ids += [i.strip() for i in item.split(",") if i.strip()]
        elif isinstance(item, Iterable):
            more, more_uri = _ids_and_uri(item)
            ids, uri = ids + more, uri or more_uri
        elif hasattr(item, "run_id"):
            if item.run_id is None:
                raise PlmforgeError(f"{item!r} has no MLflow run (tracking was off or failed): nothing to compare")
            ids.append(item.run_id)
            uri = uri or item.tracking_uri
        else:
            raise PlmforgeError(f"compare: {item!r} is neither a Run nor a run id")
    return ids, uri


def compare(*runs: Any, experiments: str | Sequence[str] = (), metrics: Sequence[str] | None = None,
            references: bool = False, limit: int | None = None, kinds: str | Sequence[str] = (),
            params: Sequence[str] | None = None, tracking_uri: str | None = None) -> Comparison:
    """Runs side by side, as ``plmforge compare`` shows them.

    ``runs``: :class:`~plmforge.Run` objects or MLflow run ids (full or short), in the order to show; or
    none, with ``experiments`` (names) to compare their top-level runs (the ``limit`` most recent).
    ``kinds``: only runs of these ``plmforge.kind`` (``"evaluation"``, ``"pretrain"``, ...).
    ``metrics``: fnmatch patterns (default ``train/loss``, ``val/loss``, ``task/*``); ``references`` adds
    the references the runs scored as rows ``reference: <label>`` below them, in the same task columns
    (read from each run's reference task child runs, or from the run itself for older runs). ``params``:
    fnmatch patterns choosing among the params that differ (default all; ``[]`` none). Marks and intervals
    are paired over the same test proteins where the runs saved their per-protein outcomes. The tracking
    URI is the runs' own, else ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``.
    """
    from plmforge.core import compare as comparing
    from plmforge.core.tracking import resolve_tracking_uri

    ids, run_uri = _ids_and_uri(runs)
    source = comparing.RunSource(resolve_tracking_uri(tracking_uri or run_uri))
    names = [experiments] if isinstance(experiments, str) else list(experiments)
    try:
        selected = source.select(names, ids, limit, [kinds] if isinstance(kinds, str) else list(kinds))
    except comparing.NoRuns as exc:
        raise PlmforgeError(str(exc)) from None
    data = comparing.build_comparison(selected, list(metrics) if metrics else comparing.DEFAULT_METRICS, references,
                                      outcomes=source.outcomes, params=None if params is None else list(params))
    return Comparison(data, source)
