"""The Backend contract: one numerical framework (PyTorch, JAX) behind one interface.

A backend builds the Ankh/T5 model from the spec's ``model`` section with the heads the objectives
ask for, owns the optimizer, and runs training and evaluation steps on numpy batches. The run loop
(core) owns everything else: data, schedule, checkpoint files, tracking, hooks.

Weights cross the boundary as ``dict[str, np.ndarray]`` with Hugging Face T5 names and layouts, so a
checkpoint written by one backend loads in the other, and T5/Ankh checkpoints load too.

The contract has two sides, sharing one list of operations (:class:`BackendOperations`): the
:class:`Backend` plugin the registry loads (light: no framework import), and, for a
:class:`LazyBackend`, the :class:`BackendEngine` in a framework-importing module that it builds at
setup and forwards every operation to. docs/backends.md is the guide for backend authors.
"""

from __future__ import annotations

import copy
import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

from plmforge.core.checkpoint import TIED_ALIASES, few
from plmforge.core.errors import CheckpointError, PluginError
from plmforge.core.heads import HeadData, HeadProblem, HeadResult, HeadSettings
from plmforge.core.model_config import ModelConfig
from plmforge.core.objective import Array, ModelNeeds, Objective
from plmforge.core.strict import StrictModel


class BackendConfig(StrictModel):
    """Base class of a backend's options (the ``backend:`` section besides ``name``)."""

    def for_one_process(self) -> BackendConfig:
        """These options for work one process does alone (reading a checkpoint, a reference model),
        even when the run they come from was multi-process."""
        return self


@dataclass(frozen=True)
class ObjectiveSlot:
    """An objective as the backend sees it: its instance, its label in metrics and its loss weight."""

    label: str
    objective: Objective
    weight: float


@dataclass(frozen=True)
class BackendContext:
    """Everything a backend needs to build itself, resolved from the spec by the run."""

    model: ModelConfig
    vocab_size: int
    needs: ModelNeeds
    objectives: tuple[ObjectiveSlot, ...]
    training: Any  # plmforge.core.spec.TrainingConfig
    seed: int


@dataclass
class MicroBatch:
    """One padded numpy batch of one objective, with the weight its loss sum is normalised by."""

    arrays: dict[str, np.ndarray]
    weight: float
    residues: int  # real (unpadded) residues, for throughput


#: Metrics returned by steps: name -> (sum, count), arrays still on the device (no host sync).
StepMetrics = dict[str, tuple[Array, Array]]


def add_metric(sums: dict[str, tuple[Array, Array]], name: str, value: Any, count: Any) -> None:
    """Add a (sum, count) pair into ``sums`` in place; works for floats and any backend's arrays."""
    if name in sums:
        total, seen = sums[name]
        sums[name] = (total + value, seen + count)
    else:
        sums[name] = (value, count)


def fit_weights(expected: Mapping[str, tuple[int, ...]], weights: Mapping[str, np.ndarray],
                strict: bool = True) -> dict[str, np.ndarray]:
    """The entries of ``weights`` the model has, checked against its ``expected`` name -> shape.

    Shape mismatches are always errors; missing or unexpected names are errors when ``strict``.
    Every backend loads through this, so they accept and refuse exactly the same checkpoints.
    """
    given = {k: np.asarray(v) for k, v in weights.items() if k not in TIED_ALIASES}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if tuple(expected[k]) != tuple(given[k].shape))
    if wrong or (strict and (missing or unexpected)):
        details = []
        if missing:
            details.append(f"missing {few(missing)}")
        if unexpected:
            details.append(f"unexpected {few(unexpected)}")
        if wrong:
            details.append("shape mismatch " + ", ".join(
                f"{k} {tuple(given[k].shape)} vs model {tuple(expected[k])}" for k in wrong[:3]))
        raise CheckpointError("weights do not fit the model: " + "; ".join(details))
    return {k: v for k, v in given.items() if k in expected}


