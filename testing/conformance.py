"""``check_objective``: does an objective plugin keep the Objective contract on real data and every backend?

An objective that passes trains from a spec on every installed backend with the same numbers. The
check runs what a run runs, at toy size: the objective's ``Config`` validated as a spec entry would
be, the vocabulary built with its special tokens (as :func:`plmforge.core.build.build_objectives`),
``prepare`` on real proteins, examples cut by :class:`~plmforge.core.data.stream.ExampleStream`,
and ``eval_step``/``train_step`` of each backend on one batch of a tiny model.

Checks, by the name failures are reported under:

========================== ===========================================================================
``config.schema``          ``Config.model_json_schema()`` is a valid JSON Schema (needs ``jsonschema``)
``config.fields``          every option has a description; none is named ``name``, ``weight``, ``label``
``config.defaults``        the defaults validate, and satisfy the JSON Schema
``config.roundtrip``       the config survives the resolved spec's JSON/YAML round trip
``init``                   the objective builds with the run's vocabulary (its ``special_tokens``)
``needs``                  ``needs()`` is a ModelNeeds the model can satisfy
``features``               ``features()`` declares valid dtypes and the inputs the model reads
``prepare``                ``prepare(proteins, "train")`` keeps proteins; extras have one row per residue
``batch.collate``          the stream makes and pads a batch (``make_example``, ``collate``, ``weight`` run)
``examples.features``      every example has exactly the declared features
``examples.dtypes``        ... with exactly the declared dtypes
``examples.shapes``        ... trailing dims as declared; features on one axis share its length
``examples.token_ids``     model inputs are ids of the vocabulary
``examples.input``         ``make_example`` leaves ``protein.tokens`` unchanged
``examples.prefix``        the ``prefix`` option every objective has puts its token first on ``encoder_input_ids``
``batch.weight``           ``weight(batch)`` is finite and > 0
``padding.weight``         ``weight`` ignores an all-padding row and longer padding (numpy: runs with ``backends=[]``)
``determinism.seed``       the same seed and protein give identical arrays (no global randomness)
``determinism.rng``        another generator gives other arrays (skipped, not failed, if by design)
``backend.<b>.eval``       the loss is one number (a scalar sum); eval loss and metrics finite;
                           ``eval_metrics()`` names are returned
``backend.<b>.train``      ``train_step`` runs and its loss is finite
``backend.<b>.gradients``  the gradient norm is finite and > 0 (the loss depends on the model)
``padding.invariance``     an all-padding row and longer padding change neither loss nor metrics
``loss.sum``               the batch concatenated with itself gives twice the loss and metric sums (sums, not means)
``backends.agree``         every backend gives the same loss, metrics and gradient norm (rtol 1e-4/1e-3)
========================== ===========================================================================

Nothing here imports torch, jax or mlflow at import time: a backend's framework is imported when
that backend is built.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from plmforge.core.backend import Backend, MicroBatch
    from plmforge.core.data.proteins import ProteinSet
    from plmforge.core.objective import Objective, ObjectiveConfig, ProteinSource
    from plmforge.core.registry import Registry

#: The model every backend builds for the check: an encoder-decoder small enough for seconds on a CPU.
TINY_MODEL: dict[str, Any] = dict(preset=None, d_model=32, num_layers=2, num_decoder_layers=1, num_heads=2,
                                  d_kv=16, d_ff=64, dropout_rate=0.0)
#: Options of the built-in backends in the check: the CPU, where float32 results are reproducible.
BACKEND_OPTIONS: dict[str, dict[str, Any]] = {"torch": {"device": "cpu"}, "jax": {"platform": "cpu"}}
#: How many proteins of the built-in corpus the check uses by default.
DEFAULT_PROTEINS = 24
#: Relative tolerance of cross-backend comparisons (loss, metrics); gradient norms get 10x more.
RTOL = 1e-4
#: Keys of an ``objectives:`` spec entry that belong to plmforge, not to the objective's Config.
RESERVED_OPTIONS = ("name", "weight", "label")
_LABEL = "objective"
_EXTRA_PADDING = 16

Status = Literal["passed", "failed", "skipped"]


# -- report -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """The outcome of one named check; ``detail`` says what failed or why it was skipped."""

    name: str
    status: Status
    detail: str = ""


@dataclass
class ConformanceReport:
    """Every check of one :func:`check_objective` call, plus the eval loss each backend computed."""

    objective: str
    checks: list[Check] = field(default_factory=list)
    #: backend name -> eval loss per unit of weight on the check's batch (same weights on every backend)
    losses: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> list[str]:
        return [c.name for c in self.checks if c.status == "passed"]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "failed"]

    @property
    def skipped(self) -> list[Check]:
        return [c for c in self.checks if c.status == "skipped"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def status(self, name: str) -> Status | None:
        """The status of check ``name`` (None if it was not reached)."""
        return next((c.status for c in self.checks if c.name == name), None)

    def __str__(self) -> str:
        head = (f"{self.objective}: {len(self.failed)} of {len(self.checks)} checks failed" if self.failed
                else f"{self.objective}: {len(self.passed)} checks passed")
        if self.skipped:
            head += f", {len(self.skipped)} skipped"
        lines = [head]
        lines += [f"  FAILED {c.name}: {c.detail}" for c in self.failed]
        lines += [f"  skipped {c.name}: {c.detail}" for c in self.skipped]
        if self.passed:
            lines.append("  passed: " + ", ".join(self.passed))
        return "\n".join(lines)


class ConformanceError(AssertionError):
    """Raised by :func:`check_objective` when a check fails; ``report`` holds every check."""

    def __init__(self, report: ConformanceReport):
        super().__init__(str(report))
        self.report = report


class _Failed(Exception):
    pass


class _Skipped(Exception):
    pass


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise _Failed(message)


class _Checks:
    """Runs named checks, recording pass/fail/skip instead of stopping at the first failure."""

    def __init__(self, report: ConformanceReport):
        self.report = report

    @contextmanager
    def check(self, name: str) -> Iterator[None]:
        try:
            yield
        except _Skipped as exc:
            self.add(name, "skipped", str(exc))
        except _Failed as exc:
            self.add(name, "failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - an objective's error is a failed check, reported by name
            self.add(name, "failed", f"raised {type(exc).__name__}: {exc}")
        else:
            self.add(name, "passed")

    def add(self, name: str, status: Status, detail: str = "") -> None:
        self.report.checks.append(Check(name, status, detail))

    def ok(self, *names: str) -> bool:
        return all(self.report.status(n) == "passed" for n in names)


# -- building blocks (public: objective tests use them too) --------------------------------------------
@functools.lru_cache(maxsize=4)
def default_proteins(count: int = DEFAULT_PROTEINS) -> ProteinSet:
    """``count`` real proteins of the built-in scl2205 train split, evenly spaced through it.

    The default 24 run from 32 to 1,359 residues, so a max_length of 64 both crops and pads.
    """
    from plmforge.core.data.sources import load_builtin

    train = load_builtin("scl2205")["train"]
    return train.subset(np.linspace(0, len(train) - 1, count).astype(np.int64))


def build_objective(objective_cls: type[Objective], config: Mapping[str, Any] | ObjectiveConfig | None = None
                    ) -> Objective:
    """An instance as a run builds it: options validated by its ``Config``, vocab with its special tokens."""
    from plmforge.core.vocab import Vocab

    options = _validate_config(objective_cls, config)
    return objective_cls(options, Vocab(objective_cls.special_tokens(options)))


def sample_batch(objective: Objective, proteins: ProteinSet | Sequence[str] | None = None, *, seed: int = 0,
                 max_length: int = 64, split: str = "train", pad_to_multiple: int = 16) -> MicroBatch:
    """One padded batch of every protein, made the way training makes it (prepare, crop, collate)."""
    stream = _stream(objective, objective.prepare(_protein_set(proteins), split), seed, max_length, pad_to_multiple)
    return stream.make_batch(np.arange(len(stream.proteins)), epoch=0, train=True)


def installed_backends(registry: Registry | None = None) -> list[str]:
    """Registered backends whose framework imports here (imports it: torch, jax, ...)."""
    from plmforge.core.errors import PluginError
    from plmforge.core.registry import Registry

    registry = registry or Registry()
    usable = []
    for name in registry.names("backend"):
        try:
            backend_cls = registry.load("backend", name)
        except PluginError:
            continue
        if _missing_framework(backend_cls) is None:
            usable.append(name)
    return usable


def _missing_framework(backend_cls: type) -> str | None:
    """Why a backend's framework cannot be imported, or None when it can (or cannot be told before setup)."""
    implementation = getattr(backend_cls, "implementation", None)
    if not isinstance(implementation, str):
        return None
    try:
        importlib.import_module(implementation.partition(":")[0])
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _protein_set(proteins: ProteinSet | Sequence[str] | None) -> ProteinSet:
    from plmforge.core.data.proteins import ProteinSet

    if proteins is None:
        return default_proteins()
    if isinstance(proteins, ProteinSet):
        return proteins
    sequences = list(proteins)
    return ProteinSet.from_sequences([f"protein{i}" for i in range(len(sequences))], sequences)


