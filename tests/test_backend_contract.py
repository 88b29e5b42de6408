"""The backend-implementation contract: what a ``LazyBackend`` forwards to, checked at setup.

A third backend is a :class:`BackendEngine` subclass named in ``LazyBackend.implementation``; these
tests hold the contract to its word: a minimal engine works, a missing operation is one clear error
naming it, optional operations have their defaults in one place, and no backend module reaches
into another's private state.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import numpy as np
import pytest

from plmforge.core.backend import (
    Backend,
    BackendConfig,
    BackendEngine,
    BackendOperations,
    LazyBackend,
    MicroBatch,
    check_same_optimizer,
    engine_class,
    missing_operations,
)
from plmforge.core.errors import CheckpointError, PluginError

BACKENDS = Path(__file__).resolve().parents[1] / "plugins" / "backends"


class MinimalEngine(BackendEngine):
    """Only the required operations: one 'parameter' vector that a step moves by ``lr``."""

    def __init__(self, config, context):
        super().__init__(config, context)
        self.vector = np.zeros(3, np.float32)
        self.optimizer_state = np.zeros(3, np.float32)

    def train_step(self, micro_batches, lr, loss_weights=None):
        self.vector = self.vector + np.float32(lr)
        return {"loss": (float(self.vector.sum()), 1.0), "grad_norm": (1.0, 1.0)}

    def eval_step(self, batches):
        return {f"{label}/loss": (float(self.vector.sum()), batch.weight) for label, batch in batches.items()}

    def embed(self, input_ids):
        return np.zeros((*np.shape(input_ids), 3), np.float32)

    def weights(self):
        return {"shared.weight": self.vector.copy()}

    def load_weights(self, weights, strict=True):
        self.vector = np.asarray(weights["shared.weight"], np.float32).copy()

    def training_state(self):
        return {"optimizer/moment": self.optimizer_state.copy()}, {"optimizer": "sgd"}

    def load_training_state(self, arrays, meta):
        check_same_optimizer(meta, "sgd")
        self.optimizer_state = np.asarray(arrays["optimizer/moment"]).copy()


class IncompleteEngine(BackendEngine):
    """Forgets ``embed`` and ``weights``."""

    def train_step(self, micro_batches, lr, loss_weights=None):
        return {}

    def eval_step(self, batches):
        return {}

    def load_weights(self, weights, strict=True):
        pass

    def training_state(self):
        return {}, {}

    def load_training_state(self, arrays, meta):
        pass


class DuckTypedEngine:
    """Has some operations but does not declare the contract."""

    def __init__(self, config, context):
        pass

    def train_step(self, micro_batches, lr, loss_weights=None):
        return {}


class PerProcessEngine(MinimalEngine):
    """Answers ``single_process`` like a multi-process engine: another engine, or None off the main process."""

    main = True

    def single_process(self):
        return MinimalEngine(self.config, self.context) if self.main else None


def lazy(target: str) -> type[LazyBackend]:
    return type("FakeBackend", (LazyBackend,), {"implementation": f"{__name__}:{target}"})


def built(target: str) -> LazyBackend:
    backend = lazy(target)(BackendConfig(), context=None)
    backend.setup()
    return backend


def test_a_minimal_engine_satisfies_the_contract_and_every_operation_reaches_it():
    backend = built("MinimalEngine")
    assert isinstance(backend.engine, MinimalEngine)
    metrics = backend.train_step({"mlm": []}, 0.5)
    assert metrics["loss"][0] == pytest.approx(1.5)
    assert backend.eval_step({"mlm": MicroBatch({}, 4.0, 0)}) == {"mlm/loss": (pytest.approx(1.5), 4.0)}
    assert backend.embed(np.zeros((2, 5), np.int32)).shape == (2, 5, 3)
    backend.load_weights({"shared.weight": np.arange(3, dtype=np.float32)})
    np.testing.assert_array_equal(backend.weights()["shared.weight"], [0, 1, 2])
    arrays, meta = backend.training_state()
    backend.load_training_state({"optimizer/moment": np.ones(3)}, meta)
    np.testing.assert_array_equal(backend.engine.optimizer_state, np.ones(3))
    assert arrays["optimizer/moment"].shape == (3,)


def test_optional_operations_have_their_defaults_in_one_place():
    backend = built("MinimalEngine")
    assert backend.describe() == {} and backend.counters() == {}
    assert backend.is_main_process() is True
    assert backend.num_parameters() == 3  # counted from weights()
    assert backend.single_process() is backend
    with pytest.raises(NotImplementedError, match="cannot generate sequences"):
        backend.decoder_logits(np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(NotImplementedError, match="cannot train downstream heads"):
        backend.fit_head(None, None, None, None, [])


def test_single_process_wraps_another_engine_and_gives_none_off_the_main_process():
    backend = built("PerProcessEngine")
    alone = backend.single_process()
    assert alone is not backend and type(alone) is type(backend)
    assert type(alone.engine) is MinimalEngine and type(backend.engine) is PerProcessEngine  # the run's is untouched
    backend.engine.main = False
    assert backend.single_process() is None


def test_an_engine_missing_operations_is_refused_at_setup_naming_them():
    with pytest.raises(PluginError) as excinfo:
        built("IncompleteEngine")
    message = str(excinfo.value)
    assert f"{__name__}:IncompleteEngine" in message
    assert "embed, weights" in message and "docs/backends.md" in message
    assert missing_operations(IncompleteEngine) == ["embed", "weights"]


def test_a_class_that_does_not_declare_the_contract_is_refused_naming_what_it_lacks():
    with pytest.raises(PluginError, match="must subclass plmforge.core.backend.BackendEngine") as excinfo:
        built("DuckTypedEngine")
    assert "eval_step" in str(excinfo.value) and "train_step" not in str(excinfo.value)


def test_an_implementation_naming_no_class_is_one_clear_error():
    with pytest.raises(PluginError, match=f"module {__name__} has no class 'NoSuchEngine'"):
        built("NoSuchEngine")


def test_a_missing_framework_stays_an_import_error():
    """The testing kit and the registry tell 'framework not installed' apart by the ImportError."""
    backend = type("Missing", (LazyBackend,), {"implementation": "no_such_framework_xyz.engine:Engine"})
    with pytest.raises(ImportError, match="no_such_framework_xyz"):
        backend(BackendConfig(), context=None).setup()


def test_lazy_backend_forwards_every_operation_of_the_contract():
    """An operation LazyBackend inherited instead of forwarding would silently skip the engine."""
    operations = {name for name, value in vars(BackendOperations).items()
                  if callable(value) and not name.startswith("_")}
    assert operations >= {"train_step", "fit_head", "single_process", "counters"}
    assert operations <= set(vars(LazyBackend)), operations - set(vars(LazyBackend))
    assert issubclass(LazyBackend, Backend) and issubclass(BackendEngine, BackendOperations)


def test_optimizer_mismatch_is_one_message_for_every_backend():
    check_same_optimizer({"optimizer": "adamw"}, "adamw")
    with pytest.raises(CheckpointError, match="^checkpoint optimizer 'adafactor' differs from the spec's 'adamw'$"):
        check_same_optimizer({"optimizer": "adafactor"}, "adamw")
    with pytest.raises(CheckpointError, match="checkpoint optimizer None differs"):
        check_same_optimizer({}, "adamw")


@pytest.mark.parametrize(("plugin", "framework"), [("torch", "torch"), ("jax", "jax")])
def test_the_built_in_engines_implement_the_contract(plugin, framework):
    pytest.importorskip(framework)
    module = importlib.import_module(f"plmforge.plugins.backends.{plugin}")
    backend_cls = next(v for v in vars(module).values()
                       if isinstance(v, type) and issubclass(v, LazyBackend) and v is not LazyBackend)
    engine = engine_class(backend_cls.implementation)
    assert issubclass(engine, BackendEngine) and missing_operations(engine) == []
    assert backend_cls.implementation.endswith(f".{plugin}.engine:{engine.__name__}")


def private_reaches(path: Path) -> list[str]:
    """``x._name`` on anything but self/cls, and ``from m import _name``, in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("plmforge"):
            found += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names if a.name.startswith("_")]
    return found


def test_no_backend_module_reaches_into_another_objects_private_state():
    modules = sorted(BACKENDS.rglob("*.py"))
    assert {"engine.py", "heads.py"} <= {path.name for path in modules}
    reaches = [reach for path in modules for reach in private_reaches(path)]
    assert reaches == []


def test_every_operation_is_documented_for_backend_authors():
    guide = (BACKENDS.parents[1] / "docs" / "backends.md").read_text()
    operations = [name for name, value in vars(BackendOperations).items()
                  if callable(value) and not name.startswith("_")]
    for name in operations:
        assert vars(BackendOperations)[name].__doc__, f"BackendOperations.{name} has no docstring"
        assert f"`{name}(" in guide, f"{name} is not in the operations table of docs/backends.md"
    assert sorted(BackendEngine.__abstractmethods__) == sorted(
        name for name in operations if getattr(vars(BackendOperations)[name], "__isabstractmethod__", False))
    assert "[writing a backend](docs/backends.md)" in (BACKENDS.parents[1] / "README.md").read_text()
