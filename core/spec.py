"""The run spec: one declarative file that assembles plugins into a run.

Validation has two phases. The host sections are pydantic models; each ``objectives`` item and the
``backend`` section keep their plugin's keys aside until the plugin named by ``name`` is loaded and
its own ``Config`` validates them. Every error is reported with its path (``objectives[0].
probabilities[1]``) and, for files, its line; unknown keys come with a did-you-mean suggestion.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from plmforge.core.errors import SpecError
from plmforge.core.model_config import ModelConfig
from plmforge.core.strict import StrictModel, unknown_key_message


# -- sections ---------------------------------------------------------------------------------------
class DataConfig(StrictModel):
    """Where proteins come from and how they are cut."""

    source: str = Field(
        "builtin:scl2205",
        description="'builtin:scl2205' (19,074 UniProt proteins with a homology-reduced split) or a FASTA "
                    "file (plain or .gz), relative to the working directory.")
    validation_source: str | None = Field(
        None, description="FASTA file for validation; when omitted a FASTA source holds out validation_fraction.")
    validation_fraction: float = Field(
        0.05, gt=0.0, lt=1.0, description="Share of a FASTA source held out for validation (by sequence hash).")
    max_length: int = Field(
        512, ge=8, description="Longest protein in residues; longer ones are cropped: a random window in "
                               "training (new each epoch), the first max_length residues in evaluation.")
    on_invalid: Literal["error", "skip"] = Field(
        "error", description="Letters outside the vocabulary: stop with an error naming file and record, or "
                             "skip the record and count it.")


class BatchSize(StrictModel):
    """Either a token budget (padded tokens per batch; batch size varies with length) or a sequence count."""

    tokens: int | None = Field(None, gt=0, description="Padded encoder tokens per batch.")
    sequences: int | None = Field(None, gt=0, description="Proteins per batch.")

    @model_validator(mode="after")
    def _exactly_one(self) -> BatchSize:
        if (self.tokens is None) == (self.sequences is None):
            raise ValueError("give exactly one of 'tokens' or 'sequences'")
        return self


class OptimizerConfig(StrictModel):
    name: Literal["adamw", "adafactor"] = Field("adamw", description="AdamW, or Adafactor as Ankh used.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (reached after warmup).")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas (Adafactor uses beta2 decay).")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")


class ScheduleConfig(StrictModel):
    warmup_steps: int = Field(0, ge=0, description="Steps of linear warmup from 0 to the peak rate.")
    decay: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Decay after warmup, down to final_lr_ratio × peak at the last step.")
    final_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="Final learning rate as a share of the peak.")


class TrainingConfig(StrictModel):
    steps: int = Field(1000, gt=0, description="Optimizer steps.")
    batch_size: BatchSize = Field(
        default_factory=lambda: BatchSize(tokens=8192), description="Per optimizer micro-step, per objective.")
    gradient_accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    objective_mixing: Literal["sum", "sample"] = Field(
        "sum", description="With several objectives: 'sum' adds every objective's weighted mean loss each step; "
                           "'sample' trains one objective per step, drawn with probability proportional to its "
                           "weight (as t5x mixtures do). Per-objective metrics are logged separately either way.")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm; null disables.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 runs matmuls in bfloat16 (autocast).")
    pad_to_multiple: int = Field(
        16, ge=1, description="Batches are padded to a multiple of this length (bounds the number of shapes).")
    log_every: int = Field(10, ge=1, description="Steps between metric logging.")
    eval_every: int = Field(200, ge=1, description="Steps between validation runs (also run at the end).")
    eval_batches: int | None = Field(
        20, ge=1, description="Validation batches per evaluation (null = the whole validation split).")
    checkpoint_every: int = Field(500, ge=1, description="Steps between checkpoints (one is also written at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep.")


class TrackingConfig(StrictModel):
    enabled: bool = Field(True, description="Log the run to MLflow.")
    experiment: str = Field("plmforge", description="MLflow experiment name.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.")
    run_name: str | None = Field(None, description="MLflow run name; defaults to the spec name.")
    log_checkpoint: bool = Field(True, description="Upload the final checkpoint as an artifact.")


class PluginSection(BaseModel):
    """A section naming a plugin; keys other than the host's belong to the plugin's own Config."""

    model_config = ConfigDict(extra="allow")
    _config: BaseModel | None = PrivateAttr(None)
    _plugin: Any = PrivateAttr(None)

    @property
    def plugin(self) -> Any:
        """The plugin class named by ``name`` (after :func:`validate_spec`)."""
        if self._plugin is None:
            raise RuntimeError("plugin not resolved yet: validate the spec with resolve=True")
        return self._plugin

    @property
    def config(self) -> BaseModel:
        if self._config is None:
            raise RuntimeError("plugin options not resolved yet: validate the spec with resolve=True")
        return self._config

    def plugin_options(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})


class BackendSection(PluginSection):
    name: str = Field("torch", description="Backend plugin: 'torch' (PyTorch) or 'jax'.")


class ObjectiveSection(PluginSection):
    """One ``objectives:`` item. ``name``, ``weight`` and ``label`` are the host's; the rest is the plugin's."""

    name: str = Field(description="Objective plugin name (see `plmforge plugins`).")
    weight: float = Field(
        1.0, gt=0, description="Weight of this objective's mean loss in the total loss ('sum' mixing), or its "
                               "relative sampling rate ('sample' mixing).")
    label: str | None = Field(
        None, description="Name used in metric keys; defaults to the plugin name (must be unique in a spec).")


class TaskSection(PluginSection):
    """One ``tasks:`` item. ``name`` and ``label`` are the host's; the rest is the task plugin's."""

    name: str = Field(description="Task plugin name (see `plmforge plugins`).")
    label: str | None = Field(
        None, description="Name used in run names and metric keys; defaults to the plugin name (unique in a spec).")


class EvaluationConfig(StrictModel):
    """How the ``tasks`` are run, after pretraining or by `plmforge evaluate`."""

    references: list[Literal["onehot", "random"]] = Field(
        default_factory=lambda: ["onehot", "random"],
        description="Reference rows evaluated by the same heads: 'onehot' residues and a 'random'ly initialised "
                    "model of the same size; they show what pretraining buys.")
    embedding_cache: bool = Field(
        True, description="Cache frozen embeddings under <output_dir>/embedding-cache, keyed by model weights, "
                          "prefix and proteins, so several heads (and later evaluations) embed once.")
    batch_tokens: int = Field(8192, gt=0, description="Padded tokens per embedding batch.")
    standardize: bool = Field(
        True, description="Z-score each frozen input feature with train-split statistics before fitting a head, "
                          "so one-hot columns and embeddings of any scale train alike under one learning rate.")


class Spec(StrictModel):
    """A whole run: data, model, backend, objectives, training, tracking, downstream tasks."""

    name: str = Field(description="Run name; used for the output directory and the MLflow run name.")
    seed: int = Field(0, description="Seeds weights, data order, masking and dropout.")
    output_dir: str = Field("runs/{name}", description="Where checkpoints and the resolved spec go ({name} expands).")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    backend: BackendSection = Field(default_factory=BackendSection)
    objectives: list[ObjectiveSection] = Field(min_length=1, description="Pretraining objectives and weights.")
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    tasks: list[TaskSection] = Field(
        default_factory=list, description="Downstream tasks run after pretraining (and by `plmforge evaluate`).")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="after")
    def _labels_unique(self) -> Spec:
        for section, entries in (("objectives", self.objectives), ("tasks", self.tasks)):
            seen: dict[str, int] = {}
            for i, entry in enumerate(entries):
                label = entry.label or entry.name
                if label in seen:
                    raise ValueError(f"{section}[{i}] and {section}[{seen[label]}] are both labelled {label!r}; "
                                     f"give one a distinct 'label'")
                seen[label] = i
        return self

    # -- derived ---------------------------------------------------------------------------------
    def objective_labels(self) -> list[str]:
        return [entry.label or entry.name for entry in self.objectives]

    @property
    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir.replace("{name}", self.name))

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec (every default filled, plugin options included) as plain data."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# -- loading -----------------------------------------------------------------------------------------
def read_spec_file(path: str | Path) -> tuple[dict[str, Any], str]:
    """Raw mapping and text of a YAML or JSON spec file (never unpickles: yaml.safe_load)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise SpecError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec must be a mapping of sections (name, data, model, objectives, ...)")
    return raw, text


