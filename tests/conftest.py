"""Shared fixtures: tiny specs, fake installed distributions, isolated working directories."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import tiny_spec_dict


@pytest.fixture
def tiny_spec(tmp_path: Path):
    """Factory: a validated tiny Spec; keyword arguments override the training section."""
    from plmforge.core.spec import validate_spec

    def make(raw: dict[str, Any] | None = None, **training: Any):
        data = copy.deepcopy(raw) if raw is not None else tiny_spec_dict(tmp_path, **training)
        return validate_spec(data)

    return make


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Factory that 'installs' a distribution: a dist-info with entry points plus modules on sys.path.

    This is what pip leaves on disk, so importlib.metadata discovers it like any installed package.
    Returns the site directory (put it on PYTHONPATH for subprocesses).
    """
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    monkeypatch.syspath_prepend(str(site))

    def install(name: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str],
                version: str = "1.0") -> Path:
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{ep_name} = {value}" for ep_name, value in eps.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for module, source in modules.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
        import importlib

        importlib.invalidate_caches()
        return site

    return install


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Each test runs in its own directory, so default paths (mlflow.db, runs/) never collide."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PLMFORGE_DISABLE_PLUGINS", raising=False)
