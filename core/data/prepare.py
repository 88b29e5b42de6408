"""``plmforge prepare``: convert FASTA / Parquet / CSV / datasets inputs into a prepared corpus directory.

The inputs are read once, in chunks (:mod:`plmforge.core.data.readers`), so memory is bounded by a few
chunks per worker whatever the input size. With ``workers > 1`` chunks are parsed and encoded in worker
processes, and their results are written strictly in input order, so the corpus is byte-identical for
any number of workers. The validation split is the run's rule (CRC-32 of the sequence below
``fraction * 2**32``, as :func:`plmforge.core.data.sources.validation_mask`), or the given validation
sources. :class:`~plmforge.core.data.corpus.CorpusWriter` builds the directory in a temporary sibling and
renames it into place at the end, so an interrupted preparation leaves nothing that looks complete.

The sha256 of every input is recorded: FASTA and CSV/TSV are hashed from the bytes as they stream by
(no extra read), Parquet and Arrow files with one extra sequential read. Each input's size and
modification time are compared before and after, so a file still being written (a download) is
refused; ``verify_sources`` re-reads every input at the end and checks its sha256 too.
"""

from __future__ import annotations

import collections
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from plmforge.core.data.corpus import CorpusWriter
from plmforge.core.data.fasta import RawTap, residue_letters
from plmforge.core.data.readers import (
    Columns,
    Parsed,
    Source,
    check_columns,
    parse_work,
    read_units,
    resolve_sources,
    stat_signature,
)
from plmforge.core.data.sources import validation_mask
from plmforge.core.errors import DataError
from plmforge.core.files import sha256_file
from plmforge.core.vocab import Vocab

#: bytes of input per work unit; a worker holds about two units' worth of text and arrays
DEFAULT_CHUNK_BYTES = 1 << 24
_COUNT_KEYS = ("records_read", "records_kept", "skipped_empty", "skipped_invalid")


@dataclass
class PrepareResult:
    path: Path
    manifest: dict[str, Any]
    seconds: float
    input_bytes: int


@dataclass
class Encoded:
    """One work unit encoded: residue ids back to back, lengths, which proteins are held out, columns."""

    source: int
    residues: np.ndarray  # uint8
    lengths: np.ndarray  # int64
    held: np.ndarray  # bool: validation by sequence hash
    names: list[str]
    labels: list[str] | None
    clusters: list[str] | None
    counts: dict[str, int]


def encode_unit(unit: Any, letters: bytes, on_invalid: str, fraction: float) -> Encoded:
    """Parse, clean and encode one work unit (runs in a worker process when there are several)."""
    parsed: Parsed = parse_work(unit, letters, on_invalid)
    seqs = parsed.sequences  # already checked against the vocabulary's letters by the parser
    residues = _VOCAB.encode_residues(b"".join(seqs)).astype(np.uint8) if seqs else np.zeros(0, np.uint8)
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    held = validation_mask(seqs, fraction)
    return Encoded(parsed.source, residues, lengths, held, parsed.names, parsed.labels, parsed.clusters,
                   parsed.counts)


_VOCAB = Vocab()


def prepare_corpus(
    sources: Sequence[str],
    output: str | Path,
    *,
    validation_sources: Sequence[str] = (),
    columns: Columns = Columns(),
    validation_fraction: float = 0.05,
    on_invalid: Literal["error", "skip"] = "error",
    workers: int = 1,
    overwrite: bool = False,
    verify_sources: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: bool = False,
) -> PrepareResult:
    """Convert ``sources`` into a prepared corpus at ``output``; see the module docstring."""
    started = time.perf_counter()
    if on_invalid not in ("error", "skip"):
        raise DataError(f"--on-invalid must be 'error' or 'skip', not {on_invalid!r}")
    if not 0.0 <= validation_fraction < 1.0:
        raise DataError(f"--validation-fraction must be in [0, 1), got {validation_fraction}")
    if workers < 1:
        raise DataError(f"--workers must be at least 1, got {workers}")
    if not sources:
        raise DataError("no input given: name FASTA, Parquet, CSV/TSV files or a datasets folder")
    given = bool(validation_sources)
    inputs = resolve_sources(sources, "train") + resolve_sources(validation_sources, "validation")
    for source in inputs:
        if source.kind == "fasta":
            extra = [f"--{role}-column" for role in ("label", "cluster") if getattr(columns, role)]
            if extra:
                raise DataError(f"{source.shown}: {' and '.join(extra)} need tabular inputs; a FASTA file has "
                                "no such columns (prepare FASTA and tables separately)")
        else:
            check_columns(source, columns)
    signatures = [[stat_signature(f) for f in s.files()] for s in inputs]
    fraction = 0.0 if given else validation_fraction
    splits = ("train", "validation") if given or fraction > 0 else ("train",)
    optional = tuple(role for role in ("label", "cluster") if getattr(columns, role))
    letters = residue_letters(Vocab())
    total_bytes = sum(s.size for s in inputs)

    with CorpusWriter(output, splits=splits, columns=optional, overwrite=overwrite) as writer, \
            _Bar(total_bytes, progress) as bar, _Encoder(workers) as encoder:
        done_before = 0
        kept = collections.Counter()
        taps: list[RawTap | None] = []
        for index, source in enumerate(inputs):
            tap = RawTap() if source.kind in ("fasta", "csv", "tsv") else None
            taps.append(tap)
            units = read_units(index, source, columns, chunk_bytes, tap)
            for unit, encoded in encoder.map(units, letters, on_invalid, fraction):
                kept.update(_write(writer, encoded, source.role, fraction))
                for key in _COUNT_KEYS:
                    setattr(source.report, key, getattr(source.report, key) + encoded.counts[key])
                bar.advance(done_before + unit.bytes_done, int(encoded.lengths.size))
            done_before += source.size
            bar.advance(done_before, 0)
            if source.report.records_read == 0 and source.kind != "fasta":  # fasta_blocks refuses it itself
                raise DataError(f"{source.shown}: no rows")
        for source, tap, before in zip(inputs, taps, signatures):
            after = [stat_signature(f) for f in source.files()]
            if after != before:
                raise DataError(f"{source.shown}: changed while prepare read it (size or modification time); "
                                "wait until it is complete and run prepare again")
            source.sha256 = tap.sha256.hexdigest() if tap is not None else _hash_source(source)
            if verify_sources:
                again = _hash_source(source)
                if again != source.sha256:
                    raise DataError(f"{source.shown}: sha256 changed while prepare read it; run prepare again")
        counts = {key: sum(getattr(s.report, key) for s in inputs) for key in _COUNT_KEYS}
        if kept["train"] == 0:
            held = 0 if given else kept["validation"]
            raise DataError(f"{', '.join(sources)}: no protein left for training ({held} fell into the validation "
                            f"split with --validation-fraction {validation_fraction:g}, "
                            f"{counts['skipped_empty']} empty, {counts['skipped_invalid']} invalid skipped)")
        manifest_fields = {
            "sources": [{"path": s.shown, "size": s.size, "sha256": s.sha256, "kind": s.kind, "role": s.role,
                         "report": s.report.counts()} for s in inputs],
            "columns": {"sequence": columns.sequence, "id": columns.id, "label": columns.label,
                        "cluster": columns.cluster},
            "split": {"kind": "given"} if given else {"kind": "sequence_hash", "fraction": validation_fraction},
            "report": counts,
        }
        path = writer.finish(manifest_fields)
    return PrepareResult(path, writer.manifest, time.perf_counter() - started, total_bytes)


