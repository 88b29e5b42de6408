"""The downstream-head contract between tasks (core) and backends.

A task turns its dataset into :class:`HeadData` (per-protein inputs and labels) and asks the
backend to fit a head with :meth:`plmforge.core.backend.Backend.fit_head`. The backend trains the
head in its own framework, keeps the epoch :class:`EarlyStopping` picks (the lowest validation loss
from ``min_epochs`` on; training stops after ``patience`` epochs without a better one), and returns
raw predictions; the task computes its metrics from those in numpy. So a task is written once and runs
on every backend, like an objective.

Two ways of feeding the head (``HeadSettings.finetune``):

* ``frozen``: ``HeadData.inputs`` are float embeddings ``[L, d]`` (from any model, or one-hot
  vectors for the baseline); only the head is trained.
* ``full`` / ``lora``: ``inputs`` are token ids ``[T]`` of the backend's own encoder (task prefix
  and ``</s>`` included); the encoder is trained too (all of it, or LoRA adapters on the attention
  projections q, k, v, o of every encoder layer). The backend's own weights are left as they were.

Head architectures (``HeadSettings.kind``), the same on every backend:

* ``linear``: per residue ``W h + b``; per protein the mean of ``h`` over residues, then ``W · + b``.
  This is the representation measure: it can only read out what the embeddings already separate.
* ``convbert``: the light ConvBERT layer Ankh evaluated with (PAPERS.md): with ``projection`` set, a
  linear layer (with bias) first maps the input to that width; without it, the layer is as wide as the
  input, which is first projected to the next multiple of ``heads`` if ``d`` is not one; then one post-norm layer
  ``h = LN(h + Drop(MHSA(h) + PW(DWConv_k(h))))``, ``h = LN(h + Drop(W2 GELU(W1 h)))`` with 4 heads,
  depthwise convolution of kernel 7 followed by a pointwise linear, feed-forward half the layer's width,
  dropout 0.2, padding masked out of attention, convolution and pooling; per protein max-pooling
  over residues, then dropout and a linear layer.
* Pair level (contacts), after either body: ``z = W_p h`` (``pair_dim`` wide) and the symmetric
  logit ``z_i · z_j / sqrt(pair_dim) + b`` for every residue pair.

Details both backends share: every head linear and the depthwise convolution have a bias (the
pair projection ``W_p`` has none; the pair bias starts at the log-odds of a contact among the labelled training
pairs, :func:`pair_prior_logit`, because at a few percent positives a bias that starts at 0 takes
thousands of small optimizer steps to get there); attention is scaled by
``1/sqrt(head_dim)`` with no dropout on its probabilities; LayerNorm eps 1e-5; exact (erf) GELU;
the linear head has no dropout. Both ``(i, j)`` and ``(j, i)`` of a pair label count; tasks mark the
diagonal and near-diagonal pairs ``IGNORE`` themselves. The optimizer is AdamW (head at ``lr``, encoder
or adapters at ``encoder_lr``) whose decoupled ``weight_decay`` applies to parameters of two or more
dimensions only (weight matrices, convolution kernels, embeddings, LoRA factors), never to biases or
LayerNorm scales: under AdamW a decayed bias is held within about ``1/weight_decay`` of zero, which
would keep a probe from expressing class frequencies.

Losses: classification is cross-entropy, regression is mean squared error, pair is binary
cross-entropy on logits; all are means over the labelled items of a batch (ignored items: label
``-1`` for classification and pairs, NaN for regression). The per-epoch losses in the history (and
the one that picks the best epoch) are means over all labelled items of the split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from plmforge.core.errors import DataError
from plmforge.core.losses import count, masked_sum, token_nll
from plmforge.core.strict import StrictModel

Level = Literal["residue", "pair", "protein"]
Target = Literal["classification", "regression"]

#: Label that marks an item to ignore (classification and pair labels; regression uses NaN).
IGNORE = -1


def pair_prior_logit(labels: list[np.ndarray]) -> float:
    """log(p / (1 - p)) of the share p of contacts among labelled pairs: where a pair head's bias starts."""
    positive = sum(int(np.sum(y == 1)) for y in labels)
    labelled = sum(int(np.sum(y != IGNORE)) for y in labels)
    rate = min(max(positive / labelled if labelled else 0.5, 1e-4), 1 - 1e-4)
    return float(np.log(rate / (1 - rate)))


