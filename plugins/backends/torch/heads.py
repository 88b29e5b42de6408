"""Downstream-task heads of the PyTorch backend: :mod:`plmforge.core.heads` in plain PyTorch.

Why a module of its own: a task asks the backend to fit a head (``Backend.fit_head``) and gets raw
predictions back, so the task's metrics are written once in numpy while the training loop lives in
each framework. This file is that loop for PyTorch, readable top to bottom:

* the heads (``LinearHead``, ``ConvBertHead``) and their level-specific read-out, including the
  pair-logit part for contacts, exactly as the contract describes; padding is masked out of
  attention, convolution and pooling, so a protein's prediction does not depend on its batch;
* the losses (means over labelled items; ``IGNORE`` / NaN items are left out);
* fine-tuning: the backend's encoder is trained through a copy (``full``) or through LoRA
  adapters on q, k, v, o of every encoder self-attention layer (``lora``), whose frozen base
  weights share storage with the backend's model but are never written, so the backend's weights
  are bit-identical afterwards;
* ``fit_head``: AdamW, batches of similar lengths (``core.heads.head_batches``) padded to the longest
  protein (rounded up to a multiple of 8), validation after each epoch, the state of the epoch
  ``core.heads.EarlyStopping`` picks kept and used for the predictions (it also stops training early).

Randomness: the head's initialisation and all dropout draw from the global torch generators, forked
and seeded with ``settings.seed`` for the duration of ``fit_head`` (so the pretraining's RNG streams
are left exactly as they were); batch order (a numpy generator) and LoRA initialisation (a
``torch.Generator``) draw from their own generators, seeded the same way, so the frozen and
fine-tuned runs of one seed start from the same head and see the same batches.

Details the contract leaves open, chosen here: linear layers, the depthwise convolution and the
ConvBERT attention projections have biases (PyTorch defaults, default initialisation); the ConvBERT
attention scales scores by ``1/sqrt(head_dim)`` and has no dropout of its own; LayerNorm eps is 1e-5;
GELU is the exact (erf) one; the feed-forward width is ``max(1, width // 2)``; the pair read-out
``W_p`` has no bias and the pair bias ``b`` starts at the contact log-odds (``pair_prior_logit``);
the linear head has no dropout. History losses are means over all labelled items of the epoch
(training: as seen during training, dropout on).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import array_api_compat.torch as xp
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plmforge.core.heads import (
    IGNORE,
    EarlyStopping,
    HeadData,
    HeadProblem,
    HeadResult,
    HeadSettings,
    check_head_data,
    head_batches,
    head_loss,
    pair_prior_logit,
)
from plmforge.plugins.backends.torch.model import PAD_ID

MULTIPLE = 8  # batches are padded to a multiple of this many positions


# -- heads ------------------------------------------------------------------------------------------
class PairLogits(nn.Module):
    """Symmetric contact logits ``z_i · z_j / sqrt(pair_dim) + b`` with ``z = W_p h``: [B, L, d] -> [B, L, L]."""

    def __init__(self, width: int, pair_dim: int):
        super().__init__()
        self.project = nn.Linear(width, pair_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(()))
        self.scale = 1.0 / math.sqrt(pair_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.project(h)
        return torch.matmul(z, z.transpose(1, 2)) * self.scale + self.bias


class Readout(nn.Module):
    """The level-specific end of a head: per residue ``W h + b``, per pair :class:`PairLogits`, per
    protein ``pool`` over the residues (``mean`` or ``max``), dropout, then ``W · + b``.

    Outputs: residue [B, L, C] (classification) or [B, L]; pair [B, L, L]; protein [B, C] or [B].
    """

    def __init__(self, width: int, problem: HeadProblem, settings: HeadSettings, pool: str, dropout: float):
        super().__init__()
        self.level, self.pool = problem.level, pool
        self.squeeze = problem.target == "regression"
        if problem.level == "pair":
            self.out = PairLogits(width, settings.pair_dim)
        else:
            self.out = nn.Linear(width, problem.num_outputs)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if self.level == "pair":
            return self.out(h)
        if self.level == "protein":
            if self.pool == "mean":
                h = (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
            else:
                h = h.masked_fill(~keep[..., None], torch.finfo(h.dtype).min).amax(1)
            h = self.dropout(h)
        out = self.out(h)
        return out.squeeze(-1) if self.squeeze else out


class LinearHead(nn.Module):
    """The linear probe: the read-out straight on the inputs (mean pooling per protein, no dropout)."""

    def __init__(self, dim: int, problem: HeadProblem, settings: HeadSettings):
        super().__init__()
        self.readout = Readout(dim, problem, settings, pool="mean", dropout=0.0)

    def forward(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.readout(h, keep)


class ConvBertLayer(nn.Module):
    """One post-norm ConvBERT layer over [B, L, width] with a [B, L] mask of real residues:

    ``h = LN(h + Drop(MHSA(h) + PW(DWConv_k(h))))``, then ``h = LN(h + Drop(W2 GELU(W1 h)))``.
    Padded keys are masked out of attention, padded positions are zeroed before the convolution.
    """

    def __init__(self, width: int, heads: int, kernel_size: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.depthwise = nn.Conv1d(width, width, kernel_size, padding="same", groups=width)
        self.pointwise = nn.Linear(width, width)
        self.norm1 = nn.LayerNorm(width, eps=1e-5)
        self.ff_in = nn.Linear(width, max(1, width // 2))
        self.ff_out = nn.Linear(max(1, width // 2), width)
        self.norm2 = nn.LayerNorm(width, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def attention(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        batch, length, width = h.shape
        q, k, v = (f(h).view(batch, length, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])  # scale 1/sqrt(head_dim)
        return self.o(out.transpose(1, 2).reshape(batch, length, width))

    def convolution(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = h * keep[..., None]  # padding must not leak into real residues through the kernel
        return self.pointwise(self.depthwise(h.transpose(1, 2)).transpose(1, 2))

    def forward(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = self.norm1(h + self.dropout(self.attention(h, keep) + self.convolution(h, keep)))
        return self.norm2(h + self.dropout(self.ff_out(F.gelu(self.ff_in(h)))))


class ConvBertHead(nn.Module):
    """Ankh's light ConvBERT head: a linear projection (to ``settings.projection``, or to the next
    multiple of ``heads`` when ``dim`` is not one), one ConvBERT layer, then the read-out (max pooling
    and dropout per protein)."""

    def __init__(self, dim: int, problem: HeadProblem, settings: HeadSettings):
        super().__init__()
        width = settings.projection or -(-dim // settings.heads) * settings.heads
        self.project = nn.Linear(dim, width) if settings.projection or width != dim else nn.Identity()
        self.layer = ConvBertLayer(width, settings.heads, settings.kernel_size, settings.dropout)
        self.readout = Readout(width, problem, settings, pool="max", dropout=settings.dropout)

    def forward(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.readout(self.layer(self.project(h), keep), keep)


def build_head(dim: int, problem: HeadProblem, settings: HeadSettings) -> nn.Module:
    """A freshly initialised head of ``settings.kind`` for ``dim``-wide inputs (float32, CPU)."""
    return (LinearHead if settings.kind == "linear" else ConvBertHead)(dim, problem, settings)


# -- losses -----------------------------------------------------------------------------------------
# -- fine-tuned encoders ------------------------------------------------------------------------------
class LoraLinear(nn.Module):
    """A frozen bias-free ``nn.Linear`` plus a trainable low-rank update: ``W + (alpha/rank)·B·A``.

    A [rank, in] starts Kaiming-uniform (as in LoRA/peft), B [out, rank] at zero, so training starts
    from the base model exactly.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base
        out_features, in_features = base.weight.shape
        a = torch.empty(rank, in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_a = nn.Parameter(a.to(base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, device=base.weight.device))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.base.weight + self.scale * (self.lora_b @ self.lora_a))