def _validate_config(objective_cls: type[Objective], config: Mapping[str, Any] | ObjectiveConfig | None
                     ) -> ObjectiveConfig:
    config_cls = objective_cls.Config
    if config is None:
        return config_cls()
    if isinstance(config, config_cls):
        return config
    if hasattr(config, "model_dump"):
        config = config.model_dump()
    return config_cls.model_validate(dict(config))


def _stream(objective: Any, source: Any, seed: int, max_length: int, pad_to_multiple: int = 16) -> Any:
    from plmforge.core.data.batching import BatchPlanner
    from plmforge.core.data.stream import ExampleStream

    proteins = getattr(source, "proteins", source)
    planner = BatchPlanner(max_length=max_length, pad_to_multiple=pad_to_multiple, sequences=max(len(proteins), 1))
    return ExampleStream(objective, source, planner, seed)


class _Recorder:
    """Stands in for the objective in an ExampleStream and keeps every (protein, tokens before, example)."""

    def __init__(self, objective: Objective):
        self.objective = objective
        self.calls: list[tuple[Any, np.ndarray, dict[str, Any]]] = []

    def make_example(self, protein: Any, rng: np.random.Generator) -> dict[str, Any]:
        before = np.array(protein.tokens, copy=True)
        example = self.objective.make_example(protein, rng)
        self.calls.append((protein, before, example))
        return example

    def __getattr__(self, name: str) -> Any:
        return getattr(self.objective, name)


