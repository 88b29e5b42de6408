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
records take seconds.
"""

from __future__ import annotations

import bz2
import gzip
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
    letters = "".join(vocab.tokens[i] for i in vocab.residue_ids.tolist()).encode("ascii")
    shown = str(path)
    result = FastaReadResult(report=FastaReport(shown))
    parser = _Parser(shown, letters, on_invalid == "skip", result)
    with _opened(path, shown) as stream:
        try:
            buffer = b""
            started = False
            while True:
                chunk = stream.read(_BLOCK)
                at_end = not chunk
                buffer += chunk
                if not started:
                    buffer = parser.start(buffer, at_end)
                    if buffer is None:  # only whitespace so far
                        buffer = b""
                        if at_end:
                            break
                        continue
                    started = True
                if at_end:
                    if buffer:
                        parser.parse_block(buffer)
                    break
                cut = buffer.rfind(b"\n>")
                if cut < 0:
                    continue  # one record longer than a block: keep reading
                parser.parse_block(buffer[:cut])
                buffer = buffer[cut + 1 :]
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise DataError(f"{shown}: cannot read FASTA file (corrupt or truncated?): {exc}") from None
    if result.report.records_read == 0:
        raise DataError(f"{shown}: no FASTA records (no line starting with '>')")
    return result


class _opened:
    """Context manager opening a path as a binary stream, decompressing by magic bytes."""

    def __init__(self, path: str | os.PathLike[str], shown: str):
        self.path, self.shown, self.stream = Path(path), shown, None

    def __enter__(self) -> IO[bytes]:
        try:
            if not stat.S_ISREG(self.path.stat().st_mode) and not self.path.is_dir():
                raise DataError(f"{self.shown}: not a regular file (a named pipe, socket or device, whose reading "
                                f"may never end); give a FASTA file")
            with open(self.path, "rb") as probe:
                head = probe.read(6)
            if head.startswith(_ZSTD_MAGIC):
                raise DataError(f"{self.shown}: zstd-compressed files are not supported; use gzip or xz")
            opener = open
            for magic, fmt_open in _MAGIC.items():
                if head.startswith(magic):
                    opener = fmt_open
            self.stream = opener(self.path, "rb")
        except FileNotFoundError:
            raise DataError(
                f"{self.shown}: FASTA file not found (looked at {self.path.absolute()})"
            ) from None
        except IsADirectoryError:
            raise DataError(f"{self.shown}: is a directory, not a FASTA file") from None
        except OSError as exc:
            raise DataError(f"{self.shown}: cannot open FASTA file: {exc.strerror or exc}") from None
        return self.stream

    def __exit__(self, *exc_info) -> None:
        self.stream.close()


class _Parser:
    def __init__(self, shown: str, letters: bytes, skip_invalid: bool, result: FastaReadResult):
        self.shown = shown
        self.letters = letters
        self.skip_invalid = skip_invalid
        self.result = result
        self.line = 1  # line number of the first header of the next block

    def start(self, buffer: bytes, at_end: bool) -> bytes | None:
        """Drop a UTF-8 BOM and leading blank lines; error if anything but a header comes first."""
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

    def parse_block(self, block: bytes) -> None:
        """Parse complete records; ``block`` starts with '>' and ends at the end of a record."""
        res = self.result
        rep = res.report
        ids, descs, seqs, lines = res.ids, res.descriptions, res.sequences, res.lines
        letters = self.letters
        line = self.line
        for rec in block[1:].split(b"\n>"):
            rep.records_read += 1
            nl = rec.find(b"\n")
            if nl < 0:
                header, body = rec, b""
            else:
                header, body = rec[:nl], rec[nl + 1 :]
            seq = body.translate(None, _WHITESPACE).upper()
            if seq.endswith(b"*"):
                seq = seq[:-1]
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
            seqs.append(seq.decode("ascii"))
            lines.append(header_line)
            rep.records_kept += 1
        self.line = line

    def _invalid(self, header: bytes, seq: bytes, bad: bytes, line: int) -> None:
        description = header.decode("utf-8", "replace").strip()
        rid = description.split(None, 1)[0] if description else ""
        chars = "".join(sorted(set(bad.decode("utf-8", "replace"))))
        first = next(k for k, b in enumerate(seq) if b not in self.letters)
        raise DataError(
            f"{self.shown}:{line}: record {rid!r}: invalid residue letter(s) {chars!r} "
            f"(first at residue {first + 1}); allowed are {self.letters.decode()} in any case and one "
            f"trailing '*'; use on_invalid='skip' to drop such records"
        )
