"""Batch planning at UniRef50 scale: the whole-epoch plan against the windowed one.

A whole-epoch plan (``BatchPlanner.plan``) holds a permutation of every protein, its sorted copy and
one index array per batch for the epoch (about 1.6 million at UniRef50 size); the windowed plan
(``EpochPlan``) holds one window of ``PLAN_WINDOW`` proteins at a time. This reports, for synthetic
UniRef-like lengths (log-normal, median ~250), the seconds and peak memory (numpy allocations, via
tracemalloc) of planning a whole epoch both ways; and, on the built-in corpus, the padded share
(1 - real tokens / padded tokens) of the one-window plan against small windows, to show that
length bucketing inside a window wastes no more padding. It also times the per-protein Python loop
the token-budget cut used to run, on one window, extrapolated to the corpus (the cut is now one
binary search per batch, with the same batches).

    python benchmarks/planning_scale.py [--proteins 50000000] [--max-length 512] [--tokens 16384]
        [--small-windows 4096 65536] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

import numpy as np
from _common import QUICKSTART, environment, print_environment, write_json

from plmforge.core.build import make_planner
from plmforge.core.data.batching import PLAN_WINDOW, BatchPlanner, EpochPlan
from plmforge.core.data.sources import load_builtin
from plmforge.core.spec import load_spec


def uniref_like_lengths(count: int, seed: int = 0) -> np.ndarray:
    """Log-normal lengths with median 250 and UniRef50's long tail, as int32 (4 bytes a protein)."""
    rng = np.random.default_rng(seed)
    lengths = np.empty(count, dtype=np.int32)
    for start in range(0, count, 1 << 22):  # in chunks: the float64 draw would be 8 bytes a protein
        part = rng.lognormal(np.log(250), 0.75, min(1 << 22, count - start))
        lengths[start:start + len(part)] = np.clip(part, 1, 35_000)
    return lengths


def measured(work):
    """(result summary, seconds, peak MB of allocations) of ``work()``."""
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    summary = work()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return summary, seconds, peak


def whole_epoch(planner: BatchPlanner, lengths: np.ndarray) -> dict[str, int]:
    batches = planner.plan(lengths, np.random.default_rng([0, 0, 0]))
    return {"batches": len(batches), "windows": 1}


def windowed(planner: BatchPlanner, lengths: np.ndarray, window: int = PLAN_WINDOW) -> dict[str, int]:
    """Every batch of the epoch, visited in training order with only the current window planned."""
    plan = EpochPlan(planner, lengths, (0, 0, 0), window)
    count = 0
    for w in range(plan.windows):
        count += len(plan.batches(w))
    return {"batches": count, "windows": plan.windows}


def greedy_loop_seconds(planner: BatchPlanner, lengths: np.ndarray) -> float:
    """The token-budget cut as it was (a Python step per protein) on ``lengths``."""
    padded = np.sort(planner.padded_lengths(lengths))
    started = time.perf_counter()
    start, n = 0, len(padded)
    while start < n:
        end = start + 1
        while end < n and (end + 1 - start) * padded[end] <= planner.tokens:
            end += 1
        start = end
    return time.perf_counter() - started


def padded_share(planner: BatchPlanner, lengths: np.ndarray, window: int) -> float:
    plan = EpochPlan(planner, lengths, (0, 0, 0), window)
    padded = planner.padded_lengths(lengths)
    real = padded_tokens = 0
    for w in range(plan.windows):
        for batch in plan.batches(w):
            real += int(np.minimum(lengths[batch], planner.max_length).sum())
            padded_tokens += len(batch) * int(padded[batch].max())
    return 1 - real / padded_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proteins", type=int, default=50_000_000)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=16384, help="token budget of a batch")
    parser.add_argument("--small-windows", type=int, nargs="*", default=[4096, 65536])
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    info = environment()
    print_environment(info)
    results: dict = {"environment": info, "proteins": args.proteins, "window": PLAN_WINDOW}

    planner = BatchPlanner(max_length=args.max_length, tokens=args.tokens)
    lengths = uniref_like_lengths(args.proteins)
    print(f"{args.proteins:,} synthetic lengths: median {int(np.median(lengths[:1 << 22]))}, "
          f"{lengths.nbytes / 2**20:.0f} MB as int32; planner max_length {args.max_length}, tokens {args.tokens}")
    for name, work in (("windowed", lambda: windowed(planner, lengths)),
                       ("whole epoch", lambda: whole_epoch(planner, lengths))):
        summary, seconds, peak = measured(work)
        results[name] = {**summary, "seconds": seconds, "peak_mb": peak}
        print(f"  {name:12s} {summary['batches']:>10,} batches in {summary['windows']:>3} window(s): "
              f"{seconds:7.1f} s, peak {peak:8.0f} MB beyond the lengths")
    one_window = lengths[:PLAN_WINDOW]
    loop = greedy_loop_seconds(planner, one_window) * len(lengths) / len(one_window)
    results["previous_cut_loop_seconds_extrapolated"] = loop
    print(f"  the previous per-protein cut loop alone, extrapolated from one window: {loop:7.1f} s")

    spec = load_spec(QUICKSTART)
    quick = make_planner(spec)
    corpus = load_builtin(spec.data.source.removeprefix("builtin:"))["train"].lengths
    shares = {str(window): padded_share(quick, corpus, window) for window in [PLAN_WINDOW, *args.small_windows]}
    results["padded_share_builtin"] = shares
    print(f"padded share on the built-in corpus ({len(corpus):,} training proteins, quickstart planner):")
    for window, share in shares.items():
        windows = -(-len(corpus) // int(window))
        print(f"  window {int(window):>9,} ({windows:>3} window(s)): {share:.4f}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