# -- the check -----------------------------------------------------------------------------------------
def check_objective(
    objective_cls: type[Objective],
    config: Mapping[str, Any] | ObjectiveConfig | None = None,
    *,
    backends: Sequence[str] | Mapping[str, Mapping[str, Any]] | None = None,
    proteins: ProteinSet | Sequence[str] | None = None,
    seed: int = 0,
    model: Mapping[str, Any] | None = None,
    max_length: int = 64,
) -> ConformanceReport:
    """Check ``objective_cls`` against the Objective contract; raise :class:`ConformanceError` on any failure.

    ``config``: the objective's options (dict, Config instance, or None for the defaults).
    ``backends``: backend names to run (default: every registered one; a mapping gives each its
    options); one whose framework is not installed is skipped with a note, ``[]`` skips backends.
    ``proteins``: a ProteinSet or sequences (default: 24 proteins of the built-in scl2205 train split).
    ``model``: ModelConfig keys over :data:`TINY_MODEL`. Returns the report when every check passed.
    """
    from plmforge.core.registry import Registry

    registry = Registry()
    wanted = _wanted_backends(registry, backends)
    report = ConformanceReport(objective=f"{objective_cls.__module__}.{objective_cls.__qualname__}")
    checks = _Checks(report)
    options = _check_config(checks, objective_cls, config)
    if options is None:
        raise ConformanceError(report)

    objective = None
    with checks.check("init"):
        objective = build_objective(objective_cls, options)
    if objective is None:
        raise ConformanceError(report)
    spec = _check_needs_and_features(checks, objective, seed, max_length, model)  # host sections only

    source = _check_prepare(checks, objective, _protein_set(proteins))
    batch = None
    if source is not None:
        batch = _check_examples(checks, objective, source, seed, max_length)
    _check_backends(checks, registry, wanted, objective, batch, spec)
    if not report.ok:
        raise ConformanceError(report)
    return report


# -- config ----------------------------------------------------------------------------------------------
def _check_config(checks: _Checks, objective_cls: type, config: Any) -> ObjectiveConfig | None:
    from plmforge.core.objective import Objective, ObjectiveConfig

    if not (isinstance(objective_cls, type) and issubclass(objective_cls, Objective)):
        checks.add("init", "failed", f"{objective_cls!r} is not a subclass of plmforge.core.objective.Objective")
        return None
    config_cls = objective_cls.Config
    schema: dict[str, Any] = {}
    with checks.check("config.schema"):
        _require(isinstance(config_cls, type) and issubclass(config_cls, ObjectiveConfig),
                 f"Config {config_cls!r} must subclass plmforge.core.objective.ObjectiveConfig "
                 f"(which rejects unknown keys with a did-you-mean)")
        schema = config_cls.model_json_schema()
        try:
            import jsonschema
        except ImportError:
            raise _Skipped("jsonschema is not installed; the schema was made but not validated") from None
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise _Failed(f"Config.model_json_schema() is not a valid JSON Schema: {exc.message}") from None
    with checks.check("config.fields"):
        problems = []
        if undocumented := sorted(_undocumented(schema or config_cls.model_json_schema())):
            problems.append(f"option(s) without a description: {', '.join(undocumented)}; give each "
                            f"Field(description=...) (it is the spec reference and the schema's help)")
        if reserved := sorted(set(config_cls.model_fields) & set(RESERVED_OPTIONS)):
            problems.append(f"option(s) {reserved} clash with the spec's own keys of an objectives entry "
                            f"({', '.join(RESERVED_OPTIONS)}); rename them")
        _require(not problems, "; ".join(problems))
    with checks.check("config.defaults"):
        required = sorted(n for n, f in config_cls.model_fields.items() if f.is_required())
        if required:
            raise _Skipped(f"option(s) {required} have no default; the given config is checked instead")
        defaults = config_cls()
        _require_schema_accepts(schema, defaults.model_dump(mode="json"), "the defaults")
    options = None
    with checks.check("config.options"):
        options = _validate_config(objective_cls, config)
    if options is None:
        return None
    with checks.check("config.roundtrip"):
        dumped = options.model_dump(mode="json")  # what the resolved spec and its YAML copy hold
        _require_schema_accepts(schema, dumped, "the config")
        again = config_cls.model_validate(dumped)
        _require(again == options, f"validating the config's JSON form gives {again!r}, not {options!r}: a "
                                   f"resolved spec (and --resume) would train with other options")
    return options


