"""Embedding extraction throughput: plmforge against Hugging Face transformers' T5EncoderModel, one process.

Both compute the encoder's last hidden state of the same proteins (default: the first 2,000 of the
built-in corpus's validation then test splits, cropped to ``--max-length`` residues, plus ``</s>``)
with the same weights (the spec's model at its seed; transformers' ``T5EncoderModel`` loads our
backend's weights), from sequences in to one float32 [L, d_model] array per protein out (``</s>``
dropped), so tokenizing, padding and copying out are timed on both sides:

* plmforge: ``plmforge.core.embedding.embed_sequences`` (what ``plmforge embed`` runs): proteins
  sorted into length buckets under a padded-token budget (``--batch-tokens``, the CLI's 8192),
  ``backend.embed`` (eval, ``torch.inference_mode``);
* transformers, "the usual way": a fixed batch size in input order (default: the mean number of
  proteins of plmforge's batches), padded to the longest, ``attention_mask``, eval +
  ``torch.inference_mode``.

Reports real residues per second of each, the ratio, and the largest difference between the two
outputs (must be below ``--tolerance``) over all proteins. ``--rounds`` alternate the order; a round
counts only if other processes used at most ``--quiet`` CPU cores meanwhile.

    python benchmarks/embed_vs_transformers.py [--spec specs/quickstart.yaml] [--proteins 2000]
        [--max-length 512] [--batch-tokens 8192] [--hf-batch-size N] [--rounds 3] [--quiet 0.25] [--preset P]
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

from plmforge.core.build import build_backend, build_objectives
from plmforge.core.data.batching import BatchPlanner
from plmforge.core.data.sources import load_splits
from plmforge.core.embedding import embed_sequences
from plmforge.core.registry import Registry
from plmforge.core.spec import load_spec


def embed_hf(model, vocab, sequences: list[str], batch_size: int) -> list[np.ndarray]:
    out = []
    with torch.inference_mode():
        for start in range(0, len(sequences), batch_size):
            encoded = [vocab.encode(s, add_eos=True) for s in sequences[start:start + batch_size]]
            longest = max(len(e) for e in encoded)
            ids = torch.zeros(len(encoded), longest, dtype=torch.long)
            mask = torch.zeros(len(encoded), longest, dtype=torch.long)
            for row, e in enumerate(encoded):
                ids[row, :len(e)] = torch.from_numpy(e.astype(np.int64))
                mask[row, :len(e)] = 1
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float().numpy()
            out.extend(hidden[row, :len(e) - 1].copy() for row, e in enumerate(encoded))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(QUICKSTART))
    parser.add_argument("--proteins", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=512, help="residues kept per protein (first window)")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="plmforge's padded-token budget per batch")
    parser.add_argument("--hf-batch-size", type=int, help="default: plmforge's mean proteins per batch")
    parser.add_argument("--rounds", type=int, default=3, help="rounds that count (see --quiet)")
    parser.add_argument("--quiet", type=float, default=0.25,
                        help="a round counts only if other processes used at most this many CPU cores meanwhile "
                             "(shared machines); negative: every round counts")
    parser.add_argument("--max-rounds", type=int, help="give up waiting for quiet rounds after this many (3 x rounds)")
    parser.add_argument("--preset", help="model preset (default: the spec's)")
    parser.add_argument("--compile", action="store_true", help="--set backend.compile=true (plmforge side)")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table of each side")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.quiet is not None and args.quiet < 0:
        args.quiet = None

    overrides = [f"model.preset={args.preset}"] if args.preset else []
    overrides += ["backend.compile=true"] if args.compile else []
    spec = load_spec(Path(args.spec), overrides)
    vocab, slots = build_objectives(spec)
    splits = load_splits(spec.data).splits
    pool = [(split, i) for split in ("validation", "test") if split in splits for i in range(len(splits[split]))]
    sequences = [splits[s].sequence(i)[: args.max_length] for s, i in pool[: args.proteins]]
    residues = sum(len(s) for s in sequences)

    backend = build_backend(spec, vocab, slots, Registry())
    model = hf_t5_from_ours(spec.model.hf_config(len(vocab)), backend.weights(), encoder_only=True).eval()
    lengths = np.array([len(s) + 1 for s in sequences])
    plan = BatchPlanner(max_length=int(lengths.max()), pad_to_multiple=8, tokens=args.batch_tokens).plan(
        lengths, np.random.default_rng(0), shuffle=False)
    hf_batch = args.hf_batch_size or max(1, round(len(sequences) / len(plan)))
    padded_ours = sum(len(b) * int(-(-lengths[b].max() // 8) * 8) for b in plan)
    padded_hf = sum(len(lengths[i:i + hf_batch]) * int(lengths[i:i + hf_batch].max())
                    for i in range(0, len(lengths), hf_batch))

    env = environment()
    print_environment(env)
    print(f"model {spec.model.preset} ({backend.num_parameters():,} parameters with decoder), "
          f"{len(sequences)} proteins, {residues:,} residues (max {args.max_length}); plmforge {len(plan)} "
          f"batches (<= {args.batch_tokens} tokens), transformers batch size {hf_batch}, attention "
          f"{attention_implementation(model)}", flush=True)

    def run_ours():
        return embed_sequences(backend, vocab, sequences, batch_tokens=args.batch_tokens)

    def run_hf():
        return embed_hf(model, vocab, sequences, hf_batch)

    # warm-up on a slice, then check agreement on the full outputs of the first timed round
    embed_sequences(backend, vocab, sequences[:64], batch_tokens=args.batch_tokens)
    embed_hf(model, vocab, sequences[:64], hf_batch)
    outputs = {}

    def keep(name, fn):
        def run():
            outputs.setdefault(name, fn())  # the first round's outputs are compared
        return run

    contenders = [("plmforge", keep("plmforge", run_ours)), ("transformers", keep("transformers", run_hf))]
    timing = interleaved_rounds(contenders, args.rounds, args.quiet, args.max_rounds, work=residues)
    times = timing["counted"]

    diffs = [float(np.abs(a - b).max()) for a, b in zip(outputs["plmforge"], outputs["transformers"])]
    shapes_match = all(a.shape == b.shape for a, b in zip(outputs["plmforge"], outputs["transformers"]))
    agree = shapes_match and max(diffs) <= args.tolerance
    results = {
        "environment": env, "spec": args.spec, "preset": spec.model.preset, "proteins": len(sequences),
        "residues": residues, "max_length": args.max_length, "transformers_attention": attention_implementation(model),
        "plmforge": {**summarize(times["plmforge"]), "batches": len(plan), "batch_tokens": args.batch_tokens,
                     "padded_tokens": padded_ours, "fill": residues / padded_ours},
        "transformers": {**summarize(times["transformers"]), "batch_size": hf_batch,
                         "padded_tokens": padded_hf, "fill": residues / padded_hf},
        "max_abs_diff": max(diffs), "max_abs_diff_first_5": max(diffs[:5]), "outputs_agree": agree,
    }
    for name in ("plmforge", "transformers"):
        results[name]["residues_per_s_median"] = round(residues / statistics.median(times[name]))
        results[name]["residues_per_s_best"] = round(residues / min(times[name]))
    results["timing"] = {k: timing[k] for k in ("seconds", "other_processes_cores", "clean")}
    results["ratio_median"] = round(statistics.median(times["transformers"]) / statistics.median(times["plmforge"]), 3)
    results["ratio_best"] = round(min(times["transformers"]) / min(times["plmforge"]), 3)
    results["ratio_paired_median"] = round(statistics.median(
        h / o for h, o in zip(times["transformers"], times["plmforge"])), 3)  # within each round

    print(f"\n{len(sequences)} proteins, {residues:,} residues")
    for name in ("plmforge", "transformers"):
        r = results[name]
        print(f"  {name:13s} {r['residues_per_s_median']:>9,} res/s median ({r['residues_per_s_best']:,} best), "
              f"fill {r['fill']:.1%}")
    print(f"plmforge / transformers: {results['ratio_median']:.2f}x (median), {results['ratio_best']:.2f}x (best), "
          f"{results['ratio_paired_median']:.2f}x (median of per-round ratios); {len(times['plmforge'])} of "
          f"{len(timing['clean'])} rounds counted")
    print(f"outputs agree within {args.tolerance:g}: {agree} (max |diff| {max(diffs):.2e} over all proteins, "
          f"{max(diffs[:5]):.2e} over the first 5)")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        part = sequences[:300]
        for name, fn in (("plmforge", lambda: embed_sequences(backend, vocab, part, batch_tokens=args.batch_tokens)),
                         ("transformers", lambda: embed_hf(model, vocab, part, hf_batch))):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            print(f"\n-- torch.profiler, {name}, first 300 proteins --\n"
                  f"{prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=20)}")
    write_json(args.json, results)
    if not agree:
        raise SystemExit("outputs differ by more than the tolerance")


if __name__ == "__main__":
    main()
