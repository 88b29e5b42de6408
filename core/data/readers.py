"""Input readers of ``plmforge prepare``: FASTA, Parquet, CSV/TSV and saved Hugging Face datasets, in chunks.

Each reader cuts its file into *work units* of about ``chunk_bytes`` of input (whole FASTA records, or an
Arrow record batch of table rows) without ever holding the whole file, and :func:`parse_work` turns one
unit into cleaned sequences by the rules of :mod:`plmforge.core.data.fasta` (whitespace removed, upper
case, one trailing ``*`` dropped, empty records skipped and counted, letters outside the vocabulary an
error naming file, line or row, and record, or skipped with ``on_invalid="skip"``). Units are plain
data, so :func:`parse_work` runs in worker processes too.

The raw bytes of a streamed file (FASTA, CSV, TSV) pass through a :class:`RawTap` as they are read: its
sha256 and the progress come without a second read. Parquet and Arrow files are read by random access,
so their sha256 costs one extra sequential read (:func:`plmforge.core.files.sha256_file`).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from plmforge.core.data.fasta import (
    FastaBlock,
    FastaReport,
    RawTap,
    clean_sequence,
    fasta_blocks,
    invalid_residues_message,
    open_text_stream,
    parse_fasta_block,
)
from plmforge.core.errors import DataError

Kind = Literal["fasta", "parquet", "csv", "tsv", "hf-datasets"]
_COMPRESSED = (".gz", ".xz", ".bz2")
_FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas", ".fna", ".ffn", ".mpfa", ".aln")
_SUFFIX_KINDS: dict[str, Kind] = {**dict.fromkeys(_FASTA_SUFFIXES, "fasta"), ".parquet": "parquet", ".pq": "parquet",
                                  ".csv": "csv", ".tsv": "tsv", ".tab": "tsv"}
#: a table row is this many bytes on average (sequence ~300 residues plus an id), to size Parquet batches
_ROW_BYTES = 400


class Columns(NamedTuple):
    """Which table columns hold what (tabular inputs); ``None`` for an absent optional column."""

    sequence: str = "sequence"
    id: str | None = None
    label: str | None = None
    cluster: str | None = None

    def named(self) -> dict[str, str]:
        """Role -> column name, for the columns given."""
        return {role: name for role, name in self._asdict().items() if name is not None}


@dataclass
class Source:
    """One input of a preparation: where it is, its kind, and which split it feeds."""

    path: Path
    kind: Kind
    role: Literal["train", "validation"] = "train"
    #: size in bytes (all Arrow files of a datasets folder together)
    size: int = 0
    sha256: str | None = None
    report: FastaReport = field(default_factory=lambda: FastaReport(""))

    @property
    def shown(self) -> str:
        return str(self.path)

    def files(self) -> list[Path]:
        """The files holding its data (the Arrow files of a datasets folder, else the path itself)."""
        return _dataset_files(self.path) if self.kind == "hf-datasets" else [self.path]


class FastaWork(NamedTuple):
    """A unit of work: whole FASTA records of source ``source``."""

    source: int
    shown: str
    block: FastaBlock
    bytes_done: int  # input bytes of the source read up to the end of this unit (for progress)


class TableWork(NamedTuple):
    """A unit of work: rows of a table, columns renamed to their roles (``sequence``, ``id``, ...)."""

    source: int
    shown: str
    batch: Any  # pyarrow.RecordBatch
    first_row: int  # 0-based index of its first row in the file
    line_numbers: bool  # CSV/TSV: rows are lines (header on line 1); Parquet/Arrow: rows
    bytes_done: int


class Parsed(NamedTuple):
    """The kept records of a work unit: names, cleaned sequences (upper-case ASCII bytes), optional columns."""

    source: int
    names: list[str]
    sequences: list[bytes]
    labels: list[str] | None
    clusters: list[str] | None
    counts: dict[str, int]


# -- finding the inputs --------------------------------------------------------------------------------
def resolve_sources(patterns: Sequence[str], role: Literal["train", "validation"] = "train") -> list[Source]:
    """Expand globs (sorted) and classify each input; a missing file or an empty glob is a :class:`DataError`."""
    sources = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.exists():
            matches = [path]
        elif glob.has_magic(pattern):
            matches = [Path(m) for m in sorted(glob.glob(str(path)))]
            if not matches:
                raise DataError(f"{pattern}: no file matches this pattern")
        else:
            raise DataError(f"{pattern}: input file not found (looked at {path.absolute()})")
        for match in matches:
            kind = detect_kind(match)
            source = Source(match.absolute(), kind, role)
            source.size = sum(f.stat().st_size for f in source.files())
            source.report = FastaReport(source.shown)
            sources.append(source)
    return sources


def detect_kind(path: Path) -> Kind:
    """The format of an input, from its name (compression suffixes ignored), else from its first bytes."""
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            splits = _dataset_dict_splits(path)
            raise DataError(f"{path}: a datasets DatasetDict with splits {', '.join(splits) or '?'}; give one "
                            f"split's folder (e.g. {path / (splits[0] if splits else 'train')})")
        if (path / "state.json").is_file():
            return "hf-datasets"
        raise DataError(f"{path}: is a directory; give files, or a Hugging Face datasets folder made by "
                        "save_to_disk (with state.json)")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file (a named pipe, socket or device, whose reading may never end)")
    name = path.name.lower()
    compressed = name.endswith(_COMPRESSED)
    stem = name.rsplit(".", 1)[0] if compressed else name
    suffix = "." + stem.rsplit(".", 1)[1] if "." in stem else ""
    kind = _SUFFIX_KINDS.get(suffix)
    if kind == "parquet" and compressed:
        raise DataError(f"{path}: a compressed Parquet file; Parquet compresses internally, decompress it first")
    if kind is not None:
        return kind
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head == b"PAR1":
        return "parquet"
    with open_text_stream(path, str(path), what="input") as stream:
        first = stream.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if first.startswith(b">"):
        return "fasta"
    raise DataError(f"{path}: cannot tell the format; name it .fasta/.fa, .parquet, .csv or .tsv "
                    "(optionally .gz, .xz or .bz2)")


def _dataset_dict_splits(path: Path) -> list[str]:
    try:
        return [str(s) for s in json.loads((path / "dataset_dict.json").read_text()).get("splits", [])]
    except (OSError, ValueError, AttributeError):
        return []


def _dataset_files(path: Path) -> list[Path]:
    state_file = path / "state.json"
    try:
        state = json.loads(state_file.read_text())
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{state_file}: not a datasets state file (save_to_disk writes one): {exc}") from None
    files = [path / name for name in names]
    for file in files:
        if not file.is_file():
            raise DataError(f"{file}: listed in {state_file} but missing")
    return files


# -- checking table columns up front -----------------------------------------------------------------
def table_columns(source: Source) -> list[str]:
    """The column names of a tabular input (reads only its header or schema)."""
    import pyarrow as pa

    if source.kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(source.path).names)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{source.shown}: not a readable Parquet file (corrupt or truncated?): {exc}") from None
    if source.kind == "hf-datasets":
        first = source.files()[0]
        try:
            with pa.memory_map(str(first), "r") as handle:
                return list(pa.ipc.open_stream(handle).schema.names)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{first}: not a readable Arrow stream file of a datasets folder: {exc}") from None
    reader = _open_csv(source, None, None, 1 << 16)
    try:
        return list(reader.schema.names)
    finally:
        reader.close()


def check_columns(source: Source, columns: Columns) -> None:
    """Every named column must exist; the error lists the columns the file has."""
    have = table_columns(source)
    for role, name in columns.named().items():
        if name not in have:
            option = f"--{role}-column"
            raise DataError(f"{source.shown}: no column {name!r} ({option}); its columns are "
                            f"{', '.join(repr(c) for c in have)}")


# -- reading work units ----------------------------------------------------------------------------
def read_units(index: int, source: Source, columns: Columns, chunk_bytes: int,
               tap: RawTap | None = None) -> Iterator[FastaWork | TableWork]:
    """The work units of one source, in file order; ``tap`` sees the raw bytes of streamed files."""
    if source.kind == "fasta":
        tap = tap or RawTap()
        with open_text_stream(source.path, source.shown, tap) as stream:
            for block in fasta_blocks(stream, source.shown, chunk_bytes):
                yield FastaWork(index, source.shown, block, tap.bytes_read)
    elif source.kind in ("csv", "tsv"):
        yield from _csv_units(index, source, columns, chunk_bytes, tap or RawTap())
    elif source.kind == "parquet":
        yield from _parquet_units(index, source, columns, chunk_bytes)
    else:
        yield from _dataset_units(index, source, columns, chunk_bytes)


def _renamed(batch: Any, columns: Columns) -> Any:
    import pyarrow as pa

    named = columns.named()
    return pa.RecordBatch.from_arrays([batch.column(name) for name in named.values()], names=list(named))


def _open_csv(source: Source, columns: Columns | None, tap: RawTap | None, chunk_bytes: int) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    opened = open_text_stream(source.path, source.shown, tap, what=source.kind.upper())
    stream = opened.__enter__()
    include = list(columns.named().values()) if columns else []
    try:
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(block_size=max(chunk_bytes, 1 << 16), use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter="\t" if source.kind == "tsv" else ","),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in include}, include_columns=include,
                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (OSError, EOFError, pa.ArrowException) as exc:
        opened.__exit__(None, None, None)
        raise DataError(f"{source.shown}: cannot read as {source.kind.upper()} (corrupt, truncated or not "
                        f"{source.kind.upper()}?): {exc}") from None
    return _ClosingReader(reader, opened)


class _ClosingReader:
    """A pyarrow CSV reader that also closes the stream under it."""

    def __init__(self, reader: Any, opened: Any):
        self.reader, self.opened = reader, opened
        self.schema = reader.schema

    def __iter__(self):
        return iter(self.reader)

    def close(self) -> None:
        self.opened.__exit__(None, None, None)


def _csv_units(index: int, source: Source, columns: Columns, chunk_bytes: int, tap: RawTap) -> Iterator[TableWork]:
    import pyarrow as pa

    reader = _open_csv(source, columns, tap, chunk_bytes)
    row = 0
    try:
        for batch in reader:
            if batch.num_rows:
                yield TableWork(index, source.shown, _renamed(batch, columns), row, True, tap.bytes_read)
                row += batch.num_rows
    except (OSError, EOFError, pa.ArrowException) as exc:
        raise DataError(f"{source.shown}: cannot read {source.kind.upper()} after row {row} (corrupt or "
                        f"truncated?): {exc}") from None
    finally:
        reader.close()


def _parquet_units(index: int, source: Source, columns: Columns, chunk_bytes: int) -> Iterator[TableWork]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        parquet = pq.ParquetFile(source.path)
        total = max(parquet.metadata.num_rows, 1)
        batches = parquet.iter_batches(batch_size=max(256, chunk_bytes // _ROW_BYTES),
                                       columns=list(columns.named().values()))
        for batch in batches:
            row_end = row + batch.num_rows
            yield TableWork(index, source.shown, _renamed(batch, columns), row, False, source.size * row_end // total)
            row = row_end
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{source.shown}: not a readable Parquet file (corrupt or truncated? failed after row "
                        f"{row}): {exc}") from None


def _dataset_units(index: int, source: Source, columns: Columns, chunk_bytes: int) -> Iterator[TableWork]:
    """Arrow stream files of a datasets folder, small record batches merged to about ``chunk_bytes``."""
    import pyarrow as pa

    row, done = 0, 0
    target_rows = max(256, chunk_bytes // _ROW_BYTES)
    for file in source.files():
        pending: list[Any] = []
        rows = 0
        try:
            with pa.memory_map(str(file), "r") as handle:
                for batch in pa.ipc.open_stream(handle):
                    pending.append(_renamed(batch, columns))
                    rows += batch.num_rows
                    if rows >= target_rows:
                        yield TableWork(index, source.shown, pa.concat_batches(pending), row, False, done)
                        row, pending, rows = row + rows, [], 0
        except (OSError, KeyError, pa.ArrowException) as exc:
            raise DataError(f"{file}: not a readable Arrow stream file of a datasets folder (failed after row "
                            f"{row}): {exc}") from None
        done += file.stat().st_size
        if pending:
            yield TableWork(index, source.shown, pa.concat_batches(pending), row, False, done)
            row += rows


# -- parsing a work unit (in any process) ------------------------------------------------------------
def parse_work(unit: FastaWork | TableWork, letters: bytes, on_invalid: str) -> Parsed:
    """The kept records of one unit, by the FASTA reader's rules and messages."""
    if isinstance(unit, FastaWork):
        result = parse_fasta_block(unit.block, unit.shown, letters, on_invalid, as_text=False)
        return Parsed(unit.source, result.ids, result.sequences, None, None, result.report.counts())
    return _parse_rows(unit, letters, on_invalid == "skip")


