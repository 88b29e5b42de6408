"""The docs tell the truth: README commands match CI, the reference is current, the tutorial runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import tiny_spec_dict

from plmforge.core.run import train
from plmforge.core.spec import validate_spec

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    assert (REPO / "README.md").read_text().splitlines()[3].startswith("# 1. Set up")
    setup_and_train, setup_and_test = readme_commands()
    assert setup_and_train.endswith("plmforge train specs/quickstart.yaml")
    assert "torch==2.13.0" in setup_and_train and "torch==2.13.0" in setup_and_test
    test_command = setup_and_test.split("&& ", 1)[1].split(" && ", 1)[1]  # after venv activation
    ci = (REPO / ".ci" / "run").read_text()
    assert test_command in ci, "the CI script must run the README's test command"


def test_spec_reference_is_generated_from_the_code():
    from plmforge.core.schema import spec_reference_markdown

    committed = (REPO / "docs" / "spec-reference.md").read_text()
    assert committed == spec_reference_markdown(), "run: plmforge schema --markdown -o docs/spec-reference.md"


def tutorial_code() -> str:
    text = (REPO / "docs" / "writing-an-objective.md").read_text()
    return re.search(r"`substitution/objective.py`:\n\n```python\n(.*?)```", text, re.S).group(1)


@pytest.mark.slow
def test_tutorial_objective_installs_and_trains(fake_distribution, tmp_path):
    fake_distribution("plmforge-substitution",
                      {"plmforge.objectives": {"substitution": "substitution_tutorial:SubstitutionDenoising"}},
                      {"substitution_tutorial": tutorial_code()})
    raw = tiny_spec_dict(tmp_path, steps=3, eval_every=3, checkpoint_every=3)
    raw["objectives"] = [{"name": "substitution", "rate": 0.15}, {"name": "mlm", "weight": 1.0}]
    raw["tracking"]["enabled"] = False
    result = train(validate_spec(raw), show_progress=False)
    assert result.status == "finished"
    for key in ("train/substitution/loss", "train/substitution/repair_accuracy", "train/mlm/loss"):
        assert key in result.train_metrics
    assert "val/substitution/accuracy" in result.eval_metrics
