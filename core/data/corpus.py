"""A prepared corpus: proteins already encoded on disk, opened memory-mapped so a run starts at once.

``plmforge prepare`` reads FASTA or tabular files once and writes a directory that any run can open in
constant time, whatever its size (docs/corpora.md)::

    CORPUS_DIR/manifest.json          written last: its presence marks a complete corpus
    CORPUS_DIR/<split>/residues.npy   uint8 residue ids, all proteins back to back
    CORPUS_DIR/<split>/offsets.npy    int64 [n + 1]; protein i = residues[offsets[i]:offsets[i + 1]]
    CORPUS_DIR/<split>/lengths.npy    int32 [n]; what the batch planner reads
    CORPUS_DIR/<split>/meta.arrow     Arrow IPC file: "name", optional "label" and "cluster"

Everything is plain numpy / Arrow, nothing pickled. :class:`CorpusWriter` streams chunks to disk, so
its memory is bounded by a chunk, and builds the corpus in a temporary sibling renamed into place at
the end. :func:`open_corpus` checks the manifest and every file's size (sha256 on request) and returns
:class:`ProteinSet` objects over memory maps: nothing is read until a protein is used.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import io
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plmforge.core.data.proteins import ProteinSet
from plmforge.core.errors import DataError
from plmforge.core.files import fsync_path, sha256_file
from plmforge.core.vocab import RESIDUES, Vocab

FORMAT = "plmforge-corpus"
FORMAT_VERSION = 1
VOCAB_VERSION = "ankh-residues-v1"
MANIFEST = "manifest.json"
SPLITS = ("train", "validation", "test")
#: optional text columns of meta.arrow besides "name"
OPTIONAL_COLUMNS = ("label", "cluster")
RESIDUES_FILE, OFFSETS_FILE, LENGTHS_FILE, META_FILE = "residues.npy", "offsets.npy", "lengths.npy", "meta.arrow"
_COPY_BLOCK = 1 << 24


def _plmforge_version() -> str:
    try:
        return importlib.metadata.version("plmforge")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- writing ----------------------------------------------------------------------------------------
class _GrowingNpy:
    """A 1-D ``.npy`` file appended to chunk by chunk; the header is rewritten with the final length.

    numpy pads a 1-D header with room for any length, so the header written for length 0 has the same
    size as the final one and is overwritten in place (no second copy of the data).
    """

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype, self.count = path, np.dtype(dtype), 0
        self._file = open(path, "wb")
        self._header_size = self._file.write(self._header(0))

    def _header(self, count: int) -> bytes:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buffer, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (count,)})
        return buffer.getvalue()

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype).reshape(-1)
        self._file.write(values.tobytes())
        self.count += values.size

    def close(self) -> None:
        if self._file.closed:
            return
        header = self._header(self.count)
        if len(header) == self._header_size:
            self._file.seek(0)
            self._file.write(header)
            self._file.close()
            return
        self._file.close()  # a header that outgrew its room (not seen with numpy's padding): copy once
        raw = self.path.with_suffix(".raw")
        self.path.rename(raw)
        with open(raw, "rb") as src, open(self.path, "wb") as dst:
            src.seek(self._header_size)
            dst.write(header)
            shutil.copyfileobj(src, dst, _COPY_BLOCK)
        raw.unlink()

    def abort(self) -> None:
        self._file.close()


class _SplitWriter:
    """The four files of one split, appended to chunk by chunk."""

    def __init__(self, folder: Path, columns: tuple[str, ...]):
        import pyarrow as pa

        folder.mkdir(parents=True)
        self.folder, self.columns = folder, columns
        self.residues = _GrowingNpy(folder / RESIDUES_FILE, np.uint8)
        self.offsets = _GrowingNpy(folder / OFFSETS_FILE, np.int64)
        self.lengths = _GrowingNpy(folder / LENGTHS_FILE, np.int32)
        self.offsets.append(np.zeros(1, np.int64))
        self.total = 0
        self.schema = pa.schema([pa.field(c, pa.string(), nullable=False) for c in ("name", *columns)])
        self._sink = pa.OSFile(str(folder / META_FILE), "wb")
        self._meta = pa.ipc.new_file(self._sink, self.schema)

    def add(self, residue_ids: np.ndarray, lengths: np.ndarray, columns: dict[str, Sequence[str]]) -> None:
        import pyarrow as pa

        self.residues.append(residue_ids)
        self.lengths.append(lengths)
        self.offsets.append(self.total + np.cumsum(lengths, dtype=np.int64))
        self.total += int(lengths.sum(dtype=np.int64))
        arrays = [pa.array(list(columns[c]), type=pa.string()) for c in ("name", *self.columns)]
        self._meta.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        for part in (self.residues, self.offsets, self.lengths):
            part.close()
        self._meta.close()
        self._sink.close()

    def abort(self) -> None:
        for part in (self.residues, self.offsets, self.lengths):
            part.abort()
        try:
            self._meta.close()
        finally:
            self._sink.close()


class CorpusWriter:
    """Write a prepared corpus chunk by chunk; memory stays bounded by one chunk, not the corpus.

    ::

        with CorpusWriter(out_dir, splits=("train", "validation"), columns=("label",)) as writer:
            writer.add("train", residue_ids, lengths, names, labels)
            writer.finish({"sources": [...], "report": {...}})

    Files are built in ``OUT_DIR.tmp-<pid>`` and renamed to ``out_dir`` by :meth:`finish`; leaving the
    ``with`` block on an error (or without finishing) removes the temporary directory.
    """

    def __init__(self, out_dir: str | os.PathLike[str], splits: Sequence[str] = ("train", "validation"),
                 columns: Sequence[str] = ("label",), overwrite: bool = False, checksums: bool = True):
        self.out_dir = Path(out_dir).expanduser().absolute()
        unknown = [s for s in splits if s not in SPLITS]
        if unknown or not splits:
            raise DataError(f"corpus splits must be some of {', '.join(SPLITS)}; got {list(splits)}")
        bad = [c for c in columns if c not in OPTIONAL_COLUMNS]
        if bad:
            raise DataError(f"corpus columns must be some of {', '.join(OPTIONAL_COLUMNS)}; got {list(columns)}")
        if self.out_dir.exists() and not overwrite:
            raise DataError(f"{self.out_dir} already exists; remove it or overwrite it (--overwrite)")
        self.splits = tuple(s for s in SPLITS if s in splits)
        self.columns = tuple(c for c in OPTIONAL_COLUMNS if c in columns)
        self.overwrite, self.checksums = overwrite, checksums
        self.tmp = self.out_dir.parent / f"{self.out_dir.name}.tmp-{os.getpid()}"
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():  # left by an earlier process with our pid that was killed
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self._writers: dict[str, _SplitWriter] = {}
        self._finished = False
        try:
            for split in self.splits:
                self._writers[split] = _SplitWriter(self.tmp / split, self.columns)
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> CorpusWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._finished:
            self.abort()

    def add(self, split: str, residue_ids: np.ndarray, lengths: np.ndarray | Sequence[int], names: Sequence[str],
            labels: Sequence[str] | None = None, clusters: Sequence[str] | None = None) -> None:
        """Append a chunk of proteins to ``split``: their residue ids back to back, lengths, names, columns."""
        if split not in self._writers:
            raise ValueError(f"split {split!r} is not one of this writer's splits {self.splits}")
        residue_ids = np.asarray(residue_ids)
        lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if residue_ids.ndim != 1 or (residue_ids.size and residue_ids.dtype != np.uint8):
            raise ValueError(f"residue_ids must be a 1-D uint8 array, got {residue_ids.dtype} {residue_ids.shape}")
        if int(lengths.sum()) != residue_ids.size or (lengths.size and lengths.min() < 0):
            raise ValueError(f"lengths sum to {int(lengths.sum())} but {residue_ids.size} residue ids were given")
        if lengths.size and lengths.max() > np.iinfo(np.int32).max:
            raise ValueError("a protein longer than 2**31 - 1 residues cannot be stored")
        given = {"name": names, "label": labels, "cluster": clusters}
        for column, values in given.items():
            wanted = column == "name" or column in self.columns
            if wanted and (values is None or len(values) != lengths.size):
                got = "none" if values is None else len(values)
                raise ValueError(f"{lengths.size} proteins but {got} {column}s")
            if not wanted and values is not None:
                raise ValueError(f"{column}s given but the writer was made with columns={self.columns}")
        self._writers[split].add(residue_ids, lengths, given)

    def finish(self, manifest_fields: Mapping[str, Any] | None = None) -> Path:
        """Close every file, write the manifest (last) and rename the corpus into place; returns its path."""
        for writer in self._writers.values():
            writer.close()
        files = {}
        for split in self.splits:
            for name in (RESIDUES_FILE, OFFSETS_FILE, LENGTHS_FILE, META_FILE):
                file = self.tmp / split / name
                fsync_path(file)
                files[f"{split}/{name}"] = {"size": file.stat().st_size,
                                            "sha256": sha256_file(file) if self.checksums else None}
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "plmforge_version": _plmforge_version(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "vocab": {"version": VOCAB_VERSION, "residues": RESIDUES},
            **dict(manifest_fields or {}),
        }
        manifest["splits"] = {s: {"proteins": w.lengths.count, "residues": w.total} for s, w in self._writers.items()}
        manifest["files"] = files
        self.manifest = manifest
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        fsync_path(self.tmp / MANIFEST)
        for folder in (*(self.tmp / s for s in self.splits), self.tmp):
            fsync_path(folder)
        if self.out_dir.exists():
            if not self.overwrite:
                raise DataError(f"{self.out_dir} appeared while the corpus was written; not replacing it")
            stale = self.out_dir.parent / f"{self.out_dir.name}.stale-{os.getpid()}"
            self.out_dir.rename(stale)
            self.tmp.rename(self.out_dir)
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink()
        else:
            self.tmp.rename(self.out_dir)
        fsync_path(self.out_dir.parent)
        self._finished = True
        return self.out_dir

    def abort(self) -> None:
        """Stop writing and remove the temporary directory (``out_dir`` is untouched)."""
        for writer in self._writers.values():
            try:
                writer.abort()
            except Exception:  # noqa: BLE001 - cleaning up after an earlier error
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._finished = True


# -- reading ----------------------------------------------------------------------------------------
class ArrowStrings(Sequence[str]):
    """A read-only sequence of ``str`` over an Arrow string column; items are converted when accessed."""

    __slots__ = ("_column",)

    def __init__(self, column: Any):
        self._column = column

    def __len__(self) -> int:
        return len(self._column)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return ArrowStrings(self._column[index])
        return self._column[index].as_py()

    def __iter__(self) -> Iterator[str]:
        for chunk in self._column.iterchunks():
            yield from chunk.to_pylist()

    def __repr__(self) -> str:
        return f"ArrowStrings({len(self)} strings)"

    def take(self, indices: np.ndarray) -> ArrowStrings:
        """The strings at ``indices`` (a new, in-memory column of only those)."""
        return ArrowStrings(self._column.take(np.asarray(indices, dtype=np.int64)))


@dataclass
class PreparedCorpus:
    """An opened prepared corpus: its manifest and one memory-mapped :class:`ProteinSet` per split."""

    path: Path
    manifest: dict[str, Any]
    splits: dict[str, ProteinSet]

    def report(self) -> dict[str, int]:
        """The preparation's bad-input counts from the manifest (no scan), as ``source.*`` run data tags."""
        return {f"source.{k}": v for k, v in (self.manifest.get("report") or {}).items()
                if isinstance(v, int) and not isinstance(v, bool)}


