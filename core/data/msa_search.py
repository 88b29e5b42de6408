"""Multiple sequence alignments from a sequence search (pyhmmer's phmmer or jackhmmer), cached on disk.

``search_msas(queries, database, cache_dir=...)`` searches each query protein against a database
and writes one A3M file per query, aligned *to the query*:

- the first record is the query itself, ungapped;
- each further record is one included hit domain: an upper-case letter is aligned to the query
  position of its column, ``-`` is a query position the domain does not cover (a deletion, or a
  position before or after the domain), a lower-case letter is an insertion between query positions.
  So every record holds exactly ``len(query)`` upper-case letters and ``-``;
- hits whose whole sequence equals the query (the query found in the database) are left out;
  the rest are ordered by domain E-value and cut so the file holds at most ``max_sequences`` records;
- a hit record is named ``TARGET/START-END`` (1-based residues of the domain in the target).

Searches are slow and their results do not change for the same inputs, so each A3M is stored in
``cache_dir`` under a sha256 of everything that determines its bytes (query name and sequence,
database content, tool and parameters, :data:`FORMAT_VERSION`): a second call with the same inputs
reads the files and searches nothing. Files are written to a temporary name and renamed into place,
so an interrupted build never leaves a half-written A3M that a later call would take for a result.

pyhmmer is an optional dependency (``pip install "plmforge[msa]"``), imported only when a search runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from plmforge.core.data.fasta import read_fasta
from plmforge.core.errors import DataError, PlmforgeError

Tool = Literal["phmmer", "jackhmmer"]
TOOLS: tuple[str, ...] = ("phmmer", "jackhmmer")
#: Part of every cache key: bump it when the bytes written for the same search change.
FORMAT_VERSION = 1
#: Letters of pyhmmer's amino alphabet that a query or target may hold (besides gaps).
AMINO_LETTERS = frozenset("ACDEFGHIKLMNPQRSTVWYBJZOUX")


def search_msas(
    queries: Sequence[tuple[str, str]],
    database: str | os.PathLike[str] | Sequence[tuple[str, str]],
    *,
    tool: Tool = "phmmer",
    iterations: int = 3,
    evalue: float = 1e-3,
    max_sequences: int = 256,
    cache_dir: str | os.PathLike[str],
    cpus: int = 0,
    progress: bool = False,
) -> dict[str, Path]:
    """Query name -> path of its A3M (see the module docstring); only uncached queries are searched.

    ``database`` is a FASTA file (plain or compressed) or ``(name, sequence)`` pairs. ``evalue`` is
    the reporting and inclusion threshold for hits and domains; ``iterations`` is jackhmmer's maximum
    number of rounds (phmmer ignores it). ``cpus=0`` lets pyhmmer pick the number of threads.
    """
    if tool not in TOOLS:
        raise ValueError(f"tool must be one of {', '.join(TOOLS)}, not {tool!r}")
    if iterations < 1 or max_sequences < 1 or not evalue > 0:
        raise ValueError("iterations and max_sequences must be >= 1 and evalue > 0")
    wanted = _check_queries(queries)
    names, sequences, digest = _load_database(database)
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    settings = [FORMAT_VERSION, digest, tool, iterations if tool == "jackhmmer" else 1, repr(float(evalue)),
                max_sequences]
    paths = {name: cache / f"{_cache_key(settings, name, seq)}.a3m" for name, seq in wanted.items()}
    missing = [(name, seq) for name, seq in wanted.items() if not paths[name].is_file()]
    if missing:
        results = _search(missing, names, sequences, tool, iterations, evalue, cpus)
        for done, ((name, seq), hits) in enumerate(zip(missing, results), start=1):
            _write_atomic(paths[name], _a3m_text(name, seq, hits, names, sequences, max_sequences))
            if progress and (done == len(missing) or done % max(1, len(missing) // 10) == 0):
                print(f"{tool}: searched {done}/{len(missing)} queries", file=sys.stderr, flush=True)
    return paths


def _check_queries(queries: Iterable[tuple[str, str]]) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for name, sequence in queries:
        seq = "".join(sequence.split()).upper()
        if not seq or set(seq) - AMINO_LETTERS:
            bad = "".join(sorted(set(seq) - AMINO_LETTERS)) or "(empty)"
            raise DataError(f"query {name!r}: sequence holds letters outside the amino alphabet: {bad}")
        if wanted.setdefault(name, seq) != seq:
            raise DataError(f"query name {name!r} is given twice with different sequences")
    return wanted


def _load_database(database: Any) -> tuple[list[str], list[str], str]:
    """Names, upper-case sequences and a sha256 of both, so a re-compressed file keeps its cache."""
    if isinstance(database, str | os.PathLike):
        path = Path(database).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: sequence database not found")
        fasta = read_fasta(path)
        names, sequences = fasta.ids, fasta.sequences
    else:
        names = [name for name, _ in database]
        sequences = ["".join(seq.split()).upper() for _, seq in database]
    digest = hashlib.sha256()
    for name, seq in zip(names, sequences):
        digest.update(f"{name}\t{seq}\n".encode())
    return names, sequences, digest.hexdigest()


def _cache_key(settings: list[Any], name: str, sequence: str) -> str:
    return hashlib.sha256(json.dumps([*settings, name, sequence]).encode()).hexdigest()


def _import_pyhmmer() -> Any:
    try:
        import pyhmmer
    except ImportError:
        raise PlmforgeError('MSA search needs pyhmmer: pip install "plmforge[msa]"') from None
    return pyhmmer


def _search(
    queries: list[tuple[str, str]], names: list[str], sequences: list[str], tool: str, iterations: int,
    evalue: float, cpus: int,
) -> Iterable[Any]:
    """One pyhmmer call over all queries; yields each query's TopHits in query order."""
    if not sequences:  # nothing to find; pyhmmer needs no work (and may not be installed)
        yield from ([] for _ in queries)
        return
    pyhmmer = _import_pyhmmer()
    alphabet = pyhmmer.easel.Alphabet.amino()

    def digital(name: str, seq: str) -> Any:
        return pyhmmer.easel.TextSequence(name=name, sequence=seq).digitize(alphabet)

    # Targets are named by their index: database names may repeat, and the index gives the sequence back.
    for i, seq in enumerate(sequences):
        if set(seq) - AMINO_LETTERS:
            raise DataError(f"database record {names[i]!r}: letters outside the amino alphabet")
    targets = pyhmmer.easel.DigitalSequenceBlock(alphabet, [digital(str(i), s) for i, s in enumerate(sequences)])
    digital_queries = [digital(name, seq) for name, seq in queries]
    options = dict(E=evalue, domE=evalue, incE=evalue, incdomE=evalue)
    if tool == "phmmer":
        yield from pyhmmer.hmmer.phmmer(digital_queries, targets, cpus=cpus, **options)
    else:
        for result in pyhmmer.hmmer.jackhmmer(digital_queries, targets, max_iterations=iterations, cpus=cpus,
                                              **options):
            yield result.hits