def load_spec(path: str | Path, overrides: list[str] = (), registry: Any = None, resolve: bool = True) -> Spec:
    """Read, override, validate and (by default) resolve plugin options of a spec file."""
    raw, text = read_spec_file(path)
    apply_overrides(raw, overrides)
    return validate_spec(raw, source=str(path), text=text if not overrides else None,
                         registry=registry, resolve=resolve)


def validate_spec(raw: dict[str, Any], source: str = "<spec>", text: str | None = None,
                  registry: Any = None, resolve: bool = True) -> Spec:
    """Validate host sections and (if ``resolve``) each plugin's options; report every error at once."""
    from plmforge.core.registry import Registry

    registry = registry or Registry()
    errors: list[str] = []
    spec = None
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as exc:
        errors += _error_lines(exc, source, text)
    if resolve:
        sections = spec_plugin_sections(spec, raw)
        for loc, kind, name, options, section in sections:
            plugin, config, problems = _validate_plugin(registry, loc, kind, name, options, source, text)
            errors += problems
            if section is not None and config is not None:
                section._config, section._plugin = config, plugin
                section.__pydantic_extra__ = config.model_dump(mode="json")
    if errors:
        header = f"{source}: invalid spec ({len(errors)} error{'s' if len(errors) > 1 else ''})"
        raise SpecError(header + "\n  " + "\n  ".join(errors))
    assert spec is not None
    return spec


