"""Downstream heads: length-grouped batches (``core.heads.head_batches``) against random batches.

Fits the same head on the same real task data twice per round, once with the batches plmforge uses
(proteins of similar length together, regrouped every epoch; predictions in sorted order) and once
with plain shuffled batches in input order (what it did before), and reports seconds, the padded
share of the head's inputs and the test metrics of each. Inputs are one-hot residues z-scored with
the training statistics (the evaluation's one-hot reference), so no pretrained model is needed.

    python benchmarks/head_batches.py [--spec specs/quickstart.yaml] [--task localization]
        [--kind convbert] [--epochs 2] [--backend torch] [--rounds 2] [--quiet 0.25] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
from pathlib import Path

import numpy as np
from _common import QUICKSTART, environment, interleaved_rounds, print_environment, summarize, write_json

from plmforge.core.build import build_backend, build_objectives
from plmforge.core.evaluation import SPLITS, load_tasks, prepared_splits, standardize
from plmforge.core.heads import HeadData
from plmforge.core.registry import Registry
from plmforge.core.spec import load_spec
from plmforge.plugins.references.onehot import one_hot


def random_batches(lengths, batch_size, rng=None):
    """The previous batching: shuffled (training) or input order (evaluation), whatever the lengths."""
    order = rng.permutation(len(lengths)) if rng is not None else np.arange(len(lengths))
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def padded_share(batches, lengths) -> float:
    lengths = np.asarray(lengths)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    return 1 - lengths.sum() / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(QUICKSTART))
    parser.add_argument("--task", default="localization", help="label of a task in the spec")
    parser.add_argument("--kind", default="convbert", choices=["linear", "convbert"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--backend", default="torch", choices=["torch", "jax"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quiet", type=float, default=0.25,
                        help="a round counts only if other processes used at most this many CPU cores meanwhile; "
                             "negative: every round counts")
    parser.add_argument("--json")
    args = parser.parse_args()
    quiet = None if args.quiet < 0 else args.quiet

    spec = load_spec(Path(args.spec), [f"backend.name={args.backend}"])
    tasks = dict(load_tasks(spec.tasks))
    if args.task not in tasks:
        raise SystemExit(f"no task {args.task!r} in {args.spec}; it has {sorted(tasks)}")
    task = tasks[args.task]
    data = task.load()
    splits = prepared_splits(task, data, spec.seed)
    inputs = {name: HeadData([one_hot(s) for s in splits[name].sequences], splits[name].labels) for name in SPLITS}
    standardize(inputs)
    settings = task.config.head.model_copy(update={"kind": args.kind, "epochs": args.epochs, "finetune": "frozen"})
    problem = task.problem(data)
    vocab, slots = build_objectives(spec)
    backend = build_backend(spec, vocab, slots, Registry())
    train_lengths = inputs["train"].lengths(False)

    results: dict[str, dict] = {}
    backend_heads = importlib.import_module(f"plmforge.plugins.backends.{args.backend}.heads")
    grouped = backend_heads.head_batches

    def fit(name, batching):
        def run():
            backend_heads.head_batches = batching  # the backend's module global, looked up at call time
            try:
                result = backend.fit_head(problem, settings, inputs["train"], inputs["validation"], [inputs["test"]])
            finally:
                backend_heads.head_batches = grouped
            results[name] = task.metrics(result.predictions[0], splits["test"], data)
        return run

    env = environment()
    print_environment(env)
    print(f"task {args.task}: {', '.join(f'{len(splits[s])} {s}' for s in SPLITS)} proteins; {args.kind} head, "
          f"{args.epochs} epochs, batch {settings.batch_size}, {args.backend}", flush=True)
    shares = {"length-grouped": padded_share(grouped(train_lengths, settings.batch_size, np.random.default_rng(0)),
                                             train_lengths),
              "random": padded_share(random_batches(train_lengths, settings.batch_size, np.random.default_rng(0)),
                                     train_lengths)}
    fit("length-grouped", grouped)()  # warm-up (and JAX compilations)
    fit("random", random_batches)()
    timing = interleaved_rounds([("length-grouped", fit("length-grouped", grouped)),
                                 ("random", fit("random", random_batches))], args.rounds, quiet)
    times = timing["counted"]
    out = {"environment": env, "task": args.task, "kind": args.kind, "epochs": args.epochs, "backend": args.backend,
           "proteins": {s: len(splits[s]) for s in SPLITS}}
    for name in ("length-grouped", "random"):
        out[name] = {**summarize(times[name]), "padded_share_train": round(shares[name], 4), "test": results[name]}
        shown = "  ".join(f"{k} {v:.4f}" for k, v in results[name].items())
        print(f"  {name:15s} {statistics.median(times[name]):7.1f} s median; {shares[name]:.1%} of training "
              f"positions padding; test {shown}")
    out["speedup_median"] = round(statistics.median(times["random"]) / statistics.median(times["length-grouped"]), 3)
    print(f"length-grouped / random: {out['speedup_median']:.2f}x faster")
    write_json(args.json, out)


if __name__ == "__main__":
    main()
