"""The run spec: one declarative file that assembles plugins into a run.

Validation has two phases. The host sections are pydantic models; each ``objectives`` item and the
``backend`` section keep their plugin's keys aside until the plugin named by ``name`` is loaded and
its own ``Config`` validates them. Every error is reported with its path (``objectives[0].
probabilities[1]``) and, for files, its line; unknown keys come with a did-you-mean suggestion.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from plmforge.core.errors import SpecError
from plmforge.core.model_config import ModelConfig
from plmforge.core.spec_text import decode_spec_bytes, parse_spec_text
from plmforge.core.strict import (
    CHECK_MACHINE,
    StrictModel,
    checked_path,
    checks_machine,
    file_problem,
    unknown_key_message,
)

#: Seeds feed numpy, PyTorch and JAX alike; JAX (without 64-bit mode) takes at most a signed 32-bit seed.
MAX_SEED = 2**31 - 1
BUILTIN_PREFIX = "builtin:"


def _data_file_problem(text: str) -> str | None:
    """A FASTA source on this machine: a built-in corpus is checked by its field, a path must be a file."""
    return None if text.startswith(BUILTIN_PREFIX) else file_problem(text)


def _data_source_problem(text: str) -> str | None:
    """Like a FASTA source, but a directory must be a complete prepared corpus (holding its manifest)."""
    path = Path(text).expanduser()
    if text.startswith(BUILTIN_PREFIX) or not path.is_dir():
        return _data_file_problem(text)
    from plmforge.core.data.corpus import MANIFEST

    if not (path / MANIFEST).is_file():
        return (f"directory {text!r} holds no {MANIFEST}: not a complete prepared corpus (was `plmforge prepare` "
                "interrupted?); give a FASTA file or a corpus made by `plmforge prepare`")
    return None


DataPath = Annotated[str, checked_path(_data_file_problem)]
DataSourcePath = Annotated[str, checked_path(_data_source_problem)]


# -- sections ---------------------------------------------------------------------------------------
class DataConfig(StrictModel):
    """Where proteins come from and how they are cut."""

    source: DataSourcePath = Field(
        "builtin:scl2205",
        description="'builtin:scl2205' (19,074 UniProt proteins with a homology-reduced split), a FASTA "
                    "file (plain or .gz) or a corpus directory made by `plmforge prepare`, relative to the "
                    "working directory.")
    validation_source: DataPath | None = Field(
        None, description="FASTA file for validation; when omitted a FASTA source holds out validation_fraction.")
    validation_fraction: float = Field(
        0.05, gt=0.0, lt=1.0, description="Share of a FASTA source held out for validation (by sequence hash).")
    max_length: int = Field(
        512, ge=8, description="Longest protein in residues; longer ones are cropped: a random window in "
                               "training (new each epoch), the first max_length residues in evaluation.")
    on_invalid: Literal["error", "skip"] = Field(
        "error", description="Letters outside the vocabulary: stop with an error naming file and record, or "
                             "skip the record and count it.")

    @field_validator("source", "validation_source")
    @classmethod
    def _known_corpus(cls, value: str | None) -> str | None:
        """An unknown built-in corpus is an error on every machine (found here, not when training starts)."""
        if value is not None and value.startswith(BUILTIN_PREFIX):
            from plmforge.core.data.sources import BUILTIN_CORPORA

            name = value[len(BUILTIN_PREFIX):]
            if name not in BUILTIN_CORPORA:
                raise ValueError(f"unknown built-in corpus {value!r}; available: "
                                 f"{', '.join(BUILTIN_PREFIX + n for n in sorted(BUILTIN_CORPORA))}")
        return value


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
    lr: float = Field(1e-3, gt=0, le=1.0, description="Peak learning rate (reached after warmup); at most 1.")
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="Decoupled weight decay, 0 to 1.")
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        (0.9, 0.999), description="AdamW betas, each in [0, 1) (Adafactor uses beta2 decay).")
    eps: float = Field(1e-8, gt=0, le=1.0, description="AdamW epsilon, above 0 and at most 1.")


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

    name: str = Field(min_length=1, description="Objective plugin name (see `plmforge plugins`).")
    weight: float = Field(
        1.0, gt=0, allow_inf_nan=False,
        description="Weight of this objective's mean loss in the total loss ('sum' mixing), or its relative "
                    "sampling rate ('sample' mixing).")
    label: str | None = Field(
        None, min_length=1,
        description="Name used in metric keys; defaults to the plugin name (must be unique in a spec).")


class TaskSection(PluginSection):
    """One ``tasks:`` item. ``name`` and ``label`` are the host's; the rest is the task plugin's."""

    name: str = Field(min_length=1, description="Task plugin name (see `plmforge plugins`).")
    label: str | None = Field(
        None, min_length=1,
        description="Name used in run names and metric keys; defaults to the plugin name (unique in a spec).")


class ReferenceSection(PluginSection):
    """One ``evaluation.references`` item: a reference plugin's name; the rest (``label`` too) is the plugin's."""

    name: str = Field(min_length=1, description="Reference plugin name (see `plmforge plugins`).")

    def build(self) -> Any:
        """A new instance of the reference plugin with its options (after :func:`validate_spec`)."""
        return self.plugin(self.config)

    def reference_label(self) -> str:
        """The name in metric keys: the ``label`` option, else the plugin's default ('unirep1900')."""
        if self._plugin is None:  # not resolved: the best guess without the plugin
            return str(self.plugin_options().get("label") or self.name)
        return self.build().label


