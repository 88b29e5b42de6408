"""Training throughput: plmforge's PyTorch backend against Hugging Face transformers' T5, one process.

Both train the same model (``ModelConfig.hf_config``, the same initial weights: the transformers
``T5ForConditionalGeneration`` loads our backend's weights, with its LM head untied as ours) with
the same optimizer (AdamW, the spec's lr schedule, betas, eps, weight decay on matrices only,
gradient clipping at ``training.max_grad_norm``) on the same examples of the spec's objective
(default: the quickstart's multi-probability masked LM on ``builtin:scl2205``):

* plmforge: its own length-bucketed, token-budget batches from the spec's planner
  (``ExampleStream.next()``), ``backend.train_step``;
* transformers, "the usual way": the very same examples (encoder input, decoder input, targets),
  shuffled and cut into batches with the same number of proteins on average, padded to the longest
  in each batch, ``attention_mask``, ``labels`` with -100 at padding, the model's own loss.

Throughput is counted in real (non-padding) residues per second; both sides see the same residues.
Batches are made before timing (the data pipeline has its own benchmark). After ``--warmup``
steps each, ``--rounds`` rounds time ``--steps`` steps of each side, alternating which goes first; on a
shared machine a round counts only if other processes used at most ``--quiet`` CPU cores meanwhile
(up to ``--max-rounds`` tries). ``--profile`` adds a torch.profiler table of 5 steps of each side.

    python benchmarks/train_vs_transformers.py [--spec specs/quickstart.yaml] [--steps 100] [--rounds 3]
        [--warmup 3] [--preset ankh-tiny] [--batch-tokens 8192] [--set KEY=VALUE] [--quiet 0.25]
        [--compile] [--profile] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
from _common import (
    QUICKSTART,
    attention_implementation,
    environment,
    hf_t5_from_ours,
    interleaved_rounds,
    print_environment,
    summarize,
    write_json,
)

from plmforge.core.build import build_backend, build_objectives, make_planner
from plmforge.core.data.sources import load_splits
from plmforge.core.data.stream import ExampleStream
from plmforge.core.objective import DECODER_INPUT, ENCODER_INPUT
from plmforge.core.registry import Registry
from plmforge.core.schedule import rate_for
from plmforge.core.spec import load_spec

TARGET = "decoder_target_ids"  # the decoder objectives' (mlm, completion) target feature


def overrides_from(args: argparse.Namespace) -> list[str]:
    sets = list(args.set)
    if args.preset:
        sets.append(f"model.preset={args.preset}")
    if args.batch_tokens:
        sets.append(f"training.batch_size={{tokens: {args.batch_tokens}}}")
    if args.compile:
        sets.append("backend.compile=true")
    return sets


def record_examples(objective):
    """Wrap ``objective.make_example`` (this instance only) to keep each example and its residue count."""
    recorded: list[tuple[dict[str, np.ndarray], int]] = []
    original = objective.make_example

    def make_example(protein, rng):
        example = original(protein, rng)
        recorded.append((example, len(protein.tokens)))
        return example

    objective.make_example = make_example
    return recorded, lambda: setattr(objective, "make_example", original)


def hf_batches(examples, count: int, rng: np.random.Generator) -> list[dict[str, torch.Tensor]]:
    """Random batches (no length sorting), ``count`` of them, padded to the longest, HF conventions."""
    order = rng.permutation(len(examples))
    batches = []
    for part in np.array_split(order, count):
        chosen = [examples[i][0] for i in part]
        enc = max(len(e[ENCODER_INPUT]) for e in chosen)
        dec = max(len(e[TARGET]) for e in chosen)
        input_ids = torch.zeros(len(chosen), enc, dtype=torch.long)
        attention = torch.zeros(len(chosen), enc, dtype=torch.long)
        decoder_ids = torch.zeros(len(chosen), dec, dtype=torch.long)
        labels = torch.full((len(chosen), dec), -100, dtype=torch.long)
        for row, e in enumerate(chosen):
            n, m = len(e[ENCODER_INPUT]), len(e[TARGET])
            input_ids[row, :n] = torch.from_numpy(e[ENCODER_INPUT].astype(np.int64))
            attention[row, :n] = 1
            decoder_ids[row, :m] = torch.from_numpy(e[DECODER_INPUT].astype(np.int64))
            labels[row, :m] = torch.from_numpy(e[TARGET].astype(np.int64))
        batches.append({"input_ids": input_ids, "attention_mask": attention, "decoder_input_ids": decoder_ids,
                        "labels": labels, "residues": sum(examples[i][1] for i in part)})
    return batches


class HFTrainer:
    """transformers T5 trained like our backend: AdamW groups, clipping, the spec's lr per step."""

    def __init__(self, model, training):
        self.model = model.train()
        opt = training.optimizer
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if opt.name == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps)
        else:
            self.optimizer = torch.optim.Adafactor(groups, lr=opt.lr)
        self.clip = training.max_grad_norm if training.max_grad_norm is not None else float("inf")

    def step(self, micro: list[dict[str, torch.Tensor]], lr: float) -> torch.Tensor:
        total = torch.zeros(())
        for batch in micro:
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             decoder_input_ids=batch["decoder_input_ids"], labels=batch["labels"])
            loss = out.loss / len(micro)
            loss.backward()
            total = total + loss.detach()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total


