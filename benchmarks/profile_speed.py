"""Profiles from MSA files: the vectorised pipeline against a plain per-column Python loop.

Both read the same files with the same parser (``plmforge.core.data.msa``). The vectorised pipeline is
``build_profile_set``; the loop version computes Henikoff weights and weighted counts with nested Python
loops over columns and rows, as a naive implementation would (over ``codes.tolist()``, so it is not
slowed further by indexing numpy scalars). Both keep the first alignment of each query.

Two ratios are reported: files in, profiles out (reading, decompressing and parsing included, which
both pipelines share) and profiles of already-parsed alignments (the computation alone; for the
vectorised side ``ProfileSet.from_alignments``, what ``build_profile_set`` does after parsing). The
script also times reading and parsing alone and checks that both give the same profiles (max abs
difference). Every measurement is repeated and the best time kept; the repeats run in turns (one of
each, then the next round), so a machine that is slower for a while slows all of them alike.

    python benchmarks/profile_speed.py [--sources builtin:scl2205 | PATH ...] [--repeat 3] [--json FILE]

Default sources: ``builtin:scl2205`` when its archive is installed, else ``tests/data/pfam``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib import resources
from pathlib import Path

import numpy as np

from plmforge.core.data.msa import BUILTIN_MSAS, GAP, iter_alignment_sources, iter_msa_files, read_alignments_text
from plmforge.core.data.profiles import BACKGROUNDS, ProfileSet, build_profile_set

ROOT = Path(__file__).resolve().parent.parent


def default_sources() -> list[str]:
    archive = resources.files("plmforge.core.data").joinpath("corpora", BUILTIN_MSAS["scl2205"])
    return ["builtin:scl2205"] if archive.is_file() else [str(ROOT / "tests" / "data" / "pfam")]


def naive_profile(codes: np.ndarray, weighting: str, pseudocount: float, background: list[float]):
    """Henikoff weights and weighted counts with nested Python loops over columns and rows."""
    rows = codes.tolist()
    n, length = len(rows), len(rows[0])
    if weighting == "henikoff":
        weights = [0.0] * n
        for j in range(length):
            counts: dict[int, int] = {}
            for i in range(n):
                a = rows[i][j]
                if a != GAP:
                    counts[a] = counts.get(a, 0) + 1
            distinct = len(counts)
            for i in range(n):
                a = rows[i][j]
                if a != GAP:
                    weights[i] += 1.0 / (distinct * counts[a])
        total = sum(weights)
        if total > 0:
            weights = [w * n / total for w in weights]
    else:
        weights = [1.0] * n
    profile, has_profile = [], []
    for j in range(length):
        counts_j = [0.0] * 20
        for i in range(n):
            a = rows[i][j]
            if a != GAP:
                counts_j[a] += weights[i]
        total = sum(counts_j) + pseudocount
        has_profile.append(total > 0)
        profile.append([(c + pseudocount * b) / total if total > 0 else 0.0 for c, b in zip(counts_j, background)])
    return profile, has_profile


def naive_pipeline(sources: list[str], weighting: str, pseudocount: float, background: list[float]) -> dict:
    """Files in, profiles out, with the loop version (first alignment of each query kept)."""
    return naive_compute(iter_alignment_sources(sources), weighting, pseudocount, background)


def naive_compute(alignments, weighting: str, pseudocount: float, background: list[float]) -> dict:
    profiles: dict[str, tuple[list, list]] = {}
    for aln in alignments:
        if aln.query not in profiles:
            profiles[aln.query] = naive_profile(aln.codes, weighting, pseudocount, background)
    return profiles


def vectorised_compute(alignments, weighting: str, pseudocount: float, background: str) -> ProfileSet:
    """What build_profile_set does once the alignments are parsed."""
    return ProfileSet.from_alignments(alignments, weighting, pseudocount, background)


def best_of(repeat: int, measurements: dict) -> tuple[dict[str, tuple[float, float]], dict[str, object]]:
    """Best wall-clock and CPU seconds of each measurement (label -> function) and its last result.

    The measurements run in turns, ``repeat`` rounds of each once, so that a machine that is slower for a
    while (another process, a busy host) slows them all alike instead of the ones measured then.
    """
    timings = {label: (float("inf"), float("inf")) for label in measurements}
    results: dict[str, object] = {}
    for round_ in range(repeat):
        for label, fn in measurements.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            result = fn()
            wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            timings[label] = (min(timings[label][0], wall), min(timings[label][1], cpu))
            if round_ == repeat - 1:  # (earlier results are dropped: no run pays for garbage of another)
                results[label] = result
            del result
    return timings, results


def parse_all(files: list[tuple[str, bytes]]) -> list:
    return [alignment for name, data in files for alignment in read_alignments_text(data, "auto", name)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+", help="MSA files, directories, globs, archives or builtin:NAME")
    parser.add_argument("--weighting", default="henikoff", choices=["henikoff", "none"])
    parser.add_argument("--pseudocount", type=float, default=1.0)
    parser.add_argument("--background", default="uniform", choices=sorted(BACKGROUNDS))
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best is reported")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    sources = args.sources or default_sources()
    weighting, pseudocount, background = args.weighting, args.pseudocount, args.background
    background_list = BACKGROUNDS[background].tolist()
    repeat = args.repeat

    files = list(iter_msa_files(sources))
    alignments = parse_all(files)
    timings, results = best_of(repeat, {
        "read": lambda: list(iter_msa_files(sources)),
        "parse": lambda: parse_all(files),
        "vectorised": lambda: build_profile_set(sources, weighting, pseudocount, background),
        "naive_loop": lambda: naive_pipeline(sources, weighting, pseudocount, background_list),
        "vectorised_compute": lambda: vectorised_compute(alignments, weighting, pseudocount, background),
        "naive_compute": lambda: naive_compute(alignments, weighting, pseudocount, background_list),
    })
    profiles, naive = results["vectorised"], results["naive_loop"]

    assert set(naive) == set(profiles.sequences()), "the two pipelines kept different queries"
    max_diff, mask_mismatches = 0.0, 0
    for query, (profile, has_profile) in naive.items():
        fast, fast_has = profiles.get(query)
        max_diff = max(max_diff, float(np.abs(fast - np.asarray(profile)).max()))
        mask_mismatches += int((fast_has != np.asarray(has_profile)).sum())

    rows = sum(a.num_rows for a in alignments)
    columns = sum(len(a.query) for a in alignments)
    cells = sum(a.codes.size for a in alignments)
    ratio = {kind: timings["naive_loop"][k] / timings["vectorised"][k] for k, kind in enumerate(("wall", "cpu"))}
    compute_ratio = {kind: timings["naive_compute"][k] / timings["vectorised_compute"][k]
                     for k, kind in enumerate(("wall", "cpu"))}
    results = {
        "sources": sources, "weighting": weighting, "pseudocount": pseudocount, "background": background,
        "files": len(files), "alignments": len(alignments), "unique_queries": len(profiles),
        "duplicate_queries": profiles.duplicates, "rows": rows, "columns": columns, "cells": cells,
        **{f"{label}_s": round(wall, 4) for label, (wall, _) in timings.items()},
        **{f"{label}_cpu_s": round(cpu, 4) for label, (_, cpu) in timings.items()},
        "naive_over_vectorised": round(ratio["wall"], 1), "naive_over_vectorised_cpu": round(ratio["cpu"], 1),
        "compute_naive_over_vectorised": round(compute_ratio["wall"], 1),
        "compute_naive_over_vectorised_cpu": round(compute_ratio["cpu"], 1),
        "max_abs_diff": max_diff, "has_profile_mismatches": mask_mismatches, "profile_bytes": profiles.nbytes,
        "repeat": repeat, "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
    }

    def line(label: str) -> str:
        wall, cpu = timings[label]
        return f"{wall:8.4f} s ({cpu:.4f} s CPU)"

    print(f"sources: {' '.join(sources)}  ({weighting}, pseudocount {pseudocount:g}, {background}); "
          f"best of {repeat}, measured in turns")
    print(f"{len(files)} files, {len(alignments)} alignments ({len(profiles)} unique queries), {rows} rows, "
          f"{columns} query columns, {cells} cells")
    print(f"  read + decompress:   {line('read')}")
    print(f"  parse:               {line('parse')}")
    print("files in, profiles out")
    print(f"  vectorised:          {line('vectorised')}")
    print(f"  naive loop:          {line('naive_loop')}")
    print(f"  naive / vectorised:  {ratio['wall']:8.1f} x   ({ratio['cpu']:.1f}x CPU)")
    print("profiles of parsed alignments (computation alone)")
    print(f"  vectorised:          {line('vectorised_compute')}")
    print(f"  naive loop:          {line('naive_compute')}")
    print(f"  naive / vectorised:  {compute_ratio['wall']:8.1f} x   ({compute_ratio['cpu']:.1f}x CPU)")
    print(f"same profiles: max abs diff {max_diff:.2e}, has_profile mismatches {mask_mismatches}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
