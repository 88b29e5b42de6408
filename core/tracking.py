"""MLflow tracking that never stalls or stops training.

Calls are queued and sent by a background thread in batches, so a slow tracking server costs the
training loop nothing. If the server fails (at start or mid-run) the tracker warns once, drops what
it cannot send, and the run goes on with its local checkpoints. mlflow is imported only here, and only
when a run starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: Tags of experiments plmforge creates: MLflow's kind for model training (not GenAI), which MLflow UIs that
#: read it open on the training runs view. MLflow 3.17's UI picks the view by the ``workflowType`` URL
#: parameter instead (:func:`runs_page_url` sets it) and otherwise defaults to its GenAI overview.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
#: What :func:`runs_page_url` appends to an experiment's page: the runs table in MLflow's model-training view.
RUNS_PAGE = "#/experiments/{experiment_id}/runs?workflowType=machine_learning"
#: Where ``mlflow ui`` serves by default.
LOCAL_UI = "http://127.0.0.1:5000"
#: Seconds the end of a run waits for queued logging before giving up on it.
FLUSH_TIMEOUT = 60.0
_MAX_BATCH = 500  # MLflow accepts up to 1000 metrics / 100 params per log_batch


def resolve_tracking_uri(spec_uri: str | None) -> str:
    return spec_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested spec data as MLflow params: ``training.optimizer.lr`` -> "0.001"; list items by index."""
    out: dict[str, str] = {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list) and data and all(isinstance(v, Mapping) for v in data):
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}.{i}"))
    else:
        out[prefix] = json.dumps(data) if isinstance(data, list | tuple) else str(data)
    return out


#: Spec keys that say where a run is written or logged, not what it does: tags or the spec artifact keep them.
RUN_PARAMS_IGNORED = ("name", "description", "output_dir", "tracking")


def run_params(spec_dict: Mapping[str, Any]) -> dict[str, str]:
    """The MLflow params of a run: what describes it, so MLflow's compare view shows only real differences.

    The flattened spec without ``name``, ``description``, ``output_dir`` and ``tracking.*`` (the run's name,
    description and output directory are tags) and without the head options a task's head does not use (see
    :meth:`plmforge.core.heads.HeadSettings.used_options`). The whole resolved spec stays the ``spec.yaml``
    artifact; :func:`replicate_group` still digests the whole spec.
    """
    kept = {k: v for k, v in spec_dict.items() if k not in RUN_PARAMS_IGNORED}
    if isinstance(kept.get("tasks"), list):
        kept["tasks"] = [task_params_section(task) if isinstance(task, Mapping) else task for task in kept["tasks"]]
    return flatten(kept)


def task_params_section(task: Mapping[str, Any], pair: bool | None = None) -> dict[str, Any]:
    """A task's spec section (or plugin config) without the options its ``head`` does not use.

    ``pair`` (pair-level task) is looked up from the task plugin named by ``name`` when not given; a section
    whose head cannot be read is returned unchanged.
    """
    head = task.get("head")
    if not isinstance(head, Mapping):
        return dict(task)
    from plmforge.core.heads import HeadSettings

    try:
        settings = HeadSettings.model_validate(dict(head))
    except Exception:  # noqa: BLE001 - not a head this version knows: log it as it is
        return dict(task)
    if pair is None:
        pair = _pair_level(task)
    used = settings.used_options(pair)
    return {**task, "head": {k: v for k, v in head.items() if k in used}}


def _pair_level(task: Mapping[str, Any]) -> bool | None:
    """Whether the task plugin named in ``task`` predicts residue pairs (None when it cannot be told)."""
    if isinstance(task.get("level"), str):  # a task whose level is an option (custom)
        return task["level"] == "pair"
    name = task.get("name")
    if not isinstance(name, str):
        return None
    try:
        from plmforge.core.registry import Registry

        return getattr(Registry().load("task", name), "level", None) == "pair"
    except Exception:  # noqa: BLE001 - an unknown plugin keeps every option
        return None