def same_loss_check(backend, hf_model, label: str, micro) -> dict[str, float]:
    """Loss of one plmforge batch through both models before training (eval mode): they must agree."""
    metrics = backend.eval_step({label: micro})
    value, count = metrics[f"{label}/loss"]
    ours = float(value) / float(count)
    arrays = micro.arrays
    labels = torch.from_numpy(arrays[TARGET].astype(np.int64))
    labels[labels == 0] = -100
    enc = torch.from_numpy(arrays[ENCODER_INPUT].astype(np.int64))
    hf_model.eval()
    with torch.inference_mode():
        theirs = float(hf_model(input_ids=enc, attention_mask=(enc != 0).long(),
                                decoder_input_ids=torch.from_numpy(arrays[DECODER_INPUT].astype(np.int64)),
                                labels=labels).loss)
    hf_model.train()
    return {"plmforge_loss": ours, "transformers_loss": theirs, "abs_diff": abs(ours - theirs)}


def profile_steps(name: str, run_steps, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        run_steps()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    print(f"\n-- torch.profiler, {name} (sorted by self CPU time) --\n{table}", flush=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(QUICKSTART))
    parser.add_argument("--steps", type=int, default=100,
                        help="timed optimizer steps per round and side (fewer make an unrepresentative sample of "
                             "length buckets: 20 quickstart batches gave 190 residues per protein against 226 "
                             "in the corpus)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side first")
    parser.add_argument("--rounds", type=int, default=3, help="rounds that count (see --quiet)")
    parser.add_argument("--quiet", type=float, default=0.25,
                        help="a round counts only if other processes used at most this many CPU cores meanwhile "
                             "(shared machines); negative: every round counts")
    parser.add_argument("--max-rounds", type=int, help="give up waiting for quiet rounds after this many (3 x rounds)")
    parser.add_argument("--preset", help="model preset (default: the spec's)")
    parser.add_argument("--batch-tokens", type=int, help="token budget per batch (default: the spec's)")
    parser.add_argument("--compile", action="store_true", help="--set backend.compile=true (plmforge side)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more spec overrides")
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table of each side")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.quiet is not None and args.quiet < 0:
        args.quiet = None

    spec = load_spec(Path(args.spec), overrides_from(args))
    vocab, slots = build_objectives(spec)
    if len(slots) != 1 or not slots[0].objective.needs().decoder_lm:
        raise SystemExit("this benchmark compares one decoder objective (mlm, completion) with transformers' T5")
    slot = slots[0]
    train = load_splits(spec.data).splits["train"]
    stream = ExampleStream(slot.objective, train, make_planner(spec), spec.seed, stream=0)
    accumulation = spec.training.gradient_accumulation

    recorded, restore = record_examples(slot.objective)

    def take(steps: int):
        start = len(recorded)
        batches = [{slot.label: [stream.next() for _ in range(accumulation)]} for _ in range(steps)]
        return batches, recorded[start:]

    warm_ours, warm_examples = take(args.warmup)
    timed_ours, timed_examples = take(args.steps)
    restore()
    rng = np.random.default_rng([spec.seed, 0xBE7C])
    warm_hf = hf_batches(warm_examples, args.warmup * accumulation, rng) if args.warmup else []
    timed_hf = hf_batches(timed_examples, args.steps * accumulation, rng)
    warm_hf = [warm_hf[i:i + accumulation] for i in range(0, len(warm_hf), accumulation)]
    timed_hf = [timed_hf[i:i + accumulation] for i in range(0, len(timed_hf), accumulation)]

    micro_ours = [m for step in timed_ours for m in step[slot.label]]
    micro_hf = [m for step in timed_hf for m in step]
    residues = sum(m.residues for m in micro_ours)
    assert residues == sum(m["residues"] for m in micro_hf) == sum(r for _, r in timed_examples)
    padded_ours = sum(m.arrays[ENCODER_INPUT].size for m in micro_ours)
    padded_hf = sum(m["input_ids"].numel() for m in micro_hf)
    lrs = [rate_for(spec.training, s) for s in range(args.steps)]

    backend = build_backend(spec, vocab, slots, Registry())
    hf_model = hf_t5_from_ours(spec.model.hf_config(len(vocab)), backend.weights())
    check = same_loss_check(backend, hf_model, slot.label, timed_ours[0][slot.label][0])
    hf = HFTrainer(hf_model, spec.training)

    env = environment()
    print_environment(env)
    print(f"model {spec.model.preset} ({backend.num_parameters():,} parameters), objective {spec.objectives[0].name}, "
          f"transformers attention: {attention_implementation(hf_model)}", flush=True)
    print(f"same batch, same weights, eval loss: plmforge {check['plmforge_loss']:.6f}, "
          f"transformers {check['transformers_loss']:.6f}", flush=True)

    def run_ours(batches=timed_ours):
        metrics = None
        for step, micro in enumerate(batches):
            metrics = backend.train_step(micro, lrs[step % len(lrs)])
        if metrics is not None:
            float(metrics["loss"][0])

    def run_hf(batches=timed_hf):
        loss = None
        for step, micro in enumerate(batches):
            loss = hf.step(micro, lrs[step % len(lrs)])
        if loss is not None:
            float(loss)

    run_ours(warm_ours)
    run_hf(warm_hf)
    contenders = [("plmforge", run_ours), ("transformers", run_hf)]
    timing = interleaved_rounds(contenders, args.rounds, args.quiet, args.max_rounds, work=residues)
    times = timing["counted"]

    results = {
        "environment": env, "spec": args.spec, "overrides": overrides_from(args),
        "model": {"preset": spec.model.preset, "parameters": backend.num_parameters()},
        "objective": spec.objectives[0].name, "steps": args.steps, "rounds": args.rounds,
        "gradient_accumulation": accumulation, "batch_size": spec.training.batch_size.model_dump(),
        "residues_per_pass": residues, "examples_per_pass": len(timed_examples),
        "transformers_attention": attention_implementation(hf_model), "initial_loss_check": check,
        "plmforge": {**summarize(times["plmforge"]), "batches": len(micro_ours),
                     "mean_sequences_per_batch": len(timed_examples) / len(micro_ours),
                     "padded_encoder_tokens": padded_ours, "encoder_fill": residues / padded_ours},
        "transformers": {**summarize(times["transformers"]), "batches": len(micro_hf),
                         "mean_sequences_per_batch": len(timed_examples) / len(micro_hf),
                         "padded_encoder_tokens": padded_hf, "encoder_fill": residues / padded_hf},
    }
    for name in ("plmforge", "transformers"):
        t = times[name]
        results[name]["residues_per_s_median"] = round(residues / statistics.median(t))
        results[name]["residues_per_s_best"] = round(residues / min(t))
    results["timing"] = {k: timing[k] for k in ("seconds", "other_processes_cores", "clean")}
    results["ratio_median"] = round(statistics.median(times["transformers"]) / statistics.median(times["plmforge"]), 3)
    results["ratio_best"] = round(min(times["transformers"]) / min(times["plmforge"]), 3)
    results["ratio_paired_median"] = round(statistics.median(
        h / o for h, o in zip(times["transformers"], times["plmforge"])), 3)  # within each round

    print(f"\n{args.steps} steps per round, {residues:,} real residues per pass, "
          f"{len(timed_examples)} proteins")
    for name in ("plmforge", "transformers"):
        r = results[name]
        print(f"  {name:13s} {r['residues_per_s_median']:>9,} res/s median ({r['residues_per_s_best']:,} best); "
              f"{r['batches']} batches, {r['mean_sequences_per_batch']:.1f} proteins/batch, "
              f"encoder fill {r['encoder_fill']:.1%}")
    print(f"plmforge / transformers: {results['ratio_median']:.2f}x (median), {results['ratio_best']:.2f}x (best), "
          f"{results['ratio_paired_median']:.2f}x (median of per-round ratios); {len(times['plmforge'])} of "
          f"{len(timing['clean'])} rounds counted")

    if args.profile:
        n = min(5, args.steps)
        results["profile"] = {
            "plmforge": profile_steps("plmforge", lambda: run_ours(timed_ours[:n]), args.profile_rows),
            "transformers": profile_steps("transformers", lambda: run_hf(timed_hf[:n]), args.profile_rows),
        }
    write_json(args.json, results)


if __name__ == "__main__":
    main()