@dataclass(frozen=True)
class HeadProblem:
    """What the head predicts: at which level, and classes (``num_outputs`` of them) or a value."""

    level: Level
    target: Target
    num_outputs: int  # classes for classification; 1 for regression and for pair (contact) logits

    def __post_init__(self) -> None:
        if self.level == "pair" and (self.target != "classification" or self.num_outputs != 1):
            raise ValueError("pair problems are binary: target='classification', num_outputs=1 (one logit)")
        if self.target == "regression" and self.num_outputs != 1:
            raise ValueError("regression problems have num_outputs=1")


class HeadSettings(StrictModel):
    """How a task's head is trained (the ``head:`` section of a task in the spec)."""

    kind: Literal["linear", "convbert"] = Field(
        "linear", description="'linear' probe (what the representation itself tells apart), or the light "
                              "one-layer ConvBERT head Ankh evaluated with (the best a light head achieves).")
    finetune: Literal["frozen", "full", "lora"] = Field(
        "frozen", description="'frozen': train the head on fixed embeddings; 'full': fine-tune the whole "
                              "encoder with the head; 'lora': train LoRA adapters on the encoder's attention "
                              "projections (q, k, v, o) with the head.")
    epochs: int = Field(100, ge=1, description="Most passes over the training split (fewer when patience stops "
                                               "training early); tasks set their own.")
    min_epochs: int | None = Field(
        None, ge=1, description="The kept epoch (lowest validation loss) is chosen among epochs min_epochs.."
                                "epochs only, and patience counts from there, so a small validation set cannot "
                                "pick a barely trained ConvBERT head. null: 1 for a linear probe (near-convex; "
                                "stopping at its lowest validation loss is its regularisation: wide embeddings "
                                "overfit within ten epochs), half of epochs (rounded up) for ConvBERT.")
    patience: int | None = Field(
        10, ge=1, description="Stop after this many epochs without a lower validation loss (counted from "
                              "min_epochs on); null: train all epochs.")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the head.")
    encoder_lr: float = Field(1e-4, gt=0, description="AdamW learning rate of encoder weights or LoRA "
                                                      "adapters when fine-tuning.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay of weight matrices and "
                                                       "kernels (not biases or LayerNorm scales).")
    batch_size: int = Field(16, ge=1, description="Proteins per batch.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout inside the ConvBERT head and before its "
                                                        "per-protein output layer (the linear probe has none).")
    heads: int = Field(4, ge=1, description="Attention heads of the ConvBERT layer.")
    kernel_size: int = Field(7, ge=1, description="Convolution width of the ConvBERT layer (odd).")
    projection: int | None = Field(
        None, ge=1, description="ConvBERT only: a linear layer first maps the input to this width (a multiple "
                                "of heads), so wide inputs (UniRep's 1,900) get a small, stable head; null: "
                                "the layer is as wide as its input (rounded up to a multiple of heads).")
    pair_dim: int = Field(64, ge=1, description="Width of the residue projection whose dot products give "
                                                "contact logits (pair tasks).")
    lora_rank: int = Field(8, ge=1, description="Rank of the LoRA adapters.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scale numerator: the update is (alpha/rank)·B·A.")
    seed: int = Field(0, description="Seeds the head's initialisation, batch order and dropout (of the first "
                                     "repeat; repeat i uses seed + i).")
    repeats: int | None = Field(
        None, ge=1, description="Heads fitted with seeds seed, seed+1, ...; metrics are their mean. null: 1 "
                                "for a linear probe (converged, seeds move it by under a point; early-stopped "
                                "on wide embeddings by up to 2 on ss3, which sets 3), 3 for ConvBERT (a point "
                                "or more between seeds).")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("kernel_size must be odd, so the convolution is centred on each residue")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> HeadSettings:
        if self.min_epochs is not None and self.min_epochs > self.epochs:
            raise ValueError(f"min_epochs ({self.min_epochs}) is more than epochs ({self.epochs}): the kept epoch "
                             "could never be trained")
        if self.projection is not None:
            if self.kind == "linear":
                raise ValueError("projection applies to the ConvBERT head only: a projection before a linear "
                                 "probe is still one linear map (use kind: convbert, or drop projection)")
            if self.projection % self.heads:
                below = self.projection // self.heads * self.heads
                options = f"{below} or {below + self.heads}" if below else str(self.heads)
                raise ValueError(f"projection ({self.projection}) must be a multiple of heads ({self.heads}), so "
                                 f"attention splits it evenly: use {options}")
        return self

    @property
    def first_epoch(self) -> int:
        """The first epoch that may be kept: ``min_epochs``, else 1 (linear) or half of ``epochs`` (ConvBERT)."""
        if self.min_epochs is not None:
            return self.min_epochs
        return 1 if self.kind == "linear" else (self.epochs + 1) // 2

    def used_options(self, pair: bool | None = None) -> set[str]:
        """The options that change what this head does (its kind, way of feeding and level decide).

        The rest are inert here (``lora_rank`` of a frozen probe, ``heads`` of a linear one), so a run's
        MLflow params leave them out. ``pair``: whether the task is pair level (None: unknown, keep ``pair_dim``).
        """
        unused = set()
        if self.kind != "convbert":
            unused |= {"dropout", "heads", "kernel_size", "projection"}
        if self.finetune == "frozen":
            unused.add("encoder_lr")
        if self.finetune != "lora":
            unused |= {"lora_rank", "lora_alpha"}
        if pair is False:
            unused.add("pair_dim")
        return set(type(self).model_fields) - unused

    @property
    def head_seeds(self) -> list[int]:
        """Seeds of the heads to fit and average: ``seed``, ``seed + 1``, ... (``repeats`` of them)."""
        repeats = self.repeats if self.repeats is not None else (1 if self.kind == "linear" else 3)
        return [self.seed + i for i in range(repeats)]


