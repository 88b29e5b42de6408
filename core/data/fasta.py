"""FASTA reading: plain, gzip, xz or bz2 (detected by magic bytes), with clear errors.

Rules applied to every record:

- the id is the first word of the header line, the description the whole header line (as Biopython);
- sequence lines are joined, all whitespace is removed and letters are upper-cased;
- a single trailing ``*`` (stop codon) is removed;
- a record left with no residues is skipped and counted (``skipped_empty``);
- a record with letters outside the vocabulary raises :class:`DataError` naming the file, the line of
  its header, its id and the bad letters, or with ``on_invalid="skip"`` is skipped and counted
  (``skipped_invalid``).

Text before the first header, a missing or unreadable file, a named pipe or device (reading one may
never end), a corrupt compressed file and a file without records are :class:`DataError` too. The file
is read in large blocks and each record is processed with a few C-level bytes operations, so 10^6
records take seconds. The two halves are public for streaming readers (``plmforge prepare``):
:func:`fasta_blocks` cuts a stream into blocks of whole records and :func:`parse_fasta_block` parses
one block, with exactly the rules and messages of :func:`read_fasta`, which is built from them.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Literal, NamedTuple

from plmforge.core.errors import DataError
from plmforge.core.vocab import Vocab

OnInvalid = Literal["error", "skip"]

_BLOCK = 1 << 24  # bytes of (decompressed) text parsed at a time
_WHITESPACE = b" \t\r\n\x0b\x0c"
_MAGIC = {b"\x1f\x8b": gzip.open, b"\xfd7zXZ\x00": lzma.open, b"BZh": bz2.open}
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class FastaRecord(NamedTuple):
    id: str
    description: str
    sequence: str
    line: int  # 1-based line number of the header


@dataclass
class FastaReport:
    """What happened to the records of one file."""

    path: str
    records_read: int = 0
    records_kept: int = 0
    skipped_empty: int = 0
    skipped_invalid: int = 0

    def counts(self, prefix: str = "") -> dict[str, int]:
        """The four counts as a flat dict, keys optionally prefixed (e.g. ``"source."``)."""
        return {f"{prefix}{k}": v for k, v in asdict(self).items() if k != "path"}


@dataclass
class FastaReadResult:
    """The kept records of a file as parallel lists, and the report."""

    ids: list[str] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)
    sequences: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    report: FastaReport = field(default_factory=lambda: FastaReport(""))

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[FastaRecord]:
        return map(FastaRecord, self.ids, self.descriptions, self.sequences, self.lines)

    def __getitem__(self, i: int) -> FastaRecord:
        return FastaRecord(self.ids[i], self.descriptions[i], self.sequences[i], self.lines[i])

    def to_protein_set(self, vocab: Vocab | None = None, labels: list[str] | None = None):
        """The kept records as a :class:`~plmforge.core.data.proteins.ProteinSet` named by id."""
        from plmforge.core.data.proteins import ProteinSet

        return ProteinSet.from_sequences(self.ids, self.sequences, labels=labels, vocab=vocab)


def read_fasta(
    path: str | os.PathLike[str],
    *,
    on_invalid: OnInvalid = "error",
    vocab: Vocab | None = None,
) -> FastaReadResult:
    """Read every record of a FASTA file (see the module docstring for the rules)."""
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', not {on_invalid!r}")
    vocab = vocab if vocab is not None else Vocab()
    shown = str(path)
    result = FastaReadResult(report=FastaReport(shown))
    parser = _Parser(shown, residue_letters(vocab), on_invalid == "skip", result)
    with _opened(path, shown) as stream:
        for block in fasta_blocks(stream, shown):
            parser.parse_block(block.text, block.first_line)
    return result


class FastaBlock(NamedTuple):
    """Complete records of one file: ``text`` starts with '>' and ends at the end of a record."""

    text: bytes
    first_line: int  # 1-based line number of its first header


def residue_letters(vocab: Vocab) -> bytes:
    """The upper-case residue letters a sequence may hold, as bytes (the allowed set of every reader)."""
    return "".join(vocab.tokens[i] for i in vocab.residue_ids.tolist()).encode("ascii")


def fasta_blocks(stream: IO[bytes], shown: str, block_size: int | None = None) -> Iterator[FastaBlock]:
    """Cut a FASTA byte stream into blocks of whole records, about ``block_size`` bytes each.

    Only the block being cut is held in memory, so files of any size stream through; each block can be
    parsed on its own (in another process too) because it carries the line number of its first header.
    Raises :class:`DataError` for text before the first header, a corrupt stream and a file without records.
    """
    size = block_size or _BLOCK
    start = _Start(shown)
    try:
        buffer = b""
        started = False
        while True:
            chunk = stream.read(size)
            at_end = not chunk
            buffer += chunk
            if not started:
                buffer = start.strip(buffer, at_end)
                if buffer is None:  # only whitespace so far
                    buffer = b""
                    if at_end:
                        break
                    continue
                started = True
            if at_end:
                if buffer:
                    yield FastaBlock(buffer, start.line)
                break
            cut = buffer.rfind(b"\n>")
            if cut < 0:
                continue  # one record longer than a block: keep reading
            block = buffer[:cut]
            buffer = buffer[cut + 1 :]
            yield FastaBlock(block, start.line)
            start.line += block.count(b"\n") + 1
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DataError(f"{shown}: cannot read FASTA file (corrupt or truncated?): {exc}") from None
    if not started:
        raise DataError(f"{shown}: no FASTA records (no line starting with '>')")


def parse_fasta_block(
    block: FastaBlock, shown: str, letters: bytes, on_invalid: OnInvalid = "error", as_text: bool = True
) -> FastaReadResult:
    """The records of one block, by the rules of :func:`read_fasta`; sequences as ``bytes`` unless ``as_text``."""
    result = FastaReadResult(report=FastaReport(shown))
    _Parser(shown, letters, on_invalid == "skip", result, as_text=as_text).parse_block(block.text, block.first_line)
    return result


def clean_sequence(raw: bytes) -> bytes:
    """A sequence as every reader keeps it: whitespace removed, upper case, one trailing '*' dropped."""
    seq = raw.translate(None, _WHITESPACE).upper()
    return seq[:-1] if seq.endswith(b"*") else seq


def invalid_residues_message(where: str, rid: str, seq: bytes, bad: bytes, letters: bytes) -> str:
    """The message for a sequence with letters outside the vocabulary (``where`` is e.g. ``file:line``)."""
    chars = "".join(sorted(set(bad.decode("utf-8", "replace"))))
    first = next(k for k, b in enumerate(seq) if b not in letters)
    return (f"{where}: record {rid!r}: invalid residue letter(s) {chars!r} "
            f"(first at residue {first + 1}); allowed are {letters.decode()} in any case and one "
            f"trailing '*'; use on_invalid='skip' to drop such records")


class _opened:
    """Context manager opening a path as a binary stream, decompressing by magic bytes.

    With a ``tap`` the raw (compressed) bytes pass through it as they are read: that is how a streaming
    reader hashes a file and measures its progress without a second read.
    """

    def __init__(self, path: str | os.PathLike[str], shown: str, tap: RawTap | None = None, what: str = "FASTA"):
        self.path, self.shown, self.stream, self.tap, self.raw = Path(path), shown, None, tap, None
        self.what = what

    def __enter__(self) -> IO[bytes]:
        try:
            if not stat.S_ISREG(self.path.stat().st_mode) and not self.path.is_dir():
                raise DataError(f"{self.shown}: not a regular file (a named pipe, socket or device, whose reading "
                                f"may never end); give a {self.what} file")
            with open(self.path, "rb") as probe:
                head = probe.read(6)
            if head.startswith(_ZSTD_MAGIC):
                raise DataError(f"{self.shown}: zstd-compressed files are not supported; use gzip or xz")
            opener = open
            for magic, fmt_open in _MAGIC.items():
                if head.startswith(magic):
                    opener = fmt_open
            if self.tap is None:
                self.stream = opener(self.path, "rb")
            else:
                self.raw = open(self.path, "rb")
                tapped = _Tapped(self.raw, self.tap)
                self.stream = tapped if opener is open else opener(tapped, "rb")
        except FileNotFoundError:
            raise DataError(
                f"{self.shown}: {self.what} file not found (looked at {self.path.absolute()})"
            ) from None
        except IsADirectoryError:
            raise DataError(f"{self.shown}: is a directory, not a {self.what} file") from None
        except OSError as exc:
            raise DataError(f"{self.shown}: cannot open {self.what} file: {exc.strerror or exc}") from None
        return self.stream

    def __exit__(self, *exc_info) -> None:
        self.stream.close()
        if self.raw is not None:
            self.raw.close()


class RawTap:
    """Sees every raw byte a reader reads: the sha256 and the count of bytes read so far."""

    def __init__(self) -> None:
        import hashlib

        self.sha256 = hashlib.sha256()
        self.bytes_read = 0

    def feed(self, data: bytes) -> None:
        self.sha256.update(data)
        self.bytes_read += len(data)


class _Tapped(io.RawIOBase):
    """A read-only file object passing what it reads through a :class:`RawTap`."""

    def __init__(self, raw: IO[bytes], tap: RawTap):
        self.raw, self.tap = raw, tap

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        if n:
            self.tap.feed(memoryview(buffer)[:n])
        return n or 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if data:
            self.tap.feed(data)
        return data


def open_text_stream(path: str | os.PathLike[str], shown: str, tap: RawTap | None = None,
                     what: str = "FASTA") -> _opened:
    """Context manager giving the decompressed bytes of a text file (``what``: FASTA, CSV...), checked as
    :func:`read_fasta` checks its file."""
    return _opened(path, shown, tap, what)


class _Start:
    """Finds the first header: drops a UTF-8 BOM and leading blank lines, refuses anything else before it."""

    def __init__(self, shown: str):
        self.shown = shown
        self.line = 1  # line number of the first header of the next block

    def strip(self, buffer: bytes, at_end: bool) -> bytes | None:
        if buffer.startswith(b"\xef\xbb\xbf") and self.line == 1:
            buffer = buffer[3:]
        body = buffer.lstrip()
        if not body:
            if not at_end:
                # whitespace only so far; count its lines now since it is dropped
                self.line += buffer.count(b"\n")
            return None
        self.line += buffer.count(b"\n", 0, len(buffer) - len(body))
        if body[:1] != b">":
            text = body.split(b"\n", 1)[0][:40].decode("utf-8", "replace").rstrip()
            raise DataError(
                f"{self.shown}:{self.line}: expected a FASTA header line starting with '>', found {text!r}"
            )
        return body


class _Parser:
    def __init__(self, shown: str, letters: bytes, skip_invalid: bool, result: FastaReadResult,
                 as_text: bool = True):
        self.shown = shown
        self.letters = letters
        self.skip_invalid = skip_invalid
        self.result = result
        self.as_text = as_text

    def parse_block(self, block: bytes, line: int) -> None:
        """Parse complete records; ``block`` starts with '>' (its header on ``line``), ends at a record's end."""
        res = self.result
        rep = res.report
        ids, descs, seqs, lines = res.ids, res.descriptions, res.sequences, res.lines
        letters = self.letters
        as_text = self.as_text
        for rec in block[1:].split(b"\n>"):
            rep.records_read += 1
            nl = rec.find(b"\n")
            if nl < 0:
                header, body = rec, b""
            else:
                header, body = rec[:nl], rec[nl + 1 :]
            seq = clean_sequence(body)
            header_line = line
            line += rec.count(b"\n") + 1
            if not seq:
                rep.skipped_empty += 1
                continue
            bad = seq.translate(None, letters)
            if bad:
                if self.skip_invalid:
                    rep.skipped_invalid += 1
                    continue
                self._invalid(header, seq, bad, header_line)
            description = header.decode("utf-8", "replace").strip()
            ids.append(description.split(None, 1)[0] if description else "")
            descs.append(description)
            seqs.append(seq.decode("ascii") if as_text else seq)
            lines.append(header_line)
            rep.records_kept += 1

    def _invalid(self, header: bytes, seq: bytes, bad: bytes, line: int) -> None:
        description = header.decode("utf-8", "replace").strip()
        rid = description.split(None, 1)[0] if description else ""
        raise DataError(invalid_residues_message(f"{self.shown}:{line}", rid, seq, bad, self.letters))
