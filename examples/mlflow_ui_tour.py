"""A tour of plmforge runs in the MLflow UI, as screenshots taken with headless Chromium.

    python examples/mlflow_ui_tour.py --make-runs --out mlflow-ui-tour
    python examples/mlflow_ui_tour.py --tracking-uri sqlite:///mlflow.db --experiment quickstart --out shots

With ``--make-runs`` it first trains two quickstart-like runs (the quickstart spec, shrunk to about half
a minute each on a laptop CPU) that differ only in the learning rate, into ``<out>/work/mlflow.db``.
Then it starts ``mlflow server`` on a free port with the store, opens in Chromium what a person looks
at (where the experiment lands, its runs table with the task runs expanded, its charts, the table set up
with the task metrics as columns, a pretraining run's overview, charts and artifacts, the compare view of
two runs, a task run, its figures and its twin under the other run), writes one PNG per page and
``tour.md`` listing them with their URLs, and stops the server and the browser. ``--only 02,09``
retakes some pages.

Why a script of its own: MLflow's web UI is where the README sends people, and how plmforge's names,
params and nested runs look there is only seen in a browser. Chromium is driven over its DevTools
protocol (with aiohttp, which mlflow installs), so the tour can wait until the charts have drawn, close
MLflow's assistant panel, expand nested runs and open figures; without aiohttp it falls back to
Chromium's ``--screenshot`` (pages as first drawn, nested runs folded). The page details it relies on
(local storage keys, test ids) are MLflow 3.17's; a page that changed is still shot, only not clicked.
Needs ``chromium`` (or ``chromium-browser``, or ``--chromium PATH``) on this machine; downloads nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "specs" / "quickstart.yaml"
#: The quickstart spec, shrunk so that one run (pretraining, two tasks, two references) takes ~30 s on
#: two CPU cores. Written into the spec file itself, so the runs' own ``--set`` is the learning rate alone.
SHRINK: dict[str, Any] = {
    "data": {"max_length": 128},
    "model": {"d_model": 64, "num_layers": 2, "num_decoder_layers": 1, "num_heads": 2, "d_kv": 32, "d_ff": 128},
    "training": {"steps": 40, "batch_size": {"tokens": 4096}, "log_every": 5, "eval_every": 20, "eval_batches": 4,
                 "checkpoint_every": 40, "schedule": {"warmup_steps": 5}},
}
SHRINK_TASKS = {"ss3": {"max_train_proteins": 80, "max_test_proteins": 40, "head": {"epochs": 4}},
                "localization": {"max_train_proteins": 300, "max_test_proteins": 150, "head": {"epochs": 4}}}
LEARNING_RATES = ("0.002", "0.0005")
#: MLflow UI settings (browser local storage, MLflow 3.x) that keep its assistant panel and hints out of the shots.
QUIET_UI = {"mlflow.assistant.panelOpen_v1": "false", "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
            "mlflow.detectIssues.guidanceShown_v1": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chromium(given: str | None) -> str:
    for name in ([given] if given else ["chromium", "chromium-browser", "google-chrome"]):
        path = shutil.which(name)
        if path:
            return path
    sys.exit(f"no Chromium found ({given or 'chromium, chromium-browser, google-chrome'}); "
             "install the Debian package `chromium` or pass --chromium PATH")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def make_runs(work: Path, tracking_uri: str) -> str:
    """Two quickstart-like runs differing only in ``training.optimizer.lr``; returns their experiment's name."""
    spec = _merge(yaml.safe_load(QUICKSTART.read_text()), SHRINK)
    spec["tasks"] = [_merge(task, SHRINK_TASKS.get(task.get("label", task["name"]), {})) for task in spec["tasks"]]
    work.mkdir(parents=True, exist_ok=True)
    spec_path = work / "quickstart-small.yaml"
    spec_path.write_text(f"# {QUICKSTART.name}, shrunk by {Path(__file__).name} for a quick tour\n"
                         + yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    for lr in LEARNING_RATES:
        run_dir = work / f"lr-{lr}"
        run_dir.mkdir(exist_ok=True)
        command = ["plmforge", "train", str(spec_path), "--set", f"training.optimizer.lr={lr}", "--no-progress"]
        print("$", " ".join(command), f"   (in {run_dir})", flush=True)
        started = time.monotonic()
        done = subprocess.run(command, cwd=run_dir, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"training failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        print(f"  trained in {time.monotonic() - started:.0f} s", flush=True)
        for line in done.stdout.splitlines():  # where the run says it is
            if "MLflow" in line or "view it" in line or "then open" in line:
                print("  " + line.strip(), flush=True)
    return spec["tracking"]["experiment"]


@contextmanager
def mlflow_server(tracking_uri: str, port: int, log: Path, timeout: float = 90.0) -> Iterator[str]:
    """``mlflow server`` on ``port`` in a process group of its own; stopped (the whole group) on the way out."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # no background job runner (seven extra processes MLflow starts for GenAI jobs; a tour needs none)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({proc.returncode}); see {log}")
            try:
                with urllib.request.urlopen(url + "health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer {url}health within {timeout:.0f} s; see {log}")
            time.sleep(0.5)
        yield url
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group ``proc`` leads, SIGKILL after 10 s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)


# -- what to show ------------------------------------------------------------------------------------------------
@dataclass
class Shot:
    name: str
    route: str  # the part after '#/'
    about: str
    wait_for: str = ""  # text the page shows once its data has loaded
    height: int = 1400
    actions: list[str] = field(default_factory=list)  # JavaScript run after loading (clicks), in order
    storage: dict[str, str] = field(default_factory=dict)  # browser local storage set before loading (UI state)


def plan(tracking_uri: str, experiment: str, run_ids: list[str] | None) -> list[Shot]:
    """The pages of the tour for the two newest pretraining runs (or ``run_ids``) of ``experiment``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        sys.exit(f"no experiment {experiment!r} at {tracking_uri}")
    runs = client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time DESC"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    if run_ids:
        parents = [r for r in runs if r.info.run_id in run_ids]
    parents = parents[:2]
    if not parents:
        sys.exit(f"experiment {experiment!r} has no runs")
    eid = exp.experiment_id
    first = parents[-1]  # the older one: the first trained
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == first.info.run_id]
    # a task run of the model itself, first task in the spec's order when tags tell it
    children.sort(key=lambda r: (r.data.tags.get("plmforge.reference", "model") != "model",
                                 r.info.start_time or 0))
    ids = [r.info.run_id for r in parents]
    compare = "compare-runs?" + urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([eid])})
    shots = [
        Shot("01-experiment", f"experiments/{eid}", "what the experiment opens on (a click in MLflow's list)"),
        Shot("02-runs-table", f"experiments/{eid}/runs", "runs table, nested task runs expanded",
             wait_for=first.info.run_name, actions=[EXPAND_ALL]),
        Shot("03-experiment-charts", f"experiments/{eid}/runs?compareRunsMode=CHART",
             "the experiment's chart view (MLflow shows the first ten runs)", wait_for=first.info.run_name,
             height=2000),
        # MLflow keeps the sort order for later visits: the next shot sets its own
        Shot("04-runs-table-by-name", f"experiments/{eid}/runs?orderByKey=attributes.run_name&orderByAsc=true",
             "runs table sorted by name (MLflow shows nested runs flat then): task runs of both parents side by side",
             wait_for=first.info.run_name),
        Shot("05-runs-table-columns", f"experiments/{eid}/runs",
             "runs table as a researcher sets it up: task metrics and the differing params as columns, "
             "run names in full, nested runs expanded", wait_for=first.info.run_name,
             storage=_table_setup(eid, parents)),
        Shot("06-run-overview", f"experiments/{eid}/runs/{first.info.run_id}",
             f"pretraining run {first.info.run_name!r}: overview", wait_for="Run ID", height=1500),
        Shot("07-run-charts", f"experiments/{eid}/runs/{first.info.run_id}/model-metrics",
             f"pretraining run {first.info.run_name!r}: model metrics charts", wait_for="Add chart", height=2400),
        Shot("08-run-artifacts", f"experiments/{eid}/runs/{first.info.run_id}/artifacts",
             f"pretraining run {first.info.run_name!r}: artifacts, first figure opened", wait_for="Artifacts",
             actions=[OPEN_FIRST_PNG]),
    ]
    if len(parents) == 2:
        shots.append(Shot("09-compare-runs", compare, "compare view of the two pretraining runs, differences only,"
                          " first common figure opened", wait_for="Parameters", height=2600,
                          actions=[DIFF_ONLY, OPEN_FIRST_PNG]))
    if children:
        child = children[0]
        shots += [
            Shot("10-task-run-overview", f"experiments/{eid}/runs/{child.info.run_id}",
                 f"task run {child.info.run_name!r}: overview", wait_for="Run ID", height=1500),
            Shot("11-task-run-artifacts", f"experiments/{eid}/runs/{child.info.run_id}/artifacts",
                 f"task run {child.info.run_name!r}: artifacts, first figure opened", wait_for="Artifacts",
                 actions=[OPEN_FIRST_PNG]),
        ]
        twin = _twin(runs, child, parents)
        if twin is not None:
            pair = [child.info.run_id, twin.info.run_id]
            shots.append(Shot("12-compare-task-runs",
                              "compare-runs?" + urllib.parse.urlencode({"runs": json.dumps(pair),
                                                                         "experiments": json.dumps([eid])}),
                              f"compare view of {child.info.run_name!r} and {twin.info.run_name!r}, figure opened",
                              wait_for="Parameters", height=2600, actions=[OPEN_FIRST_PNG]))
    return shots


