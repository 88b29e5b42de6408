#!/usr/bin/env python
"""Build plmforge's built-in MSA set ``scl2205-msas.tar.gz``: A3M alignments for part of the scl2205 corpus.

MSA-based objectives and profile features need alignments, and a user should not have to run a
sequence search before a first try. This script searches a seeded, reproducible subset of the
built-in ``scl2205`` corpus with pyhmmer (``plmforge.core.data.msa_search``) and writes::

    core/data/corpora/scl2205-msas.tar.gz   tar of <accession>.a3m, one per query protein
    core/data/corpora/README.md             its section "scl2205-msas" (replaced, the rest kept)

- Queries come from the ``train`` split and from the ``validation`` split (so validation proteins have
  alignments too); never from ``test``.
- The database is the ``train`` split only, so no test (or validation) sequence appears in any MSA.
- Candidates of a split are ordered by sha256 of ``"{seed}:{accession}"`` (no RNG, so the order is the
  same on every platform and Python version) and searched in that order; a candidate is kept when its
  MSA has at least ``--min-rows`` records (query included; ``--max-rows`` caps it), until ``--train`` /
  ``--validation`` are kept or the candidates run out. Queries longer than ``--max-length`` are
  skipped, which keeps the archive small.
- The tar is deterministic (sorted members, mtime 0, uid/gid 0, mode 0644, ustar) and gzip-compressed
  (zlib level 9 with the ``Z_FILTERED`` strategy, mtime 0 in the gzip header). gzip rather than xz:
  the archive is about 1.7 MB instead of 1.0 MB, but decompresses about 3 times faster, and
  decompressing is most of the time it takes to read the set (``benchmarks/profile_speed.py``);
  ``Z_FILTERED`` makes it both 5% smaller and 7% faster to decompress than zlib's default strategy.

Searches are cached in ``--cache-dir`` (default ``build/msa-cache``), so a re-run and ``--check``
reuse them and search nothing. Usage (from the repository root, with ``pip install -e ".[msa]"``)::

    python scripts/build_scl2205_msas.py --cpus 2      # build (about 5 minutes on 2 cores, uncached)
    python scripts/build_scl2205_msas.py --check       # rebuild in memory, compare with the files
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import math
import statistics
import struct
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from plmforge.core.data.msa_search import search_msas
from plmforge.core.data.proteins import ProteinSet
from plmforge.core.data.sources import load_builtin
from plmforge.core.errors import PlmforgeError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "core" / "data" / "corpora"
DEFAULT_CACHE = REPO_ROOT / "build" / "msa-cache"
ARCHIVE_NAME = "scl2205-msas.tar.gz"
README_NAME = "README.md"
SECTION_HEADING = "## scl2205-msas"
CORPUS = "scl2205"
DATABASE_SPLIT = "train"
QUERY_SPLITS = ("train", "validation")
GZIP_LEVEL = 9


@dataclass(frozen=True)
class Settings:
    """Everything that decides the archive's bytes."""

    seed: int = 0
    train: int = 400
    validation: int = 60
    min_rows: int = 8
    max_rows: int = 64
    max_length: int = 1000
    tool: str = "phmmer"
    iterations: int = 3
    evalue: float = 1e-3

    def wanted(self, split: str) -> int:
        return {"train": self.train, "validation": self.validation}[split]


@dataclass
class SplitResult:
    kept: dict[str, str] = field(default_factory=dict)  # accession -> A3M text, in candidate order
    examined: int = 0  # candidates up to and including the last one kept (or all, if too few)
    searched: int = 0  # candidates searched (may exceed `examined`: searches run in batches)
    too_long: int = 0  # candidates up to `examined` skipped for --max-length


@dataclass
class Built:
    archive: bytes
    tar_size: int
    splits: dict[str, SplitResult]
    settings: Settings
    database_size: int


def candidate_order(names: list[str], seed: int) -> list[int]:
    """Indices ordered by sha256 of ``seed:accession``: a reproducible shuffle that needs no RNG."""
    return sorted(range(len(names)), key=lambda i: hashlib.sha256(f"{seed}:{names[i]}".encode()).digest())