class TunedEncoder(nn.Module):
    """The backend model's embedding and encoder, trainable without touching the backend's weights.

    ``full``: independent deep copies, all trained. ``lora``: copies whose parameters are frozen
    views sharing storage with the backend's model (no memory is copied, nothing writes them), with
    :class:`LoraLinear` adapters on q, k, v, o of every encoder self-attention layer. Dropout and
    gradient checkpointing follow the model's config.
    """

    def __init__(self, model: nn.Module, finetune: str, settings: HeadSettings, generator: torch.Generator):
        super().__init__()
        memo: dict[int, Any] = {}
        if finetune == "lora":
            memo = {id(p): nn.Parameter(p.detach(), requires_grad=False) for p in model.parameters()}
        self.shared = copy.deepcopy(model.shared, memo)
        self.encoder = copy.deepcopy(model.encoder, memo)
        if finetune == "lora":
            for block in self.encoder.block:
                attention = block.layer[0].SelfAttention
                for name in ("q", "k", "v", "o"):
                    setattr(attention, name, LoraLinear(getattr(attention, name), settings.lora_rank,
                                                        settings.lora_alpha, generator))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.shared(input_ids), keep=input_ids != PAD_ID)


# -- batches ----------------------------------------------------------------------------------------
@dataclass
class Batch:
    inputs: torch.Tensor  # [B, L, d] float32 embeddings (frozen) or [B, T] token ids (fine-tuning)
    keep: torch.Tensor  # [B, L] True at real residues
    labels: torch.Tensor | None  # padded with the ignore label (IGNORE or NaN)
    lengths: list[int]  # residues per protein


