"""JSON Schema of the whole spec, with every installed plugin's options, for YAML editors.

Each ``objectives`` item and the ``backend`` section become a union over installed plugins,
told apart by ``name``, so an editor completes and documents the options of the plugin named.
A plugin that fails to load is left out (and reported by ``plmforge plugins``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, create_model

from plmforge.core.errors import PluginError
from plmforge.core.registry import Registry
from plmforge.core.spec import BackendSection, ObjectiveSection, Spec

_HOST_FIELDS = {
    "objective": ObjectiveSection.model_fields,
    "backend": BackendSection.model_fields,
}


def _variants(registry: Registry, kind: str) -> list[type]:
    variants = []
    for name in registry.names(kind):
        try:
            plugin = registry.load(kind, name)
        except PluginError:
            continue
        host = {field: (info.annotation, info) for field, info in _HOST_FIELDS[kind].items() if field != "name"}
        variants.append(create_model(
            f"{kind.capitalize()}_{name}", __base__=plugin.Config, __doc__=(plugin.__doc__ or "").strip() or None,
            name=(Literal[name], Field(description=f"{kind.capitalize()} plugin {name!r}.")), **host))
    return variants


def _union(variants: list[type], fallback: type) -> Any:
    if not variants:
        return fallback
    if len(variants) == 1:
        return variants[0]
    return Annotated[Union[tuple(variants)], Field(discriminator="name")]  # noqa: UP007


def spec_json_schema(registry: Registry | None = None) -> dict[str, Any]:
    registry = registry or Registry()
    objective = _union(_variants(registry, "objective"), ObjectiveSection)
    backend = _union(_variants(registry, "backend"), BackendSection)
    full = create_model(
        "Spec", __base__=Spec,
        objectives=(list[objective], Spec.model_fields["objectives"]),
        backend=(backend | None, Field(None, description="Numerical backend plugin and its options.")))
    schema = full.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "plmforge run spec"
    return schema
