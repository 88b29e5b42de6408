"""The checkpoint format: one directory of files that every backend, and Hugging Face, reads.

Layout of ``<output_dir>/checkpoints/step-000123/``::

    model.safetensors     weights, Hugging Face T5 names and layouts (float32)
    config.json           the model shape as a Hugging Face T5Config (vocab size included)
    training.safetensors  optimizer (and other backend) state arrays
    trainer_state.json    step, data stream positions, RNG state, backend metadata, metrics, extra tokens
    spec.yaml             the resolved spec

``model.safetensors`` + ``config.json`` alone is a Hugging Face T5 directory (Ankh's format), which may
instead hold its weights in shards listed by ``model.safetensors.index.json``; everything here that
reads weights reads both. Every directory is written by :func:`atomic_directory`: into a temporary
sibling, flushed, then renamed into place, so a crash never leaves a half-written directory and never
touches the previous good one. Nothing is pickled.

Reading never unpickles: safetensors files are parsed here (8-byte little-endian header length, a
JSON header of dtype/shape/offsets, raw little-endian data), which also covers bfloat16, which
``safetensors.numpy`` cannot read. Every weight comes back as float32.

Rules of the Hugging Face side (see docs/checkpoints.md):

* only the gated feed-forward of T5 v1.1 / Ankh (``gated-gelu``, ``gated-silu``) is supported;
* a checkpoint without decoder weights (``T5EncoderModel``) is an encoder-only model (0 decoder layers);
* tied embeddings (original T5, the ``T5Config`` default): Hugging Face scales the decoder output by
  ``d_model**-0.5`` and uses ``shared`` as LM head, so ``lm_head = shared * d_model**-0.5`` here;
* writing keeps only T5 parameters; plmforge's extra heads (``encoder_lm_head``, ``heads.*``) are
  dropped and reported.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import load_file, save_file

from plmforge.core.errors import CheckpointError
from plmforge.core.files import fsync_path
from plmforge.core.hf_tokenizer import write_tokenizer_files
from plmforge.core.vocab import BASE_SIZE

if TYPE_CHECKING:
    from plmforge.core.model_config import ModelConfig

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"
INDEX = "model.safetensors.index.json"  # sharded Hugging Face weights
TRAINING = "training.safetensors"
TRAINER_STATE = "trainer_state.json"  # present in plmforge checkpoints only
SPEC = "spec.yaml"
_STEP_DIR = re.compile(r"^step-(\d+)$")
#: Hugging Face checkpoints also store the tied input embedding under these names; they duplicate ``shared``.
TIED_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
#: Parameters with one row per vocabulary id.
VOCAB_PARAMS = ("shared.weight", "lm_head.weight", "encoder_lm_head.weight")
#: ModelConfig fields that fix the weights' shapes or meaning: a spec that sets one must agree with init_from.
SHAPE_FIELDS = ("d_model", "num_layers", "num_decoder_layers", "num_heads", "d_kv", "d_ff", "feed_forward_proj",
                "relative_attention_num_buckets", "relative_attention_max_distance", "layer_norm_epsilon")
#: ModelConfig fields also read from a checkpoint, which a spec may change freely (training choices).
SOFT_FIELDS = ("dropout_rate", "initializer_factor")
#: Weight files in formats that are never read (pickles can run code; the others need their frameworks).
_FOREIGN = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".msgpack")
_RESAVE = ("re-save it with transformers as safetensors: "
           "T5ForConditionalGeneration.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)")
#: Hugging Face ``T5Config`` defaults, for keys a config.json leaves out.
_T5_DEFAULTS: dict[str, Any] = dict(
    vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=None, num_heads=8,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
    layer_norm_epsilon=1e-6, initializer_factor=1.0, feed_forward_proj="relu")
_FEED_FORWARD = {"gated-gelu": "gated-gelu", "gated-gelu_new": "gated-gelu", "gated-silu": "gated-silu"}


def few(names: Sequence[str]) -> str:
    """The first few ``names`` and how many more: error messages stay one readable line."""
    return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")


def is_t5_param(name: str) -> bool:
    """Whether ``name`` is a Hugging Face T5 parameter (not one of plmforge's extra heads)."""
    return name in ("shared.weight", "lm_head.weight") or name.startswith(("encoder.", "decoder."))


# -- writing a directory atomically ------------------------------------------------------------------
@contextmanager
def atomic_directory(dest: Path) -> Iterator[Path]:
    """A temporary sibling of ``dest`` to fill; on success it is flushed and renamed to ``dest``.

    What was at ``dest`` is replaced whole, only once the new directory is complete; on any error
    (or interrupt) the temporary directory is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        yield tmp
        for file in tmp.iterdir():
            with open(file, "rb+") as handle:
                os.fsync(handle.fileno())
        fsync_path(tmp)
        if dest.exists():  # e.g. the same step written again: swap at the last moment
            stale = dest.parent / f".stale-{dest.name}-{os.getpid()}"
            dest.rename(stale)
            tmp.rename(dest)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            tmp.rename(dest)
        fsync_path(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- plmforge checkpoints ----------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    weights: dict[str, np.ndarray]
    training_arrays: dict[str, np.ndarray]
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def checkpoint_root(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_path(output_dir: Path, step: int) -> Path:
    return checkpoint_root(output_dir) / f"step-{step:06d}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / TRAINER_STATE).is_file()]


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def trainer_state(vocab_tokens: Sequence[str], backend_name: str, *, streams: Mapping[str, Any] | None = None,
                  backend: Mapping[str, Any] | None = None, tracking_run_id: str | None = None,
                  metrics: Mapping[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    """The contents of ``trainer_state.json`` (its ``step`` is added when written).

    ``vocab`` records the tokens beyond the Ankh base vocabulary, so a later run can check that every
    id means the same token; ``extra`` adds keys (e.g. ``converted_from``).
    """
    from plmforge.core import __version__

    return {
        "streams": dict(streams or {}),
        "backend": dict(backend or {}),
        "backend_name": backend_name,
        "tracking_run_id": tracking_run_id,
        "vocab": list(vocab_tokens[BASE_SIZE:]),
        "metrics": dict(metrics or {}),
        "plmforge_version": __version__,
        **extra,
    }


def _contiguous(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    # reshape: np.ascontiguousarray turns a 0-d array (an optimizer step count) into shape (1,)
    return {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in arrays.items()}


def write_checkpoint(path: Path, step: int, weights: Mapping[str, np.ndarray], model_config: dict[str, Any],
                     training_arrays: Mapping[str, np.ndarray], state: Mapping[str, Any], spec_yaml: str) -> Path:
    """Write one checkpoint directory at ``path`` atomically (replacing what is there); returns ``path``."""
    path = Path(path)
    with atomic_directory(path) as tmp:
        save_file(_contiguous(weights), str(tmp / WEIGHTS), metadata={"format": "pt"})
        save_file(_contiguous(training_arrays) or {"_empty": np.zeros(0, np.float32)}, str(tmp / TRAINING))
        (tmp / MODEL_CONFIG).write_text(json.dumps(model_config, indent=2))
        (tmp / TRAINER_STATE).write_text(json.dumps({**state, "step": step}, indent=2))
        (tmp / SPEC).write_text(spec_yaml)
    return path


def save_checkpoint(output_dir: Path, step: int, weights: Mapping[str, np.ndarray], model_config: dict[str, Any],
                    training_arrays: Mapping[str, np.ndarray], state: Mapping[str, Any], spec_yaml: str,
                    keep: int | None = None) -> Path:
    """Write a run's checkpoint of ``step`` atomically and prune older ones beyond ``keep``; returns its path."""
    final = write_checkpoint(checkpoint_path(output_dir, step), step, weights, model_config, training_arrays,
                             state, spec_yaml)
    if keep is not None:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, with_training_state: bool = True) -> Checkpoint:
    """Read a checkpoint directory (or a bare ``model.safetensors`` file)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        return Checkpoint(path=path, weights=_read(path), training_arrays={}, state={"step": 0})
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint not found")
    weights_file = path / WEIGHTS
    if not weights_file.is_file():
        raise CheckpointError(f"{path}: not a checkpoint (no {WEIGHTS})")
    state: dict[str, Any] = {"step": 0}
    training_arrays: dict[str, np.ndarray] = {}
    if (path / TRAINER_STATE).is_file():
        try:
            state = json.loads((path / TRAINER_STATE).read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path / TRAINER_STATE}: unreadable ({exc})") from None
    if with_training_state and (path / TRAINING).is_file():
        training_arrays = {k: v for k, v in _read(path / TRAINING).items() if k != "_empty"}
    return Checkpoint(path=path, weights=_read(weights_file), training_arrays=training_arrays, state=state)


def _read(file: Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(file))
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
        raise CheckpointError(f"{file}: cannot read safetensors file ({exc})") from None


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


# -- Hugging Face T5 directories ---------------------------------------------------------------------
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
    if str(path).strip() == "":
        raise CheckpointError(f"{what}: empty path")
    if "\0" in str(path):
        raise CheckpointError(f"{what} {str(path)!r} contains a NUL character: not a path")
    given = Path(path).expanduser()
    if not given.exists():
        where = "" if given.is_absolute() else f" (relative paths are taken from the working directory {Path.cwd()})"
        raise CheckpointError(f"{what} {str(path)!r} does not exist{where}")
    if not given.is_dir():
        raise CheckpointError(f"{what} {str(path)!r} is not a directory: give the checkpoint directory "
                              f"(with {MODEL_CONFIG} and {WEIGHTS})")
    if not (given / MODEL_CONFIG).is_file() and checkpoint_root(given).is_dir():
        latest = latest_checkpoint(given)
        if latest is None:
            raise CheckpointError(f"{what} {str(path)!r} is a run directory without a complete checkpoint")
        return latest
    return given


def is_plmforge_checkpoint(path: Path) -> bool:
    """A plmforge checkpoint or run directory (as opposed to a plain Hugging Face one)."""
    path = Path(path)
    return (path / TRAINER_STATE).is_file() or (checkpoint_root(path).is_dir() and not (path / MODEL_CONFIG).is_file())


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
            raise CheckpointError(f"{path / INDEX} lists shard(s) that are not there: {few(missing)}")
        return [path / f for f in files]
    foreign = sorted(p.name for p in path.iterdir() if p.suffix in _FOREIGN)
    if foreign:
        raise CheckpointError(f"{path} holds weights only as {few(foreign)}: plmforge reads safetensors and never "
                              f"unpickles files; {_RESAVE}")
    raise CheckpointError(f"{path}: no {WEIGHTS} (or {INDEX}) found: not a Hugging Face checkpoint directory")


def _tensor_names(files: list[Path]) -> list[str]:
    return [name for file in files for name in _header(file)[0]]


def _read_config(path: Path) -> dict[str, Any]:
    file = path / MODEL_CONFIG
    if not file.is_file():
        raise CheckpointError(f"{path}: no {MODEL_CONFIG} (a Hugging Face checkpoint directory has one next to "
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
    file = path / MODEL_CONFIG
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
        alias = next((a for a in TIED_ALIASES if a in weights), None)
        if alias is None:
            raise CheckpointError(f"{found.path}: no shared.weight (token embedding) in the weights")
        weights["shared.weight"] = weights[alias]
    for alias in TIED_ALIASES:
        weights.pop(alias, None)
    if found.shape["num_decoder_layers"] == 0:
        weights = {k: v for k, v in weights.items() if not k.startswith("decoder.") and k != "lm_head.weight"}
    else:
        head = weights.get("lm_head.weight", weights["shared.weight"])  # absent: tied to shared
        if found.scale_lm_head:  # fold Hugging Face's d_model**-0.5 decoder output scaling into the head
            head = head * np.float32(found.shape["d_model"] ** -0.5)
        weights["lm_head.weight"] = head
    return found.shape, weights, found.vocab_size


def check_destination(dest: Path, force: bool) -> None:
    """Refuse to write over a file, or over a non-empty directory unless ``force``."""
    if dest.exists() and not dest.is_dir():
        raise CheckpointError(f"{dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise CheckpointError(f"{dest} exists and is not empty; choose another destination or pass --force to "
                              f"replace it")


def write_hf_checkpoint(path: str | Path, model_config: ModelConfig, weights: Mapping[str, np.ndarray],
                        vocab_size: int, force: bool = False, tokens: Sequence[str] | None = None) -> list[str]:
    """Write a Hugging Face T5 directory (config.json + model.safetensors, float32) atomically.

    Only T5 parameters are written; the names of the others (plmforge's ``encoder_lm_head``,
    ``heads.*``) are returned, sorted. A model without decoder is written as a ``T5EncoderModel``.
    With ``tokens`` (the vocabulary, one token per embedding row) the tokenizer files are written too
    (:mod:`plmforge.core.hf_tokenizer`), so transformers loads model and tokenizer from the directory.
    """
    dest = Path(path)
    check_destination(dest, force)
    kept = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items() if is_t5_param(k)}
    dropped = sorted(k for k in weights if not is_t5_param(k))
    rows = kept["shared.weight"].shape[0] if "shared.weight" in kept else None
    if rows != vocab_size:
        raise CheckpointError(f"weights have {rows} embedding rows but the vocabulary has {vocab_size} tokens")
    if tokens is not None and len(tokens) != vocab_size:
        raise CheckpointError(f"{len(tokens)} tokens for a vocabulary of {vocab_size}: no tokenizer can be written")
    config = model_config.hf_config(vocab_size)
    if not model_config.has_decoder:
        config["architectures"] = ["T5EncoderModel"]
    with atomic_directory(dest) as tmp:
        save_file(kept, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / MODEL_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if tokens is not None:
            write_tokenizer_files(tmp, tokens)
    return dropped


def remove_unfinished_writes(output_dir: Path) -> list[Path]:
    """Remove the ``.tmp-step-*`` directories a run killed mid-write left in ``output_dir``; returns them.

    An atomic write removes its temporary directory on any error, but not when the process is killed.
    Only a run that owns ``output_dir`` (a new one, or the one resuming it) may call this.
    """
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = sorted(p for p in root.iterdir() if p.name.startswith(".tmp-step-") and p.is_dir())
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return found