def _undocumented(schema: Mapping[str, Any]) -> Iterator[str]:
    for owner, node in [("", schema), *((f"{k}.", v) for k, v in schema.get("$defs", {}).items())]:
        for name, prop in node.get("properties", {}).items():
            if not str(prop.get("description", "")).strip():
                yield owner + name


def _require_schema_accepts(schema: Mapping[str, Any], instance: Any, what: str) -> None:
    try:
        import jsonschema
    except ImportError:
        return
    try:
        jsonschema.validate(instance, schema)
    except jsonschema.ValidationError as exc:
        raise _Failed(f"the JSON Schema rejects {what} {instance!r}: {exc.message}") from None


# -- declarations ----------------------------------------------------------------------------------------
def _check_needs_and_features(checks: _Checks, objective: Objective, seed: int, max_length: int,
                              model: Mapping[str, Any] | None) -> Any:
    from plmforge.core.objective import DECODER_INPUT, ENCODER_INPUT, Feature, ModelNeeds
    from plmforge.core.spec import Spec

    spec = Spec.model_validate({"name": "conformance", "seed": seed, "data": {"max_length": max_length},
                                "model": {**TINY_MODEL, **(model or {})}, "objectives": [{"name": _LABEL}]})
    needs = None
    with checks.check("needs"):
        needs = objective.needs()
        _require(isinstance(needs, ModelNeeds), f"needs() returned {type(needs).__name__}, not ModelNeeds")
        for name, width in needs.per_residue_heads.items():
            _require(isinstance(width, int) and width > 0, f"head {name!r} has width {width!r}; give a positive int")
        _require(needs.output_names(), "needs() asks for no model output: the loss could not depend on the model")
        _require(not needs.decoder_lm or spec.model.has_decoder,
                 "needs decoder logits but the model has no decoder (model num_decoder_layers is 0)")
    with checks.check("features"):
        features = objective.features()
        _require(isinstance(features, Mapping) and features, "features() must return a non-empty dict")
        for name, feature in features.items():
            _require(isinstance(feature, Feature), f"feature {name!r} is a {type(feature).__name__}, not a Feature")
            try:
                np.dtype(feature.dtype)
            except TypeError:
                raise _Failed(f"feature {name!r} declares dtype {feature.dtype!r}, which numpy does not know") from None
            _require(feature.length in ("encoder", "decoder", None),
                     f"feature {name!r} has length {feature.length!r}; use 'encoder', 'decoder' or None")
        encoder = features.get(ENCODER_INPUT)
        _require(encoder is not None and encoder.length == "encoder" and np.dtype(encoder.dtype).kind in "iu",
                 f"declare {ENCODER_INPUT!r} as an integer feature on the 'encoder' axis: every model reads it")
        if needs is not None and needs.decoder_lm:
            decoder = features.get(DECODER_INPUT)
            _require(decoder is not None and decoder.length == "decoder" and np.dtype(decoder.dtype).kind in "iu",
                     f"needs decoder logits: declare {DECODER_INPUT!r} as an integer feature on the 'decoder' axis")
    return spec


def _check_prepare(checks: _Checks, objective: Objective, proteins: ProteinSet) -> ProteinSource | None:
    from plmforge.core.objective import ProteinSource

    source = None
    with checks.check("prepare"):
        source = objective.prepare(proteins, "train")
        _require(isinstance(source, ProteinSource),
                 f"prepare() returned {type(source).__name__}, not plmforge.core.objective.ProteinSource")
        _require(len(source.proteins) > 0, f"prepare() kept none of the {len(proteins)} proteins")
        if source.extras is not None:
            for i in range(len(source.proteins)):
                length = len(source.proteins.tokens(i))
                for key, value in source.extras(i).items():
                    _require(isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == length,
                             f"extras {key!r} of protein {i} ({source.proteins.name(i)}) has shape "
                             f"{getattr(value, 'shape', type(value).__name__)}; its first axis must be the "
                             f"protein's {length} residues (the stream crops it with the tokens)")
    return source if checks.ok("prepare") else None