def _hash_source(source: Source) -> str:
    if source.kind != "hf-datasets":
        return sha256_file(source.path)
    import hashlib

    digest = hashlib.sha256()  # a folder: the sha256 of its files' sha256s, in state.json order
    for file in source.files():
        digest.update(bytes.fromhex(sha256_file(file)))
    return digest.hexdigest()


def _write(writer: CorpusWriter, encoded: Encoded, role: str, fraction: float) -> dict[str, int]:
    """Append a unit to its split(s); returns the proteins written per split."""
    n = encoded.lengths.size
    if n == 0:
        return {}
    if role == "validation":
        writer.add("validation", encoded.residues, encoded.lengths, encoded.names, encoded.labels, encoded.clusters)
        return {"validation": n}
    held = encoded.held
    if not held.any():
        writer.add("train", encoded.residues, encoded.lengths, encoded.names, encoded.labels, encoded.clusters)
        return {"train": n}
    per_residue = np.repeat(held, encoded.lengths)
    for split, keep, keep_residues in (("train", ~held, ~per_residue), ("validation", held, per_residue)):
        index = np.flatnonzero(keep).tolist()
        if not index:
            continue
        writer.add(split, encoded.residues[keep_residues], encoded.lengths[keep], [encoded.names[i] for i in index],
                   None if encoded.labels is None else [encoded.labels[i] for i in index],
                   None if encoded.clusters is None else [encoded.clusters[i] for i in index])
    held_count = int(held.sum())
    return {"train": n - held_count, "validation": held_count}


class _Encoder:
    """Encodes work units in order: in this process, or in a pool with a bounded number of units in flight."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool: Any = None

    def __enter__(self) -> _Encoder:
        if self.workers > 1:
            # spawn: a clean interpreter per worker (no fork of the progress bar's thread)
            self.pool = multiprocessing.get_context("spawn").Pool(self.workers)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.pool is not None:
            if exc_type is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()

    def map(self, units: Iterator[Any], letters: bytes, on_invalid: str, fraction: float
            ) -> Iterator[tuple[Any, Encoded]]:
        if self.pool is None:
            for unit in units:
                yield unit, encode_unit(unit, letters, on_invalid, fraction)
            return
        pending: collections.deque = collections.deque()
        limit = 2 * self.workers  # units read ahead: bounds memory to a few chunks per worker
        for unit in units:
            pending.append((unit, self.pool.apply_async(encode_unit, (unit, letters, on_invalid, fraction))))
            if len(pending) >= limit:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()


class _Bar:
    """A rich progress bar over input bytes with bytes/s and proteins/s; nothing when not on a terminal."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self._bar: Any = None
        self._task: Any = None
        self._proteins = 0
        self._start = time.perf_counter()

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.console import Console

            console = Console(stderr=True)
            if console.is_terminal:
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    TextColumn,
                    TimeRemainingColumn,
                    TransferSpeedColumn,
                )

                self._bar = Progress(TextColumn("[bold]prepare"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                     console=console, transient=False)
                self._bar.__enter__()
                self._task = self._bar.add_task("prepare", total=max(self.total, 1), info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def advance(self, bytes_done: int, proteins: int) -> None:
        self._proteins += proteins
        if self._bar is None:
            return
        rate = self._proteins / max(time.perf_counter() - self._start, 1e-9)
        self._bar.update(self._task, completed=min(bytes_done, self.total),
                         info=f"{self._proteins:,} proteins, {rate:,.0f}/s")
