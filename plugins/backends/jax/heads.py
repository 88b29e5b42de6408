"""Downstream heads of the JAX backend: :meth:`JaxEngine.fit_head` as :mod:`plmforge.core.heads` defines it.

The contract fixes the heads (linear probe, light ConvBERT layer, pair logits), the losses and the
ignore conventions; this module is their JAX reading, kept apart from :mod:`.engine` because it is
a second, self-contained training loop (its own parameters, optimizer and batches) that only borrows
the engine's encoder, through the engine's public members. Everything is pure functions over dict
pytrees, so each head reads like the contract's formulas and a training step is one compiled
function of (trainable, frozen, batch, key).

* Heads: ``init_head`` draws the parameters (PyTorch's default ``U(±1/sqrt(fan_in))`` for linear
  and convolution weights, LayerNorm at identity), ``apply_head`` maps ``[B, L, d]`` inputs and a
  ``[B, L]`` residue mask to outputs; padding is masked out of attention, zeroed before the
  convolution and excluded from pooling, so predictions do not depend on how a protein was batched.
* Losses: :func:`plmforge.core.heads.head_loss` (shared with every backend) returns (sum, count) over
  the labelled items; a batch's loss is their ratio.
* Fitting: ``fit_head`` trains frozen embeddings -> head, or token ids -> encoder -> head with the
  whole encoder (``full``) or LoRA adapters on q, k, v, o of every encoder self-attention (``lora``).
  The engine's own parameters are read, never written. Batches have a constant row count
  (``batch_size`` rounded to the device count; short batches get empty rows) and lengths on the
  backend's 32-multiple ladder, so a fit compiles one train and one evaluation function per length
  rung. Static choices (head kind, level, mode) are a hashable ``_Fit`` passed as a static jit
  argument and learning rates live in the optimizer state, so repeated fits reuse compilations.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

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
from plmforge.plugins.backends.jax.distribution import to_host
from plmforge.plugins.backends.jax.model import Dropout
from plmforge.plugins.backends.jax.shapes import rung

Tree = dict[str, Any]

#: Padded protein lengths are multiples of this (times the backend's ``shape_growth`` ladder).
LENGTH_MULTIPLE = 32
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default
ATTENTION_PROJECTIONS = ("q", "k", "v", "o")


@dataclass(frozen=True)
class HeadSpec:
    """The static shape of a head: what it predicts and its architecture (hashable: a jit static argument)."""

    problem: HeadProblem
    kind: str = "convbert"
    heads: int = 4
    kernel_size: int = 7
    dropout: float = 0.2
    pair_dim: int = 64
    projection: int | None = None

    @classmethod
    def of(cls, problem: HeadProblem, settings: HeadSettings) -> HeadSpec:
        return cls(problem, settings.kind, settings.heads, settings.kernel_size, settings.dropout, settings.pair_dim,
                   settings.projection)


# -- heads ----------------------------------------------------------------------------------------
def _uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def _linear_init(key: jax.Array, d_in: int, d_out: int, bias: bool = True) -> Tree:
    """``weight`` [out, in] (PyTorch layout) and ``bias`` [out], drawn like ``torch.nn.Linear``."""
    weight_key, bias_key = jax.random.split(key)
    params = {"weight": _uniform(weight_key, (d_out, d_in), d_in)}
    if bias:
        params["bias"] = _uniform(bias_key, (d_out,), d_in)
    return params


def _linear(params: Tree, x: jax.Array) -> jax.Array:
    y = x @ params["weight"].T
    return y + params["bias"] if "bias" in params else y


def _layer_norm(params: Tree, x: jax.Array) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(variance + LAYER_NORM_EPS) * params["scale"] + params["bias"]


def convbert_width(d: int, heads: int, projection: int | None = None) -> int:
    """The ConvBERT layer's width: ``projection``, else ``d`` rounded up to a multiple of the attention heads."""
    return projection or -(-d // heads) * heads


def init_head(spec: HeadSpec, d: int, key: jax.Array) -> Tree:
    """Fresh head parameters for ``d``-wide inputs."""
    keys = iter(jax.random.split(key, 16))
    params: Tree = {}
    width = d
    if spec.kind == "convbert":
        width = convbert_width(d, spec.heads, spec.projection)
        if spec.projection or width != d:
            params["project"] = _linear_init(next(keys), d, width)
        params["attention"] = {name: _linear_init(next(keys), width, width) for name in ATTENTION_PROJECTIONS}
        conv_weight, conv_bias = jax.random.split(next(keys))
        params["conv"] = {"weight": _uniform(conv_weight, (width, spec.kernel_size), spec.kernel_size),
                          "bias": _uniform(conv_bias, (width,), spec.kernel_size)}  # depthwise: one filter a channel
        params["pointwise"] = _linear_init(next(keys), width, width)
        params["norm1"] = {"scale": jnp.ones(width), "bias": jnp.zeros(width)}
        feed_forward = max(1, width // 2)
        params["ff1"] = _linear_init(next(keys), width, feed_forward)
        params["ff2"] = _linear_init(next(keys), feed_forward, width)
        params["norm2"] = {"scale": jnp.ones(width), "bias": jnp.zeros(width)}
    elif spec.kind != "linear":
        raise ValueError(f"unknown head kind {spec.kind!r}")
    if spec.problem.level == "pair":
        params["pair"] = _linear_init(next(keys), width, spec.pair_dim, bias=False)  # z = W_p h
        params["pair_bias"] = jnp.zeros(())
    else:
        params["out"] = _linear_init(next(keys), width, spec.problem.num_outputs)
    return params


def _attention(params: Tree, h: jax.Array, mask: jax.Array, heads: int) -> jax.Array:
    """Scaled dot-product multi-head self-attention; padded positions are never attended to."""
    batch, length, width = h.shape
    d_head = width // heads

    def split(x: jax.Array) -> jax.Array:
        return x.reshape(batch, length, heads, d_head)

    q, k, v = (split(_linear(params[name], h)) for name in ("q", "k", "v"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d_head)
    scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
    return _linear(params["o"], out.reshape(batch, length, width))


def _depthwise_conv(params: Tree, h: jax.Array) -> jax.Array:
    """Per-channel 1-D cross-correlation with 'same' padding (zeros), like ``Conv1d(groups=channels)``."""
    weight = params["weight"]  # [channels, kernel]
    kernel = weight.shape[1]
    length = h.shape[1]
    padded = jnp.pad(h, ((0, 0), ((kernel - 1) // 2, kernel // 2), (0, 0)))
    out = sum(padded[:, j:j + length, :] * weight[:, j] for j in range(kernel))
    return out + params["bias"]


def _convbert(spec: HeadSpec, params: Tree, h: jax.Array, mask: jax.Array, dropout: Dropout) -> jax.Array:
    """One post-norm ConvBERT layer: attention plus convolution, then a feed-forward block."""
    if "project" in params:
        h = _linear(params["project"], h)
    attended = _attention(params["attention"], h, mask, spec.heads)
    convolved = _linear(params["pointwise"], _depthwise_conv(params["conv"], h * mask[..., None]))
    h = _layer_norm(params["norm1"], h + dropout(attended + convolved))
    fed = _linear(params["ff2"], jax.nn.gelu(_linear(params["ff1"], h), approximate=False))
    return _layer_norm(params["norm2"], h + dropout(fed))


def _pool(spec: HeadSpec, h: jax.Array, mask: jax.Array) -> jax.Array:
    """[B, L, d] -> [B, d]: mean over residues (linear) or max (ConvBERT); an empty row gives zeros."""
    keep = mask[..., None]
    if spec.kind == "linear":
        return jnp.sum(jnp.where(keep, h, 0.0), axis=1) / jnp.maximum(jnp.sum(keep, axis=1), 1)
    pooled = jnp.max(jnp.where(keep, h, -jnp.inf), axis=1)
    return jnp.where(jnp.any(keep, axis=1), pooled, 0.0)


def apply_head(spec: HeadSpec, params: Tree, x: jax.Array, mask: jax.Array, key: jax.Array | None) -> jax.Array:
    """Head outputs for inputs ``x`` [B, L, d] with residue mask [B, L]; dropout only when ``key`` is given.

    Residue: [B, L, C] logits or [B, L] values; pair: [B, L, L] logits; protein: [B, C] or [B].
    """
    problem = spec.problem
    dropout = Dropout(spec.dropout, key)
    h = _convbert(spec, params, x, mask, dropout) if spec.kind == "convbert" else x
    if problem.level == "pair":
        z = _linear(params["pair"], h)
        return jnp.einsum("bip,bjp->bij", z, z) / math.sqrt(z.shape[-1]) + params["pair_bias"]
    if problem.level == "protein":
        h = _pool(spec, h, mask)
        if spec.kind == "convbert":
            h = dropout(h)
    out = _linear(params["out"], h)
    return out[..., 0] if problem.target == "regression" else out


# -- losses ---------------------------------------------------------------------------------------
# -- batches --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Fit:
    """Everything static about one fit; hashable, so it is a jit static argument (equal fits share compilations)."""

    head: HeadSpec
    finetune: str = "frozen"
    offset: int = 0
    lora_scale: float = 1.0
    # the JaxEngine whose encoder is fine-tuned (None for frozen inputs), by weak reference: equal while it lives,
    # and the compilation cache, which keeps static arguments, does not keep its weights alive
    engine: weakref.ref | None = None


def collate(fit: _Fit, data: HeadData, indices: Sequence[int], rows: int, growth: float = 1.0) -> dict[str, np.ndarray]:
    """Numpy batch of ``rows`` rows (rows past ``indices`` empty), lengths padded to a 32-multiple rung.

    ``x`` [rows, L, d] float32 (frozen) or ``ids`` [rows, T] int32 (fine-tuning, where the head sees
    L = T - offset positions); ``mask`` [rows, L] marks residues; ``labels`` padded with IGNORE / NaN.
    """
    problem = fit.head.problem
    inputs = [np.asarray(data.inputs[i]) for i in indices]
    lengths = [data.residues(i, fit.finetune != "frozen") for i in indices]
    batch: dict[str, np.ndarray] = {}
    if fit.finetune == "frozen":
        length = rung(max(max(lengths), 1), LENGTH_MULTIPLE, growth)
        x = np.zeros((rows, length, inputs[0].shape[1]), np.float32)
        for row, value in enumerate(inputs):
            x[row, :len(value)] = value
        batch["x"] = x
    else:
        tokens = rung(max(len(value) for value in inputs), LENGTH_MULTIPLE, growth)
        ids = np.zeros((rows, tokens), np.int32)  # 0 is the pad id: never attended to
        for row, value in enumerate(inputs):
            ids[row, :len(value)] = value
        batch["ids"] = ids
        length = tokens - fit.offset
    batch["mask"] = np.arange(length)[None, :] < np.asarray(lengths + [0] * (rows - len(lengths)))[:, None]
    classification = problem.target == "classification"
    dtype, fill = (np.int32, IGNORE) if classification else (np.float32, np.nan)
    shape = {"residue": (rows, length), "pair": (rows, length, length), "protein": (rows,)}[problem.level]
    labels = np.full(shape, fill, np.int8 if problem.level == "pair" else dtype)
    for row, (i, n) in enumerate(zip(indices, lengths)):
        expected = {"residue": (n,), "pair": (n, n), "protein": ()}[problem.level]  # checked by check_head_data
        labels[(row, *(slice(0, k) for k in expected))] = data.labels[i]
    batch["labels"] = labels
    return batch


def _crop(problem: HeadProblem, outputs: np.ndarray, length: int) -> np.ndarray:
    """One protein's prediction without padding, with the contract's shape."""
    if problem.level == "pair":
        out = outputs[:length, :length]
    elif problem.level == "residue":
        out = outputs[:length]
    else:
        out = outputs
    return np.asarray(out, dtype=np.float32).copy()


# -- compiled steps -------------------------------------------------------------------------------
def _features(fit: _Fit, trainable: Tree, frozen: Tree, batch: Tree, key: jax.Array | None) -> jax.Array:
    """The head's inputs [B, L, d]: the embeddings themselves, or the encoder's hidden states of the residues."""
    if fit.finetune == "frozen":
        return batch["x"]
    params = dict(frozen)
    if fit.finetune == "full":
        params.update(trainable["encoder"])
    else:  # lora: W + (alpha / r) B A, inside the differentiated function, so only A and B get gradients
        for name, adapter in trainable["encoder"].items():
            params[name] = frozen[name] + fit.lora_scale * (adapter["B"] @ adapter["A"])
    model = fit.engine().model_with(params)
    hidden = model.encode(batch["ids"], Dropout(model.dropout_rate, key)).astype(jnp.float32)
    return hidden[:, fit.offset:]


def _loss(trainable: Tree, fit: _Fit, frozen: Tree, batch: Tree, key: jax.Array | None):
    head_key, encoder_key = (None, None) if key is None else tuple(jax.random.split(key))
    x = _features(fit, trainable, frozen, batch, encoder_key)
    outputs = apply_head(fit.head, trainable["head"], x, batch["mask"], head_key)
    total, count = head_loss(jnp, fit.head.problem, outputs, batch["labels"], batch["mask"])
    return total / jnp.maximum(count, 1.0), (total, count, outputs)


def _optimizer(finetune: str, lr: float = 0.0, encoder_lr: float = 0.0, weight_decay: float = 0.0):
    """AdamW for the head (``lr``) and, when fine-tuning, for the encoder or adapters (``encoder_lr``).

    The rates are injected hyperparameters held in the optimizer state, so the compiled step (which
    rebuilds this transformation with placeholder rates) serves every rate.
    """
    adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))  # a callable: not a schedule
    parts = {"head": adamw(learning_rate=lr, weight_decay=weight_decay, mask=_decayed)}
    if finetune != "frozen":
        parts["encoder"] = adamw(learning_rate=encoder_lr, weight_decay=weight_decay, mask=_decayed)
    return optax.multi_transform(parts, _part_labels)


def _decayed(tree: Tree) -> Tree:
    """True at matrices and kernels: weight decay leaves biases and LayerNorm scales alone (the contract)."""
    return jax.tree.map(lambda leaf: leaf.ndim >= 2, tree)


def _part_labels(trainable: Tree) -> Tree:
    """Each leaf labelled with its top-level part ('head' or 'encoder'), for ``optax.multi_transform``."""
    return {part: jax.tree.map(lambda _, label=part: label, sub) for part, sub in trainable.items()}


@functools.partial(jax.jit, static_argnums=0)
def _train_step(fit: _Fit, trainable: Tree, opt_state: Any, frozen: Tree, batch: Tree, key: jax.Array):
    grads, (total, count, _) = jax.grad(_loss, has_aux=True)(trainable, fit, frozen, batch, key)
    updates, opt_state = _optimizer(fit.finetune).update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, total, count


@functools.partial(jax.jit, static_argnums=0)
def _evaluate(fit: _Fit, trainable: Tree, frozen: Tree, batch: Tree):
    _, (total, count, outputs) = _loss(trainable, fit, frozen, batch, None)
    return total, count, outputs


# -- fitting --------------------------------------------------------------------------------------
def _lora_adapters(params: Tree, rank: int, key: jax.Array) -> Tree:
    """A [r, in] drawn like PEFT (``U(±1/sqrt(in))``) and B [out, r] zeros for q, k, v, o of every encoder layer."""
    names = sorted((name for name in params if name.startswith("encoder.block.") and ".layer.0.SelfAttention."
                    in name and name.rsplit(".", 2)[-2] in ATTENTION_PROJECTIONS),
                   key=lambda name: (int(name.split(".")[2]), name))
    adapters = {}
    for name, name_key in zip(names, jax.random.split(key, len(names))):
        d_out, d_in = params[name].shape
        adapters[name] = {"A": _uniform(name_key, (rank, d_in), d_in), "B": jnp.zeros((d_out, rank), jnp.float32)}
    return adapters


def _size(tree: Any) -> int:
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def fit_head(engine: Any, problem: HeadProblem, settings: HeadSettings, train: HeadData, validation: HeadData,
             predict: Sequence[HeadData]) -> HeadResult:
    """Train a head (and the encoder or its adapters) on ``train``; predict with the best validation epoch.

    ``engine`` is the backend's :class:`~.engine.JaxEngine` (its public ``params``, ``placement``,
    ``context``, ``shape_growth``, ``encoder_params``, ``model_with`` and ``note_signature``).
    """
    check_head_data(problem, settings.finetune, {"train": train, "validation": validation,
                                                 **{f"predict[{i}]": d for i, d in enumerate(predict)}})
    placement = engine.placement
    growth = engine.shape_growth
    rows = rung(settings.batch_size, placement.size, 1.0)  # constant, and divisible by the device count
    finetune = settings.finetune
    fit = _Fit(HeadSpec.of(problem, settings), finetune, train.offset if finetune != "frozen" else 0,
               settings.lora_alpha / settings.lora_rank, weakref.ref(engine) if finetune != "frozen" else None)
    d = engine.context.model.d_model if finetune != "frozen" else int(np.asarray(train.inputs[0]).shape[1])

    seed = settings.seed % 2**32
    init_key, lora_key, dropout_root = jax.random.split(jax.random.PRNGKey(seed), 3)
    trainable: Tree = {"head": init_head(fit.head, d, init_key)}
    if problem.level == "pair":
        trainable["head"]["pair_bias"] = jnp.asarray(pair_prior_logit(train.labels), jnp.float32)
    frozen: Tree = {}
    if finetune == "full":  # a trainable copy of what the encoder reads; the engine keeps its own arrays
        trainable["encoder"] = engine.encoder_params()
        frozen = engine.params
    elif finetune == "lora":
        trainable["encoder"] = _lora_adapters(engine.params, settings.lora_rank, lora_key)
        frozen = engine.params
    # placed like the engine's own parameters and optimizer state (replicated, or split under fsdp), so that a
    # step's outputs have its inputs' shardings and the second step reuses the first one's compilation
    trainable = jax.device_put(trainable, placement.tree(trainable))
    optimizer = _optimizer(finetune, settings.lr, settings.encoder_lr, settings.weight_decay)
    opt_state = optimizer.init(trainable)
    opt_state = jax.device_put(opt_state, placement.tree(opt_state))

    def batches(data: HeadData, rng: np.random.Generator | None = None):
        for indices in head_batches(data.lengths(finetune != "frozen"), settings.batch_size, rng):
            yield indices, collate(fit, data, indices, rows, growth)

    def place(kind: str, arrays: dict[str, np.ndarray]) -> Tree:
        engine.note_signature((f"head_{kind}", finetune, fit.head.kind, problem.level,
                                *sorted((k, v.shape) for k, v in arrays.items())))
        return placement.put_batch(arrays)

    def evaluate(params: Tree, data: HeadData, keep: bool) -> tuple[float, list[np.ndarray]]:
        total, count, predictions = 0.0, 0.0, [np.empty(0)] * len(data)
        for indices, arrays in batches(data):
            batch_total, batch_count, outputs = _evaluate(fit, params, frozen, place("eval", arrays))
            total += float(batch_total)
            count += float(batch_count)
            if keep:
                host = to_host(outputs)
                for row, i in enumerate(indices):
                    predictions[i] = _crop(problem, host[row], data.residues(i, finetune != "frozen"))
        return (total / count if count else float("nan")), predictions

    rng = np.random.default_rng(seed)
    history: list[dict[str, float]] = []
    stopping, best_params = EarlyStopping(settings), None
    for epoch in range(settings.epochs):
        epoch_key = jax.random.fold_in(dropout_root, epoch)
        total = count = jnp.zeros((), jnp.float32)
        for step, (_, arrays) in enumerate(batches(train, rng)):
            trainable, opt_state, batch_total, batch_count = _train_step(
                fit, trainable, opt_state, frozen, place("train", arrays), jax.random.fold_in(epoch_key, step))
            total, count = total + batch_total, count + batch_count
        train_loss = float(total) / float(count) if float(count) else float("nan")
        validation_loss, _ = evaluate(trainable, validation, keep=False)
        history.append({"train_loss": train_loss, "validation_loss": validation_loss})
        if stopping.improved(epoch + 1, validation_loss):
            best_params = trainable  # immutable arrays: later steps make new ones, so this is a snapshot
        if stopping.stop(epoch + 1):
            break
    best_epoch = stopping.best_epoch
    if best_params is None:  # no validation loss to choose by (no labelled validation item): the last epoch
        best_params, best_epoch = trainable, len(history)
    predictions = [evaluate(best_params, data, keep=True)[1] for data in predict]
    return HeadResult(predictions, history, best_epoch, _size(best_params))