class BackendOperations(ABC):
    """What a set-up backend does: the operations the run loop, evaluation, embedding and generation call.

    Both sides of the backend contract share them, so each is documented, and each optional one
    given its default, here only: :class:`Backend` (the plugin the registry loads) and
    :class:`BackendEngine` (the framework-side object a :class:`LazyBackend` forwards to).
    Abstract methods are required; the others have working defaults for a single-process backend.
    """

    @abstractmethod
    def train_step(self, micro_batches: Mapping[str, list[MicroBatch]], lr: float,
                   loss_weights: Mapping[str, float] | None = None) -> StepMetrics:
        """One optimizer step over the given micro-batches of each objective label.

        The loss is ``sum_o weight_o * (sum of loss sums of o) / (sum of weights of o)``, accumulated
        over micro-batches, where ``weight_o`` is ``loss_weights[o]`` (default: the slot's weight);
        gradients are clipped to ``training.max_grad_norm``. Returns at least ``loss``, ``grad_norm``
        and ``<label>/loss`` plus each objective's metrics as ``<label>/<name>``.

        ``micro_batches`` are this process's share of the step (see :meth:`data_shard`): with a
        shard count above 1, the sums over micro-batches above, the weights' included, run over the
        micro-batches of every process, so the step is the one a single process takes on them all.
        """

    @abstractmethod
    def eval_step(self, batches: Mapping[str, MicroBatch]) -> StepMetrics:
        """Loss and metrics without updating anything (dropout off); keys as in :meth:`train_step`."""

    @abstractmethod
    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """Encoder last hidden states [B, L, d_model] as float32 numpy for padded ``input_ids``."""

    def decoder_logits(self, encoder_input_ids: np.ndarray, decoder_input_ids: np.ndarray) -> np.ndarray:
        """Decoder LM logits [B, Ld, V] as float32 numpy (eval mode) for padded ids; what generation reads."""
        raise NotImplementedError(f"the {type(self).__name__} backend cannot generate sequences")

    def fit_head(self, problem: HeadProblem, settings: HeadSettings, train: HeadData, validation: HeadData,
                 predict: Sequence[HeadData]) -> HeadResult:
        """Train a downstream head (and, when fine-tuning, the encoder) as :mod:`plmforge.core.heads` defines.

        Keeps the weights of the epoch :class:`~plmforge.core.heads.EarlyStopping` picks and returns their predictions
        for each split in ``predict``. The backend's own model weights are unchanged afterwards.
        """
        raise NotImplementedError(f"the {type(self).__name__} backend cannot train downstream heads")

    @abstractmethod
    def weights(self) -> dict[str, np.ndarray]:
        """Model parameters as float32 numpy arrays with Hugging Face T5 names and layouts."""

    @abstractmethod
    def load_weights(self, weights: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Load parameters named as in :meth:`weights` (missing/unexpected names are errors if strict)."""

    @abstractmethod
    def training_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Optimizer and RNG state as (named arrays, JSON-able metadata), to resume exactly.

        The metadata names the optimizer under ``"optimizer"`` (see :func:`check_same_optimizer`).
        """

    @abstractmethod
    def load_training_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore what :meth:`training_state` returned (after :meth:`load_weights` of the same checkpoint)."""

    def describe(self) -> dict[str, str]:
        """Facts worth tagging a run with (device, framework version, precision)."""
        return {}

    def num_parameters(self) -> int:
        """How many model parameters (scalars) the model has."""
        return int(sum(a.size for a in self.weights().values()))

    def is_main_process(self) -> bool:
        """False on all but one process of a multi-process run; only the main one writes files and logs."""
        return True

    def data_shard(self) -> tuple[int, int]:
        """Which training micro-batches this process makes and trains: ``(index, count)``.

        Each step the run loop advances every data stream by the whole global batch
        (``training.gradient_accumulation`` micro-batches per objective) on every process, but
        crops, masks and collates only positions ``index, index + count, ...`` and passes those to
        :meth:`train_step`. The default ``(0, 1)``: this process makes and trains them all (one
        process, or a multi-process backend that splits each micro-batch itself). A data-parallel
        backend returns ``(rank, world size)`` and combines the processes' loss weights in
        :meth:`train_step`. The count must divide ``training.gradient_accumulation``.
        """
        return 0, 1

    def single_process(self) -> Self | None:
        """This backend as the main process alone may use it (downstream tasks after training).

        Every process of a multi-process run must call it, since gathering what the main process
        needs (e.g. sharded weights) is collective; processes other than the main one get None.
        """
        return self

    def counters(self) -> dict[str, float]:
        """Running totals worth logging with training metrics (e.g. ``compilations`` of a compiled backend)."""
        return {}


class Backend(BackendOperations):
    """Base class of backend plugins. Register a subclass under the ``plmforge.backends`` entry point.

    Import the framework lazily (inside methods or submodules), so listing plugins and validating
    specs never imports torch or jax: :class:`LazyBackend` does that for you.
    """

    Config: ClassVar[type[BackendConfig]] = BackendConfig

    def __init__(self, config: BackendConfig, context: BackendContext):
        self.config = config
        self.context = context

    @abstractmethod
    def setup(self) -> None:
        """Build the model and optimizer and initialise weights deterministically from ``context.seed``."""


class BackendEngine(BackendOperations):
    """The framework side of a :class:`LazyBackend`: the object that does every operation.

    ``Engine(config, context)`` does what :meth:`Backend.setup` does: build the model (with the
    heads ``context.needs`` asks for) and the optimizer, and initialise the weights
    deterministically from ``context.seed``. Subclass it in a module that imports the framework
    and name that class in ``LazyBackend.implementation``; see docs/backends.md.
    """

    def __init__(self, config: BackendConfig, context: BackendContext):
        self.config = config
        self.context = context


def check_same_optimizer(meta: Mapping[str, Any], optimizer: str) -> None:
    """Refuse training state written for another optimizer: its moments would be read as the wrong ones."""
    if meta.get("optimizer") != optimizer:
        raise CheckpointError(f"checkpoint optimizer {meta.get('optimizer')!r} differs from the spec's {optimizer!r}")


def engine_class(implementation: str) -> type[BackendEngine]:
    """The :class:`BackendEngine` subclass ``"package.module:Class"`` names, checked before it is built.

    An ImportError (the framework is not installed) passes through unchanged, so callers can tell it apart.
    """
    module_name, _, name = implementation.partition(":")
    found = getattr(importlib.import_module(module_name), name, None)
    if not isinstance(found, type):
        raise PluginError(f"backend implementation {implementation!r}: module {module_name} has no class {name!r}")
    missing = missing_operations(found)
    if not issubclass(found, BackendEngine):
        lacks = f"; it also lacks {', '.join(missing)}" if missing else ""
        raise PluginError(f"backend implementation {implementation!r} must subclass "
                          f"plmforge.core.backend.BackendEngine (see docs/backends.md){lacks}")
    if missing:
        raise PluginError(f"backend implementation {implementation!r} does not implement the required "
                          f"operation(s) {', '.join(missing)} (see docs/backends.md)")
    return found


def missing_operations(cls: type) -> list[str]:
    """The required operations of the engine contract that ``cls`` does not implement, sorted."""
    if issubclass(cls, BackendEngine):
        return sorted(getattr(cls, "__abstractmethods__", ()))
    return sorted(name for name in BackendEngine.__abstractmethods__ if not callable(getattr(cls, name, None)))


class LazyBackend(Backend):
    """A backend whose framework code lives in a module imported only at :meth:`setup`.

    Set ``implementation = "package.module:Class"``, a :class:`BackendEngine` subclass; setup
    checks it against the contract and builds it as ``Class(config, context)``, and every
    operation is forwarded to it. This keeps the plugin's entry-point module free of heavy
    imports, so listing plugins and validating specs stay fast.
    """

    implementation: ClassVar[str]
    #: The framework-side object, built at :meth:`setup`.
    engine: BackendEngine

    def setup(self) -> None:
        self.engine = engine_class(self.implementation)(self.config, self.context)

    def train_step(self, micro_batches: Mapping[str, list[MicroBatch]], lr: float,
                   loss_weights: Mapping[str, float] | None = None) -> StepMetrics:
        return self.engine.train_step(micro_batches, lr, loss_weights)

    def eval_step(self, batches: Mapping[str, MicroBatch]) -> StepMetrics:
        return self.engine.eval_step(batches)

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        return self.engine.embed(input_ids)

    def decoder_logits(self, encoder_input_ids: np.ndarray, decoder_input_ids: np.ndarray) -> np.ndarray:
        return self.engine.decoder_logits(encoder_input_ids, decoder_input_ids)

    def fit_head(self, problem: HeadProblem, settings: HeadSettings, train: HeadData, validation: HeadData,
                 predict: Sequence[HeadData]) -> HeadResult:
        return self.engine.fit_head(problem, settings, train, validation, predict)

    def weights(self) -> dict[str, np.ndarray]:
        return self.engine.weights()

    def load_weights(self, weights: Mapping[str, np.ndarray], strict: bool = True) -> None:
        self.engine.load_weights(weights, strict)

    def training_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return self.engine.training_state()

    def load_training_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self.engine.load_training_state(arrays, meta)

    def describe(self) -> dict[str, str]:
        return self.engine.describe()

    def num_parameters(self) -> int:
        return self.engine.num_parameters()

    def is_main_process(self) -> bool:
        return self.engine.is_main_process()

    def data_shard(self) -> tuple[int, int]:
        return self.engine.data_shard()

    def single_process(self) -> Self | None:
        engine = self.engine.single_process()
        if engine is None or engine is self.engine:
            return None if engine is None else self
        alone = copy.copy(self)
        alone.engine = engine
        return alone

    def counters(self) -> dict[str, float]:
        return self.engine.counters()