def _a3m_text(
    name: str, sequence: str, hits: Iterable[Any], names: Sequence[str], sequences: Sequence[str],
    max_sequences: int,
) -> str:
    """The A3M of one query from its pyhmmer hits (targets named by their index in ``names``)."""
    rows = []
    for rank, hit in enumerate(hits):
        target = int(hit.name)
        if not hit.included or sequences[target] == sequence:
            continue
        for domain in hit.domains:
            if domain.included:
                ali = domain.alignment
                header = f"{names[target]}/{ali.target_from}-{ali.target_to}"
                rows.append((domain.i_evalue, rank, ali.target_from, header, _a3m_row(ali, len(sequence))))
    rows.sort(key=lambda row: row[:3])
    lines = [f">{name}\n{sequence}\n"]
    lines += [f">{header}\n{row}\n" for *_, header, row in rows[: max_sequences - 1]]
    return "".join(lines)


def _a3m_row(alignment: Any, query_length: int) -> str:
    """One domain as an A3M row: the model line's ``.`` marks insertions, the target's ``-`` deletions.

    The model of phmmer (and of jackhmmer, whose models keep the query's columns) has one node per
    query position, so ``hmm_from``/``hmm_to`` are query positions.
    """
    if alignment.hmm_length != query_length:
        raise RuntimeError(f"model of {alignment.hmm_length} nodes for a query of {query_length} residues")
    parts = ["-" * (alignment.hmm_from - 1)]
    for model, residue in zip(alignment.hmm_sequence, alignment.target_sequence):
        if model == ".":
            parts.append(residue.lower())
        else:
            parts.append("-" if residue == "-" else residue.upper())
    parts.append("-" * (query_length - alignment.hmm_to))
    row = "".join(parts)
    if sum(not c.islower() for c in row) != query_length:
        raise RuntimeError(f"A3M row of {alignment.target_name} does not span the query's {query_length} columns")
    return row


def _write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: readers see all of it or nothing."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii", newline="\n") as stream:
            stream.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