def _text(values: list[Any]) -> list[str]:
    return ["" if v is None else v if isinstance(v, str) else str(v) for v in values]


def _parse_rows(unit: TableWork, letters: bytes, skip_invalid: bool) -> Parsed:
    batch = unit.batch
    names = batch.schema.names
    raw = batch.column("sequence").to_pylist()
    ids = _text(batch.column("id").to_pylist()) if "id" in names else None
    labels = _text(batch.column("label").to_pylist()) if "label" in names else None
    clusters = _text(batch.column("cluster").to_pylist()) if "cluster" in names else None
    kept: list[int] = []
    sequences: list[bytes] = []
    report = FastaReport(unit.shown)
    for k, value in enumerate(raw):
        report.records_read += 1
        if value is None:
            value = b""
        seq = clean_sequence(value.encode("utf-8") if isinstance(value, str) else bytes(value))
        if not seq:
            report.skipped_empty += 1
            continue
        bad = seq.translate(None, letters)
        if bad:
            if skip_invalid:
                report.skipped_invalid += 1
                continue
            row = unit.first_row + k
            where = f"{unit.shown}:{row + 2}" if unit.line_numbers else f"{unit.shown}: row {row + 1}"
            rid = ids[k] if ids is not None else f"row {row + 1}"
            raise DataError(invalid_residues_message(where, rid, seq, bad, letters))
        kept.append(k)
        sequences.append(seq)
    report.records_kept = len(kept)
    if ids is None:
        ids = [str(unit.first_row + k + 1) for k in range(len(raw))]
    every = len(kept) == len(raw)
    pick = (lambda values: values) if every else (lambda values: [values[k] for k in kept])
    return Parsed(unit.source, pick(ids), sequences, None if labels is None else pick(labels),
                  None if clusters is None else pick(clusters), report.counts())


def stat_signature(path: Path) -> tuple[int, int]:
    """Size and modification time: a source that changes while it is read is caught by comparing these."""
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns
