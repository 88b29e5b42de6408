"""Where the proteins of a run come from: a built-in corpus or FASTA files, split for training.

``load_splits(data)`` reads the spec's data section (duck-typed: ``source``, ``validation_source``,
``validation_fraction``, ``on_invalid``) and returns :class:`ProteinSet` objects per split:

- ``source: builtin:NAME`` loads a corpus shipped in ``plmforge/core/data/corpora`` with its own
  ``train`` / ``validation`` / ``test`` split (``validation_fraction`` is not used);
- ``source: CORPUS_DIR`` opens a prepared corpus (``plmforge prepare``, see :mod:`.corpus`): its
  splits are memory-mapped, so a run starts at once whatever the corpus's size, and its counts come
  from its manifest (``validation_fraction`` is not used: the split was made by ``prepare``);
- ``source: PATH`` reads a FASTA file (plain or compressed) whole into memory at every start; above
  :data:`LARGE_FASTA_BYTES` it warns to prepare a corpus instead. Without ``validation_source``,
  ``validation_fraction`` of it is held out by a hash of each *sequence* (CRC-32 of the upper-case
  letters), so identical sequences always land in the same split and the split does not depend on
  the order of the file;
- ``validation_source: PATH`` gives the validation proteins explicitly (for a built-in or prepared
  corpus too, replacing its validation split).

Relative paths are resolved against ``base_dir`` (e.g. the spec file's folder), else the current
directory.
"""

from __future__ import annotations

import itertools
import lzma
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from plmforge.core.data.corpus import open_corpus
from plmforge.core.data.fasta import FastaReadResult, read_fasta
from plmforge.core.data.proteins import ProteinSet
from plmforge.core.errors import DataError
from plmforge.core.vocab import Vocab

BUILTIN_PREFIX = "builtin:"
#: built-in corpus name -> file in the ``corpora`` folder of this package
BUILTIN_CORPORA = {"scl2205": "scl2205.tsv.xz"}
DEFAULT_SOURCE = "builtin:scl2205"
SPLIT_ORDER = ("train", "validation", "test")
#: A FASTA source bigger than this (bytes, compressed or not) draws a warning to ``plmforge prepare`` it:
#: it is parsed and encoded in memory at every run start, where a prepared corpus opens in constant time.
LARGE_FASTA_BYTES = 1 << 30


@dataclass
class LoadedData:
    """Proteins per split (``train``, ``validation`` and, when the source has one, ``test``)."""

    splits: dict[str, ProteinSet]
    report: dict[str, int] = field(default_factory=dict)
    #: split -> where its proteins came from (for logging)
    origins: dict[str, str] = field(default_factory=dict)

    @property
    def train(self) -> ProteinSet:
        return self.splits["train"]

    @property
    def validation(self) -> ProteinSet:
        return self.splits["validation"]


def load_splits(
    data: Any, base_dir: str | os.PathLike[str] | None = None, vocab: Vocab | None = None
) -> LoadedData:
    """Load the proteins named by a spec's data section; see the module docstring."""
    source = getattr(data, "source", None) or DEFAULT_SOURCE
    validation_source = getattr(data, "validation_source", None)
    fraction = float(getattr(data, "validation_fraction", 0.05))
    on_invalid = getattr(data, "on_invalid", "error")
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"validation_fraction must be in [0, 1), got {fraction}")
    vocab = vocab if vocab is not None else Vocab()
    report: dict[str, int] = {}
    origins: dict[str, str] = {}

    from_corpus = False
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX) :]
        splits = load_builtin(name, vocab=vocab)
        origins.update({s: f"{source} ({s})" for s in splits})
    elif _resolve(source, base_dir).is_dir():
        corpus = open_corpus(_resolve(source, base_dir), vocab=vocab)
        from_corpus = True
        splits = dict(corpus.splits)
        report.update(corpus.report())
        origins.update({s: f"{source} ({s}, prepared)" for s in splits})
        if validation_source:
            splits.pop("validation", None)
    else:
        result = _read(source, base_dir, on_invalid, vocab)
        report.update(result.report.counts("source."))
        proteins = result.to_protein_set(vocab)
        origins["train"] = source
        if validation_source:
            splits = {"train": proteins}
        else:
            held = validation_mask(result.sequences, fraction)
            splits = {"train": proteins.subset(~held), "validation": proteins.subset(held)}
            origins["validation"] = f"{source} ({fraction:g} held out by sequence hash)"
            if len(splits["train"]) == 0:
                raise DataError(
                    f"{source}: all {len(proteins)} proteins fell into the validation split "
                    f"(validation_fraction={fraction:g}); add proteins or give validation_source"
                )

    if validation_source:
        result = _read(validation_source, base_dir, on_invalid, vocab)
        report.update(result.report.counts("validation_source."))
        splits["validation"] = result.to_protein_set(vocab)
        origins["validation"] = validation_source
        if not from_corpus:  # a prepared corpus is not scanned at start (it may not fit in memory)
            train_seqs = set(_sequence_bytes(splits["train"]))
            report["validation.in_train"] = sum(s in train_seqs for s in _sequence_bytes(splits["validation"]))

    splits = {s: splits[s] for s in SPLIT_ORDER if s in splits}
    for split, proteins in splits.items():
        report[f"{split}.proteins"] = len(proteins)
        report[f"{split}.residues"] = proteins.total_residues
    return LoadedData(splits, report, origins)


def validation_mask(sequences: Sequence[str] | Sequence[bytes], fraction: float) -> np.ndarray:
    """True for sequences held out for validation: CRC-32 of the ASCII text below ``fraction * 2**32``.

    ``plmforge prepare`` splits with this too, so a prepared corpus and a FASTA source split alike.
    """
    hashes = np.fromiter(
        (zlib.crc32(s if isinstance(s, bytes) else s.encode("ascii")) for s in sequences),
        dtype=np.uint64, count=len(sequences),
    )
    return hashes < np.uint64(int(fraction * 2**32))


def builtin_names() -> list[str]:
    return sorted(BUILTIN_CORPORA)


def load_builtin(name: str, vocab: Vocab | None = None) -> dict[str, ProteinSet]:
    """A built-in corpus as ProteinSets per split, each labelled with the corpus's label column."""
    if name not in BUILTIN_CORPORA:
        available = ", ".join(f"{BUILTIN_PREFIX}{n}" for n in builtin_names())
        raise DataError(f"unknown built-in corpus {BUILTIN_PREFIX}{name}; available: {available}")
    resource = resources.files("plmforge.core.data").joinpath("corpora", BUILTIN_CORPORA[name])
    try:
        text = lzma.decompress(resource.read_bytes())
    except (OSError, lzma.LZMAError) as exc:
        raise DataError(f"built-in corpus {name}: cannot read {resource}: {exc}") from None
    lines = text.split(b"\n")
    header = lines[0].split(b"\t")
    if header != [b"accession", b"split", b"location", b"sequence"]:
        raise DataError(f"built-in corpus {name}: unexpected header {lines[0][:80]!r}")
    columns: dict[bytes, tuple[list[str], list[str], list[bytes]]] = {}
    for row in lines[1:]:
        if not row:
            continue
        acc, split, location, seq = row.split(b"\t")
        names, labels, seqs = columns.setdefault(split, ([], [], []))
        names.append(acc.decode())
        labels.append(location.decode())
        seqs.append(seq)
    splits = {}
    for split in SPLIT_ORDER:
        if split.encode() in columns:
            names, labels, seqs = columns[split.encode()]
            splits[split] = ProteinSet.from_sequences(names, seqs, labels=labels, vocab=vocab)
    return splits


def _resolve(path_text: str, base_dir) -> Path:
    path = Path(path_text).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    return path


def _read(path_text: str, base_dir, on_invalid: str, vocab: Vocab) -> FastaReadResult:
    path = _resolve(path_text, base_dir)
    warn_if_large(path)
    return read_fasta(path, on_invalid=on_invalid, vocab=vocab)


def warn_if_large(path: Path) -> None:
    """Warn that a FASTA file above :data:`LARGE_FASTA_BYTES` should be prepared once instead."""
    try:
        size = path.stat().st_size
    except OSError:
        return  # read_fasta reports the missing file
    if size > LARGE_FASTA_BYTES:
        from plmforge.core.progress import warn

        warn(f"{path} is {size / 2**30:.1f} GiB of FASTA, read into memory at every run start; prepare it once "
             f"with `plmforge prepare {path} -o CORPUS_DIR` and set data.source: CORPUS_DIR (docs/corpora.md)")


def _sequence_bytes(proteins: ProteinSet):
    res = proteins.residues
    return (res[a:b].tobytes() for a, b in itertools.pairwise(proteins.offsets.tolist()))