# -- examples ----------------------------------------------------------------------------------------------
def _check_examples(checks: _Checks, objective: Objective, source: ProteinSource, seed: int,
                    max_length: int) -> MicroBatch | None:
    from plmforge.core.objective import DECODER_INPUT, ENCODER_INPUT

    recorder = _Recorder(objective)
    stream = _stream(recorder, source, seed, max_length)
    indices = np.arange(len(stream.proteins))
    batch = None
    with checks.check("batch.collate"):
        batch = stream.make_batch(indices, epoch=0, train=True)
    if batch is None and not recorder.calls:
        checks.add("examples.features", "skipped", "make_example failed (see batch.collate)")
        return None
    features = objective.features()
    problems: dict[str, list[str]] = {k: [] for k in ("features", "dtypes", "shapes", "token_ids", "input")}
    vocab_size = len(objective.vocab)
    for protein, before, example in recorder.calls:
        where = f"example of {protein.name or 'a protein'}"
        if not isinstance(example, Mapping):
            problems["features"].append(f"{where} is a {type(example).__name__}, not a dict of arrays")
            continue
        undeclared = sorted(set(example) - set(features))
        missing = sorted(set(features) - set(example))
        if undeclared:
            problems["features"].append(f"{where} has undeclared feature(s) {undeclared} (batching drops them "
                                        f"silently; declare them in features())")
        if missing:
            problems["features"].append(f"{where} lacks declared feature(s) {missing}")
        lengths: dict[str, dict[str, int]] = {}
        for name, feature in features.items():
            if name not in example:
                continue
            value = example[name]
            if not isinstance(value, np.ndarray | np.generic):
                problems["dtypes"].append(f"{where}: {name!r} is a {type(value).__name__}, not a numpy array "
                                          f"of {feature.dtype}")
                continue
            if value.dtype != np.dtype(feature.dtype):
                problems["dtypes"].append(f"{where}: {name!r} is {value.dtype}, declared {feature.dtype} (batching "
                                          f"casts silently)")
            axes = 1 if feature.length is not None else 0
            if value.ndim != axes + len(feature.trailing) or tuple(value.shape[axes:]) != tuple(feature.trailing):
                expected = ("[length" + "".join(f", {d}" for d in feature.trailing) + "]") if axes else \
                    str(tuple(feature.trailing))
                problems["shapes"].append(f"{where}: {name!r} has shape {value.shape}, declared {expected}")
            elif axes:
                lengths.setdefault(feature.length, {})[name] = value.shape[0]
        for axis, by_name in lengths.items():
            if len(set(by_name.values())) > 1:
                problems["shapes"].append(f"{where}: features on the {axis!r} axis differ in length {by_name}; they "
                                          f"are padded to one length and must line up position by position")
            if min(by_name.values()) == 0 and axis == "encoder":
                problems["shapes"].append(f"{where}: empty encoder input")
        for name in (ENCODER_INPUT, DECODER_INPUT):
            value = example.get(name)
            if isinstance(value, np.ndarray) and value.size and np.issubdtype(value.dtype, np.integer):
                if value.min() < 0 or value.max() >= vocab_size:
                    problems["token_ids"].append(f"{where}: {name!r} holds ids outside 0..{vocab_size - 1} "
                                                 f"(range {value.min()}..{value.max()})")
        if not np.array_equal(before, protein.tokens):
            problems["input"].append(f"{where}: make_example changed protein.tokens in place; copy it first")
    for kind, found in problems.items():
        with checks.check(f"examples.{kind}"):
            _require(not found, "; ".join(found[:3]) + (f" (and {len(found) - 3} more)" if len(found) > 3 else ""))
    if batch is not None:
        with checks.check("batch.weight"):
            weight = float(batch.weight)
            _require(math.isfinite(weight) and weight > 0, f"weight(batch) is {weight}; it must be finite and > 0 "
                                                           f"for a batch of {len(indices)} proteins")
        if checks.ok("batch.weight"):
            with checks.check("padding.weight"):
                padded = float(objective.weight(_pad_more(batch.arrays, features)))
                _require(padded == weight, f"weight(batch) went from {weight:g} to {padded:g} when the batch got an "
                                           f"all-padding row and {_EXTRA_PADDING} more padded positions: it counts "
                                           f"padding; count only the positions the loss sums over")
    _check_determinism(checks, objective, source, seed, max_length, recorder, indices)
    _check_prefix(checks, objective, recorder, seed)
    return batch if checks.ok("batch.collate", "batch.weight") else None