def _reference_item(value: Any) -> Any:
    """A bare name stands for ``{name: <it>}``."""
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, (dict, ReferenceSection)):
        raise ValueError("a reference is a plugin name (e.g. onehot) or a mapping {name: ..., <its options>}")
    return value


ReferenceItem = Annotated[ReferenceSection, BeforeValidator(_reference_item,
                                                             json_schema_input_type=str | ReferenceSection)]


class EvaluationConfig(StrictModel):
    """How the ``tasks`` are run, after pretraining or by `plmforge evaluate`."""

    references: list[ReferenceItem] = Field(
        default_factory=lambda: ["onehot", "random"], validate_default=True,
        description="Representations scored by the same heads next to the model, each a reference plugin's name "
                    "or a mapping {name, label, <plugin options>}: built in are 'onehot' residues, 'random' (the "
                    "model's architecture, freshly initialised), 'unirep' (size 64, 256 or 1900) and 't5_encoder' "
                    "(path: a Hugging Face T5 encoder directory). Each gets one child run per task, tagged "
                    "plmforge.reference=<label>; labels must be unique. See docs/references.md.")
    embedding_cache: bool = Field(
        True, description="Cache frozen embeddings under <output_dir>/embedding-cache, keyed by model weights, "
                          "prefix and proteins, so several heads (and later evaluations) embed once.")
    batch_tokens: int = Field(8192, gt=0, description="Padded tokens per embedding batch.")
    standardize: bool = Field(
        True, description="Z-score each frozen input feature with train-split statistics before fitting a head, "
                          "so one-hot columns and embeddings of any scale train alike under one learning rate.")
    bootstrap_resamples: int = Field(
        1000, ge=0, description="Bootstrap resamples of the test proteins behind each task metric's interval "
                                "(0: no intervals, no outcomes files). See docs/uncertainty.md.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Coverage of the bootstrap intervals.")
    bootstrap_seed: int = Field(
        0, ge=0, description="Seeds the bootstrap resamples. Fixed (not the run's seed) so that runs compared with "
                             "each other, seed replicates included, resample the same proteins and pair up.")


