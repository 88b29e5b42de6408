"""The run loop's steps: an interrupt between steps saves, one inside a step does not, and a resumed
run goes on from exactly where the interrupt left it."""

from __future__ import annotations

import pytest
from helpers import StopAt, tiny_spec_dict

from plmforge.core import checkpoint
from plmforge.core.data.stream import ExampleStream
from plmforge.core.run import train
from plmforge.core.spec import validate_spec

pytestmark = pytest.mark.slow


def _raw(tmp_path, **training):
    raw = tiny_spec_dict(tmp_path, **{"steps": 6, "checkpoint_every": 100, "eval_every": 100, **training})
    raw["tracking"]["enabled"] = False
    return raw


def test_an_interrupt_inside_a_step_saves_nothing_half_updated(tmp_path, monkeypatch):
    """Ctrl-C while step 4 draws its batch: the stream has moved, the weights have not; no checkpoint."""
    real_make_batch = ExampleStream.make_batch
    calls = {"n": 0}

    def make_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_make_batch(self, *args, **kwargs)

    monkeypatch.setattr(ExampleStream, "make_batch", make_batch)
    with pytest.raises(KeyboardInterrupt):
        train(validate_spec(_raw(tmp_path)), show_progress=False)
    assert checkpoint.list_checkpoints(tmp_path / "run") == []


def test_an_interrupt_between_steps_saves_once_and_resumes_exactly(tmp_path):
    raw = _raw(tmp_path, checkpoint_every=2)
    straight = train(validate_spec({**raw, "output_dir": str(tmp_path / "straight")}), show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(validate_spec(raw), hooks=[StopAt(3)], show_progress=False)
    # the periodic checkpoint of step 2, then the interrupt's of step 3
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "run")] == ["step-000002", "step-000003"]
    resumed = train(validate_spec(raw), resume=True, show_progress=False)
    assert [step for step, _ in resumed.history] == [4, 5, 6]
    expected = dict(straight.history)
    for step, metrics in resumed.history:
        assert metrics["train/loss"] == expected[step]["train/loss"], step  # bit-identical on one machine