def _check_prefix(checks: _Checks, objective: Objective, recorder: _Recorder, seed: int) -> None:
    """``ObjectiveConfig`` declares ``prefix`` for every objective: one that ignores it ignores a spec silently."""
    from pydantic import ValidationError

    from plmforge.core.objective import ENCODER_INPUT

    with checks.check("examples.prefix"):
        if not recorder.calls:
            raise _Skipped("no example was made (see batch.collate)")
        token, prefixed = objective.config.prefix, objective
        if not token:
            token = "[NLU]"
            try:
                prefixed = build_objective(type(objective), {**objective.config.model_dump(), "prefix": token})
            except ValidationError:
                raise _Skipped(f"the Config refuses prefix {token!r}") from None
        protein = recorder.calls[0][0]
        example = prefixed.make_example(protein, np.random.default_rng([seed, 0x9E, 0]))
        ids = np.asarray(example[ENCODER_INPUT])
        _require(ids.size > 0 and ids[0] == prefixed.vocab.token_id(token),
                 f"with prefix {token!r}, encoder_input_ids of {protein.name or 'a protein'} starts with "
                 f"{ids[:3].tolist()}, not {prefixed.vocab.token_id(token)}: every objective has the prefix option, "
                 f"so put self.prefix_ids before the protein on encoder_input_ids (and pad the other encoder "
                 f"features to match), or a spec's prefix is silently ignored")
        encoder_features = [n for n, f in prefixed.features().items() if f.length == "encoder" and n in example]
        lengths = {n: len(example[n]) for n in encoder_features}
        _require(len(set(lengths.values())) == 1, f"with prefix {token!r}, features on the 'encoder' axis differ in "
                                                  f"length {lengths}: pad them by len(self.prefix_ids) too")


def _check_determinism(checks: _Checks, objective: Objective, source: ProteinSource, seed: int, max_length: int,
                       recorder: _Recorder, indices: np.ndarray) -> None:
    with checks.check("determinism.seed"):
        again = _Recorder(objective)
        try:
            _stream(again, source, seed, max_length).make_batch(indices, epoch=0, train=True)
        except Exception:  # noqa: BLE001 - collate/weight failures are reported by the checks above
            pass
        _require(len(again.calls) == len(recorder.calls), "a second pass made a different number of examples")
        for (protein, _, first), (_, _, second) in zip(recorder.calls, again.calls):
            differs = _first_difference(first, second)
            _require(differs is None, f"the same seed and protein ({protein.name}) gave different {differs!r}: take "
                                      f"every random choice from the rng argument (not np.random, random or "
                                      f"state kept between calls), or runs cannot be reproduced or resumed")
    with checks.check("determinism.rng"):
        for i, (protein, _, first) in enumerate(recorder.calls):
            other = objective.make_example(protein, np.random.default_rng([seed + 1, 0x5EED, i]))
            if _first_difference(first, other) is not None:
                return
        raise _Skipped("make_example gave the same arrays with other generators: fine if the objective is "
                       "deterministic by design")


def _first_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    if not isinstance(a, Mapping) or not isinstance(b, Mapping) or set(a) != set(b):
        return "feature names"
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"):
            return name
    return None


# -- backends -----------------------------------------------------------------------------------------------
def _wanted_backends(registry: Registry, backends: Sequence[str] | Mapping[str, Mapping[str, Any]] | None
                     ) -> dict[str, dict[str, Any]]:
    """Backend name -> options; unknown names are the caller's mistake, refused before anything runs."""
    if backends is None:
        wanted = {name: dict(BACKEND_OPTIONS.get(name, {})) for name in registry.names("backend")}
    elif isinstance(backends, Mapping):
        wanted = {name: dict(options) for name, options in backends.items()}
    else:
        wanted = {name: dict(BACKEND_OPTIONS.get(name, {})) for name in backends}
    unknown = sorted(set(wanted) - set(registry.names("backend")))
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; installed: {registry.names('backend')}")
    return wanted