class Spec(StrictModel):
    """A whole run: data, model, backend, objectives, training, tracking, downstream tasks."""

    name: str = Field(description="Run name; used for the output directory and the MLflow run name.")
    description: str | None = Field(
        None, description="What the run is for, in a sentence or two; MLflow shows it as the run's description, "
                          "followed by a one-line summary (objectives, model size, steps, corpus, overrides).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description=f"Seeds weights, data order, masking and dropout "
                                                         f"(0 to {MAX_SEED}, which every backend accepts).")
    output_dir: str = Field("runs/{name}", description="Where checkpoints and the resolved spec go ({name} expands). "
                                                       "`plmforge validate` checks that it can be created here.")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    backend: BackendSection = Field(default_factory=BackendSection)
    objectives: list[ObjectiveSection] = Field(min_length=1, description="Pretraining objectives and weights.")
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    tasks: list[TaskSection] = Field(
        default_factory=list, description="Downstream tasks run after pretraining (and by `plmforge evaluate`).")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str) -> str:
        if any(ord(ch) < 32 or ch == "\x7f" for ch in value):
            raise ValueError("the name holds a control character (e.g. a NUL byte); use printable characters")
        problem = _path_name_problem(value)  # it names the output directory (and MLflow's run)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("output_dir")
    @classmethod
    def _usable_output_dir(cls, value: str, info: ValidationInfo) -> str:
        """A directory name the file system takes; for this machine also one that can be created and written."""
        name = info.data.get("name")
        path = Path(value.replace("{name}", name) if isinstance(name, str) else value)
        problem = _path_name_problem(str(path))
        if problem is None and checks_machine(info):
            problem = _output_dir_problem(path)
        if problem:
            raise ValueError(problem)
        return value

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


def spec_warnings(spec: Spec) -> list[str]:
    """What is valid but likely not meant (``plmforge validate`` and ``train`` print these; nothing stops)."""
    found = []
    training = spec.training
    if training.schedule.warmup_steps > training.steps:
        warmup, steps, peak = training.schedule.warmup_steps, training.steps, training.optimizer.lr
        found.append(f"training.schedule.warmup_steps ({warmup}) is more than training.steps ({steps}): the run "
                     f"ends still warming up, its learning rate reaching {peak * steps / warmup:.3g}, not the peak "
                     f"{peak:g} (training.optimizer.lr)")
    return found


def _path_name_problem(path: str) -> str | None:
    """Why ``path`` cannot name a directory on any usual file system (NUL byte, over-long component), or None."""
    if "\x00" in path:
        return f"{path!r} holds a NUL byte"
    too_long = [part for part in Path(path).parts if len(os.fsencode(part)) > 255]
    if too_long:
        return (f"{path[:60]!r}... has a path component of {len(os.fsencode(too_long[0]))} bytes; file systems allow "
                f"255 (shorten 'name' or 'output_dir')")
    return None


def _output_dir_problem(path: Path) -> str | None:
    """Why the run could not create or write ``path`` on this machine, or None."""
    try:
        if path.exists() and not path.is_dir():
            return f"{path} exists and is not a directory"
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return f"{existing} is a file, so {path} cannot be created below it"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"{existing} is not writable, so {path} cannot be {'written' if existing == path else 'created'}"
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return None


