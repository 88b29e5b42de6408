"""Tools for testing plmforge plugins: ``check_objective`` and helpers, plus pytest fixtures.

This package is imported in every pytest session where plmforge is installed (through the
``pytest11`` entry point of :mod:`plmforge.testing.pytest_plugin`), so it imports nothing heavy:
the names below load :mod:`plmforge.testing.conformance` on first use, and that imports torch or jax
only when a backend is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plmforge.testing.conformance import (
        BACKEND_OPTIONS,
        TINY_MODEL,
        Check,
        ConformanceError,
        ConformanceReport,
        build_objective,
        check_objective,
        default_proteins,
        installed_backends,
        sample_batch,
    )

__all__ = [
    "BACKEND_OPTIONS",
    "TINY_MODEL",
    "Check",
    "ConformanceError",
    "ConformanceReport",
    "build_objective",
    "check_objective",
    "default_proteins",
    "installed_backends",
    "sample_batch",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from plmforge.testing import conformance

        return getattr(conformance, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
