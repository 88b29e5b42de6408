"""Weights between checkpoints and models: start a run from a checkpoint, ``plmforge convert``.

The files themselves (names, reading, writing) are :mod:`plmforge.core.checkpoint`; this module fits
their weights to a model built from a spec. Vocabulary rule (see docs/checkpoints.md): ids follow the
Ankh tokenizer. A checkpoint with fewer rows than the run's vocabulary keeps its rows and the run's
fresh initialisation fills the rest (e.g. ``[NLU]``/``[S2S]``); a larger one is an error. A plmforge
checkpoint records its extra tokens: they must be the run's first extra tokens, so an id never
changes meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from plmforge.core.build import build_objectives, merged_needs
from plmforge.core.checkpoint import (
    VOCAB_PARAMS,
    check_destination,
    extra_tokens,
    few,
    is_plmforge_checkpoint,
    is_t5_param,
    read_hf_checkpoint,
    resolve_checkpoint,
    trainer_state,
    write_checkpoint,
    write_hf_checkpoint,
)
from plmforge.core.errors import CheckpointError, PluginError
from plmforge.core.initialization import initial_weights
from plmforge.core.model_config import ModelConfig
from plmforge.core.registry import Registry
from plmforge.core.spec import validate_spec
from plmforge.core.vocab import BASE_SIZE, TASK_PREFIXES, Vocab

if TYPE_CHECKING:
    from plmforge.core.backend import Backend


# -- the weights a run starts from ---------------------------------------------------------------------
def fit_init_weights(expected: Mapping[str, tuple[int, ...]], fresh: Callable[[str], np.ndarray],
                     weights: Mapping[str, np.ndarray], vocab_tokens: list[str],
                     checkpoint_tokens: tuple[str, ...] | None, vocab_size: int, source: Path) -> dict[str, np.ndarray]:
    """The checkpoint's weights for a model with parameters ``expected`` (name -> shape).

    Every T5 parameter of the model must come from the checkpoint; plmforge heads it lacks are left out
    (they keep the model's fresh initialisation). Vocabulary rows the checkpoint lacks are appended
    from ``fresh(name)`` (the model's own initial value of that parameter). ``checkpoint_tokens``,
    when known (plmforge checkpoints), are the checkpoint's tokens beyond the base vocabulary.
    """
    run_size = len(vocab_tokens)
    if vocab_size > run_size:
        raise CheckpointError(
            f"{source} has a vocabulary of {vocab_size} tokens, more than this run's {run_size} "
            f"({', '.join(vocab_tokens[BASE_SIZE:]) or 'no tokens'} beyond the {BASE_SIZE} Ankh tokens); use "
            f"objectives that need the same extra tokens (e.g. the same task prefixes)")
    if checkpoint_tokens is not None and tuple(vocab_tokens[BASE_SIZE:BASE_SIZE + len(checkpoint_tokens)]) != \
            tuple(checkpoint_tokens):
        raise CheckpointError(
            f"{source} was trained with extra tokens {list(checkpoint_tokens)} but this run's are "
            f"{vocab_tokens[BASE_SIZE:]}: the same ids would mean different tokens")
    out: dict[str, np.ndarray] = {}
    missing, wrong = [], []
    for name, shape in expected.items():
        if name not in weights:
            if is_t5_param(name):
                missing.append(name)
            continue
        value = np.asarray(weights[name], dtype=np.float32)
        if name in VOCAB_PARAMS and value.ndim == 2 and value.shape[0] < shape[0] and value.shape[1:] == shape[1:]:
            value = np.concatenate([value, np.asarray(fresh(name), np.float32)[value.shape[0]:]])
        if tuple(value.shape) != tuple(shape):
            wrong.append(f"{name} {tuple(value.shape)} vs model {tuple(shape)}")
            continue
        out[name] = value
    if missing or wrong:
        problems = ([f"lacks {few(missing)}"] if missing else []) + (
            [f"shape mismatch {', '.join(wrong[:3])}"] if wrong else [])
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    return out


def load_init_from(backend: Backend, path: str | Path, vocab_tokens: list[str]) -> Path:
    """Load ``model.init_from`` into a freshly set-up backend; returns the checkpoint directory used.

    T5 parameters come from the checkpoint (all of them, or an error); heads the checkpoint lacks
    keep the backend's fresh initialisation, and so do vocabulary rows beyond the checkpoint's.
    """
    source = resolve_checkpoint(path, "model.init_from")
    _, weights, vocab_size = read_hf_checkpoint(source)
    fresh = backend.weights()
    expected = {name: tuple(value.shape) for name, value in fresh.items()}
    fitted = fit_init_weights(expected, fresh.__getitem__, weights, list(vocab_tokens), extra_tokens(source),
                              vocab_size, source)
    backend.load_weights(fitted, strict=False)
    return source


# -- parameter shapes, without building a model --------------------------------------------------------
def parameter_shapes(config: ModelConfig, vocab_size: int, encoder_lm_head: bool = False,
                     heads: Mapping[str, int] | None = None) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the parameters of a plmforge model (what every backend's ``weights()`` holds)."""
    d, inner, buckets = config.d_model, config.num_heads * config.d_kv, config.relative_attention_num_buckets
    shapes: dict[str, tuple[int, ...]] = {"shared.weight": (vocab_size, d)}
    for stack, layers in (("encoder", config.num_layers), ("decoder", config.num_decoder_layers)):
        decoder = stack == "decoder"
        for i in range(layers):
            p = f"{stack}.block.{i}.layer"
            attentions = [("0.SelfAttention", i == 0)] + ([("1.EncDecAttention", False)] if decoder else [])
            for module, bias in attentions:
                shapes.update({f"{p}.{module}.{w}.weight": (inner, d) for w in "qkv"})
                shapes[f"{p}.{module}.o.weight"] = (d, inner)
                if bias:
                    shapes[f"{p}.{module}.relative_attention_bias.weight"] = (buckets, config.num_heads)
                shapes[f"{p}.{module.split('.')[0]}.layer_norm.weight"] = (d,)
            ff = 2 if decoder else 1
            shapes[f"{p}.{ff}.DenseReluDense.wi_0.weight"] = (config.d_ff, d)
            shapes[f"{p}.{ff}.DenseReluDense.wi_1.weight"] = (config.d_ff, d)
            shapes[f"{p}.{ff}.DenseReluDense.wo.weight"] = (d, config.d_ff)
            shapes[f"{p}.{ff}.layer_norm.weight"] = (d,)
        if layers:
            shapes[f"{stack}.final_layer_norm.weight"] = (d,)
    if config.has_decoder:
        shapes["lm_head.weight"] = (vocab_size, d)
    if encoder_lm_head:
        shapes["encoder_lm_head.weight"] = (vocab_size, d)
    shapes.update({f"heads.{name}.weight": (width, d) for name, width in (heads or {}).items()})
    return shapes


# -- conversion (plmforge convert) ---------------------------------------------------------------------
@dataclass
class Conversion:
    """What :func:`convert_checkpoint` did."""

    to: str  # "hf" or "plmforge"
    source: Path  # the checkpoint directory read
    dest: Path
    shape: dict[str, Any]
    vocab_size: int
    dropped: list[str] = field(default_factory=list)  # parameters left out (export to hf)
    fresh: list[str] = field(default_factory=list)  # parameters or rows freshly initialised (import)
    objectives: list[str] = field(default_factory=list)  # the objectives of the written spec (import)
    tokenizer: bool = False  # tokenizer files written beside the weights (export)


def checkpoint_tokens(path: Path, vocab_size: int) -> list[str] | None:
    """The token of each embedding row of a checkpoint, or None where they are not known.

    A plmforge checkpoint records its tokens beyond Ankh's 144; a Hugging Face directory is taken as
    Ankh's vocabulary, followed by Ankh3's task prefixes when it has one or two more rows (as
    :func:`_to_plmforge` reads it).
    """
    recorded = extra_tokens(path)
    if recorded is None and BASE_SIZE <= vocab_size <= BASE_SIZE + len(TASK_PREFIXES):
        recorded = TASK_PREFIXES[:vocab_size - BASE_SIZE]
    tokens = Vocab().tokens + list(recorded or ())
    return tokens if recorded is not None and len(tokens) == vocab_size else None


def convert_checkpoint(source: str | Path, dest: str | Path, to: str | None = None, force: bool = False,
                       registry: Registry | None = None) -> Conversion:
    """``plmforge convert``: a plmforge checkpoint (or run) to a Hugging Face directory, or the reverse.

    ``to`` defaults to ``"hf"`` for a plmforge checkpoint or run directory and ``"plmforge"`` otherwise.
    """
    given = Path(source)
    checkpoint_dir = resolve_checkpoint(given, "SOURCE")
    to = to or ("hf" if is_plmforge_checkpoint(given) else "plmforge")
    dest = Path(dest)
    if dest.resolve() in (given.resolve(), checkpoint_dir.resolve()):
        raise CheckpointError("DEST is SOURCE: write the converted checkpoint to another directory")
    check_destination(dest, force)
    shape, weights, vocab_size = read_hf_checkpoint(checkpoint_dir)
    config = ModelConfig(preset=None, **shape)
    if to == "hf":
        tokens = checkpoint_tokens(checkpoint_dir, vocab_size)
        dropped = write_hf_checkpoint(dest, config, weights, vocab_size, force=force, tokens=tokens)
        return Conversion("hf", checkpoint_dir, dest, shape, vocab_size, dropped=dropped,
                          tokenizer=tokens is not None)
    if to != "plmforge":
        raise CheckpointError(f"unknown conversion target {to!r}; choose 'hf' or 'plmforge'")
    if is_plmforge_checkpoint(given):
        raise CheckpointError(f"{given} is already a plmforge checkpoint (use --to hf to export it)")
    return _to_plmforge(checkpoint_dir, dest, config, weights, vocab_size, registry)


def conversion_objective(registry: Registry, has_decoder: bool) -> str:
    """The objective the spec of a converted checkpoint names: the first (by name) installed objective
    plugin whose ``conversion_default`` offers it for this architecture. Core names no plugin itself."""
    architecture = "encoder-decoder" if has_decoder else "encoder"
    for name in registry.names("objective"):
        try:
            plugin = registry.load("objective", name)
        except PluginError:
            continue  # a broken plugin is reported by `plmforge plugins`; it never breaks conversion
        if architecture in plugin.conversion_default:
            return name
    raise CheckpointError(f"no installed objective plugin offers to train an {architecture} model (none lists "
                          f"{architecture!r} in its conversion_default), so the converted checkpoint has no spec")


def _to_plmforge(source: Path, dest: Path, config: ModelConfig, weights: dict[str, np.ndarray], vocab_size: int,
                 registry: Registry | None) -> Conversion:
    """A step-0 plmforge checkpoint holding the weights, with a spec that rebuilds exactly this model.

    The spec trains the objective :func:`conversion_objective` picks (the built-in plugins offer
    sentinel demasking for encoder-decoder models and BERT-style masking for encoder-only ones); with
    more than 144 tokens it uses the Ankh3 task prefixes. Parameters the model has and the checkpoint
    lacks (an encoder LM head, the ``[MASK]`` row) get the spec's fresh initialisation.
    """
    registry = registry or Registry()
    if vocab_size > BASE_SIZE + len(TASK_PREFIXES):
        raise CheckpointError(f"{source} has a vocabulary of {vocab_size} tokens; plmforge knows "
                              f"{BASE_SIZE + len(TASK_PREFIXES)} (Ankh's {BASE_SIZE} and the task prefixes "
                              f"{', '.join(TASK_PREFIXES)})")
    objective = {"name": conversion_objective(registry, config.has_decoder)}
    if vocab_size > BASE_SIZE:
        objective["prefix"] = TASK_PREFIXES[0]
    model = config.model_dump(mode="json")
    model.update(preset=None, init_from=None)
    spec = validate_spec({"name": dest.name or "converted", "model": model, "objectives": [objective],
                          "tracking": {"enabled": False}}, source=f"{dest} spec", registry=registry)
    vocab, slots = build_objectives(spec)
    needs = merged_needs(slots)
    expected = parameter_shapes(spec.model, len(vocab), needs.encoder_lm, needs.per_residue_heads)
    fitted = fit_init_weights(expected, lambda n: initial_weights({n: expected[n]}, spec.model, spec.seed)[n],
                              weights, vocab.tokens, None, vocab_size, source)
    fresh = sorted(set(expected) - set(fitted))
    fresh += [f"{n} rows {weights[n].shape[0]}..{expected[n][0] - 1} "
              f"({', '.join(vocab.tokens[weights[n].shape[0]:expected[n][0]])})" for n in VOCAB_PARAMS
              if n in weights and n in expected and weights[n].shape[0] < expected[n][0]]
    fitted.update(initial_weights({n: expected[n] for n in expected if n not in fitted}, spec.model, spec.seed))
    state = trainer_state(vocab.tokens, spec.backend.name, converted_from=str(source.resolve()))
    write_checkpoint(dest, 0, fitted, spec.model.hf_config(len(vocab)), {}, state, spec.to_yaml())
    return Conversion("plmforge", source, dest, config.model_dump(mode="json"), len(vocab), fresh=fresh,
                      objectives=[objective["name"]])