def describing_overrides(overrides: Sequence[str]) -> list[str]:
    """The ``--set`` texts that change what a run does: not its name, description, output_dir or tracking."""
    return [text for text in overrides
            if re.split(r"[.\[=]", text.strip(), maxsplit=1)[0].strip() not in RUN_PARAMS_IGNORED]


def source_tags(spec_path: Path | None, overrides: Sequence[str]) -> dict[str, str]:
    """Where a run came from: the spec file (MLflow's Source column) and its ``--set`` overrides, one per line."""
    tags: dict[str, str] = {}
    if spec_path is not None:
        path = str(Path(spec_path).expanduser().resolve())
        tags.update({"mlflow.source.name": path, "mlflow.source.type": "LOCAL", "plmforge.spec_path": path})
    if overrides:
        tags["plmforge.overrides"] = "\n".join(overrides)
    return tags


def short_overrides(overrides: Sequence[str], limit: int = 24) -> str:
    """The describing ``--set`` overrides in short form: last key segment = value, joined by ", ", at most
    ``limit`` characters ("" when none describes the run).

    ``training.optimizer.lr=0.002`` -> ``lr=0.002``; ``objectives[0].weight=2`` -> ``weight=2``.
    """
    parts = []
    for text in describing_overrides(overrides):
        key, sep, value = text.partition("=")
        last = re.split(r"[.\[\]]+", key.strip().strip("]"))[-1] or key.strip()
        parts.append(f"{last}={value.strip()}" if sep else text.strip())
    joined = ", ".join(parts)
    return joined if len(joined) <= limit else joined[:limit - 1].rstrip(", ") + "…"


def run_title(base: str, overrides: Sequence[str]) -> str:
    """``base`` followed by the run's describing overrides in short form (``quickstart lr=0.002``), so runs of
    one spec are told apart in a table of runs."""
    label = short_overrides(overrides)
    return f"{base} {label}" if label else base


def runs_page_hint(tracking_uri: str, experiment_id: str | None) -> list[str]:
    """How to see an experiment's runs table: lines to print after a run (none for stores without a web UI).

    A local store (sqlite, file, a path) needs ``mlflow ui`` started on it first; an http(s) tracking server
    serves its own UI. The URL opens MLflow's model-training view (see :data:`EXPERIMENT_TAGS`).
    """
    page = RUNS_PAGE.format(experiment_id=experiment_id) if experiment_id else ""
    if tracking_uri.startswith(("http://", "https://")):
        return [f"view it: {tracking_uri.rstrip('/')}/{page}"]
    if tracking_uri.startswith("databricks"):
        return []
    if tracking_uri.startswith("sqlite:///"):  # absolute, so the command works from any folder
        uri = f"sqlite:///{Path(tracking_uri[len('sqlite:///'):]).resolve()}"
    elif tracking_uri.startswith("file:") or "://" not in tracking_uri:
        uri = tracking_uri if tracking_uri.startswith("file:") else str(Path(tracking_uri).expanduser().resolve())
    else:
        return []
    return [f"view it: mlflow ui --backend-store-uri {uri}", f"  then open {LOCAL_UI}/{page}"]


def spec_sha256(spec_dict: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec_dict, sort_keys=True).encode()).hexdigest()


def git_commit(path: Path) -> str | None:
    """Commit of the git checkout holding ``path``, when there is one."""
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@dataclass(frozen=True)
class DatasetRecord:
    """One split of the proteins a run read, as an MLflow dataset input.

    MLflow keeps one input per (name, digest) in a run, so each split has its own digest: ``digest`` is
    the first 12 hex digits of sha256 of the source's content digest and the split (the content digest itself is in
    ``profile``). ``source_type``: ``local`` for a file or prepared corpus (``source`` its path), ``code`` for
    a corpus shipped with plmforge.
    """

    name: str
    content_sha256: str
    split: str
    context: str  # MLflow's mlflow.data.context tag: training or validation
    source_type: str
    source: str
    profile: Mapping[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.content_sha256} {self.split}".encode()).hexdigest()[:12]

    def to_mlflow(self) -> Any:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        source = {"uri": self.source} if self.source_type == "local" else {"tags": {"plmforge.corpus": self.source}}
        profile = {"split": self.split, **self.profile, "sha256": self.content_sha256}
        dataset = Dataset(self.name, self.digest, self.source_type, json.dumps(source), profile=json.dumps(profile))
        return DatasetInput(dataset, [InputTag("mlflow.data.context", self.context)])


