"""The docs tell the truth: README commands match CI, the reference is current, the tutorial runs."""

from __future__ import annotations

import importlib
import re
import sys
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


def tutorial_block(after: str, output: bool = False) -> str:
    """The first Python block after the text ``after`` in the objective tutorial, or the output block following it."""
    text = (REPO / "docs" / "writing-an-objective.md").read_text()
    pattern = r".*?```python\n.*?```\n\n```\n(.*?)```" if output else r".*?```python\n(.*?)```"
    return re.search(re.escape(after) + pattern, text, re.S).group(1)


@pytest.mark.slow
def test_tutorial_encoder_decoder_objective_shows_what_it_says_and_trains_on_every_backend(
        fake_distribution, tmp_path, capsys):
    from plmforge.testing import BACKEND_OPTIONS, installed_backends

    site = fake_distribution("plmforge-reverse", {"plmforge.objectives": {
        "reverse_completion": "substitution.reverse:ReverseCompletion"}}, {})
    (site / "substitution").mkdir()
    (site / "substitution" / "__init__.py").touch()
    (site / "substitution" / "reverse.py").write_text(tutorial_block("a module of its own, `substitution/reverse.py`"))
    importlib.invalidate_caches()
    try:
        exec(compile(tutorial_block("the quickest way to look at what the model will see:"), "tutorial", "exec"), {})
        shown = capsys.readouterr().out
        assert tutorial_block("what the model will see:", output=True) in shown  # prints what the tutorial shows
        assert "checks passed" in shown  # check_objective on every installed backend
        for backend in installed_backends():
            raw = tiny_spec_dict(tmp_path / backend, steps=2, eval_every=2, checkpoint_every=2)
            if backend != "torch":
                raw["backend"] = {"name": backend, **BACKEND_OPTIONS.get(backend, {})}
            raw["objectives"] = [{"name": "reverse_completion", "seen": 0.5}]
            raw["tracking"]["enabled"] = False
            result = train(validate_spec(raw), show_progress=False)
            assert result.status == "finished", backend
            assert "train/reverse_completion/loss" in result.train_metrics
            assert 0 <= result.eval_metrics["val/reverse_completion/residue_accuracy"] <= 1
    finally:
        for module in ("substitution.reverse", "substitution"):
            sys.modules.pop(module, None)


def python_api_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "docs" / "python-api.md").read_text(), re.S)


@pytest.mark.slow
def test_python_api_walkthrough_runs_as_written(capsys):
    """Every Python block of docs/python-api.md, in order, in one namespace (a notebook's kernel)."""
    pytest.importorskip("transformers")
    namespace: dict = {}
    for number, block in enumerate(python_api_blocks(), 1):
        exec(compile(block, f"docs/python-api.md, block {number}", "exec"), namespace)
    assert namespace["embeddings"].shape == (100, 32) and len(namespace["locations"]) == 100
    assert set(namespace["scores"]) == {"model", "onehot"}
    comparison = namespace["comparison"]
    assert comparison.values("training.optimizer.lr") == ["0.001", "0.01"]
    assert all(v is not None for v in comparison.values("val/loss"))
    first = namespace["model"].vocab.encode(namespace["sequences"][0])
    assert namespace["ids"]["input_ids"][0][:len(first)].tolist() == first.tolist()  # the export's tokenizer
    assert "probe accuracy on 30 held-out proteins" in capsys.readouterr().out
