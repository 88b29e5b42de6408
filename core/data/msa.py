"""Multiple sequence alignments (Stockholm, A3M, aligned FASTA) read as query-relative residue codes.

Profile-style objectives need, for every residue of a protein, the amino acids aligned to it, so every
alignment is reduced to the columns of its *query* (the first sequence) and stored as a small integer
matrix. The rules, the same for every format:

- the query is the first sequence; its residues are its letters (either case, any letter, X included),
  upper-cased, gaps removed. Alignment columns where the query has no letter are dropped; the others
  are kept, in order, one per query residue;
- in the other rows a letter of either case in a kept column counts (upper-cased), except in A3M, where
  lowercase letters and ``.`` are insertions relative to the query and are removed before the columns
  are matched (uppercase letters and ``-`` are the match columns). A lowercase letter in an A3M
  *query* is still a query residue, aligned to nothing in the other rows (a gap there);
- in Stockholm and aligned FASTA ``.`` and ``-`` are gaps (``~`` and ``_`` too, as in Easel);
- codes are indices into :data:`PROFILE_ALPHABET` (the 20 standard amino acids, in vocabulary order) or
  :data:`GAP`: gaps, ``*`` and non-standard letters (X, B, Z, U, O, J, ...) are *not counted*: a
  profile sees them as gaps. Any other character (digits, punctuation, non-ASCII) is a
  :class:`DataError` naming the file, line and row.

A file is read into memory whole (decompressed by magic bytes: gzip, xz, bz2; a tar archive in one
piece) and split into lines with whole-file bytes operations (per-record Python only for FASTA and A3M
records spanning several lines, per-line Python for Stockholm); then all rows of an alignment are
joined into one bytes object and a single ``bytes.translate`` with a 256-entry table removes
whitespace (and A3M insertions) and maps every byte to its code in C, viewed with ``np.frombuffer``
-- no per-character Python. ``codes`` takes one byte per row and query residue.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import lzma
import os
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from plmforge.core.errors import DataError
from plmforge.core.vocab import RESIDUES, STANDARD_AMINO_ACIDS, Vocab

MsaFormat = Literal["auto", "stockholm", "a3m", "fasta"]

#: The 20 standard amino acids in vocabulary order: profile index ``k`` is vocabulary id ``3 + k``.
PROFILE_ALPHABET = STANDARD_AMINO_ACIDS
if RESIDUES[: len(PROFILE_ALPHABET)] != PROFILE_ALPHABET or Vocab.residue_offset != 3:  # pragma: no cover
    raise ImportError("core/vocab.py changed: PROFILE_ALPHABET no longer matches vocabulary ids 3..22")
#: Code of a gap, an insertion-less missing position or a non-standard letter (not counted in profiles).
GAP = len(PROFILE_ALPHABET)

BUILTIN_PREFIX = "builtin:"
#: built-in MSA set name -> tar archive in the ``corpora`` folder of this package
BUILTIN_MSAS = {"scl2205": "scl2205-msas.tar.gz"}

FORMAT_SUFFIXES = {
    ".sto": "stockholm", ".stk": "stockholm", ".sth": "stockholm", ".stockholm": "stockholm",
    ".a3m": "a3m",
    ".afa": "fasta", ".afasta": "fasta", ".fasta": "fasta", ".fa": "fasta", ".aln": "fasta", ".mfa": "fasta",
}
COMPRESSION_SUFFIXES = (".gz", ".xz", ".bz2")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
_TAR_BUFFER_BYTES = 1 << 30  # tar bytes of an archive sorted in memory; larger ones must be stored sorted

_INVALID = 255
_CODES = np.full(256, _INVALID, dtype=np.uint8)
_IS_LETTER = np.zeros(256, dtype=bool)
for _b in range(ord("A"), ord("Z") + 1):
    _CODES[_b] = _CODES[_b + 32] = GAP
    _IS_LETTER[_b] = _IS_LETTER[_b + 32] = True
for _k, _letter in enumerate(PROFILE_ALPHABET):
    _CODES[ord(_letter)] = _CODES[ord(_letter.lower())] = _k
for _b in b"-._~*":
    _CODES[_b] = GAP
_VALID_BYTES = bytes(np.flatnonzero(_CODES != _INVALID).tolist())
_SEPARATOR = 254  # the code of the NUL byte that ends each row in ``_Raw.others``
_TO_CODES = bytes([_SEPARATOR, *_CODES[1:].tolist()])  # bytes.translate table: byte -> code, in C
_LOWERCASE = bytes(range(ord("a"), ord("z") + 1))
_LOWER_AND_DOT = _LOWERCASE + b"."
_NOT_LETTERS = bytes(b for b in range(256) if not _IS_LETTER[b])
_INVALID_BYTE = bytes([_INVALID])
_SEPARATOR_BYTE = bytes([_SEPARATOR])
_WHITESPACE = b" \t\r\n\x0b\x0c"
_HEADER_SPACE = b" \t\r\x0b\x0c"  # whitespace that can end a name within a header line
_MAGIC = {b"\x1f\x8b": ("gzip", gzip.decompress), b"\xfd7zXZ\x00": ("xz", lzma.decompress),
          b"BZh": ("bz2", bz2.decompress)}
_PIECE_BYTES = 1 << 16  # compressed bytes decompressed per call (see _decompress_at_most)
_DECOMPRESSORS = {b"\x1f\x8b": lambda: zlib.decompressobj(wbits=31), b"\xfd7zXZ\x00": lzma.LZMADecompressor,
                  b"BZh": bz2.BZ2Decompressor}
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# tar header types read without tarfile: regular files, links, devices, directories, FIFOs
_TAR_PLAIN_TYPES = (b"0", b"\0", b"7", b"1", b"2", b"3", b"4", b"5", b"6")


@dataclass
class Alignment:
    """One MSA reduced to the columns of its query (row 0).

    ``codes[i, j]`` is the :data:`PROFILE_ALPHABET` index of the residue of row ``i`` aligned to query
    residue ``j``, or :data:`GAP`. ``query`` keeps every query letter (X included), so
    ``len(query) == codes.shape[1]``.
    """

    name: str
    query: str
    row_names: list[str]
    codes: np.ndarray  # uint8 [num_rows, len(query)]

    @property
    def num_rows(self) -> int:
        return int(self.codes.shape[0])

    def __len__(self) -> int:
        return len(self.query)


# -- public entry points --------------------------------------------------------------------------------
def read_alignments(path: str | os.PathLike[str], format: MsaFormat = "auto") -> list[Alignment]:
    """Every alignment of one MSA file, plain or compressed (gzip, xz, bz2 by magic bytes).

    ``format="auto"`` decides by suffix (after a compression suffix), else by content (see
    :func:`detect_format`). A Stockholm file may hold several alignments; A3M and FASTA hold one.
    """
    shown = str(path)
    data = _decompressed(_read_file(Path(path), shown), shown)
    return read_alignments_text(data, format, shown)


def read_alignments_text(text: str | bytes, format: MsaFormat = "auto", source: str = "<text>") -> list[Alignment]:
    """Alignments from the (decompressed) text of an MSA file; ``source`` names it in errors and names.

    Alignments without a Stockholm ``#=GF ID`` are named after ``source``'s file stem (``RRM_1`` for
    ``x/RRM_1.sto.gz``), numbered ``stem#k`` when a file holds several.
    """
    if format not in ("auto", "stockholm", "a3m", "fasta"):
        raise ValueError(f"format must be 'auto', 'stockholm', 'a3m' or 'fasta', not {format!r}")
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data or data.isspace():
        raise DataError(f"{source}: empty MSA file")
    fmt = format if format != "auto" else detect_format(source, data)
    stem = _stem(source)
    if fmt == "stockholm":
        raws = _parse_stockholm(data, source)
    else:
        raws = [_parse_fasta_like(data, source, a3m=fmt == "a3m")]
    alignments = []
    for k, raw in enumerate(raws, 1):
        name = raw.name or (stem if len(raws) == 1 else f"{stem}#{k}")
        alignments.append(_build(raw, name, source, a3m=fmt == "a3m"))
    return alignments


def detect_format(name: str, data: bytes) -> str:
    """``stockholm``, ``a3m`` or ``fasta`` from the name's suffix, else from the (decompressed) content.

    By content: ``# STOCKHOLM`` first is Stockholm; a leading ``#`` line (as ``#A3M#``) is A3M; ``>`` first
    is aligned FASTA when all records have the same length, else A3M (only A3M rows differ in length).
    """
    fmt = format_from_name(name)
    if fmt is not None:
        return fmt
    head = data.lstrip()[:64]
    if head.startswith(b"# STOCKHOLM"):
        return "stockholm"
    if head.startswith(b"#"):
        return "a3m"
    if head.startswith(b">"):
        body = data.lstrip()[1:].split(b"\n>")
        lengths = {len(rec.partition(b"\n")[2].translate(None, _WHITESPACE)) for rec in body}
        return "fasta" if len(lengths) <= 1 else "a3m"
    shown = head.split(b"\n", 1)[0][:40].decode("utf-8", "replace").rstrip()
    hint = " (Clustal is not supported; convert to aligned FASTA)" if head.startswith(b"CLUSTAL") else ""
    raise DataError(
        f"{name}: cannot tell the MSA format: expected '# STOCKHOLM 1.0' or '>' first, found {shown!r}{hint}; "
        f"name the file .sto, .a3m or .afa"
    )


def format_from_name(name: str) -> str | None:
    """The MSA format implied by a file name's suffix (compression suffixes skipped), or None."""
    base = _basename(name).lower()
    for suffix in COMPRESSION_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    dot = base.rfind(".")
    return FORMAT_SUFFIXES.get(base[dot:]) if dot > 0 else None


