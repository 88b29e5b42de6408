"""Entry-point discovery of plugins: lazy, isolated, and explicit about conflicts.

Plugins are found with :mod:`importlib.metadata` in five entry-point groups (name = plugin name,
value = ``module:Class``): ``plmforge.objectives``, ``plmforge.backends``, ``plmforge.tasks``,
``plmforge.references`` (representations scored next to the model: one-hot, random init, UniRep, ...)
and ``plmforge.hooks`` (hook-only plugins: a module or object with pluggy hook implementations).

Listing reads metadata only; a plugin's module is imported the first time something asks for that
plugin. A plugin that fails to import is reported with its name, distribution and error and breaks
nothing that does not use it. ``PLMFORGE_DISABLE_PLUGINS=name,kind:name`` skips plugins.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from plmforge.core.errors import PluginError

GROUPS: dict[str, str] = {
    "objective": "plmforge.objectives",
    "backend": "plmforge.backends",
    "task": "plmforge.tasks",
    "reference": "plmforge.references",
    "hooks": "plmforge.hooks",
}
DISABLE_ENV = "PLMFORGE_DISABLE_PLUGINS"


@dataclass
class PluginInfo:
    """What the metadata says about one plugin, plus its load status once tried."""

    kind: str
    name: str
    value: str
    distribution: str
    version: str
    claimants: list[str] = field(default_factory=list)  # other distributions using the same name
    disabled: bool = False
    error: str | None = None
    loaded: Any = None
    entry_point: metadata.EntryPoint | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        if self.disabled:
            return "disabled"
        if self.claimants:
            return "conflict"
        if self.error:
            return "error"
        return "loaded" if self.loaded is not None else "available"


def _disabled_names() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def _contract(kind: str) -> type | None:
    """The base class a plugin of ``kind`` must derive from (imported lazily: core modules only)."""
    if kind == "objective":
        from plmforge.core.objective import Objective

        return Objective
    if kind == "backend":
        from plmforge.core.backend import Backend

        return Backend
    if kind == "task":
        from plmforge.core.task import Task

        return Task
    if kind == "reference":
        from plmforge.core.reference import Reference

        return Reference
    return None


class Registry:
    """All installed plugins by kind and name. Cheap to create: nothing is imported."""

    def __init__(self) -> None:
        self._plugins: dict[str, dict[str, PluginInfo]] = {kind: {} for kind in GROUPS}
        disabled = _disabled_names()
        for kind, group in GROUPS.items():
            for ep in metadata.entry_points(group=group):
                dist = ep.dist.metadata["Name"] if ep.dist is not None else "<unknown>"
                version = ep.dist.version if ep.dist is not None else "?"
                existing = self._plugins[kind].get(ep.name)
                if existing is not None:
                    # the same distribution seen twice on sys.path is not a conflict
                    if existing.distribution != dist and dist not in existing.claimants:
                        existing.claimants.append(dist)
                    continue
                self._plugins[kind][ep.name] = PluginInfo(
                    kind=kind, name=ep.name, value=ep.value, distribution=dist, version=version, entry_point=ep,
                    disabled=ep.name in disabled or f"{kind}:{ep.name}" in disabled,
                )

    # -- listing (metadata only) -----------------------------------------------------------------
    def infos(self, kind: str | None = None) -> list[PluginInfo]:
        kinds = [kind] if kind else list(GROUPS)
        return [info for k in kinds for _, info in sorted(self._plugins[k].items())]

    def names(self, kind: str) -> list[str]:
        return sorted(n for n, info in self._plugins[kind].items() if not info.disabled)

    def info(self, kind: str, name: str) -> PluginInfo:
        plugins = self._plugins[kind]
        if name not in plugins:
            available = self.names(kind)
            close = difflib.get_close_matches(name, available, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            listing = ", ".join(available) or "none installed"
            raise PluginError(f"unknown {kind} plugin {name!r}{hint} (available: {listing})")
        return plugins[name]

    # -- loading ---------------------------------------------------------------------------------
    def load(self, kind: str, name: str) -> Any:
        """Import and return the plugin object; errors name the plugin and its distribution."""
        info = self.info(kind, name)
        if info.disabled:
            raise PluginError(f"{kind} plugin {name!r} ({info.distribution}) is disabled by {DISABLE_ENV}")
        if info.claimants:
            both = " and ".join([info.distribution, *info.claimants])
            raise PluginError(
                f"{kind} plugin name {name!r} is claimed by several distributions: {both}; "
                f"uninstall one, or disable it with {DISABLE_ENV}")
        if info.loaded is not None:
            return info.loaded
        if info.error is not None:
            raise PluginError(info.error)
        try:
            obj = info.entry_point.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's, isolate it
            info.error = (f"{kind} plugin {name!r} from {info.distribution} {info.version} failed to load "
                          f"({info.value}): {type(exc).__name__}: {exc}")
            raise PluginError(info.error) from exc
        contract = _contract(kind)
        if contract is not None and not (isinstance(obj, type) and issubclass(obj, contract)):
            info.error = (f"{kind} plugin {name!r} from {info.distribution}: {info.value} is not a subclass "
                          f"of {contract.__module__}.{contract.__name__}")
            raise PluginError(info.error)
        info.loaded = obj
        return obj

    def try_load_all(self, kind: str | None = None) -> list[PluginInfo]:
        """Load every enabled plugin, recording failures instead of raising (for `plmforge plugins`)."""
        for info in self.infos(kind):
            if not info.disabled and not info.claimants:
                try:
                    self.load(info.kind, info.name)
                except PluginError:
                    pass
        return self.infos(kind)

