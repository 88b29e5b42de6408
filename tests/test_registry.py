"""Plugin discovery through entry points: lazy, isolated, explicit about conflicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import tiny_spec_dict

from plmforge.core.errors import PluginError, SpecError
from plmforge.core.registry import Registry
from plmforge.core.spec import validate_spec

BROKEN = {"plmforge.objectives": {"brokenobj": "broken_objective_mod:Broken"}}
BROKEN_SOURCE = {"broken_objective_mod": "raise ImportError('needs the missing package frobnicate')\n"}

GOOD_OBJECTIVE = """
from plmforge.plugins.objectives.mlm import MaskedLanguageModeling

class Renamed(MaskedLanguageModeling):
    '''The built-in MLM under another name, shipped by a third party.'''
"""


def test_builtin_plugins_are_found_through_entry_points():
    registry = Registry()
    assert "mlm" in registry.names("objective")
    assert "torch" in registry.names("backend")
    info = registry.info("objective", "mlm")
    assert info.distribution == "plmforge"
    assert info.value == "plmforge.plugins.objectives.mlm:MaskedLanguageModeling"


def test_listing_reads_metadata_only(fake_distribution):
    fake_distribution("lazy-plugin", {"plmforge.objectives": {"lazyobj": "lazy_objective_mod:Renamed"}},
                      {"lazy_objective_mod": GOOD_OBJECTIVE})
    registry = Registry()
    assert "lazyobj" in registry.names("objective")
    assert "lazy_objective_mod" not in sys.modules
    cls = registry.load("objective", "lazyobj")
    assert "lazy_objective_mod" in sys.modules and cls.__name__ == "Renamed"


def test_broken_plugin_is_reported_and_isolated(fake_distribution, tmp_path):
    fake_distribution("broken-plugin", BROKEN, BROKEN_SOURCE, version="0.3")
    registry = Registry()
    with pytest.raises(PluginError) as excinfo:
        registry.load("objective", "brokenobj")
    message = str(excinfo.value)
    assert "brokenobj" in message and "broken-plugin" in message and "0.3" in message
    assert "frobnicate" in message
    # a spec that does not use it still validates, and listing reports it without raising
    spec = validate_spec({"name": "x", "objectives": [{"name": "mlm"}]}, registry=registry)
    assert spec.objectives[0].config.probabilities == [0.15, 0.2, 0.3]
    statuses = {i.name: i for i in registry.try_load_all("objective")}
    assert statuses["brokenobj"].status == "error" and statuses["mlm"].status == "loaded"
    # a spec that uses it gets one clear error naming the plugin at its path
    with pytest.raises(SpecError, match=r"objectives\[0\]\.name: .*brokenobj.*broken-plugin"):
        validate_spec({"name": "x", "objectives": [{"name": "brokenobj"}]}, registry=Registry())


def test_plugins_command_shows_broken_plugin(fake_distribution):
    site = fake_distribution("broken-plugin", BROKEN, BROKEN_SOURCE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "plmforge.core.cli", "plugins", "--json"], env=env,
                         capture_output=True, text=True, check=True)
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert rows["brokenobj"]["status"] == "error"
    assert rows["brokenobj"]["distribution"] == "broken-plugin"
    assert "frobnicate" in rows["brokenobj"]["error"]
    assert rows["mlm"]["status"] == "loaded" and rows["torch"]["status"] == "loaded"


def test_two_distributions_claiming_one_name(fake_distribution):
    fake_distribution("first-dist", {"plmforge.objectives": {"twin": "twin_a:Renamed"}}, {"twin_a": GOOD_OBJECTIVE})
    fake_distribution("second-dist", {"plmforge.objectives": {"twin": "twin_b:Renamed"}}, {"twin_b": GOOD_OBJECTIVE})
    registry = Registry()
    with pytest.raises(PluginError) as excinfo:
        registry.load("objective", "twin")
    assert "first-dist" in str(excinfo.value) and "second-dist" in str(excinfo.value)
    assert registry.info("objective", "twin").status == "conflict"


def test_disable_plugins_environment_variable(fake_distribution, monkeypatch):
    fake_distribution("broken-plugin", BROKEN, BROKEN_SOURCE)
    monkeypatch.setenv("PLMFORGE_DISABLE_PLUGINS", "brokenobj, backend:nonexistent")
    registry = Registry()
    assert "brokenobj" not in registry.names("objective")
    assert registry.info("objective", "brokenobj").status == "disabled"
    with pytest.raises(PluginError, match="disabled by PLMFORGE_DISABLE_PLUGINS"):
        registry.load("objective", "brokenobj")


def test_plugin_that_is_not_an_objective_is_rejected(fake_distribution):
    fake_distribution("odd-plugin", {"plmforge.objectives": {"oddobj": "odd_mod:NotAnObjective"}},
                      {"odd_mod": "class NotAnObjective:\n    pass\n"})
    with pytest.raises(PluginError, match="not a subclass of plmforge.core.objective.Objective"):
        Registry().load("objective", "oddobj")


def test_unknown_plugin_suggests_the_closest_name():
    with pytest.raises(PluginError, match=r"unknown objective plugin 'mlmm'; did you mean 'mlm'\?"):
        Registry().load("objective", "mlmm")


def test_third_party_objective_trains_without_changing_plmforge(fake_distribution, tiny_spec, tmp_path):
    """A plugin from another distribution is named in a spec and used, exactly like a built-in."""
    fake_distribution("third-party", {"plmforge.objectives": {"renamed": "third_party_mod:Renamed"}},
                      {"third_party_mod": GOOD_OBJECTIVE})
    raw = tiny_spec_dict(tmp_path, steps=2, eval_every=2, checkpoint_every=2)
    raw["objectives"] = [{"name": "renamed", "probabilities": [0.2]}]
    raw["tracking"]["enabled"] = False
    from plmforge.core.run import train

    result = train(tiny_spec(raw), show_progress=False)
    assert result.status == "finished" and "train/renamed/loss" in result.train_metrics