class EarlyStopping:
    """Which epoch's weights to keep, and when to stop: the rule every backend's ``fit_head`` follows.

    Epochs are 1-based. Only epochs from ``settings.first_epoch`` on can be kept; of those, the first
    with the lowest validation loss wins (NaN never counts as lower). Training stops once ``patience``
    epochs have passed without a new best (so never before ``first_epoch + patience``). With no finite
    validation loss at all (no labelled validation item) every epoch is trained and the last one kept.
    """

    def __init__(self, settings: HeadSettings):
        self.first_epoch = settings.first_epoch
        self.patience = settings.patience
        self.best_epoch = 0
        self.best_loss = math.inf

    def improved(self, epoch: int, validation_loss: float) -> bool:
        """Record ``epoch``'s validation loss; True when its weights are the best so far (keep them)."""
        if epoch >= self.first_epoch and validation_loss < self.best_loss:
            self.best_epoch, self.best_loss = epoch, validation_loss
            return True
        return False

    def stop(self, epoch: int) -> bool:
        """Whether to stop after ``epoch``: ``patience`` epochs since the best (never without a best)."""
        return self.patience is not None and self.best_epoch > 0 and epoch - self.best_epoch >= self.patience


@dataclass
class HeadData:
    """One split of a task as the backend sees it: one entry per protein.

    ``inputs[i]``: float32 ``[L_i, d]`` embeddings (frozen) or int32 token ids ``[T_i]`` (fine-tuning),
    where residue ``r`` of the protein is token ``offset + r`` (``offset`` is 1 with a task prefix).
    ``labels[i]``: residue level ``[L_i]``; pair level ``[L_i, L_i]`` int8 (1 contact, 0 none,
    ``IGNORE``); protein level a 0-d array. Classification labels are int64 class indices with
    ``IGNORE``; regression labels are float32 with NaN for missing.
    """

    inputs: list[np.ndarray]
    labels: list[np.ndarray]
    offset: int = 0

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels):
            raise ValueError(f"{len(self.inputs)} inputs but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.inputs)

    def residues(self, i: int, tokens: bool) -> int:
        """Residues of protein ``i``: embedding rows, or token ids less the prefix and ``</s>``."""
        return len(self.inputs[i]) - self.offset - 1 if tokens else len(self.inputs[i])

    def lengths(self, tokens: bool) -> list[int]:
        return [self.residues(i, tokens) for i in range(len(self))]


#: Training batches are sorted by length within pools of this many batches (shuffled every epoch).
POOL_BATCHES = 32


def head_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator | None = None) -> list[list[int]]:
    """Batches of proteins of similar length, so little of a head's compute goes to padding.

    Training (``rng`` given): shuffled, sorted by length within pools of ``POOL_BATCHES`` batches, cut,
    and the batches shuffled: similar lengths together, a different grouping every epoch. Evaluation
    (no ``rng``): sorted by length; callers put predictions back in input order.
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]
    order = rng.permutation(n)
    pool = batch_size * POOL_BATCHES
    batches: list[list[int]] = []
    for start in range(0, n, pool):
        part = order[start:start + pool]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size].tolist() for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def check_head_data(problem: HeadProblem, finetune: str, splits: dict[str, HeadData]) -> None:
    """Refuse, before any training, splits that do not fit the problem or the way the head is fed.

    Both backends call this at the start of ``fit_head``, so a task's bad labels get the same message,
    naming the split and the protein, on either. ``splits`` maps names to data, the training split first.
    """
    tokens = finetune != "frozen"
    train_name, train = next(iter(splits.items()))
    if not len(train):
        raise DataError(f"fit_head needs at least one {train_name} protein")
    dim = None if tokens else np.shape(train.inputs[0])[-1]
    classes = 2 if problem.level == "pair" else problem.num_outputs
    for name, data in splits.items():
        if tokens and len(data) and data.offset != train.offset:
            raise DataError(f"{name}: token offset {data.offset}, but the training split's is {train.offset} "
                            "(every split must use the same task prefix)")
        for i, (inputs, labels) in enumerate(zip(data.inputs, data.labels)):
            where = f"{name} protein {i}"
            inputs, labels = np.asarray(inputs), np.asarray(labels)
            if tokens and (inputs.ndim != 1 or not np.issubdtype(inputs.dtype, np.integer)):
                raise DataError(f"{where}: fine-tuning needs 1-d integer token ids, got {inputs.dtype} {inputs.shape}")
            if not tokens and (inputs.ndim != 2 or inputs.shape[1] != dim):
                raise DataError(f"{where}: frozen heads need [L, {dim}] embeddings (the training split's width), "
                                f"got shape {inputs.shape}")
            length = data.residues(i, tokens)
            expected = {"residue": (length,), "pair": (length, length), "protein": ()}[problem.level]
            if length < 1 or labels.shape != expected:
                raise DataError(f"{where}: {problem.level}-level labels should have shape {expected} for "
                                f"{length} residues, got {labels.shape}")
            if problem.target == "regression":
                if not np.issubdtype(labels.dtype, np.floating):
                    raise DataError(f"{where}: regression labels must be floats (NaN for missing), got {labels.dtype}")
            elif not np.issubdtype(labels.dtype, np.integer):
                raise DataError(f"{where}: class labels must be integers ({IGNORE} for missing), got {labels.dtype}")
            elif not np.all((labels == IGNORE) | ((labels >= 0) & (labels < classes))):
                raise DataError(f"{where}: class labels outside 0..{classes - 1} (or {IGNORE} for missing)")


@dataclass
class HeadResult:
    """Predictions for each split given to ``fit_head(predict=...)``, in order, one array per protein.

    Residue level ``[L, C]`` logits (classification) or ``[L]`` values; pair level ``[L, L]`` logits;
    protein level ``[C]`` logits or a 0-d value. ``history`` has one entry per epoch with
    ``train_loss`` and ``validation_loss``; ``best_epoch`` (1-based) is the one whose weights made
    the predictions.
    """

    predictions: list[list[np.ndarray]]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    trainable_parameters: int = 0


def head_loss(xp: Any, problem: HeadProblem, outputs: Any, labels: Any, mask: Any) -> tuple[Any, Any]:
    """(sum of per-item losses, number of labelled items) of a padded batch, in float32, for any backend.

    Written against the array API (``xp``) like the objectives' losses, so every backend trains heads
    on the same loss. Classification: cross-entropy, label ``IGNORE`` skipped; regression: squared
    error, NaN skipped; pair: binary cross-entropy on logits, ``IGNORE`` and pairs with a padded
    residue skipped. ``mask`` [B, L] is True at real residues; a batch's loss is sum / count.
    """
    if problem.level == "pair":
        valid = (labels != IGNORE) & mask[:, :, None] & mask[:, None, :]
        x = xp.astype(outputs, xp.float32)
        y = xp.astype(labels == 1, xp.float32)
        # log(1 + e^x) - x·y, written so that no large |x| overflows
        losses = xp.maximum(x, xp.zeros_like(x)) - x * y + xp.log1p(xp.exp(-xp.abs(x)))
    elif problem.target == "classification":
        valid = labels != IGNORE
        losses, _ = token_nll(xp, outputs, labels)
    else:
        valid = ~xp.isnan(labels)
        x = xp.astype(outputs, xp.float32)
        losses = xp.square(x - xp.where(valid, labels, xp.zeros_like(labels)))
    if problem.level == "residue":
        valid = valid & mask
    # where(), not a product: an ignored item's loss may be inf or NaN and must not reach the gradient
    return masked_sum(xp, losses, valid), count(xp, valid)