def _check_backends(checks: _Checks, registry: Registry, wanted: Mapping[str, Mapping[str, Any]],
                    objective: Objective, batch: MicroBatch | None, spec: Any) -> None:
    from plmforge.core.backend import ObjectiveSlot

    if not wanted:
        checks.add("backends", "skipped", "no backend asked for")
        return
    if batch is None:
        checks.add("backends", "skipped", "no valid batch to run (see the failed checks above)")
        return
    if spec is None or not checks.ok("needs", "features"):
        checks.add("backends", "skipped", "the objective's declarations failed (see needs/features)")
        return
    slot = ObjectiveSlot(label=_LABEL, objective=_ScalarLoss(objective), weight=1.0)
    results: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    reference: dict[str, np.ndarray] | None = None
    for name, options in wanted.items():
        backend = _setup_backend(checks, registry, name, options, spec, slot, objective)
        if backend is None:
            continue
        weights = backend.weights()
        if reference is None:  # a copy: a CPU backend may hand out views of its live parameters
            reference = {k: np.array(v, copy=True) for k, v in weights.items()}
        elif not all(np.array_equal(weights[k], v) for k, v in reference.items() if k in weights):
            backend.load_weights(reference)  # compare the objective on equal weights even if init differs
            checks.add(f"backend.{name}.weights", "skipped", "its initial weights differ from the first "
                                                              "backend's for the same seed; loaded those instead")
        results[name] = _run_backend(checks, backend, name, batch, objective, first=len(results) == 0)
        if (loss := results[name].get("eval", {}).get(f"{_LABEL}/loss")) is not None and loss[1] > 0:
            checks.report.losses[name] = loss[0] / loss[1]
    _compare_backends(checks, results, spec)


def _setup_backend(checks: _Checks, registry: Registry, name: str, options: Mapping[str, Any], spec: Any,
                   slot: Any, objective: Objective) -> Backend | None:
    from plmforge.core.build import make_backend

    backend_cls = registry.load("backend", name)
    missing = _missing_framework(backend_cls)
    try:
        if missing is not None:
            raise ImportError(missing)
        backend = make_backend(backend_cls, backend_cls.Config.model_validate(dict(options)), spec,
                               len(objective.vocab), [slot])
    except ImportError as exc:
        checks.add(f"backend.{name}", "skipped", f"its framework is not installed ({exc})")
        return None
    except Exception as exc:  # noqa: BLE001 - e.g. a head the model cannot build: reported, others go on
        checks.add(f"backend.{name}.setup", "failed", f"building the model raised {type(exc).__name__}: {exc}")
        return None
    return backend


def _run_backend(checks: _Checks, backend: Backend, name: str, batch: MicroBatch, objective: Objective,
                 first: bool) -> dict[str, dict[str, tuple[float, float]]]:
    out: dict[str, dict[str, tuple[float, float]]] = {}
    with checks.check(f"backend.{name}.eval"):
        metrics = _floats(backend.eval_step({_LABEL: batch}))
        out["eval"] = metrics
        _require_finite(metrics, "eval_step")
        loss = metrics.get(f"{_LABEL}/loss")
        _require(loss is not None, f"eval_step returned no {_LABEL}/loss")
        returned = {k.split("/", 1)[1] for k in metrics if k.startswith(f"{_LABEL}/")}
        named = [m for m in objective.eval_metrics() if m not in returned]
        _require(not named, f"eval_metrics() names {named}, which loss() does not return")
    if first and "eval" in out and checks.ok(f"backend.{name}.eval"):
        with checks.check("padding.invariance"):
            _check_padding(backend, batch, objective, out["eval"])
        with checks.check("loss.sum"):
            _check_sums(backend, batch, objective, out["eval"])
    with checks.check(f"backend.{name}.train"):
        try:
            metrics = _floats(backend.train_step({_LABEL: [batch]}, 1e-3))
        except RuntimeError as exc:
            hint = (" — the loss must be a scalar sum" if "scalar" in str(exc) else
                    " — PyTorch says this when the loss does not depend on the model outputs, so it has no "
                    "gradient" if "grad" in str(exc) else "")
            raise _Failed(f"train_step raised RuntimeError: {exc}{hint}") from None
        out["train"] = metrics
        loss = metrics.get("loss", (math.nan, 1.0))[0]
        _require(math.isfinite(loss), f"the training loss is {loss}")
    with checks.check(f"backend.{name}.gradients"):
        if "train" not in out:
            raise _Skipped("train_step failed")
        norm = out["train"].get("grad_norm", (math.nan, 1.0))[0]
        _require(math.isfinite(norm), f"the gradient norm is {norm}")
        _require(norm > 0, f"the gradient norm (grad_norm) is {norm}: the loss does not depend on the model's "
                           f"outputs, so training would change nothing")
    return out


def _check_padding(backend: Backend, batch: MicroBatch, objective: Objective,
                   reference: Mapping[str, tuple[float, float]]) -> None:
    """JAX pads rows and lengths beyond the planner's for devices and shape_growth; losses must not notice."""
    from plmforge.core.backend import MicroBatch

    arrays = _pad_more(batch.arrays, objective.features())
    weight = float(objective.weight(arrays))  # equal to batch.weight unless padding.weight failed
    padded = _floats(backend.eval_step({_LABEL: MicroBatch(arrays=arrays, weight=weight, residues=batch.residues)}))
    changed = [f"{k} {reference[k]} -> {padded.get(k)}" for k in reference
               if k not in padded or not _close(reference[k], padded[k])]
    _require(not changed, f"an all-padding row and {_EXTRA_PADDING} more padded positions changed "
                          f"{'; '.join(changed[:3])}: the loss or a metric counts padded positions (mask them "
                          f"with the pad values your features declare)")