def _round_up(n: int) -> int:
    return -(-n // MULTIPLE) * MULTIPLE


def make_batch(problem: HeadProblem, data: HeadData, indices: Sequence[int], tokens: bool,
               device: torch.device, with_labels: bool = True) -> Batch:
    """Pad proteins ``indices`` of ``data`` to the longest (rounded up to a multiple of 8 for the
    tensor the batch starts from: embeddings, or token ids whose residues are then sliced out)."""
    lengths = [data.residues(i, tokens) for i in indices]
    if tokens:
        ids = np.zeros((len(indices), _round_up(max(len(data.inputs[i]) for i in indices))), np.int64)
        for row, i in enumerate(indices):
            ids[row, :len(data.inputs[i])] = data.inputs[i]
        inputs = torch.from_numpy(ids)
        width = max(lengths)
    else:
        width = _round_up(max(lengths))
        array = np.zeros((len(indices), width, data.inputs[indices[0]].shape[1]), np.float32)
        for row, i in enumerate(indices):
            array[row, :lengths[row]] = data.inputs[i]
        inputs = torch.from_numpy(array)
    keep = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    labels = None
    if with_labels:
        fill = np.nan if problem.target == "regression" else IGNORE
        dtype = np.float32 if problem.target == "regression" else np.int64
        shape = {"residue": (width,), "pair": (width, width), "protein": ()}[problem.level]
        padded = np.full((len(indices), *shape), fill, dtype)
        for row, i in enumerate(indices):
            padded[(row, *(slice(0, lengths[row]) for _ in shape))] = data.labels[i]
        labels = torch.from_numpy(padded).to(device)
    return Batch(inputs.to(device), keep.to(device), labels, lengths)


# -- the model a head is fitted as -------------------------------------------------------------------
class HeadModel(nn.Module):
    """A head on frozen inputs, or on residues ``offset .. offset+L-1`` of a fine-tuned encoder's output.

    The encoder runs under the backend's autocast (bf16 if configured); the head always in float32.
    """

    def __init__(self, head: nn.Module, encoder: nn.Module | None = None, offset: int = 0,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        super().__init__()
        self.head, self.encoder, self.offset, self.autocast = head, encoder, offset, autocast

    def forward(self, batch: Batch) -> torch.Tensor:
        h = batch.inputs
        if self.encoder is not None:
            with self.autocast():
                hidden = self.encoder(h)
            h = hidden[:, self.offset:self.offset + batch.keep.shape[1]].float()
        return self.head(h, batch.keep)

    def trainable(self) -> dict[str, torch.Tensor]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}


@torch.no_grad()
def evaluate(model: HeadModel, problem: HeadProblem, data: HeadData, batch_size: int,
             device: torch.device) -> float:
    """Mean loss over all labelled items of ``data`` in eval mode (NaN if there are none)."""
    model.eval()
    total, count = torch.zeros((), device=device), torch.zeros((), device=device)
    tokens = model.encoder is not None
    for indices in head_batches(data.lengths(tokens), batch_size):
        batch = make_batch(problem, data, indices, tokens, device)
        loss, n = head_loss(xp, problem, model(batch), batch.labels, batch.keep)
        total, count = total + loss, count + n
    return float(total / count) if count > 0 else float("nan")


@torch.no_grad()
def predict_outputs(model: HeadModel, problem: HeadProblem, data: HeadData, batch_size: int,
            device: torch.device) -> list[np.ndarray]:
    """Eval-mode outputs per protein, padding cropped: residue [L, C] / [L], pair [L, L], protein [C] / []."""
    model.eval()
    tokens = model.encoder is not None
    out: list[np.ndarray] = [np.empty(0)] * len(data)
    for indices in head_batches(data.lengths(tokens), batch_size):
        batch = make_batch(problem, data, indices, tokens, device, with_labels=False)
        outputs = model(batch).float().cpu().numpy()
        for row, (i, length) in enumerate(zip(indices, batch.lengths)):
            crop = {"residue": (slice(0, length),), "pair": (slice(0, length),) * 2, "protein": ()}[problem.level]
            out[i] = np.array(outputs[(row, *crop)], dtype=np.float32)
    return out


# -- fitting ----------------------------------------------------------------------------------------
def fit_head(engine: Any, problem: HeadProblem, settings: HeadSettings, train: HeadData, validation: HeadData,
             predict: Sequence[HeadData]) -> HeadResult:
    """Train a head (and the encoder when fine-tuning) on ``train``; keep the epoch ``EarlyStopping``
    picks (lowest validation loss from ``min_epochs`` on); return its predictions for each split in
    ``predict``. ``engine`` is the backend's :class:`~.engine.TorchEngine` (its public ``model``,
    ``device`` and ``autocast``)."""
    check_head_data(problem, settings.finetune, {"train": train, "validation": validation,
                                                 **{f"predict[{i}]": d for i, d in enumerate(predict)}})
    device = engine.device
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # the pretraining's RNG streams come back unchanged
        torch.random.default_generator.manual_seed(settings.seed)  # head initialisation, dropout
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(settings.seed)
        return _fit(engine, problem, settings, train, validation, predict)


def _fit(engine: Any, problem: HeadProblem, settings: HeadSettings, train: HeadData, validation: HeadData,
         predict_splits: Sequence[HeadData]) -> HeadResult:
    device, batch_size = engine.device, settings.batch_size
    order = np.random.default_rng(settings.seed)  # batch order: the same draws in every mode
    if settings.finetune == "frozen":
        head = build_head(train.inputs[0].shape[1], problem, settings)
        model = HeadModel(head).to(device)
    else:
        head = build_head(engine.model.config.d_model, problem, settings)
        encoder = TunedEncoder(engine.model, settings.finetune, settings, torch.Generator().manual_seed(settings.seed))
        model = HeadModel(head.to(device), encoder, train.offset, engine.autocast)

    if problem.level == "pair":
        with torch.no_grad():
            model.head.readout.out.bias.fill_(pair_prior_logit(train.labels))
    groups = []
    for part, lr in ((model.head, settings.lr), (model.encoder, settings.encoder_lr)):
        params = [p for p in part.parameters() if p.requires_grad] if part is not None else []
        for decayed in (True, False):  # weight decay on matrices and kernels only, as the contract says
            chosen = [p for p in params if (p.ndim >= 2) == decayed]
            if chosen:
                groups.append({"params": chosen, "lr": lr, "weight_decay": settings.weight_decay if decayed else 0.0})
    optimizer = torch.optim.AdamW(groups, lr=settings.lr)

    tokens = model.encoder is not None
    train_lengths = train.lengths(tokens)
    history: list[dict[str, float]] = []
    stopping, best_state = EarlyStopping(settings), None
    for epoch in range(1, settings.epochs + 1):
        model.train()
        total, count = torch.zeros((), device=device), torch.zeros((), device=device)
        for indices in head_batches(train_lengths, batch_size, order):
            batch = make_batch(problem, train, indices, tokens, device)
            loss, n = head_loss(xp, problem, model(batch), batch.labels, batch.keep)
            (loss / n.clamp(min=1)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total, count = total + loss.detach(), count + n
        validation_loss = evaluate(model, problem, validation, batch_size, device)
        history.append({"train_loss": float(total / count) if count > 0 else float("nan"),
                        "validation_loss": validation_loss})
        if stopping.improved(epoch, validation_loss):
            best_state = {name: p.detach().clone() for name, p in model.trainable().items()}
        if stopping.stop(epoch):
            break
    best_epoch = stopping.best_epoch
    if best_state is None:  # no validation loss to choose by: keep the last epoch
        best_epoch = len(history)
    else:
        with torch.no_grad():
            for name, p in model.trainable().items():
                p.copy_(best_state[name])

    predictions = [predict_outputs(model, problem, split, batch_size, device) for split in predict_splits]
    trainable = sum(p.numel() for p in model.trainable().values())
    return HeadResult(predictions=predictions, history=history, best_epoch=best_epoch,
                      trainable_parameters=trainable)