def select(
    proteins: ProteinSet, want: int, database: list[tuple[str, str]], settings: Settings, cache_dir: Path,
    cpus: int, progress: bool,
) -> SplitResult:
    """Search candidates in order, in batches, until ``want`` MSAs with enough rows are kept."""
    order = candidate_order(proteins.names, settings.seed)
    result = SplitResult()
    position = 0
    while len(result.kept) < want and position < len(order):
        # Size the batch by the keep rate so far (about 1/2 in train, 1/4 in validation): few pyhmmer calls,
        # few searches beyond the last candidate needed.
        rate = len(result.kept) / result.examined if result.examined >= 20 else 0.5
        size = max(8, math.ceil(1.2 * (want - len(result.kept)) / max(rate, 0.05)))
        batch = []
        while len(batch) < size and position < len(order):
            i = order[position]
            position += 1
            seq = proteins.sequence(i)
            batch.append((proteins.names[i], seq, len(seq) <= settings.max_length))
        queries = [(name, seq) for name, seq, ok in batch if ok]
        paths = search_msas(queries, database, tool=settings.tool, iterations=settings.iterations,
                            evalue=settings.evalue, max_sequences=settings.max_rows, cache_dir=cache_dir,
                            cpus=cpus)
        result.searched += len(queries)
        for name, _, ok in batch:
            result.examined += 1
            if not ok:
                result.too_long += 1
                continue
            text = paths[name].read_text(encoding="ascii")
            if text.count(">") >= settings.min_rows:
                result.kept[name] = text
                if len(result.kept) == want:
                    break
        if progress:
            print(f"  {len(result.kept)}/{want} kept of {result.examined} candidates", file=sys.stderr, flush=True)
    return result