def open_corpus(path: str | os.PathLike[str], verify_checksums: bool = False,
                vocab: Vocab | None = None) -> PreparedCorpus:
    """Open a prepared corpus after checking its manifest and files; reads no residues or names.

    Every problem is a :class:`DataError` naming the file: no manifest (an interrupted prepare), a
    corpus made by a newer plmforge or for another vocabulary, a file whose size differs from the
    manifest (truncated or changed), and, with ``verify_checksums``, a file whose sha256 differs.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; a prepared corpus is the folder `plmforge prepare -o` made")
    manifest = _read_manifest(root)
    vocab = vocab if vocab is not None else Vocab()
    files = manifest["files"]
    for rel, entry in files.items():
        _check_file(root, rel, entry, verify_checksums)
    splits = {}
    for split in SPLITS:
        if split in manifest["splits"]:
            splits[split] = _open_split(root, split, manifest, vocab)
    return PreparedCorpus(root, manifest, splits)


def _read_manifest(root: Path) -> dict[str, Any]:
    file = root / MANIFEST
    if not file.is_file():
        raise DataError(f"{root}: no {MANIFEST}; not a complete prepared corpus; was prepare interrupted? "
                        "Run `plmforge prepare` again")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{file}: cannot read the corpus manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{file}: not a plmforge corpus manifest (format is not {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DataError(f"{file}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise DataError(f"{file}: corpus made by a newer plmforge ({manifest.get('plmforge_version', '?')}, "
                        f"format_version {version}; this plmforge reads up to {FORMAT_VERSION}); upgrade plmforge "
                        "or prepare the corpus again with this one")
    residues = (manifest.get("vocab") or {}).get("residues") if isinstance(manifest.get("vocab"), dict) else None
    if residues != RESIDUES:
        raise DataError(f"{file}: corpus encoded with another vocabulary (residues {residues!r}, this plmforge "
                        f"uses {RESIDUES!r}); prepare it again")
    splits, files = manifest.get("splits"), manifest.get("files")
    if not isinstance(splits, dict) or not splits or not isinstance(files, dict):
        raise DataError(f"{file}: the manifest lacks 'splits' or 'files'")
    for split, numbers in splits.items():
        if split not in SPLITS:
            raise DataError(f"{file}: unknown split {split!r} (expected some of {', '.join(SPLITS)})")
        if not isinstance(numbers, dict) or not all(isinstance(numbers.get(k), int) for k in ("proteins", "residues")):
            raise DataError(f"{file}: splits.{split} needs integer 'proteins' and 'residues'")
        for name in (RESIDUES_FILE, OFFSETS_FILE, LENGTHS_FILE, META_FILE):
            if f"{split}/{name}" not in files:
                raise DataError(f"{file}: files lacks {split}/{name}")
    return manifest


def _check_file(root: Path, rel: str, entry: Any, verify_checksums: bool) -> None:
    file = root / rel
    if not isinstance(entry, dict) or not isinstance(entry.get("size"), int):
        raise DataError(f"{root / MANIFEST}: files.{rel} needs an integer 'size'")
    try:
        size = file.stat().st_size
    except OSError:
        raise DataError(f"{file}: missing from the prepared corpus; prepare it again") from None
    if size != entry["size"]:
        raise DataError(f"{file}: {size} bytes but the manifest says {entry['size']}; the file was truncated "
                        "or changed after `plmforge prepare`; prepare the corpus again")
    if verify_checksums:
        expected = entry.get("sha256")
        if not expected:
            raise DataError(f"{file}: the manifest records no sha256 (prepared without checksums); cannot verify")
        if sha256_file(file) != expected:
            raise DataError(f"{file}: sha256 differs from the manifest; the file changed after `plmforge "
                            "prepare`; prepare the corpus again")


def _load_array(file: Path, dtype: type, count: int) -> np.ndarray:
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{file}: cannot read as a .npy array: {exc}") from None
    if array.dtype != np.dtype(dtype) or array.shape != (count,):
        raise DataError(f"{file}: expected {np.dtype(dtype)} of shape ({count},), found {array.dtype} "
                        f"{array.shape}; prepare the corpus again")
    return array


def _open_split(root: Path, split: str, manifest: dict[str, Any], vocab: Vocab) -> ProteinSet:
    import pyarrow as pa

    n, total = manifest["splits"][split]["proteins"], manifest["splits"][split]["residues"]
    folder = root / split
    residues = _load_array(folder / RESIDUES_FILE, np.uint8, total)
    offsets = _load_array(folder / OFFSETS_FILE, np.int64, n + 1)
    lengths = _load_array(folder / LENGTHS_FILE, np.int32, n)
    if offsets[0] != 0 or offsets[-1] != total:
        raise DataError(f"{folder / OFFSETS_FILE}: offsets must run from 0 to {total}; prepare the corpus again")
    meta = folder / META_FILE
    try:
        table = pa.ipc.open_file(pa.memory_map(str(meta), "r")).read_all()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{meta}: cannot read as an Arrow IPC file: {exc}") from None
    if table.num_rows != n or "name" not in table.column_names:
        raise DataError(f"{meta}: expected {n} rows with a 'name' column, found {table.num_rows} rows "
                        f"{table.column_names}; prepare the corpus again")
    labels = ArrowStrings(table.column("label")) if "label" in table.column_names else None
    return ProteinSet.mapped(residues, offsets, lengths, ArrowStrings(table.column("name")), labels, vocab)