def _table_setup(experiment_id: str, parents: list[Any]) -> dict[str, str]:
    """The runs table's saved state (browser local storage, MLflow 3.x) with the columns a researcher picks."""
    metrics = sorted(k for k in parents[0].data.metrics if k.startswith("task/") and "/validation/" not in k
                     and not k.endswith(("_ci_low", "_ci_high", "_head_sd")))
    params = sorted(k for k in parents[0].data.params
                    if len({p.data.params.get(k) for p in parents}) > 1) if len(parents) > 1 else []
    columns = [f"params.`{k}`" for k in params] + [f"metrics.`{k}`" for k in metrics]
    widths = {"attributes.`Run Name`": 260, **{c: max(110, 7 * len(c.split("`")[1])) for c in columns}}
    state = {"searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False, "startTime": "ALL",
             "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
             "selectedColumns": columns, "columnOrder": list(widths), "columnWidths": widths,
             "runsExpanded": {p.info.run_id: True for p in parents}, "runsPinned": [], "runsHidden": [],
             "runsVisibilityMap": {}, "runsHiddenMode": "FIRST_10_RUNS"}
    return {f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState': json.dumps(state)}


def routed(shot: Shot) -> str:
    """The shot's route, in MLflow's model-training view (``workflowType``, as the URL plmforge prints) but for
    the first page, which shows where MLflow itself lands."""
    if shot.name.startswith("01-"):
        return shot.route
    return shot.route + ("&" if "?" in shot.route else "?") + "workflowType=machine_learning"


def _twin(runs: list[Any], child: Any, parents: list[Any]) -> Any | None:
    """The other parent's task run for the same task and representation."""
    tags = child.data.tags
    others = {p.info.run_id for p in parents} - {tags.get("mlflow.parentRunId")}
    for run in runs:
        t = run.data.tags
        if t.get("mlflow.parentRunId") in others and (
                (t.get("plmforge.task"), t.get("plmforge.reference")) == (tags.get("plmforge.task"),
                                                                         tags.get("plmforge.reference"))):
            return run
    return None


# JavaScript run in the page (MLflow 3.x's DOM). Each returns a short text for the log.
EXPAND_ALL = """(async () => {  // the '+' buttons in front of parent runs' names
  const buttons = [...document.querySelectorAll('button[data-component-id*="runnamecellrenderer"]')];
  for (const b of buttons) { b.click(); await new Promise(r => setTimeout(r, 300)); }
  return `expanded ${buttons.length} runs`;
})()"""
OPEN_FIRST_PNG = """(async () => {  // open folders until a .png shows, then open it
  for (let i = 0; i < 5; i++) {
    const nodes = [...document.querySelectorAll('[data-testid="artifact-tree-node"]')];
    const png = nodes.find(n => /\\.png$/.test(n.getAttribute('artifact-name') || ''));
    if (png) { png.click(); return `opened ${png.getAttribute('artifact-name')}`; }
    const folder = nodes.find(n => n.querySelector('.fa-folder') && !n.dataset.tourOpened);
    if (!folder) break;
    folder.dataset.tourOpened = '1';
    folder.click();
    await new Promise(r => setTimeout(r, 1500));
  }
  return 'no .png artifact';
})()"""
DIFF_ONLY = """(() => {  // the compare view's 'Show diff only' switches
  const switches = [...document.querySelectorAll('button[role="switch"][aria-label$="Show diff only"]')]
    .filter(b => b.getAttribute('aria-checked') === 'false');
  switches.forEach(b => b.click());
  return `diff only: ${switches.map(b => b.getAttribute('aria-label').split(' - ')[0]).join(', ')}`;
})()"""


# -- the browser ---------------------------------------------------------------------------------------------------
class Chromium:
    """Headless Chromium driven over the DevTools protocol (one page)."""

    def __init__(self, executable: str, width: int, profile: Path):
        self.port = free_port()
        self.width = width
        self.proc = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--remote-debugging-port={self.port}", f"--user-data-dir={profile}", f"--window-size={width},1400",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._ids = 0

    async def connect(self, session: Any) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as reply:
                    pages = [t for t in json.load(reply) if t.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("Chromium did not open its DevTools port")
            await asyncio.sleep(0.3)
        self.ws = await session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._ids += 1
        await self.ws.send_json({"id": self._ids, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.ws.receive_json(), 60)
            if message.get("id") == self._ids:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    async def settle(self, wait_for: str, timeout: float = 30.0, quiet: float = 2.0) -> None:
        """Until ``wait_for`` shows and the page has stopped changing for ``quiet`` seconds (charts drawn)."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            state = await self.evaluate(
                "[document.readyState, document.body ? document.body.innerText.includes("
                f"{json.dumps(wait_for)}) : false, document.body ? document.body.innerHTML.length : 0]")
            if state != last:
                last, since = state, time.monotonic()
            elif state[0] == "complete" and state[1] and time.monotonic() - since >= quiet:
                return
            await asyncio.sleep(0.25)

    async def shoot(self, base: str, shot: Shot, path: Path) -> str:
        """Load the shot's page, wait, run its actions, save the PNG; returns what the actions said."""
        await self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=shot.height,
                        deviceScaleFactor=1, mobile=False)
        # the server's /health page: same origin as the UI (so the same local storage), without the UI running
        await self.call("Page.navigate", url=base + "health")
        await self.settle("OK", timeout=10, quiet=0.2)
        await self.evaluate("".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});"
                                    for k, v in {**QUIET_UI, **shot.storage}.items()) + "true")
        await self.call("Page.navigate", url=base + "#/" + routed(shot))
        await self.settle(shot.wait_for)
        notes = []
        for action in shot.actions:
            notes.append(str(await self.evaluate(action)))
            await self.settle(shot.wait_for)
        data = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(data["data"]))
        return ", ".join(notes)

    def close(self) -> None:
        stop_group(self.proc)


async def _tour_cdp(executable: str, base: str, shots: list[Shot], out: Path, width: int) -> list[str]:
    import aiohttp

    notes = []
    with tempfile.TemporaryDirectory(prefix="plmforge-chromium-") as profile:
        browser = Chromium(executable, width, Path(profile))
        try:
            async with aiohttp.ClientSession() as session:
                await browser.connect(session)
                await browser.call("Page.enable")
                for shot in shots:
                    note = await browser.shoot(base, shot, out / f"{shot.name}.png")
                    notes.append(note)
                    print(f"  {shot.name}.png  {shot.about}" + (f"  [{note}]" if note else ""), flush=True)
                await browser.ws.close()
        finally:
            browser.close()
    return notes


def _tour_cli(executable: str, base: str, shots: list[Shot], out: Path, width: int) -> list[str]:
    """Without aiohttp: Chromium's own ``--screenshot`` (no clicks, charts may still be loading)."""
    for shot in shots:
        with tempfile.TemporaryDirectory(prefix="plmforge-chromium-") as profile:
            subprocess.run([executable, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--user-data-dir={profile}", f"--window-size={width},{shot.height}",
                            "--virtual-time-budget=20000", f"--screenshot={out / f'{shot.name}.png'}",
                            base + "#/" + routed(shot)], capture_output=True, timeout=120, check=False)
        print(f"  {shot.name}.png  {shot.about}", flush=True)
    return [""] * len(shots)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db;"
                                               " with --make-runs: <out>/work/mlflow.db)")
    parser.add_argument("--experiment", default="quickstart", help="experiment name (default: quickstart)")
    parser.add_argument("--runs", help="two pretraining run ids, comma-separated (default: the two newest)")
    parser.add_argument("--make-runs", action="store_true",
                        help="first train two small quickstart runs (lr 0.002 and 0.0005), ~1 min on a laptop")
    parser.add_argument("--out", type=Path, default=Path("mlflow-ui-tour"), help="folder for the PNGs")
    parser.add_argument("--width", type=int, default=1600, help="browser width in pixels")
    parser.add_argument("--only", help="take only these shots, by number, comma-separated (e.g. 02,09)")
    parser.add_argument("--chromium", help="Chromium executable (default: chromium or chromium-browser on PATH)")
    args = parser.parse_args(argv)

    executable = find_chromium(args.chromium)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    experiment = args.experiment
    if args.make_runs:
        tracking_uri = args.tracking_uri or f"sqlite:///{out / 'work' / 'mlflow.db'}"
        experiment = make_runs(out / "work", tracking_uri)
    else:
        tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    shots = plan(tracking_uri, experiment, args.runs.split(",") if args.runs else None)
    if args.only:
        shots = [shot for shot in shots if shot.name.split("-")[0] in args.only.split(",")]
    try:
        import aiohttp  # noqa: F401
        tour = _tour_cdp
    except ImportError:
        print("aiohttp is missing: plain Chromium screenshots (nested runs folded, charts may be loading)")
        tour = _tour_cli
    with mlflow_server(tracking_uri, free_port(), out / "mlflow-server.log") as base:
        print(f"MLflow UI at {base} ({tracking_uri}); screenshots into {out}", flush=True)
        notes = asyncio.run(tour(executable, base, shots, out, args.width)) if tour is _tour_cdp else \
            tour(executable, base, shots, out, args.width)
    lines = [f"# MLflow UI tour of experiment {experiment!r} ({tracking_uri})", ""]
    for shot, note in zip(shots, notes):
        lines.append(f"- `{shot.name}.png`: {shot.about} (`#/{routed(shot)}`)" + (f"; {note}" if note else ""))
    (out / "tour.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(shots)} screenshots and tour.md to {out}")


if __name__ == "__main__":
    main()