def build(settings: Settings, cache_dir: Path, cpus: int = 0, progress: bool = False) -> Built:
    corpus = load_builtin(CORPUS)
    db_split = corpus[DATABASE_SPLIT]
    database = [(db_split.names[i], db_split.sequence(i)) for i in range(len(db_split))]
    splits = {}
    for split in QUERY_SPLITS:
        start = time.perf_counter()
        splits[split] = select(corpus[split], settings.wanted(split), database, settings, cache_dir, cpus, progress)
        if progress:
            r = splits[split]
            print(f"{split}: kept {len(r.kept)} of {r.examined} candidates ({r.searched} searched) "
                  f"in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    members = {f"{acc}.a3m": text.encode("ascii") for r in splits.values() for acc, text in r.kept.items()}
    tar = tar_bytes(members)
    archive = gzip_bytes(tar)
    return Built(archive, len(tar), splits, settings, len(database))


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """A tar whose bytes depend only on the member names and contents."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(members[name]))
    return buffer.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """A gzip member as ``gzip.compress(data, 9, mtime=0)`` writes it, but deflated with ``Z_FILTERED``."""
    deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, zlib.Z_FILTERED)
    header = struct.pack("<BBBBLBB", 0x1F, 0x8B, 8, 0, 0, 2, 255)  # deflate, no flags, mtime 0, level 9, any OS
    return header + deflate.compress(data) + deflate.flush() + struct.pack("<LL", zlib.crc32(data), len(data))


def render_section(built: Built) -> str:
    s = built.settings
    rows = {split: [text.count(">") for text in r.kept.values()] for split, r in built.splits.items()}
    lengths = {split: [len(text.split("\n", 2)[1]) for text in r.kept.values()] for split, r in built.splits.items()}
    table = "\n".join(
        f"| {split} | {len(r.kept):,} | {r.examined:,} | {r.too_long:,} | "
        f"{min(rows[split])} / {statistics.median(rows[split]):g} / {max(rows[split])} | "
        f"{statistics.median(lengths[split]):g} |"
        for split, r in built.splits.items()
    )
    all_rows = [n for split_rows in rows.values() for n in split_rows]
    iterations = f", at most {s.iterations} iterations" if s.tool == "jackhmmer" else ""
    pyhmmer_version = importlib.metadata.version("pyhmmer")
    return f"""{SECTION_HEADING} (`{ARCHIVE_NAME}`)

Multiple sequence alignments for {sum(len(r.kept) for r in built.splits.values())} proteins of the `scl2205` corpus, so
MSA-based objectives and profile features work without running a search first.

- Format: a tar (sorted members, mtime 0, uid/gid 0, mode 0644), gzip-compressed (zlib level {GZIP_LEVEL},
  `Z_FILTERED`, mtime 0 in its header; larger than xz, but about 3 times faster to decompress);
  one member `<accession>.a3m` per query protein. Each A3M is aligned to its query: the first
  record is the query (exactly its corpus sequence, ungapped); every further record
  `TARGET/START-END` is one hit domain, upper-case letters aligned to query positions, `-` for query
  positions it does not cover, lower-case letters for insertions. Every record holds as many
  upper-case letters and `-` as the query has residues.
- Search: pyhmmer {pyhmmer_version} `{s.tool}` (`plmforge.core.data.msa_search.search_msas`{iterations}),
  E-value {s.evalue:g} for reporting and inclusion of hits and domains; self-hits (a target equal to
  the query) left out; hits ordered by domain E-value. An uncached build took about 6 minutes on
  2 CPU cores.
- Database: the corpus `{DATABASE_SPLIT}` split, all its {built.database_size:,} proteins; test and validation
  sequences are never in an alignment.
- Queries: from `train` and `validation`, candidates ordered by sha256 of `"{s.seed}:ACCESSION"`
  (seed {s.seed}), those longer than {s.max_length} residues skipped, kept when the MSA has at least {s.min_rows}
  records (query included), cut to at most {s.max_rows} records. The corpus is homology-reduced, so many
  proteins have few homologs in it: about half the train candidates and a quarter of the validation
  ones reach {s.min_rows} records.
- Licence: derived from the MIT-licensed SCL2205 data; see `scl2205.LICENSE`.
- Built by `scripts/build_scl2205_msas.py`; the build is byte-reproducible from its search cache.

| split | MSAs | candidates examined | skipped as too long | records per MSA (min / median / max) | median length |
|---|---:|---:|---:|---|---:|
{table}
| total | {len(all_rows):,} | | | {min(all_rows)} / {statistics.median(all_rows):g} / {max(all_rows)} | |

`{ARCHIVE_NAME}`: {len(built.archive):,} bytes ({built.tar_size:,} as tar),
sha256 `{hashlib.sha256(built.archive).hexdigest()}`.

### Rebuild

```sh
pip install -e ".[msa]"
python scripts/build_scl2205_msas.py --cpus 2   # searches are cached in build/msa-cache
# verify the committed files without writing (re-uses the cache, else searches again):
python scripts/build_scl2205_msas.py --check
```

The searches are deterministic for a given pyhmmer build; the compressed bytes also depend on the
zlib behind Python's `zlib`.
"""


def readme_with_section(readme: str, section: str) -> str:
    """The README with its MSA section replaced (or appended); the rest is left as it is."""
    head = readme.split(f"\n{SECTION_HEADING}", 1)[0].rstrip("\n")
    return f"{head}\n\n{section}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Settings()
    parser.add_argument("--seed", type=int, default=defaults.seed, help="orders the candidates")
    parser.add_argument("--train", type=int, default=defaults.train, help="MSAs to keep from the train split")
    parser.add_argument("--validation", type=int, default=defaults.validation,
                        help="MSAs to keep from the validation split")
    parser.add_argument("--min-rows", type=int, default=defaults.min_rows, help="fewest records to keep an MSA")
    parser.add_argument("--max-rows", type=int, default=defaults.max_rows, help="most records per MSA")
    parser.add_argument("--max-length", type=int, default=defaults.max_length, help="skip longer queries")
    parser.add_argument("--tool", choices=("phmmer", "jackhmmer"), default=defaults.tool)
    parser.add_argument("--iterations", type=int, default=defaults.iterations, help="jackhmmer iterations")
    parser.add_argument("--evalue", type=float, default=defaults.evalue)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="search cache (default: build/msa-cache)")
    parser.add_argument("--cpus", type=int, default=0, help="search threads (0: pyhmmer's choice)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: core/data/corpora)")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out; write nothing")
    args = parser.parse_args(argv)
    settings = Settings(args.seed, args.train, args.validation, args.min_rows, args.max_rows, args.max_length,
                        args.tool, args.iterations, args.evalue)
    start = time.perf_counter()
    try:
        built = build(settings, args.cache_dir, cpus=args.cpus, progress=True)
    except PlmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for split, r in built.splits.items():
        if len(r.kept) < settings.wanted(split):
            print(f"warning: only {len(r.kept)} {split} MSAs reach {settings.min_rows} records", file=sys.stderr)
    print(f"built {ARCHIVE_NAME}: {len(built.archive):,} bytes in {time.perf_counter() - start:.0f} s")
    readme_path = args.out / README_NAME
    outputs = {
        ARCHIVE_NAME: built.archive,
        README_NAME: readme_with_section(readme_path.read_text(encoding="utf-8"), render_section(built)).encode(),
    }
    if args.check:
        stale = [n for n, b in outputs.items() if not (args.out / n).is_file() or (args.out / n).read_bytes() != b]
        if stale:
            print(f"differs from {args.out}: {', '.join(stale)}", file=sys.stderr)
            return 1
        print(f"{args.out}: all files match the rebuild")
        return 0
    for name, data in outputs.items():
        (args.out / name).write_bytes(data)
        print(f"wrote {args.out / name} ({len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}…)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