def spec_plugin_sections(spec: Spec | None, raw: dict[str, Any]) -> list[tuple]:
    """(loc, kind, plugin name, options, section or None) for every plugin section that names a plugin.

    Works from the raw data when host validation failed, so plugin errors are reported too.
    """
    out: list[tuple] = []
    if spec is not None:
        out.append((("backend",), "backend", spec.backend.name, spec.backend.plugin_options(), spec.backend))
        out += [(("objectives", i), "objective", e.name, e.plugin_options(), e) for i, e in enumerate(spec.objectives)]
        out += [(("tasks", i), "task", e.name, e.plugin_options(), e) for i, e in enumerate(spec.tasks)]
        return out
    backend = raw.get("backend", {}) if isinstance(raw, dict) else {}
    if isinstance(backend, dict) and isinstance(backend.get("name", "torch"), str):
        options = {k: v for k, v in backend.items() if k not in BackendSection.model_fields}
        out.append((("backend",), "backend", backend.get("name", "torch"), options, None))
    objectives = raw.get("objectives") if isinstance(raw, dict) else None
    for i, item in enumerate(objectives if isinstance(objectives, list) else []):
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            options = {k: v for k, v in item.items() if k not in ObjectiveSection.model_fields}
            out.append((("objectives", i), "objective", item["name"], options, None))
    tasks = raw.get("tasks") if isinstance(raw, dict) else None
    for i, item in enumerate(tasks if isinstance(tasks, list) else []):
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            options = {k: v for k, v in item.items() if k not in TaskSection.model_fields}
            out.append((("tasks", i), "task", item["name"], options, None))
    return out


def _validate_plugin(registry: Any, loc: tuple, kind: str, name: str, options: dict[str, Any], source: str,
                     text: str | None) -> tuple[Any, Any, list[str]]:
    from plmforge.core.errors import PluginError

    try:
        plugin = registry.load(kind, name)
    except PluginError as exc:
        return None, None, [f"{_where(source, text, (*loc, 'name'))}{format_loc((*loc, 'name'))}: {exc}"]
    try:
        return plugin, plugin.Config.model_validate(options), []
    except ValidationError as exc:
        return plugin, None, _error_lines(exc, source, text, prefix=loc)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    """Apply ``--set a.b[0].c=value`` overrides in place; values are parsed as YAML scalars/flows."""
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. training.steps=200")
        key, value_text = item.split("=", 1)
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else ""
        except yaml.YAMLError as exc:
            raise SpecError(f"--set {item!r}: value is not valid YAML: {exc}") from None
        parts = _parse_path(key, item)
        node: Any = raw
        for depth, part in enumerate(parts[:-1]):
            node = _descend(node, part, parts[: depth + 1], item, create_next=parts[depth + 1])
        last = parts[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or not -len(node) <= last < len(node):
                raise SpecError(f"--set {item!r}: {format_loc(tuple(parts))} does not exist")
        elif not isinstance(node, dict):
            raise SpecError(f"--set {item!r}: {format_loc(tuple(parts[:-1]))} is not a mapping")
        node[last] = value


_TOKEN = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")


def _parse_path(key: str, item: str) -> list[str | int]:
    parts: list[str | int] = []
    pos = 0
    key = key.strip()
    while pos < len(key):
        if key[pos] == "." and parts:
            pos += 1
        match = _TOKEN.match(key, pos)
        if not match:
            raise SpecError(f"--set {item!r}: cannot parse key path {key!r}")
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        pos = match.end()
    if not parts:
        raise SpecError(f"--set {item!r}: empty key")
    return parts


def _descend(node: Any, part: str | int, path: list, item: str, create_next: str | int) -> Any:
    if isinstance(part, int):
        if not isinstance(node, list) or not -len(node) <= part < len(node):
            raise SpecError(f"--set {item!r}: {format_loc(tuple(path))} does not exist")
        return node[part]
    if not isinstance(node, dict):
        raise SpecError(f"--set {item!r}: {format_loc(tuple(path[:-1]))} is not a mapping")
    if part not in node or node[part] is None:
        node[part] = [] if isinstance(create_next, int) else {}
    return node[part]


# -- error formatting --------------------------------------------------------------------------------
def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def format_validation_error(exc: ValidationError, source: str, text: str | None,
                            prefix: tuple[Any, ...] = ()) -> str:
    lines = _error_lines(exc, source, text, prefix)
    header = f"{source}: invalid spec ({len(lines)} error{'s' if len(lines) > 1 else ''})"
    return header + "\n  " + "\n  ".join(lines)


def _error_lines(exc: ValidationError, source: str, text: str | None, prefix: tuple[Any, ...] = ()) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = (*prefix, *err["loc"])
        message = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        line_loc = loc
        if err["type"] == "extra_forbidden" and loc:
            message = unknown_key_message(str(loc[-1]), [])
            loc = loc[:-1]
        elif err["type"] == "unknown_key":
            line_loc = (*loc, err.get("ctx", {}).get("key"))
        elif err["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{_where(source, text, line_loc)}{format_loc(loc)}: {message}")
    return lines


def _where(source: str, text: str | None, loc: tuple[Any, ...]) -> str:
    line = _line_of(text, loc) if text else None
    return f"line {line}: " if line else ""


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node along ``loc`` (best effort; None if unknown)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