def is_tar_name(name: str) -> bool:
    return str(name).lower().endswith(TAR_SUFFIXES)


def iter_msa_files(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    base_dir: str | os.PathLike[str] | None = None,
) -> Iterator[tuple[str, bytes]]:
    """``(name, decompressed bytes)`` of every MSA file or archive member named by ``sources``.

    Each source is a file, a directory (its MSA files, by suffix, sorted; not recursive), a glob pattern
    (``*``, ``?``, ``[``; ``**`` recurses), a tar archive (``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.xz``;
    its MSA members, by suffix, in sorted name order; an archive of up to 1 GiB as tar is sorted in
    memory, a larger one must be stored in name order) or ``builtin:NAME`` (:data:`BUILTIN_MSAS`).
    Relative paths are resolved against ``base_dir``, else the current directory. Archive members are
    named ``archive:member``.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    for source in sources:
        text = os.fspath(source)
        if text.startswith(BUILTIN_PREFIX):
            yield from _builtin_files(text[len(BUILTIN_PREFIX) :])
            continue
        path = Path(text).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        if any(ch in text for ch in "*?["):
            matches = sorted(glob.glob(str(path), recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file() and _is_msa_or_tar(m)]
            dirs = [Path(m) for m in matches if Path(m).is_dir()]
            if not files and not dirs:
                raise DataError(f"{text}: the pattern matches no MSA file (looked for {path.absolute()})")
            for match in sorted(files + dirs):
                yield from _path_files(match, str(match))
        else:
            yield from _path_files(path, text)


def msa_source_problem(source: str) -> str | None:
    """Why one MSA source (see :func:`iter_msa_files`) names nothing readable here, or None; reads no MSA.

    Lets ``plmforge validate`` find a missing file, an empty pattern or an unknown built-in set before
    a run starts (relative paths are taken from the working directory, as the run takes them).
    """
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_MSAS:
            available = ", ".join(f"{BUILTIN_PREFIX}{n}" for n in sorted(BUILTIN_MSAS))
            return f"unknown built-in MSA set {source!r}; available: {available}"
        if not resources.files("plmforge.core.data").joinpath("corpora", BUILTIN_MSAS[name]).is_file():
            return f"built-in MSA set {source!r} is not installed; give MSA files instead"
        return None
    path = Path(source).expanduser()
    if any(ch in source for ch in "*?["):
        if not any(Path(m).is_dir() or _is_msa_or_tar(m) for m in glob.iglob(str(path), recursive=True)):
            return f"the pattern {source!r} matches no MSA file (looked for {path.absolute()})"
        return None
    if path.is_dir():
        if not any(p.is_file() and format_from_name(p.name) is not None for p in path.iterdir()):
            return f"directory {source!r} holds no MSA files (suffixes {', '.join(sorted(FORMAT_SUFFIXES))})"
        return None
    if not path.exists():
        return f"MSA file {source!r} not found (looked at {path.absolute()})"
    if not path.is_file():
        return f"{source!r} is not a regular file (a named pipe, socket or device); give an MSA file"
    return None


def iter_alignment_sources(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    base_dir: str | os.PathLike[str] | None = None,
) -> Iterator[Alignment]:
    """Every alignment of every MSA file named by ``sources`` (see :func:`iter_msa_files`), in order."""
    for name, data in iter_msa_files(sources, base_dir):
        yield from read_alignments_text(data, "auto", name)


# -- sources --------------------------------------------------------------------------------------------
def _path_files(path: Path, shown: str) -> Iterator[tuple[str, bytes]]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and format_from_name(p.name) is not None)
        if not files:
            raise DataError(
                f"{shown}: directory holds no MSA files (suffixes {', '.join(sorted(FORMAT_SUFFIXES))}, "
                f"optionally .gz/.xz/.bz2)"
            )
        for file in files:
            name = str(file)
            yield name, _decompressed(_read_file(file, name), name)
    elif is_tar_name(path.name):
        yield from _tar_files(path, shown)
    else:
        yield shown, _decompressed(_read_file(path, shown), shown)


def _is_msa_or_tar(name: str) -> bool:
    return format_from_name(name) is not None or is_tar_name(name)


def _tar_files(path: Path, shown: str) -> Iterator[tuple[str, bytes]]:
    """MSA members of a tar archive in sorted name order.

    An archive of up to ``_TAR_BUFFER_BYTES`` as tar is decompressed whole, in memory (several times
    faster than ``tarfile``'s streaming reads of small blocks), and its MSA members are sorted. A
    larger one is streamed one member at a time, which needs the members stored in name order (a
    :class:`DataError` otherwise), so memory stays bounded.
    """
    if not path.is_file():
        raise DataError(f"{shown}: MSA archive not found (looked at {path.absolute()})")
    member_name = ""
    try:
        small = path.stat().st_size <= _TAR_BUFFER_BYTES
        tar = _decompress_at_most(path.read_bytes(), _TAR_BUFFER_BYTES) if small else None
        if tar is not None:
            blobs = _tar_msa_members(tar)
            del tar
            if not blobs:
                raise DataError(f"{shown}: archive holds no MSA files (suffixes {', '.join(sorted(FORMAT_SUFFIXES))})")
            for name in sorted(blobs):
                yield f"{shown}:{name}", _decompressed(blobs.pop(name), f"{shown}:{name}")
            return
        with tarfile.open(path, "r:*") as archive:
            members = [m for m in archive.getmembers() if _is_msa_member(m)]
            ordered = sorted(members, key=lambda m: m.name)
            if ordered != members:
                raise DataError(
                    f"{shown}: archive members are not stored in name order and too large to sort in memory "
                    f"(over {_TAR_BUFFER_BYTES >> 20} MiB as tar); rebuild it sorted or unpack it to a directory"
                )
            for member in members:
                member_name, name = member.name, f"{shown}:{member.name}"
                yield name, _decompressed(archive.extractfile(member).read(), name)
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        where = f" (at member {member_name})" if member_name else ""
        raise DataError(f"{shown}: cannot read MSA archive{where} (corrupt or truncated?): {exc}") from None


def _decompress_at_most(data: bytes, limit: int) -> bytes | None:
    """``data`` decompressed (gzip, xz or bz2 by magic bytes, else as it is), or None if over ``limit`` bytes.

    The input is fed in pieces of ``_PIECE_BYTES``: each piece's output is still in the CPU cache when
    it is stored, about 10% faster than one call for the whole input. Concatenated streams (as from
    pigz or pbzip2) are all decompressed; padding after the last is ignored. ``limit`` may be
    exceeded by one piece's output before it is noticed.
    """
    magic = next((m for m in _DECOMPRESSORS if data.startswith(m)), None)
    if magic is None:
        return data if len(data) <= limit else None
    decompressor = _DECOMPRESSORS[magic]()
    parts: list[bytes] = []
    size = 0
    view = memoryview(data)
    for start in range(0, len(data), _PIECE_BYTES):
        parts.append(decompressor.decompress(view[start : start + _PIECE_BYTES]))
        size += len(parts[-1])
        if size > limit:
            return None
        if decompressor.eof:
            rest = (decompressor.unused_data + view[start + _PIECE_BYTES :]).lstrip(b"\0")
            if rest.startswith(magic):  # another stream
                more = _decompress_at_most(rest, limit - size)
                if more is None:
                    return None
                parts.append(more)
            return b"".join(parts)
    raise EOFError("compressed data ends before the end-of-stream marker")


def _tar_msa_members(tar: bytes) -> dict[str, bytes]:
    """``{name: bytes}`` of the MSA members of a whole tar in memory, in stored order.

    Plain ustar and v7 headers (what ``tarfile`` and most tools write for names up to 100 characters)
    are read here, which for hundreds of small members is several times faster than ``tarfile``'s
    per-header parsing; an archive with anything else (pax or GNU long-name headers, sparse files,
    base-256 sizes, a bad checksum) is read with ``tarfile``.
    """
    members = _plain_tar_members(tar)
    if members is None:
        members = {}
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
            for member in archive:
                if _is_msa_member(member):
                    members[member.name] = archive.extractfile(member).read()
    return members


def _plain_tar_members(tar: bytes) -> dict[str, bytes] | None:
    """The MSA members of a tar of plain ustar/v7 headers (see :func:`_tar_msa_members`), else None."""
    members: dict[str, bytes] = {}
    headers, checksums = [], []
    offset = 0
    while offset + 512 <= len(tar) and tar.count(0, offset, offset + 512) < 512:  # (an all-NUL block ends it)
        header = tar[offset : offset + 512]
        kind = header[156:157]
        size, checksum = header[124:136].strip(b" \0"), header[148:156].strip(b" \0")
        if kind not in _TAR_PLAIN_TYPES or not size.isdigit() or not checksum.isdigit():
            return None
        headers.append(offset)
        checksums.append(int(checksum, 8))
        start, size = offset + 512, int(size, 8)
        if start + size > len(tar):
            return None
        offset = start + -(-size // 512) * 512
        name = header[:100].split(b"\0", 1)[0]
        if header[257:265] == b"ustar\x0000" and header[345]:
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        text = name.decode("utf-8", "surrogateescape")
        if kind in tarfile.REGULAR_TYPES and _is_msa_name(text):  # directories and links are skipped
            members[text] = tar[start : start + size]
    if not headers or (offset + 512 > len(tar) and offset != len(tar)):
        return None  # (tarfile tells an empty file from a truncated one)
    # the checksum is the sum of the header's bytes, its own 8 counted as spaces: all headers at once
    blocks = np.frombuffer(tar, np.uint8)[np.add.outer(np.array(headers, dtype=np.intp), np.arange(512))]
    sums = blocks.sum(axis=1) - blocks[:, 148:156].sum(axis=1) + 8 * ord(" ")
    return members if np.array_equal(sums, checksums) else None


def _is_msa_member(member: tarfile.TarInfo) -> bool:
    return member.isfile() and _is_msa_name(member.name)


def _is_msa_name(name: str) -> bool:
    return not _basename(name).startswith(".") and format_from_name(name) is not None


def _builtin_files(name: str) -> Iterator[tuple[str, bytes]]:
    if name not in BUILTIN_MSAS:
        available = ", ".join(f"{BUILTIN_PREFIX}{n}" for n in sorted(BUILTIN_MSAS))
        raise DataError(f"unknown built-in MSA set {BUILTIN_PREFIX}{name}; available: {available}")
    resource = resources.files("plmforge.core.data").joinpath("corpora", BUILTIN_MSAS[name])
    if not resource.is_file():
        raise DataError(
            f"built-in MSA set {BUILTIN_PREFIX}{name}: its archive corpora/{BUILTIN_MSAS[name]} is not "
            f"installed (looked at {resource}); give MSA files instead"
        )
    with resources.as_file(resource) as path:
        yield from _tar_files(Path(path), f"{BUILTIN_PREFIX}{name}")


def _read_file(path: Path, shown: str) -> bytes:
    if path.exists() and not path.is_dir() and not path.is_file():
        raise DataError(f"{shown}: not a regular file (a named pipe, socket or device); give an MSA file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{shown}: MSA file not found (looked at {path.absolute()})") from None
    except IsADirectoryError:
        raise DataError(f"{shown}: is a directory, not an MSA file") from None
    except OSError as exc:
        raise DataError(f"{shown}: cannot open MSA file: {exc.strerror or exc}") from None


def _decompressed(data: bytes, shown: str) -> bytes:
    if data.startswith(_ZSTD_MAGIC):
        raise DataError(f"{shown}: zstd-compressed files are not supported; use gzip or xz")
    for magic, (kind, decompress) in _MAGIC.items():
        if data.startswith(magic):
            try:
                return decompress(data)
            except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
                raise DataError(f"{shown}: cannot decompress {kind} MSA file (corrupt or truncated?): {exc}") from None
    return data


def _basename(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1]


def _stem(source: str) -> str:
    """File name without folders, compression and format suffixes (of an archive member if ``archive:member``)."""
    name = _basename(source.rsplit(":", 1)[-1])
    lower = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            name, lower = name[: -len(suffix)], lower[: -len(suffix)]
            break
    dot = lower.rfind(".")
    if dot > 0 and lower[dot:] in FORMAT_SUFFIXES:
        name = name[:dot]
    return name or source


# -- parsing --------------------------------------------------------------------------------------------
@dataclass
class _Raw:
    """One alignment as read: the query row, the other rows NUL-joined, and where each row is (for errors).

    ``others`` holds rows 1.., each followed by a NUL byte (an invalid symbol, so it cannot occur inside
    a valid row), whitespace not yet removed: one bytes object lets :func:`_build` remove whitespace
    and A3M insertions and map every byte to its code in a single ``bytes.translate``. Stockholm gives
    ``lines`` (each row's last line) and ``row_list``; FASTA and A3M give the line of the first record
    and either their ``sequences`` (one line each, the usual layout) or their ``records``; rows and
    lines are recovered only for errors.
    """

    name: str | None
    row_names: list[str]
    query: bytes
    others: bytes
    lines: list[int] | None = None
    row_list: list[bytes] | None = None
    records: list[bytes] | None = None
    sequences: list[bytes] | None = None
    first_line: int = 1

    def line(self, i: int) -> int:
        if self.lines is not None:
            return self.lines[i]
        if self.sequences is not None:
            return self.first_line + 2 * i
        return self.first_line + sum(rec.count(b"\n") + 1 for rec in self.records[:i])

    def rows(self) -> list[bytes]:
        if self.row_list is not None:
            return self.row_list
        texts = self.sequences if self.sequences is not None else [rec.partition(b"\n")[2] for rec in self.records]
        return [text.translate(None, _WHITESPACE) for text in texts]


def _parse_stockholm(data: bytes, source: str) -> list[_Raw]:
    raws: list[_Raw] = []
    start = 0  # line of the open block's header; 0 when outside a block
    name: str | None = None
    index: dict[bytes, int] = {}
    parts: list[list[bytes]] = []
    lines: list[int] = []
    lineno = 0
    for lineno, line in enumerate(data.split(b"\n"), 1):
        s = line.strip()
        if not s:
            continue
        if s.startswith(b"# STOCKHOLM"):
            if start:
                raise DataError(
                    f"{source}:{start}: Stockholm alignment has no closing '//' line "
                    f"(the next '# STOCKHOLM' header is at line {lineno})"
                )
            start, name, index, parts, lines = lineno, None, {}, [], []
            continue
        if not start:
            shown = s[:40].decode("utf-8", "replace")
            raise DataError(f"{source}:{lineno}: expected a '# STOCKHOLM 1.0' header line, found {shown!r}")
        if s == b"//":
            if not parts:
                raise DataError(f"{source}:{start}: Stockholm alignment has no sequences")
            row_names = [k.decode("utf-8", "replace") for k in index]
            rows = [b"".join(p) for p in parts]
            others = b"".join([row + b"\0" for row in rows[1:]])
            raws.append(_Raw(name, row_names, rows[0], others, lines=lines, row_list=rows))
            start = 0
            continue
        if s[:1] == b"#":
            if s.startswith(b"#=GF"):
                fields = s.split(None, 2)
                if len(fields) == 3 and fields[1] == b"ID":
                    name = fields[2].strip().decode("utf-8", "replace")
            continue  # #=GS, #=GR, #=GC and comments
        fields = s.split(None, 1)
        if len(fields) < 2:
            raise DataError(f"{source}:{lineno}: sequence line {fields[0][:40].decode('utf-8', 'replace')!r} "
                            f"has a name but no aligned sequence")
        key, seq = fields
        i = index.get(key)
        if i is None:
            index[key] = i = len(parts)
            parts.append([])
            lines.append(lineno)
        parts[i].append(seq.translate(None, _WHITESPACE))
        lines[i] = lineno
    if start:
        raise DataError(f"{source}:{start}: Stockholm alignment has no closing '//' line (file ends at line {lineno})")
    if not raws:
        raise DataError(f"{source}: no Stockholm alignment (no '# STOCKHOLM 1.0' header)")
    return raws


def _parse_fasta_like(data: bytes, source: str, a3m: bool) -> _Raw:
    line = 1
    body = data
    while True:  # leading blank lines, and '#' lines in A3M (as '#A3M#')
        stripped = body.lstrip(_WHITESPACE)
        line += body.count(b"\n", 0, len(body) - len(stripped))
        body = stripped
        if a3m and body[:1] == b"#":
            nl = body.find(b"\n")
            body = body[nl:] if nl >= 0 else b""
            continue
        break
    if body[:1] != b">":
        kind = "A3M" if a3m else "aligned FASTA"
        if not body:
            raise DataError(f"{source}: no sequences ({kind} file without a '>' header line)")
        shown = body.split(b"\n", 1)[0][:40].decode("utf-8", "replace").rstrip()
        raise DataError(f"{source}:{line}: expected a {kind} header line starting with '>', found {shown!r}")
    # The usual layout, a header line then one sequence line per record, is split with a few whole-file
    # calls: lines alternate between headers and sequences when every other line starts with '>' and no
    # other line holds one (nor a NUL, so the NULs of ``others`` are exactly its row ends).
    lines = body.split(b"\n")
    if not lines[-1]:
        lines.pop()
    headers, sequences = lines[0::2], lines[1::2]
    joined = b"\n".join(headers)
    if len(headers) == len(sequences) and joined.count(b"\n>") == len(headers) - 1 and b"\0" not in body:
        rest = sequences[1:]
        rest.append(b"")
        others = b"\0".join(rest)  # whitespace (a CR of CRLF, say) is removed by _build
        if b">" not in others and b">" not in sequences[0]:
            if len(joined.translate(None, _HEADER_SPACE)) == len(joined):  # bare names: decode them at once
                names = joined[1:].decode("utf-8", "replace").split("\n>")
            else:
                names = [(header[1:].split(None, 1) or [b""])[0].decode("utf-8", "replace") for header in headers]
            query = sequences[0].translate(None, _WHITESPACE)
            return _Raw(None, names, query, others, sequences=sequences, first_line=line)
    records = body[1:].split(b"\n>")
    parts = [rec.partition(b"\n") for rec in records]
    names = [(header.split(None, 1) or [b""])[0].decode("utf-8", "replace") for header, _, _ in parts]
    query = parts[0][2].translate(None, _WHITESPACE)
    others = b"".join([seq + b"\0" for _, _, seq in parts[1:]])  # whitespace is removed by _build
    return _Raw(None, names, query, others, records=records, first_line=line)


def _build(raw: _Raw, name: str, source: str, a3m: bool) -> Alignment:
    """The codes of a parsed alignment: bytes operations on the whole rows (numpy only to lay them out)."""
    num_rows = len(raw.row_names)
    nul_in_rows = raw.sequences is None and raw.others.count(b"\0") != num_rows - 1  # (NUL is invalid too)
    if nul_in_rows or raw.query.translate(None, _VALID_BYTES):
        _raise_invalid_symbols(raw, source)
    query_row = raw.query.translate(None, b".") if a3m else raw.query
    query = query_row.translate(None, _NOT_LETTERS).upper()
    if not query:
        raise DataError(f"{source}:{raw.line(0)}: the query (first sequence) {raw.row_names[0]!r} has no residues")
    codes = np.empty((num_rows, len(query)), dtype=np.uint8)
    codes[0] = np.frombuffer(query.translate(_TO_CODES), dtype=np.uint8)
    if num_rows == 1:
        return Alignment(name=name, query=query.decode("ascii"), row_names=raw.row_names, codes=codes)
    width = len(query_row.translate(None, _LOWERCASE)) if a3m else len(query_row)  # the columns of every row
    # one pass over every other row: drop whitespace (and A3M insertions), map bytes to codes
    flat = raw.others.translate(_TO_CODES, _WHITESPACE + (_LOWER_AND_DOT if a3m else b""))
    if _INVALID_BYTE in flat:
        _raise_invalid_symbols(raw, source)
    if len(flat) != (num_rows - 1) * (width + 1) or flat[width :: width + 1] != _SEPARATOR_BYTE * (num_rows - 1):
        array = np.frombuffer(flat, np.uint8)
        lengths = np.diff(np.flatnonzero(array == _SEPARATOR), prepend=-1) - 1
        i = int(np.flatnonzero(lengths != width)[0]) + 1
        what = "match columns (uppercase letters and '-')" if a3m else "aligned columns"
        raise DataError(
            f"{source}:{raw.line(i)}: row {raw.row_names[i]!r} has {int(lengths[i - 1])} {what}, but the query "
            f"{raw.row_names[0]!r} has {width}"
        )
    block = np.frombuffer(flat, np.uint8).reshape(num_rows - 1, width + 1)[:, :width]
    if len(query) == len(query_row) == width:  # every column a query residue (the usual case)
        codes[1:] = block
    else:
        qa = np.frombuffer(query_row, dtype=np.uint8)
        residue_pos = np.flatnonzero(_IS_LETTER[qa])
        if not a3m:
            codes[1:] = block[:, residue_pos]
        else:
            is_match = ~((qa >= ord("a")) & (qa <= ord("z")))
            match_index = np.cumsum(is_match) - 1
            aligned = is_match[residue_pos]
            if aligned.all():
                codes[1:] = block[:, match_index[residue_pos]]
            else:  # lowercase query residues: aligned to nothing
                codes[1:] = GAP
                codes[1:, aligned] = block[:, match_index[residue_pos[aligned]]]
    return Alignment(name=name, query=query.decode("ascii"), row_names=raw.row_names, codes=codes)


def _raise_invalid_symbols(raw: _Raw, source: str) -> None:
    for i, row in enumerate(raw.rows()):
        bad = row.translate(None, _VALID_BYTES)
        if bad:
            chars = "".join(sorted(set(bad.decode("utf-8", "replace"))))
            raise DataError(
                f"{source}:{raw.line(i)}: row {raw.row_names[i]!r}: invalid alignment character(s) {chars!r}; "
                f"allowed are letters and the gap symbols - . ~ _ *"
            )
    raise AssertionError("invalid symbols reported but not found")  # pragma: no cover
