"""Data pipeline throughput of each built-in objective against the model's consumption rate, one process.

For each objective (default: mlm, completion, bert_mlm, profile), the quickstart spec with only
that objective (profile with the built-in MSAs, as in ``specs/profile-multitask.yaml``) is run
through the training data path exactly as the run loop drives it: ``objective.prepare`` (timed
once, reported apart), then ``ExampleStream.next()`` for ``--batches`` batches: the epoch's
length-bucketed plan, cropping, the objective's ``make_example`` for every protein, collation and
the batch weight. Reported: examples/s and real residues/s of the pipeline.

The consumer: the torch backend training the quickstart model (ankh-tiny) on the same objective's
batches, ``--model-steps`` steps after ``--model-warmup`` untimed ones, real residues/s. The ratio
pipeline/model says how many times faster the data comes than one process of the model eats it
(the run loop makes batches in the training thread, so 10x means under 10 % of a step's time).
Measurements alternate (pipeline, model) per objective for ``--rounds`` rounds; medians reported.

    python benchmarks/data_pipeline.py [--spec specs/quickstart.yaml] [--objectives mlm,completion,bert_mlm,profile]
        [--batches 100] [--model-steps 10] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch  # noqa: F401  (versions in the report)
import yaml
from _common import QUICKSTART, environment, print_environment, write_json

from plmforge.core.build import build_backend, build_objectives, make_planner, prepared_source
from plmforge.core.data.sources import load_splits
from plmforge.core.data.stream import ExampleStream
from plmforge.core.objective import ENCODER_INPUT
from plmforge.core.registry import Registry
from plmforge.core.schedule import rate_for
from plmforge.core.spec import validate_spec

#: Objective entries used for each name (the spec files' settings where one exists).
ENTRIES = {
    "mlm": {"name": "mlm", "probabilities": [0.15, 0.2, 0.3]},  # specs/quickstart.yaml
    "completion": {"name": "completion"},
    "bert_mlm": {"name": "bert_mlm", "mask_probability": 0.15},  # specs/profile-multitask.yaml
    "profile": {"name": "profile", "msas": ["builtin:scl2205"], "weighting": "henikoff", "pseudocount": 1.0,
                "background": "blosum62"},
}


def spec_for(base: dict, entry: dict):
    raw = {**base, "objectives": [entry], "tasks": []}
    return validate_spec(raw, source=f"<{entry['name']}>", registry=Registry())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(QUICKSTART), help="base spec (data, model, batch size, optimizer)")
    parser.add_argument("--objectives", default="mlm,completion,bert_mlm,profile")
    parser.add_argument("--batches", type=int, default=100, help="pipeline batches per round")
    parser.add_argument("--model-steps", type=int, default=10, help="timed training steps per round")
    parser.add_argument("--model-warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    base = yaml.safe_load(Path(args.spec).read_text())
    env = environment()
    print_environment(env)
    registry = Registry()
    data_cache: dict[str, object] = {}
    setups = {}
    for name in args.objectives.split(","):
        spec = spec_for(base, ENTRIES[name])
        vocab, slots = build_objectives(spec)
        slot = slots[0]
        key = repr(spec.data.model_dump())
        if key not in data_cache:
            data_cache[key] = load_splits(spec.data, vocab=vocab).splits["train"]
        start = time.perf_counter()
        source = prepared_source(slot, data_cache[key], "train", spec, {})
        prepare_s = time.perf_counter() - start
        stream = ExampleStream(slot.objective, source, make_planner(spec), spec.seed, stream=0)
        # the model's own stream (same objective, another stream index), so both measure fresh batches
        model_stream = ExampleStream(slot.objective, source, make_planner(spec), spec.seed, stream=1)
        backend = build_backend(spec, vocab, slots, registry)
        accumulation = spec.training.gradient_accumulation
        model_batches = [{slot.label: [model_stream.next() for _ in range(accumulation)]}
                         for _ in range(args.model_warmup + args.model_steps)]
        for step, micro in enumerate(model_batches[: args.model_warmup]):
            backend.train_step(micro, rate_for(spec.training, step))
        setups[name] = dict(spec=spec, slot=slot, stream=stream, backend=backend, model_batches=model_batches,
                            prepare_s=prepare_s, proteins=len(source.proteins))
        print(f"{name}: {len(source.proteins)} training proteins, prepare {prepare_s:.3f} s", flush=True)

    runs = {name: {"pipeline_s": [], "pipeline_examples": [], "pipeline_residues": [], "model_s": []}
            for name in setups}
    for r in range(args.rounds):
        for name, s in setups.items():
            stream, record = s["stream"], runs[name]
            start = time.perf_counter()
            examples = residues = 0
            for _ in range(args.batches):
                batch = stream.next()
                examples += batch.arrays[ENCODER_INPUT].shape[0]
                residues += batch.residues
            record["pipeline_s"].append(time.perf_counter() - start)
            record["pipeline_examples"].append(examples)
            record["pipeline_residues"].append(residues)
            timed = s["model_batches"][args.model_warmup:]
            start = time.perf_counter()
            metrics = None
            for step, micro in enumerate(timed):
                metrics = s["backend"].train_step(micro, rate_for(s["spec"].training, step))
            float(metrics["loss"][0])
            record["model_s"].append(time.perf_counter() - start)
            model_residues = sum(b.residues for m in timed for batches in m.values() for b in batches)
            record["model_residues"] = model_residues
            print(f"round {r + 1} {name}: pipeline {residues / record['pipeline_s'][-1]:,.0f} res/s, "
                  f"model {model_residues / record['model_s'][-1]:,.0f} res/s", flush=True)

    results = {"environment": env, "spec": args.spec, "batches_per_round": args.batches,
               "model_steps_per_round": args.model_steps, "rounds": args.rounds, "objectives": {}}
    quickstart_model = None
    print(f"\n{'objective':11s} {'examples/s':>11s} {'residues/s':>11s} {'model res/s':>12s} {'ratio':>7s}  prepare")
    for name, record in runs.items():
        pipe_rates = [res / t for res, t in zip(record["pipeline_residues"], record["pipeline_s"])]
        ex_rates = [ex / t for ex, t in zip(record["pipeline_examples"], record["pipeline_s"])]
        model_rates = [record["model_residues"] / t for t in record["model_s"]]
        out = {
            "training_proteins": setups[name]["proteins"], "prepare_s": round(setups[name]["prepare_s"], 4),
            "pipeline_examples_per_s": round(statistics.median(ex_rates)),
            "pipeline_residues_per_s": round(statistics.median(pipe_rates)),
            "pipeline_mean_ms_per_batch": round(1000 * statistics.median(record["pipeline_s"]) / args.batches, 3),
            "model_residues_per_s": round(statistics.median(model_rates)),
            "all_pipeline_residues_per_s": [round(x) for x in pipe_rates],
            "all_model_residues_per_s": [round(x) for x in model_rates],
        }
        out["pipeline_over_model"] = round(out["pipeline_residues_per_s"] / out["model_residues_per_s"], 2)
        if name == "mlm":
            quickstart_model = out["model_residues_per_s"]
        results["objectives"][name] = out
        print(f"{name:11s} {out['pipeline_examples_per_s']:>11,} {out['pipeline_residues_per_s']:>11,} "
              f"{out['model_residues_per_s']:>12,} {out['pipeline_over_model']:>6.1f}x  {out['prepare_s']:.3f} s")
    if quickstart_model:
        for out in results["objectives"].values():
            out["pipeline_over_quickstart_model"] = round(out["pipeline_residues_per_s"] / quickstart_model, 2)
        print("pipeline / quickstart (mlm) model: " + ", ".join(
            f"{n} {o['pipeline_over_quickstart_model']:.1f}x" for n, o in results["objectives"].items()))
    results["min_ratio"] = min(o["pipeline_over_model"] for o in results["objectives"].values())
    write_json(args.json, results)


if __name__ == "__main__":
    main()