# -- loading -----------------------------------------------------------------------------------------
def read_spec_file(path: str | Path) -> tuple[dict[str, Any], str]:
    """Raw mapping and text of a YAML or JSON spec file (never unpickles; see :mod:`plmforge.core.spec_text`)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec file: {exc.strerror or exc}") from None
    text = decode_spec_bytes(data, str(path))
    raw = parse_spec_text(text, str(path), is_json=path.suffix.lower() == ".json")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec must be a mapping of sections (name, data, model, objectives, ...)")
    return raw, text


def load_spec(path: str | Path, overrides: list[str] = (), registry: Any = None, resolve: bool = True,
              check_machine: bool = False) -> Spec:
    """Read, override, validate and (by default) resolve plugin options of a spec file.

    ``check_machine`` also checks what the run needs from this machine (files it reads, devices, a
    writable output directory): ``plmforge validate`` and ``plmforge train`` ask for it.
    """
    raw, text = read_spec_file(path)
    overridden = apply_overrides(raw, overrides)
    return validate_spec(raw, source=str(path), text=text, registry=registry, resolve=resolve,
                         overridden=overridden, check_machine=check_machine)


def validate_spec(raw: dict[str, Any], source: str = "<spec>", text: str | None = None,
                  registry: Any = None, resolve: bool = True, overridden: dict[tuple, str] | None = None,
                  check_machine: bool = False) -> Spec:
    """Validate host sections and (if ``resolve``) each plugin's options; report every error at once.

    ``overridden`` maps key paths set by ``--set`` to their option text, so their errors name the
    option rather than a line of ``text``.
    """
    from plmforge.core.registry import Registry

    registry = registry or Registry()
    where = _Locator(text, overridden or {})
    context = {CHECK_MACHINE: check_machine}
    errors: list[str] = []
    spec = None
    model = raw.get("model") if isinstance(raw, dict) else None
    if isinstance(model, dict) and model.get("init_from") is not None:  # the shape is the checkpoint's
        from plmforge.core.build import resolved_model_section

        try:
            raw = {**raw, "model": resolved_model_section(model)}
        except SpecError as exc:
            errors.append(f"{where(('model',))}model: {exc}")
    try:
        spec = Spec.model_validate(raw, context=context)
    except ValidationError as exc:
        errors += _error_lines(exc, where)
    if resolve:
        sections = spec_plugin_sections(spec, raw)
        for loc, kind, name, options, section in sections:
            plugin, config, problems = _validate_plugin(registry, loc, kind, name, options, where, context)
            errors += problems
            problem = prefix_problem(getattr(config, "prefix", None))
            if problem:
                errors.append(f"{where((*loc, 'prefix'))}{format_loc((*loc, 'prefix'))}: {problem}")
            if section is not None and config is not None:
                section._config, section._plugin = config, plugin
                section.__pydantic_extra__ = config.model_dump(mode="json")
        if spec is not None:
            errors += _reference_label_problems(spec, where)
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
        out += [(("evaluation", "references", i), "reference", e.name, e.plugin_options(), e)
                for i, e in enumerate(spec.evaluation.references)]
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
    evaluation = raw.get("evaluation") if isinstance(raw, dict) else None
    references = evaluation.get("references") if isinstance(evaluation, dict) else None
    for i, item in enumerate(references if isinstance(references, list) else []):
        item = {"name": item} if isinstance(item, str) else item
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            options = {k: v for k, v in item.items() if k not in ReferenceSection.model_fields}
            out.append((("evaluation", "references", i), "reference", item["name"], options, None))
    return out


def _reference_label_problems(spec: Spec, where: _Locator) -> list[str]:
    """Resolved references whose labels clash with each other or with the model's row."""
    problems, seen = [], {}
    for i, section in enumerate(spec.evaluation.references):
        if section._plugin is None:
            continue  # its own error is reported already
        loc = ("evaluation", "references", i)
        try:
            label = section.reference_label()
        except Exception as exc:  # noqa: BLE001 - a third party's constructor: report, never crash validation
            problems.append(f"{where(loc)}{format_loc(loc)}: reference {section.name!r} cannot be built: "
                            f"{type(exc).__name__}: {exc}")
            continue
        if label == "model":
            problems.append(f"{where(loc)}{format_loc(loc)}: the label 'model' names the evaluated model's row; "
                            "give the reference another 'label'")
        elif label in seen:
            problems.append(f"{where(loc)}{format_loc(loc)} and evaluation.references[{seen[label]}] are both "
                            f"labelled {label!r}; give one a distinct 'label'")
        seen.setdefault(label, i)
    return problems


def prefix_problem(prefix: Any) -> str | None:
    """Why a task prefix (an objective's or a task's ``prefix``) cannot be a token of its own, or None.

    It becomes one new vocabulary token, so it may be neither a residue letter nor a token the base
    vocabulary already has, nor hold white space (a tokenizer would split it).
    """
    from plmforge.core.vocab import EOS, PAD, RESIDUES, UNK

    if not isinstance(prefix, str):
        return None
    if prefix != prefix.strip() or any(ch.isspace() for ch in prefix):
        return f"prefix {prefix!r} holds white space; a prefix is one token, e.g. '[NLU]'"
    if prefix.upper() in RESIDUES and len(prefix) == 1:
        return f"prefix {prefix!r} is a residue letter; use a token such as '[NLU]'"
    if prefix in (PAD, EOS, UNK) or prefix.startswith("<extra_id_"):
        return f"prefix {prefix!r} is a special token of the base vocabulary; use a token such as '[NLU]'"
    return None


def _validate_plugin(registry: Any, loc: tuple, kind: str, name: str, options: dict[str, Any], where: _Locator,
                     context: dict[str, Any]) -> tuple[Any, Any, list[str]]:
    from plmforge.core.errors import PluginError

    try:
        plugin = registry.load(kind, name)
    except PluginError as exc:
        return None, None, [f"{where((*loc, 'name'))}{format_loc((*loc, 'name'))}: {exc}"]
    try:
        return plugin, plugin.Config.model_validate(options, context=context), []
    except ValidationError as exc:
        return plugin, None, _error_lines(exc, where, prefix=loc)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[tuple, str]:
    """Apply ``--set a.b[0].c=value`` overrides in place; values are parsed as YAML scalars/flows.

    Returns each overridden key path with its option text (for error messages).
    """
    overridden: dict[tuple, str] = {}
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. training.steps=200")
        key, value_text = item.split("=", 1)
        value = parse_spec_text(value_text, f"--set {item!r}: value", is_json=False) if value_text.strip() else ""
        parts = _parse_path(key, item)
        node: Any = raw
        for depth, part in enumerate(parts[:-1]):
            node = _descend(node, part, parts[: depth + 1], item, create_next=parts[depth + 1])
        last = parts[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or not -len(node) <= last < len(node):
                raise SpecError(f"--set {item!r}: {format_loc(tuple(parts))} does not exist")
            if last < 0:
                parts[-1] = last + len(node)
        elif not isinstance(node, dict):
            raise SpecError(f"--set {item!r}: {format_loc(tuple(parts[:-1]))} is not a mapping")
        node[last] = value
        overridden[tuple(parts)] = item
    return overridden


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


class _Locator:
    """Where a key path is: ``line N: `` of the spec text, or ``--set KEY=VALUE: `` when an override set it."""

    def __init__(self, text: str | None, overridden: dict[tuple, str]):
        self.text, self.overridden = text, overridden

    @functools.cached_property
    def _tree(self) -> Any:
        """The spec's YAML node tree, composed only when an error needs a line number."""
        return _compose(self.text) if self.text else None

    def __call__(self, loc: tuple[Any, ...]) -> str:
        for path, item in self.overridden.items():
            if tuple(loc[: len(path)]) == path:
                return f"--set {item}: "
        line = _line_of(self._tree, loc) if self._tree is not None else None
        return f"line {line}: " if line else ""


def _error_lines(exc: ValidationError, where: _Locator, prefix: tuple[Any, ...] = ()) -> list[str]:
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
        elif err["type"] == "invalid_key" and loc:  # e.g. `1: x`: YAML reads the key as a number
            message = f"key {loc[-1]!r} is not a name; keys are names such as 'steps'"
            line_loc, loc = (*loc[:-1], str(loc[-1])), loc[:-1]
        lines.append(f"{where(line_loc)}{format_loc(loc)}: {message}")
    return lines


def _compose(text: str) -> Any:
    """The YAML node tree of ``text`` (JSON is YAML too, nearly always), or None when it cannot be composed."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return None


def _line_of(node: Any, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node along ``loc`` (best effort; None if unknown)."""
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
