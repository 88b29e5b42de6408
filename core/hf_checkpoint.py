"""Hugging Face T5 checkpoint directories (Ankh's format): read them, write them, start runs from them.

A Hugging Face T5 directory holds ``config.json`` (a ``T5Config``) and the weights in
``model.safetensors`` or in shards listed by ``model.safetensors.index.json``. A plmforge checkpoint
(``<run>/checkpoints/step-N/``) is the same format plus training state, so everything here reads both.

Reading never unpickles: safetensors files are parsed here (8-byte little-endian header length, a
JSON header of dtype/shape/offsets, raw little-endian data), which also covers bfloat16, which
``safetensors.numpy`` cannot read. Every weight comes back as float32.

Conversion rules (see docs/checkpoints.md):

* only the gated feed-forward of T5 v1.1 / Ankh (``gated-gelu``, ``gated-silu``) is supported;
* a checkpoint without decoder weights (``T5EncoderModel``) is an encoder-only model (0 decoder layers);
* tied embeddings (original T5, the ``T5Config`` default): Hugging Face scales the decoder output by
  ``d_model**-0.5`` and uses ``shared`` as LM head, so ``lm_head = shared * d_model**-0.5`` here;
* vocabulary: ids follow the Ankh tokenizer. A checkpoint with fewer rows than the run's vocabulary
  keeps its rows and the run's fresh initialisation fills the rest (e.g. ``[NLU]``/``[S2S]``); a
  larger one is an error. A plmforge checkpoint records its extra tokens: they must be the run's
  first extra tokens, so an id never changes meaning;
* writing keeps only T5 parameters; plmforge's extra heads (``encoder_lm_head``, ``heads.*``) are
  dropped and reported.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plmforge.core.errors import CheckpointError
from plmforge.core.model_config import ModelConfig

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
TRAINER_STATE = "trainer_state.json"  # present in plmforge checkpoints only
#: Weight files in formats that are never read (pickles can run code; the others need their frameworks).
_FOREIGN = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".msgpack")
_RESAVE = ("re-save it with transformers as safetensors: "
           "T5ForConditionalGeneration.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)")
#: ModelConfig fields that fix the weights' shapes or meaning: a spec that sets one must agree with init_from.
SHAPE_FIELDS = ("d_model", "num_layers", "num_decoder_layers", "num_heads", "d_kv", "d_ff", "feed_forward_proj",
                "relative_attention_num_buckets", "relative_attention_max_distance", "layer_norm_epsilon")
#: ModelConfig fields also read from a checkpoint, which a spec may change freely (training choices).
SOFT_FIELDS = ("dropout_rate", "initializer_factor")
#: Parameters with one row per vocabulary id.
VOCAB_PARAMS = ("shared.weight", "lm_head.weight", "encoder_lm_head.weight")
_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")  # duplicates of shared
#: Hugging Face ``T5Config`` defaults, for keys a config.json leaves out.
_T5_DEFAULTS: dict[str, Any] = dict(
    vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=None, num_heads=8,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
    layer_norm_epsilon=1e-6, initializer_factor=1.0, feed_forward_proj="relu")
_FEED_FORWARD = {"gated-gelu": "gated-gelu", "gated-gelu_new": "gated-gelu", "gated-silu": "gated-silu"}


def is_t5_param(name: str) -> bool:
    """Whether ``name`` is a Hugging Face T5 parameter (not one of plmforge's extra heads)."""
    return name in ("shared.weight", "lm_head.weight") or name.startswith(("encoder.", "decoder."))


def _few(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")


# -- safetensors, parsed by hand -----------------------------------------------------------------------
_NUMPY_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2"}


def _header(file: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file (``__metadata__`` removed) and where its data starts."""
    try:
        with open(file, "rb") as handle:
            prefix = handle.read(8)
            size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 0 < size <= file.stat().st_size - 8:
                raise ValueError("bad header length")
            header = json.loads(handle.read(size))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{file}: cannot read safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: cannot read safetensors file (header is not a mapping)")
    header.pop("__metadata__", None)
    return header, 8 + size


def read_safetensors(file: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as float32 (from float32, float16, bfloat16 or float64)."""
    file = Path(file)
    header, start = _header(file)
    if not header:
        return {}
    data = np.memmap(file, dtype=np.uint8, mode="r")
    out = {}
    try:
        for name, info in header.items():
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            if dtype not in _NUMPY_DTYPES:
                raise CheckpointError(f"{file}: tensor {name} has dtype {dtype}; only float weights "
                                      f"({', '.join(_NUMPY_DTYPES)}) can be read")
            item = np.dtype(_NUMPY_DTYPES[dtype]).itemsize
            if end - begin != math.prod(shape) * item or start + end > data.size:
                raise CheckpointError(f"{file}: tensor {name} is damaged (its bytes do not match shape {shape})")
            raw = data[start + begin:start + end].view(_NUMPY_DTYPES[dtype])
            if dtype == "BF16":  # bfloat16 is the top half of a float32
                array = (raw.astype(np.uint32) << 16).view(np.float32)
            else:
                array = raw.astype(np.float32)  # a copy: nothing keeps the file mapped
            out[name] = array.reshape(shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{file}: cannot read safetensors file ({exc!r})") from None
    finally:
        del data
    return out


# -- locating a checkpoint -----------------------------------------------------------------------------
def resolve_checkpoint(path: str | Path, what: str = "checkpoint") -> Path:
    """The checkpoint directory ``path`` names: itself, or a plmforge run directory's latest checkpoint.

    ``what`` names the setting in error messages (e.g. ``model.init_from``). Relative paths are taken
    from the working directory.
    """
    from plmforge.core.checkpoint import checkpoint_root, latest_checkpoint

    if str(path).strip() == "":
        raise CheckpointError(f"{what}: empty path")
    given = Path(path).expanduser()
    if not given.exists():
        where = "" if given.is_absolute() else f" (relative paths are taken from the working directory {Path.cwd()})"
        raise CheckpointError(f"{what} {str(path)!r} does not exist{where}")
    if not given.is_dir():
        raise CheckpointError(f"{what} {str(path)!r} is not a directory: give the checkpoint directory "
                              f"(with {CONFIG} and {WEIGHTS})")
    if not (given / CONFIG).is_file() and checkpoint_root(given).is_dir():
        latest = latest_checkpoint(given)
        if latest is None:
            raise CheckpointError(f"{what} {str(path)!r} is a run directory without a complete checkpoint")
        return latest
    return given


def is_plmforge_checkpoint(path: Path) -> bool:
    """A plmforge checkpoint or run directory (as opposed to a plain Hugging Face one)."""
    path = Path(path)
    return (path / TRAINER_STATE).is_file() or ((path / "checkpoints").is_dir() and not (path / CONFIG).is_file())


def _weight_files(path: Path) -> list[Path]:
    if (path / WEIGHTS).is_file():
        return [path / WEIGHTS]
    if (path / INDEX).is_file():
        try:
            weight_map = json.loads((path / INDEX).read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{path / INDEX}: not a safetensors index ({exc!r})") from None
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise CheckpointError(f"{path / INDEX} lists shard(s) that are not there: {_few(missing)}")
        return [path / f for f in files]
    foreign = sorted(p.name for p in path.iterdir() if p.suffix in _FOREIGN)
    if foreign:
        raise CheckpointError(f"{path} holds weights only as {_few(foreign)}: plmforge reads safetensors and never "
                              f"unpickles files; {_RESAVE}")
    raise CheckpointError(f"{path}: no {WEIGHTS} (or {INDEX}) found: not a Hugging Face checkpoint directory")


def _tensor_names(files: list[Path]) -> list[str]:
    return [name for file in files for name in _header(file)[0]]


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG
    if not file.is_file():
        raise CheckpointError(f"{path}: no {CONFIG} (a Hugging Face checkpoint directory has one next to "
                              f"its weights)")
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{file}: unreadable ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{file}: not a JSON object")
    return config


def _blocks(names: list[str], stack: str) -> int:
    found = [int(n.split(".")[2]) for n in names if n.startswith(f"{stack}.block.") and n.split(".")[2].isdigit()]
    return max(found) + 1 if found else 0


@dataclass
class CheckpointShape:
    """What a checkpoint directory's config.json and tensor names say about the model."""

    path: Path
    shape: dict[str, Any]  # ModelConfig fields
    vocab_size: int
    scale_lm_head: bool  # Hugging Face scales decoder outputs by d_model**-0.5 (tied embeddings)
    files: list[Path] = field(default_factory=list)


def read_shape(path: str | Path, what: str = "checkpoint") -> CheckpointShape:
    """The model shape of a checkpoint directory, from config.json and the weights' names (no data read)."""
    path = resolve_checkpoint(path, what)
    config = _read_config(path)
    file = path / CONFIG
    files = _weight_files(path)
    names = _tensor_names(files)
    model_type = config.get("model_type", "t5")
    if model_type not in ("t5", "mt5"):
        raise CheckpointError(f"{file}: model_type {model_type!r} is not a T5 model (Ankh's is 't5')")
    get = {**_T5_DEFAULTS, **config}.get
    projection = get("feed_forward_proj")
    if projection not in _FEED_FORWARD:
        kind = "T5 v1.0 (not gated)" if "-" not in str(projection) else "not supported"
        raise CheckpointError(f"{file}: feed_forward_proj {projection!r} is {kind}; plmforge builds the gated "
                              f"feed-forward of T5 v1.1 / Ankh only ('gated-gelu' or 'gated-silu')")
    num_layers = get("num_layers")
    num_decoder_layers = get("num_decoder_layers")
    num_decoder_layers = num_layers if num_decoder_layers is None else num_decoder_layers  # as T5Config does
    encoder_only = config.get("architectures") == ["T5EncoderModel"] or not any(n.startswith("decoder.")
                                                                                 for n in names)
    if encoder_only:
        num_decoder_layers = 0
    for stack, expected in (("encoder", num_layers), ("decoder", num_decoder_layers)):
        stored = _blocks(names, stack)
        if stored and stored != expected:
            raise CheckpointError(f"{file} says {expected} {stack} layers but the weights hold {stored}")
    shape = {
        "d_model": get("d_model"), "num_layers": num_layers, "num_decoder_layers": num_decoder_layers,
        "num_heads": get("num_heads"), "d_kv": get("d_kv"), "d_ff": get("d_ff"),
        "feed_forward_proj": _FEED_FORWARD[projection],
        "relative_attention_num_buckets": get("relative_attention_num_buckets"),
        "relative_attention_max_distance": get("relative_attention_max_distance"),
        "dropout_rate": get("dropout_rate"), "layer_norm_epsilon": get("layer_norm_epsilon"),
        "initializer_factor": get("initializer_factor"),
    }
    # transformers >= 5 writes tie_word_embeddings: true with scale_decoder_outputs: false for untied
    # models; earlier versions only tie_word_embeddings. Both mean: scale unless untied.
    scale = config.get("scale_decoder_outputs", config.get("tie_word_embeddings", True) is not False)
    return CheckpointShape(path=path, shape=shape, vocab_size=int(get("vocab_size")), scale_lm_head=bool(scale),
                           files=files)


# -- reading and writing -------------------------------------------------------------------------------
def read_hf_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray], int]:
    """(ModelConfig shape fields, float32 weights with plmforge's names, vocabulary size) of a checkpoint dir.

    ``path`` is a Hugging Face T5 directory, a plmforge checkpoint, or a plmforge run directory (its
    latest checkpoint). The weights are those a plmforge model of that shape has: ``shared`` (from an
    ``embed_tokens`` alias if need be), an explicit ``lm_head`` when there is a decoder (scaled from
    ``shared`` for tied embeddings), no decoder weights for an encoder-only model, and any of
    plmforge's extra heads the directory holds.
    """
    found = read_shape(path)
    weights: dict[str, np.ndarray] = {}
    for file in found.files:
        weights.update(read_safetensors(file))
    if "shared.weight" not in weights:
        alias = next((a for a in _ALIASES if a in weights), None)
        if alias is None:
            raise CheckpointError(f"{found.path}: no shared.weight (token embedding) in the weights")
        weights["shared.weight"] = weights[alias]
    for alias in _ALIASES:
        weights.pop(alias, None)
    if found.shape["num_decoder_layers"] == 0:
        weights = {k: v for k, v in weights.items() if not k.startswith("decoder.") and k != "lm_head.weight"}
    else:
        head = weights.get("lm_head.weight", weights["shared.weight"])  # absent: tied to shared
        if found.scale_lm_head:  # fold Hugging Face's d_model**-0.5 decoder output scaling into the head
            head = head * np.float32(found.shape["d_model"] ** -0.5)
        weights["lm_head.weight"] = head
    return found.shape, weights, found.vocab_size


def extra_tokens(path: Path) -> tuple[str, ...] | None:
    """The tokens beyond the Ankh base vocabulary a plmforge checkpoint recorded; None for other checkpoints."""
    state_file = Path(path) / TRAINER_STATE
    if not state_file.is_file():
        return None
    try:
        tokens = json.loads(state_file.read_text()).get("vocab")
    except (OSError, ValueError, AttributeError):
        return None
    return tuple(tokens) if isinstance(tokens, list) else None


def _replace_dir(built: Path, dest: Path) -> None:
    """Rename the complete directory ``built`` to ``dest``, replacing what is there only at the last moment."""
    if dest.exists():
        stale = dest.parent / f".stale-{dest.name}-{os.getpid()}"
        dest.rename(stale)
        built.rename(dest)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        built.rename(dest)


def check_destination(dest: Path, force: bool) -> None:
    """Refuse to write over a file, or over a non-empty directory unless ``force``."""
    if dest.exists() and not dest.is_dir():
        raise CheckpointError(f"{dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise CheckpointError(f"{dest} exists and is not empty; choose another destination or pass --force to "
                              f"replace it")


def write_hf_checkpoint(path: str | Path, model_config: ModelConfig, weights: Mapping[str, np.ndarray],
                        vocab_size: int, force: bool = False) -> list[str]:
    """Write a Hugging Face T5 directory (config.json + model.safetensors, float32) atomically.

    Only T5 parameters are written; the names of the others (plmforge's ``encoder_lm_head``,
    ``heads.*``) are returned, sorted. A model without decoder is written as a ``T5EncoderModel``.
    """
    from safetensors.numpy import save_file

    dest = Path(path)
    check_destination(dest, force)
    kept = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items() if is_t5_param(k)}
    dropped = sorted(k for k in weights if not is_t5_param(k))
    rows = kept["shared.weight"].shape[0] if "shared.weight" in kept else None
    if rows != vocab_size:
        raise CheckpointError(f"weights have {rows} embedding rows but the vocabulary has {vocab_size} tokens")
    config = model_config.hf_config(vocab_size)
    if not model_config.has_decoder:
        config["architectures"] = ["T5EncoderModel"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        save_file(kept, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        for file in tmp.iterdir():
            with open(file, "rb+") as handle:
                os.fsync(handle.fileno())
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dropped


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
    from plmforge.core.vocab import BASE_SIZE

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
        problems = ([f"lacks {_few(missing)}"] if missing else []) + (
            [f"shape mismatch {', '.join(wrong[:3])}"] if wrong else [])
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    return out


def load_init_from(backend: Any, path: str | Path, vocab_tokens: list[str]) -> Path:
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


def convert_checkpoint(source: str | Path, dest: str | Path, to: str | None = None, force: bool = False) -> Conversion:
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
        dropped = write_hf_checkpoint(dest, config, weights, vocab_size, force=force)
        return Conversion("hf", checkpoint_dir, dest, shape, vocab_size, dropped=dropped)
    if to != "plmforge":
        raise CheckpointError(f"unknown conversion target {to!r}; choose 'hf' or 'plmforge'")
    if is_plmforge_checkpoint(given):
        raise CheckpointError(f"{given} is already a plmforge checkpoint (use --to hf to export it)")
    return _to_plmforge(checkpoint_dir, dest, config, weights, vocab_size)


def _to_plmforge(source: Path, dest: Path, config: ModelConfig, weights: dict[str, np.ndarray],
                 vocab_size: int) -> Conversion:
    """A step-0 plmforge checkpoint holding the weights, with a spec that rebuilds exactly this model.

    The spec trains ``mlm`` (sentinel demasking on the decoder) or, for an encoder-only model,
    ``bert_mlm``; with more than 144 tokens it uses the Ankh3 task prefixes. Parameters the model has
    and the checkpoint lacks (an encoder LM head, the ``[MASK]`` row) get the spec's fresh initialisation.
    """
    from plmforge.core import __version__
    from plmforge.core.checkpoint import save_checkpoint
    from plmforge.core.initialization import initial_weights
    from plmforge.core.run import build_objectives, merged_needs
    from plmforge.core.spec import validate_spec
    from plmforge.core.vocab import BASE_SIZE, TASK_PREFIXES

    prefixes = vocab_size > BASE_SIZE
    if vocab_size > BASE_SIZE + len(TASK_PREFIXES):
        raise CheckpointError(f"{source} has a vocabulary of {vocab_size} tokens; plmforge knows "
                              f"{BASE_SIZE + len(TASK_PREFIXES)} (Ankh's {BASE_SIZE} and the task prefixes "
                              f"{', '.join(TASK_PREFIXES)})")
    objective = {"name": "mlm" if config.has_decoder else "bert_mlm"}
    if prefixes:
        objective["prefix"] = TASK_PREFIXES[0]
    model = config.model_dump(mode="json")
    model.update(preset=None, init_from=None)
    spec = validate_spec({"name": dest.name or "converted", "model": model, "objectives": [objective],
                          "tracking": {"enabled": False}}, source=f"{dest} spec")
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
    state = {"streams": {}, "backend": {}, "backend_name": spec.backend.name, "tracking_run_id": None,
             "vocab": vocab.tokens[BASE_SIZE:], "metrics": {}, "plmforge_version": __version__,
             "converted_from": str(source.resolve())}
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        written = save_checkpoint(work, 0, fitted, spec.model.hf_config(len(vocab)), {}, state, spec.to_yaml())
        _replace_dir(written, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Conversion("plmforge", source, dest, config.model_dump(mode="json"), len(vocab), fresh=fresh,
                      objectives=[objective["name"]])
