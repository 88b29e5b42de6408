"""Every lifecycle hook is documented and called with its documented arguments."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from helpers import tiny_spec_dict

from plmforge.core import hookspecs
from plmforge.core.hookspecs import hookimpl
from plmforge.core.run import RunInfo, train

REPO = Path(__file__).resolve().parents[1]
HOOK_NAMES = sorted(name for name in dir(hookspecs) if name.startswith("plmforge_"))

HOOK_MODULE = """
from plmforge.core.hookspecs import hookimpl

CALLS = []

@hookimpl
def plmforge_run_start(run, resumed_from_step):
    CALLS.append(("plmforge_run_start", resumed_from_step))

@hookimpl
def plmforge_run_end(run, status, summary):
    CALLS.append(("plmforge_run_end", status))
"""


class Recorder:
    """A hook implementation that records every call with its keyword arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    @hookimpl
    def plmforge_run_start(self, run, resumed_from_step):
        self.calls.append(("plmforge_run_start", dict(run=run, resumed_from_step=resumed_from_step)))

    @hookimpl
    def plmforge_step_end(self, run, step, metrics):
        self.calls.append(("plmforge_step_end", dict(run=run, step=step, metrics=metrics)))

    @hookimpl
    def plmforge_evaluation_end(self, run, step, metrics):
        self.calls.append(("plmforge_evaluation_end", dict(run=run, step=step, metrics=metrics)))

    @hookimpl
    def plmforge_checkpoint_saved(self, run, step, path):
        self.calls.append(("plmforge_checkpoint_saved", dict(run=run, step=step, path=path)))

    @hookimpl
    def plmforge_task_end(self, run, task, reference, metrics):
        self.calls.append(("plmforge_task_end", dict(run=run, task=task, reference=reference, metrics=metrics)))

    @hookimpl
    def plmforge_run_end(self, run, status, summary):
        self.calls.append(("plmforge_run_end", dict(run=run, status=status, summary=summary)))


def test_every_hookspec_has_documentation():
    docs = (REPO / "docs" / "hooks.md").read_text()
    assert HOOK_NAMES, "no hookspecs found"
    for name in HOOK_NAMES:
        spec = getattr(hookspecs, name)
        assert (spec.__doc__ or "").strip(), f"{name} has no docstring"
        assert f"`{name}" in docs, f"{name} is not described in docs/hooks.md"
        assert hasattr(Recorder, name), f"{name} has no test implementation in this file"


@pytest.mark.slow
def test_hooks_are_called_with_documented_arguments(tiny_spec, fake_distribution, tmp_path):
    fake_distribution("hook-only-plugin", {"plmforge.hooks": {"recorder": "hook_only_mod"}},
                      {"hook_only_mod": HOOK_MODULE})
    recorder = Recorder()
    raw = tiny_spec_dict(tmp_path, steps=4, log_every=2, eval_every=2, checkpoint_every=4)
    raw["tasks"] = [{"name": "antimicrobial", "label": "amp", "max_train_proteins": 40, "max_test_proteins": 20,
                     "head": {"kind": "linear", "epochs": 1}}]
    raw["evaluation"] = {"references": ["onehot"]}
    spec = tiny_spec(raw)
    result = train(spec, hooks=[recorder], show_progress=False)
    by_name: dict[str, list[dict]] = {}
    for name, kwargs in recorder.calls:
        by_name.setdefault(name, []).append(kwargs)
    assert set(by_name) == set(HOOK_NAMES)
    for name, calls in by_name.items():
        documented = list(inspect.signature(getattr(hookspecs, name)).parameters)
        for kwargs in calls:
            assert list(kwargs) == documented
            assert isinstance(kwargs["run"], RunInfo) and kwargs["run"].spec is spec
            assert kwargs["run"].tracking_run_id == result.tracking_run_id
    assert by_name["plmforge_run_start"] == [dict(run=by_name["plmforge_run_start"][0]["run"], resumed_from_step=0)]
    assert [c["step"] for c in by_name["plmforge_step_end"]] == [2, 4]
    step_metrics = by_name["plmforge_step_end"][-1]["metrics"]
    for key in ("train/loss", "train/mlm/loss", "train/lr", "train/tokens_per_second", "train/grad_norm"):
        assert isinstance(step_metrics[key], float)
    assert [c["step"] for c in by_name["plmforge_evaluation_end"]] == [2, 4]
    assert all(k.startswith("val/") for k in by_name["plmforge_evaluation_end"][0]["metrics"])
    saved = by_name["plmforge_checkpoint_saved"]
    assert [c["step"] for c in saved] == [4] and (saved[0]["path"] / "model.safetensors").is_file()
    assert [(c["task"], c["reference"]) for c in by_name["plmforge_task_end"]] == [("amp", "model"),
                                                                                  ("amp", "onehot")]
    assert set(by_name["plmforge_task_end"][0]["metrics"]) == {"accuracy", "mcc", "auroc"}
    end = by_name["plmforge_run_end"][0]
    assert end["status"] == "finished" and end["summary"]["step"] == 4
    assert end["summary"]["checkpoint"] == str(saved[0]["path"])
    # the hook-only plugin from another distribution was called too
    import hook_only_mod

    assert hook_only_mod.CALLS == [("plmforge_run_start", 0), ("plmforge_run_end", "finished")]
