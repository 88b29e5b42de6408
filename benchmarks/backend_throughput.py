"""Training throughput of the PyTorch and JAX backends, side by side in one process.

Both backends get the same spec (default: the quickstart), the same initial weights and the same
real-corpus batches. Each runs the batches twice: the first pass includes JAX's compilations (and
PyTorch's allocator warm-up); the second is the steady state, reported in real residues per second.
Compile time is estimated as first-pass time minus second-pass time.

    python benchmarks/backend_throughput.py [SPEC] [--steps 40] [--backends torch,jax]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from plmforge.core.build import build_backend, build_objectives, make_planner
from plmforge.core.data.sources import load_splits
from plmforge.core.data.stream import ExampleStream
from plmforge.core.registry import Registry
from plmforge.core.schedule import rate_for
from plmforge.core.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent


def timed_pass(backend, batches, lrs) -> float:
    start = time.perf_counter()
    metrics = None
    for micro, lr in zip(batches, lrs):
        metrics = backend.train_step(micro, lr)
    float(metrics["loss"][0])  # wait for queued device work (JAX dispatches asynchronously)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", nargs="?", default=str(ROOT / "specs" / "quickstart.yaml"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--backends", default="torch,jax")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    spec = load_spec(Path(args.spec))
    registry = Registry()
    vocab, slots = build_objectives(spec)
    train = load_splits(spec.data).splits["train"]
    planner = make_planner(spec)
    streams = {s.label: ExampleStream(s.objective, train, planner, spec.seed, stream=i) for i, s in enumerate(slots)}
    accumulation = spec.training.gradient_accumulation
    batches = [{label: [stream.next() for _ in range(accumulation)] for label, stream in streams.items()}
               for _ in range(args.steps)]
    lrs = [rate_for(spec.training, step) for step in range(args.steps)]
    residues = sum(b.residues for step in batches for micro in step.values() for b in micro)

    results = {}
    for name in args.backends.split(","):
        spec_b = load_spec(Path(args.spec), [f"backend.name={name}"])
        setup_start = time.perf_counter()
        backend = build_backend(spec_b, vocab, slots, registry)  # same seed: same initial weights
        setup = time.perf_counter() - setup_start
        first = timed_pass(backend, batches, lrs)
        second = timed_pass(backend, batches, lrs)
        results[name] = {
            "setup_s": round(setup, 2), "first_pass_s": round(first, 2), "steady_pass_s": round(second, 2),
            "compile_s_estimate": round(max(first - second, 0.0), 2),
            "residues_per_s": round(residues / second), **{k: v for k, v in backend.counters().items()},
            "device": backend.describe().get("device", "?"),
        }
        print(name, json.dumps(results[name]), flush=True)
    if {"torch", "jax"} <= set(results):
        ratio = results["jax"]["residues_per_s"] / results["torch"]["residues_per_s"]
        print(f"jax / torch steady-state throughput: {ratio:.2f}x  ({args.steps} steps of "
              f"{spec.training.batch_size.tokens or spec.training.batch_size.sequences} "
              f"{'tokens' if spec.training.batch_size.tokens else 'sequences'}, {residues} residues per pass, "
              f"{platform.processor() or platform.machine()})")
        results["jax_over_torch"] = round(ratio, 3)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
