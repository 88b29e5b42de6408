"""JSON Schema of the whole spec, with every installed plugin's options, for YAML editors.

Each ``objectives``, ``tasks`` and ``evaluation.references`` item and the ``backend`` section become a
union over installed plugins, told apart by ``name``, so an editor completes and documents the options
of the plugin named (a reference may also be given by its bare name).
A plugin that fails to load is left out (and reported by ``plmforge plugins``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, create_model

from plmforge.core.errors import PluginError
from plmforge.core.registry import Registry
from plmforge.core.spec import BackendSection, EvaluationConfig, ObjectiveSection, ReferenceSection, Spec, TaskSection

_HOST_FIELDS = {
    "objective": ObjectiveSection.model_fields,
    "backend": BackendSection.model_fields,
    "task": TaskSection.model_fields,
    "reference": ReferenceSection.model_fields,
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
    task = _union(_variants(registry, "task"), TaskSection)
    reference = _union(_variants(registry, "reference"), ReferenceSection)
    names = tuple(registry.names("reference"))
    item = (Literal[names] | reference) if names else (str | reference)  # a bare name, or a mapping
    evaluation = create_model("EvaluationConfig", __base__=EvaluationConfig,
                              references=(list[item], EvaluationConfig.model_fields["references"]))
    full = create_model(
        "Spec", __base__=Spec, evaluation=(evaluation, Spec.model_fields["evaluation"]),
        objectives=(list[objective], Spec.model_fields["objectives"]),
        tasks=(list[task], Spec.model_fields["tasks"]),
        backend=(backend | None, Field(None, description="Numerical backend plugin and its options.")))
    schema = full.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "plmforge run spec"
    return schema


# -- markdown reference ------------------------------------------------------------------------------
def _type_name(annotation: Any) -> str:
    """A short readable type for the reference table (pipes escaped for markdown)."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (list, tuple):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _field_rows(model: type, prefix: str, only: tuple[str, ...] | None = None) -> list[str]:
    """Table rows for ``model``'s fields (``only`` some of them); nested sections are expanded."""
    from pydantic import BaseModel

    rows = []
    for name, info in model.model_fields.items():
        if only is not None and name not in only:
            continue
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _field_rows(annotation, f"{prefix}{name}.")
            continue
        if info.is_required():
            default = "required"
        elif info.default_factory is not None:
            try:
                value = info.default_factory()
                default = f"`{value.model_dump() if hasattr(value, 'model_dump') else value}`"
            except TypeError:
                default = "computed"
        else:
            default = f"`{info.default!r}`" if info.default is not None else "`null`"
        description = (info.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{prefix}{name}` | {_type_name(annotation)} | {default} | {description} |")
    return rows


def spec_reference_markdown(registry: Registry | None = None) -> str:
    """The spec reference (docs/spec-reference.md), generated from the field descriptions."""
    from plmforge.core.model_config import PRESETS, ModelConfig
    from plmforge.core.spec import DataConfig, EvaluationConfig, TrackingConfig, TrainingConfig

    registry = registry or Registry()
    header = "| key | type | default | description |\n|---|---|---|---|"
    out = ["# Spec reference", "",
           "Generated by `plmforge schema --markdown` from the descriptions in the code; do not edit by hand.",
           "A spec is YAML (or JSON). Unknown keys are errors. Override any value on the command line with",
           "`--set key.path=value` (list items as `objectives[0].weight=2`). Editors can complete specs from",
           "`plmforge schema > plmforge.schema.json`.", "",
           "Every problem is reported at once, each as one message naming the key and its line (or the `--set`",
           "option that set it), with a non-zero exit and no traceback. Refused in any spec: unknown keys, floats",
           "that are not finite (`.inf`, `.nan`, JSON `Infinity`), empty strings, a key given twice in one mapping,",
           "nesting deeper than 100 levels, and a file that is not UTF-8 text. `plmforge validate` and",
           "`plmforge train` also check the spec against this machine, so validate refuses what train would:",
           "every file it names exists and is a regular file (`~` is expanded; relative paths are taken from the",
           "working directory; a named pipe is refused), a CUDA device it names is present, and `output_dir` can",
           "be created and written. A plugin marks its own file options for that check with",
           "`Annotated[str, plmforge.core.strict.checked_path(file_problem)]`.", "",
           "## Top level", "", header]
    out += _field_rows(Spec, "", only=("name", "description", "seed", "output_dir"))
    for key, model in (("data", DataConfig), ("model", ModelConfig), ("training", TrainingConfig),
                       ("tracking", TrackingConfig), ("evaluation", EvaluationConfig)):
        out += ["", f"## `{key}`", ""]
        if model is ModelConfig:
            presets = ", ".join(f"`{name}` (d_model {p['d_model']}, {p['num_layers']}+{p['num_decoder_layers']} "
                                f"layers, {p['feed_forward_proj']})" for name, p in PRESETS.items())
            out += [f"Presets: {presets}. Keys given next to `preset` override it.", ""]
        out += [header, *_field_rows(model, f"{key}.")]
    for kind, section, host in (("backend", "backend", BackendSection),
                                ("objective", "objectives[]", ObjectiveSection), ("task", "tasks[]", TaskSection),
                                ("reference", "evaluation.references[]", ReferenceSection)):
        out += ["", f"## `{section}` — {kind} plugins", "", "Host keys:", "", header,
                *_field_rows(host, f"{section}.")]
        for name in registry.names(kind):
            try:
                plugin = registry.load(kind, name)
            except PluginError as exc:
                out += ["", f"### `{name}` (fails to load: {exc})"]
                continue
            info = registry.info(kind, name)
            doc = (plugin.__doc__ or "").strip().splitlines()[0] if plugin.__doc__ else ""
            out += ["", f"### `name: {name}` — {info.distribution} {info.version}", "", doc, ""]
            rows = _field_rows(plugin.Config, f"{section}.")
            out += [header, *rows] if rows else ["No options."]
    return "\n".join(out) + "\n"
