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
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
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


class Tracker:
    """One MLflow run, fed asynchronously. With ``enabled=False`` every method is a no-op."""

    def __init__(self, enabled: bool, tracking_uri: str | None, experiment: str, run_name: str,
                 warn: Callable[[str], None] | None = None):
        self.enabled = enabled
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.run_name = run_name
        self.run_id: str | None = None
        self.failure: str | None = None
        self._warn = warn or (lambda message: warnings.warn(message, stacklevel=2))
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._client: Any = None

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
            else:
                experiment = self._client.get_experiment_by_name(self.experiment)
                experiment_id = (experiment.experiment_id if experiment is not None
                                 else self._client.create_experiment(self.experiment))
                tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
                self.run_id = self._client.create_run(experiment_id, run_name=self.run_name, tags=tags).info.run_id
        except Exception as exc:  # noqa: BLE001 - tracking must not stop training
            self._fail(f"cannot start an MLflow run at {self.tracking_uri}: {type(exc).__name__}: {exc}")
            return None
        self._thread = threading.Thread(target=self._work, name="plmforge-mlflow", daemon=True)
        self._thread.start()
        return self.run_id

    def child(self, run_name: str) -> Tracker | None:
        """A started run nested under this one (same store and experiment); None when not tracking."""
        if self.run_id is None or self.failure is not None:
            return None
        nested = Tracker(True, self.tracking_uri, self.experiment, run_name, warn=self._warn)
        return nested if nested.start(parent_run_id=self.run_id) else None

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
        self._put("tags", {k: str(v) for k, v in tags.items() if v is not None})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._put("metrics", (dict(metrics), step, int(time.time() * 1000)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._put("artifact", (Path(path), artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._put("text", (text, artifact_file))

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
REPLICATE_IGNORED = ("seed", "name", "output_dir", "tracking.*")


def replicate_group(params: Mapping[str, str]) -> str:
    """Digest of a run's flattened spec (MLflow params) without seed, name, output_dir and tracking.

    Equal for seed replicates of one spec; the run loop tags runs with it (``plmforge.replicate_group``) and
    compare computes it from the params of runs logged before the tag existed, so both group together.
    """
    kept = {k: str(v) for k, v in params.items() if not any(fnmatchcase(k, p) for p in REPLICATE_IGNORED)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]
