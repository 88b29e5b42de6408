"""plmforge's pytest plugin: fixtures for testing plugins against the installed plmforge.

Registered through the ``pytest11`` entry point, so any pytest session where plmforge is installed
has these fixtures (prefixed ``plmforge_`` so they never shadow a project's own). It is loaded in
every such session, so nothing is imported until a fixture is used.

- ``plmforge_proteins``: real proteins (24 of the built-in scl2205 train split), once per session;
- ``plmforge_backends``: names of the backends whose framework is installed, once per session;
- ``plmforge_check_objective``: :func:`plmforge.testing.check_objective` on ``plmforge_proteins``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture(scope="session")
def plmforge_proteins() -> Any:
    """A ProteinSet of real proteins, 32 to 1,359 residues long."""
    from plmforge.testing.conformance import default_proteins

    return default_proteins()


@pytest.fixture(scope="session")
def plmforge_backends() -> list[str]:
    """Installed backends whose framework imports here (e.g. ``["jax", "torch"]``)."""
    from plmforge.testing.conformance import installed_backends

    return installed_backends()


@pytest.fixture
def plmforge_check_objective(plmforge_proteins: Any) -> Callable[..., Any]:
    """``check_objective(objective_cls, config=None, **options)`` on the session's proteins."""
    from plmforge.testing.conformance import check_objective

    def check(objective_cls: type, config: Any = None, **options: Any) -> Any:
        options.setdefault("proteins", plmforge_proteins)
        return check_objective(objective_cls, config, **options)

    return check
