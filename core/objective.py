"""The Objective contract: what a pretraining objective plugin implements.

An objective is written once and runs on every backend:

* the *example side* is numpy only: from one tokenized protein it makes the arrays the model is fed
  (encoder input, decoder input and targets, per-position targets, loss weights);
* the *loss side* is written against an array namespace ``xp`` (the Python array API: ``jax.numpy``
  natively, torch through ``array_api_compat``), so each backend's own autodiff differentiates it;
* it *declares* what it needs from the model (:class:`ModelNeeds`); the backend builds those heads.

The loss returns a **sum**, and :meth:`Objective.weight` says from the numpy batch what that sum is
over (e.g. the number of target tokens). Knowing the weight before the backward pass lets gradient
accumulation, multi-objective mixing and multi-device averaging normalise exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from plmforge.core.strict import StrictModel
from plmforge.core.vocab import Vocab

if TYPE_CHECKING:
    from plmforge.core.data.proteins import ProteinSet

Array = Any  # an array of the backend's framework (torch.Tensor, jax.Array)

#: Inputs every backend understands. Other features are passed through to the loss untouched.
ENCODER_INPUT = "encoder_input_ids"
DECODER_INPUT = "decoder_input_ids"

#: Output names a backend provides when asked through :class:`ModelNeeds`.
DECODER_LOGITS = "decoder_logits"
ENCODER_LOGITS = "encoder_logits"


class ObjectiveConfig(StrictModel):
    """Base class of an objective's options. Subclass it and give every field a description.

    It declares ``prefix`` for every objective, so a spec may give any objective a task token and
    :attr:`Objective.prefix_ids` reads it; a subclass redeclares it only to change the default.
    """

    prefix: str | None = Field(
        None, description="Task prefix token put before the protein on the encoder input, e.g. Ankh3's '[NLU]' "
                          "(added to the vocabulary); null = none.")


@dataclass(frozen=True)
class Feature:
    """One array of an example, declared so batches can be padded and checked without running code.

    ``length`` names the padded axis the feature shares: ``"encoder"`` (same length as
    ``encoder_input_ids``), ``"decoder"`` (same as ``decoder_input_ids``), or ``None`` for one value
    per example. ``trailing`` gives fixed extra dimensions (e.g. ``(20,)`` for a profile).
    """

    dtype: str
    length: Literal["encoder", "decoder"] | None
    pad_value: int | float = 0
    trailing: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelNeeds:
    """What an objective needs the model to compute.

    ``decoder_lm`` gives ``outputs["decoder_logits"]`` [B, Ld, V] (needs ``decoder_input_ids``),
    ``encoder_lm`` gives ``outputs["encoder_logits"]`` [B, Le, V], and each entry of
    ``per_residue_heads`` (name -> width) gives ``outputs[name]`` [B, Le, width] from a linear head
    over the encoder. Objectives that name the same head share it.
    """

    decoder_lm: bool = False
    encoder_lm: bool = False
    per_residue_heads: Mapping[str, int] = field(default_factory=dict)

    def output_names(self) -> tuple[str, ...]:
        names = [DECODER_LOGITS] if self.decoder_lm else []
        names += [ENCODER_LOGITS] if self.encoder_lm else []
        return (*names, *self.per_residue_heads)


@dataclass(frozen=True)
class Protein:
    """One protein as an objective sees it: residue ids (no ``</s>``), already cropped.

    ``offset`` is where the crop window starts in the whole protein; ``extras`` holds the per-residue
    arrays the objective's :class:`ProteinSource` attached, cropped with the tokens.
    """

    tokens: np.ndarray
    name: str = ""
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    offset: int = 0


@dataclass(frozen=True)
class ProteinSource:
    """The proteins one objective draws examples from in one split, and what it attaches to them.

    ``extras(i)`` returns per-residue arrays of protein ``i`` of ``proteins`` (first axis = its
    residues, e.g. an MSA profile [L, 20]); the data stream crops them with the tokens, so objectives
    never deal with crop windows. ``None`` means no extras.
    """

    proteins: ProteinSet
    extras: Callable[[int], Mapping[str, np.ndarray]] | None = None


@dataclass
class LossOutput:
    """A summed loss plus metrics as (sum, count) pairs, all arrays of the backend.

    Metrics are sums so they average exactly over batches and devices: the logged value is
    ``sum / count``.
    """

    loss: Array
    metrics: dict[str, tuple[Array, Array]] = field(default_factory=dict)


class Objective(ABC):
    """Base class of objective plugins. Register a subclass under the ``plmforge.objectives`` entry point."""

    #: The pydantic model of this objective's options (validated from its spec entry).
    Config: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig

    #: The feature of token ids the loss is summed over (pad id where nothing is scored). Set it and the
    #: default :meth:`weight` counts its non-pad entries; an objective that leaves it ``None`` overrides
    #: :meth:`weight`.
    target_feature: ClassVar[str | None] = None

    #: Architectures (``"encoder-decoder"``, ``"encoder"``) for which ``plmforge convert`` may name this
    #: objective in the spec of a converted Hugging Face checkpoint (see docs/checkpoints.md).
    conversion_default: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ObjectiveConfig, vocab: Vocab):
        if self.target_feature is None and type(self).weight is Objective.weight:
            raise TypeError(f"{type(self).__qualname__} must set target_feature (the feature of token ids its loss "
                            f"is summed over) or override weight()")
        self.config = config
        self.vocab = vocab

    @classmethod
    def special_tokens(cls, config: ObjectiveConfig) -> tuple[str, ...]:
        """Extra vocabulary tokens this objective uses, known before the vocab exists.

        By default the config's task ``prefix`` (e.g. ``"[NLU]"``) when set.
        """
        return (config.prefix,) if config.prefix else ()

    @property
    def prefix_ids(self) -> list[int]:
        """The ids to put before the protein on the encoder input: the config's ``prefix``, or none."""
        prefix = self.config.prefix
        return [self.vocab.token_id(prefix)] if prefix else []

    def prepare(self, proteins: ProteinSet, split: str) -> ProteinSource:
        """The proteins of ``split`` ("train", "validation") this objective trains on, with any extras.

        The default takes every protein as it is. Override to attach per-residue data (profile
        prediction attaches MSA profiles) or to keep only the proteins that have it. Called once per
        split before training; must be deterministic.
        """
        return ProteinSource(proteins)

    @abstractmethod
    def needs(self) -> ModelNeeds:
        """The model outputs the loss reads."""

    @abstractmethod
    def features(self) -> dict[str, Feature]:
        """Every array :meth:`make_example` returns, with dtype and padded axis."""

    @abstractmethod
    def make_example(self, protein: Protein, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Numpy arrays for one protein; all randomness comes from ``rng`` (derived from seed/epoch/index)."""

    def weight(self, batch: Mapping[str, np.ndarray]) -> float:
        """What the loss sum of this numpy batch is over; it must not count padding.

        By default the count of target tokens: the entries of ``target_feature`` that are not ``<pad>``.
        """
        return float(np.count_nonzero(batch[self.target_feature] != self.vocab.pad_id))

    @abstractmethod
    def loss(self, outputs: Mapping[str, Array], batch: Mapping[str, Array], xp: Any) -> LossOutput:
        """The summed loss and metrics, written only with the array namespace ``xp``."""

    def eval_metrics(self) -> tuple[str, ...]:
        """Metric names worth showing in summaries (all returned metrics are logged anyway)."""
        return ()