#: Tags a nested run copies from its parent: where the run came from, not what it did.
INHERITED_TAGS = ("mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit", "plmforge.spec_path")


class Tracker:
    """One MLflow run, fed asynchronously. With ``enabled=False`` every method is a no-op."""

    def __init__(self, enabled: bool, tracking_uri: str | None, experiment: str, run_name: str,
                 warn: Callable[[str], None] | None = None, overrides: Sequence[str] = ()):
        self.enabled = enabled
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.run_name = run_name
        self.overrides = list(overrides)  # the run's ``--set`` texts: they tell it apart from its siblings
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.failure: str | None = None
        self._warn = warn or (lambda message: warnings.warn(message, stacklevel=2))
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._inherited: dict[str, str] = {}  # tags its child runs get too (INHERITED_TAGS)

    @property
    def short_label(self) -> str:
        """What tells this run apart in a table of runs: its ``--set`` overrides in short form (``lr=0.002``),
        else the first 6 characters of its run id ("" before it has one). Child task runs carry it in their names.
        """
        return short_overrides(self.overrides) or (self.run_id or "")[:6]

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, resume_run_id: str | None = None, parent_run_id: str | None = None) -> str | None:
        """Create (or reopen) the MLflow run; returns its id, or None if tracking is off or failed.

        With ``parent_run_id`` the new run is nested under that run (MLflow's ``mlflow.parentRunId`` tag).
        """
        if not self.enabled:
            return None
        # a dead server must not hold the run for minutes of HTTP retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        try:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
            if resume_run_id:
                self._client.update_run(resume_run_id, status="RUNNING")
                self.run_id = resume_run_id
                self.experiment_id = self._client.get_run(resume_run_id).info.experiment_id
            else:
                experiment = self._client.get_experiment_by_name(self.experiment)
                if experiment is None:
                    self.experiment_id = self._client.create_experiment(self.experiment, tags=EXPERIMENT_TAGS)
                else:
                    self.experiment_id = experiment.experiment_id
                    if parent_run_id is None:
                        self._mark_experiment(experiment)
                tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
                self.run_id = self._client.create_run(self.experiment_id, run_name=self.run_name,
                                                      tags=tags).info.run_id
        except Exception as exc:  # noqa: BLE001 - tracking must not stop training
            self._fail(f"cannot start an MLflow run at {self.tracking_uri}: {type(exc).__name__}: {exc}")
            return None
        self._thread = threading.Thread(target=self._work, name="plmforge-mlflow", daemon=True)
        self._thread.start()
        return self.run_id

    def _mark_experiment(self, experiment: Any) -> None:
        """Give an experiment made before plmforge set :data:`EXPERIMENT_TAGS` (or by hand) the ones it lacks."""
        missing = {k: v for k, v in EXPERIMENT_TAGS.items() if k not in (experiment.tags or {})}
        for key, value in missing.items():
            try:
                self._client.set_experiment_tag(experiment.experiment_id, key, value)
            except Exception:  # noqa: BLE001 - a read-only experiment still takes runs; only its view differs
                return

    def child(self, run_name: str) -> Tracker | None:
        """A started run nested under this one (same store and experiment); None when not tracking."""
        if self.run_id is None or self.failure is not None:
            return None
        nested = Tracker(True, self.tracking_uri, self.experiment, run_name, warn=self._warn)
        if not nested.start(parent_run_id=self.run_id):
            return None
        if self._inherited:  # a task run shows the spec file and code its parent came from (MLflow's Source)
            nested.set_tags(self._inherited)
        return nested

    def end(self, status: str = "FINISHED") -> None:
        """Send what is queued (waiting at most FLUSH_TIMEOUT seconds) and close the run."""
        if self._thread is None:
            return
        self._queue.put(("end", status))
        self._thread.join(FLUSH_TIMEOUT)
        if self._thread.is_alive():
            self._fail(f"MLflow did not accept the last log calls within {FLUSH_TIMEOUT:.0f} s; they were dropped")
        elif self.failure is not None:
            self._try_to_terminate(status)
        self._thread = None

    def _try_to_terminate(self, status: str) -> None:
        """One last attempt to close a run whose logging failed, so it does not stay RUNNING in MLflow for good.

        Quiet: the failure was already reported; a server that is back accepts it, a dead one costs one request.
        """
        try:
            self._client.set_terminated(self.run_id, status=status)
        except Exception:  # noqa: BLE001 - the server is still gone; the run stays as MLflow last saw it
            pass

    # -- logging (all asynchronous) ---------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        self._put("params", {k: str(v)[:6000] for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        tags = {k: str(v) for k, v in tags.items() if v is not None}
        self._inherited.update({k: v for k, v in tags.items() if k in INHERITED_TAGS})
        self._put("tags", tags)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._put("metrics", (dict(metrics), step, int(time.time() * 1000)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._put("artifact", (Path(path), artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._put("text", (text, artifact_file))

    def log_inputs(self, datasets: Sequence[DatasetRecord]) -> None:
        """The data a run read, as MLflow dataset inputs (its runs table's Dataset column)."""
        if datasets:
            self._put("inputs", list(datasets))

    def _put(self, kind: str, payload: Any) -> None:
        if self._thread is not None and self.failure is None:
            self._queue.put((kind, payload))

    # -- worker ------------------------------------------------------------------------------------
    def _work(self) -> None:
        from mlflow.entities import Metric, Param, RunTag

        while True:
            kind, payload = self._queue.get()
            if kind == "end":
                if self.failure is None:
                    self._call(self._client.set_terminated, self.run_id, status=payload)
                return
            if self.failure is not None:
                continue  # drain without sending: the server is gone
            if kind == "metrics":
                # coalesce queued metric calls into one request
                entries = [payload]
                while len(entries) < _MAX_BATCH and not self._queue.empty():
                    nxt = self._queue.queue[0]
                    if nxt[0] != "metrics":
                        break
                    entries.append(self._queue.get()[1])
                metrics = [Metric(k, float(v), ts, step) for values, step, ts in entries for k, v in values.items()]
                for i in range(0, len(metrics), _MAX_BATCH):
                    self._call(self._client.log_batch, self.run_id, metrics=metrics[i:i + _MAX_BATCH])
            elif kind == "params":
                params = [Param(k, v) for k, v in payload.items()]
                for i in range(0, len(params), 100):
                    self._call(self._client.log_batch, self.run_id, params=params[i:i + 100])
            elif kind == "tags":
                tags = [RunTag(k, v) for k, v in payload.items()]
                self._call(self._client.log_batch, self.run_id, tags=tags)
            elif kind == "artifact":
                path, artifact_path = payload
                if path.is_dir():
                    self._call(self._client.log_artifacts, self.run_id, str(path), artifact_path)
                else:
                    self._call(self._client.log_artifact, self.run_id, str(path), artifact_path)
            elif kind == "text":
                text, artifact_file = payload
                self._call(self._client.log_text, self.run_id, text, artifact_file)
            elif kind == "inputs":
                self._call(self._client.log_inputs, self.run_id, datasets=[d.to_mlflow() for d in payload])

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self.failure is not None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must not stop training
            self._fail(f"MLflow logging to {self.tracking_uri} failed ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''}); training goes on, checkpoints stay local")

    def _fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = message
            self._warn(message)


#: Params that differ between seed replicates of one spec without making them different experiments.
REPLICATE_IGNORED = ("seed", "name", "description", "output_dir", "tracking.*")


def replicate_group(params: Mapping[str, str]) -> str:
    """Digest of a run's flattened spec (MLflow params) without seed, name, description, output_dir and tracking.

    Equal for seed replicates of one spec; the run loop tags runs with it (``plmforge.replicate_group``) and
    compare computes it from the params of runs logged before the tag existed, so both group together.
    """
    kept = {k: str(v) for k, v in params.items() if not any(fnmatchcase(k, p) for p in REPLICATE_IGNORED)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]