def _check_sums(backend: Backend, batch: MicroBatch, objective: Objective,
                reference: Mapping[str, tuple[float, float]]) -> None:
    """The contract's sums make averaging over micro-batches and devices exact; a mean would count twice."""
    from plmforge.core.backend import MicroBatch

    arrays = {name: np.concatenate([array, array]) for name, array in batch.arrays.items()}
    doubled = MicroBatch(arrays=arrays, weight=float(objective.weight(arrays)), residues=2 * batch.residues)
    twice = _floats(backend.eval_step({_LABEL: doubled}))
    loss_key = f"{_LABEL}/loss"
    loss, again = reference[loss_key][0], twice.get(loss_key, (math.nan, 0.0))[0]
    _require(_close((again,), (2 * loss,)),
             f"the loss of the batch concatenated with itself is {again:.6g}, not twice {loss:.6g}: the loss must be a "
             f"sum over the batch, not a mean (plmforge divides the sums by weight(batch) itself)")
    not_doubled = [f"{k} {reference[k]} -> {twice.get(k)}" for k in reference
                   if k != loss_key and not _close(tuple(2 * v for v in reference[k]), twice.get(k, (math.nan,) * 2))]
    _require(not not_doubled, f"the batch concatenated with itself did not double the metric(s) "
                              f"{'; '.join(not_doubled[:3])}: return each metric as a (sum, count) pair over the "
                              f"batch, not a mean")


class _ScalarLoss:
    """Stands in for the objective in the backends and refuses a loss that is not one number.

    Without it a per-protein loss shows up as a framework error about gradients of non-scalar outputs.
    """

    def __init__(self, objective: Objective):
        self.objective = objective

    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], xp: Any) -> Any:
        out = self.objective.loss(outputs, batch, xp)
        shape = tuple(getattr(getattr(out, "loss", None), "shape", ()))
        _require(not shape, f"loss() returned a loss of shape {shape}: the loss must be a scalar sum over every "
                            f"scored position of the batch (e.g. losses.masked_sum), not one value per protein or "
                            f"position")
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.objective, name)


def _pad_more(arrays: Mapping[str, np.ndarray], features: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, array in arrays.items():
        feature = features[name]
        widths = [(0, 1)] + [(0, 0)] * (array.ndim - 1)
        if feature.length is not None:
            widths[1] = (0, _EXTRA_PADDING)
        out[name] = np.pad(array, widths, constant_values=feature.pad_value)
    return out


def _compare_backends(checks: _Checks, results: Mapping[str, Mapping[str, Any]], spec: Any) -> None:
    with checks.check("backends.agree"):
        complete = {n: r for n, r in results.items() if "eval" in r}
        if len(complete) < 2:
            raise _Skipped(f"needs two backends; ran {sorted(complete) or 'none'}")
        (first, a), *others = complete.items()
        for other, b in others:
            if set(a["eval"]) != set(b["eval"]):
                raise _Failed(f"{first} and {other} return different metrics: "
                              f"{sorted(set(a['eval']) ^ set(b['eval']))}")
            differ = [f"{k}: {first} {a['eval'][k]} vs {other} {b['eval'][k]}" for k in a["eval"]
                      if not _close(a["eval"][k], b["eval"][k])]
            if "train" in a and "train" in b and spec.model.dropout_rate == 0:
                differ += [f"train {k}: {first} {a['train'][k]} vs {other} {b['train'][k]}"
                           for k, rtol in (("loss", RTOL), ("grad_norm", 10 * RTOL))
                           if k in a["train"] and k in b["train"] and not _close(a["train"][k], b["train"][k], rtol)]
            _require(not differ, f"same weights and batch, different numbers ({len(differ)}): {'; '.join(differ[:3])}"
                                 f" — is the loss written with xp only (no numpy, no framework-specific calls)?")


def _floats(metrics: Mapping[str, tuple[Any, Any]]) -> dict[str, tuple[float, float]]:
    return {k: (float(v), float(c)) for k, (v, c) in metrics.items()}


def _require_finite(metrics: Mapping[str, tuple[float, float]], step: str) -> None:
    bad = [f"{k}={v}/{c}" for k, (v, c) in metrics.items() if not (math.isfinite(v) and math.isfinite(c))]
    _require(not bad, f"{step} returned non-finite values: {', '.join(bad[:4])}")


def _close(a: tuple[float, float], b: tuple[float, float], rtol: float = RTOL) -> bool:
    return all(math.isclose(x, y, rel_tol=rtol, abs_tol=rtol) for x, y in zip(a, b))


