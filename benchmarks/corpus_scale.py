"""Corpora at UniRef50-like scale: `plmforge prepare`, then what a run pays for a large corpus.

Generates a synthetic UniRef-like FASTA per size (log-normal lengths with median ~250 and mean ~290
like UniRef50's, 60-letter lines, UniRef-style headers; residues drawn with UniProt's amino-acid
frequencies; reused when present), then measures, each in its own subprocess:

- prepare: ``plmforge prepare`` under ``/usr/bin/time -v`` for each worker count: MB/s, proteins/s
  and peak RSS, the largest single process (``time -v``) and the whole process tree (sampled from
  /proc every 0.1 s), since workers are separate processes;
- start-up: a short training run (a tiny model, tracking off, ``--steps`` steps) on the built-in
  corpus, on each prepared corpus and on the FASTA file itself (today's path, up to
  ``--fasta-max-proteins``, under an address-space limit and a timeout): seconds from the spec loaded
  to the first step's end (hooks), the part before ``plmforge_run_start`` (data, model, plugins), and
  the run's peak RSS (``time -v``). Targets: under 5 s, and within 300 MB of the built-in corpus's
  run at every size, since a prepared corpus is memory-mapped;
- two processes: the same short run under ``torchrun --standalone --nproc-per-node 2`` (DDP over gloo,
  gradient accumulation 2, ``--distributed-steps``) on the first size's prepared corpus; each process
  reports the examples it planned and made (the run-end summary): each should make about half (its
  share is whole micro-batches, so more steps bring it nearer);
- stream against model: ``benchmarks/data_pipeline.py`` (mlm) with the quickstart spec reading each
  prepared corpus: residues/s of the ExampleStream alone against the quickstart model's training
  residues/s (target: the stream at least 10x faster).

    python benchmarks/corpus_scale.py [--proteins 500000 5000000] [--workers 1 2] [--dir /tmp/corpus-scale]
        [--gzip] [--steps 3] [--distributed-steps 10] [--fasta-max-proteins 500000] [--fasta-limit-gb 10]
        [--skip prepare,startup,distributed,stream] [--json FILE]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import yaml
from _common import QUICKSTART, environment, print_environment, write_json

#: UniProtKB/Swiss-Prot amino-acid composition (%), the 20 standard residues
_FREQUENCIES = {"A": 8.25, "R": 5.53, "N": 4.06, "D": 5.45, "C": 1.37, "Q": 3.93, "E": 6.75, "G": 7.07, "H": 2.27,
                "I": 5.96, "L": 9.66, "K": 5.84, "M": 2.42, "F": 3.86, "P": 4.70, "S": 6.56, "T": 5.34, "W": 1.08,
                "Y": 2.92, "V": 6.87}


def uniref_like_lengths(count: int, rng: np.random.Generator) -> np.ndarray:
    """Log-normal lengths, median 250, sigma 0.56 (mean ~292), clipped to [20, 35000]."""
    return np.clip(np.exp(rng.normal(np.log(250), 0.56, count)), 20, 35000).astype(np.int64)


def write_uniref_like_fasta(path: Path, count: int, seed: int = 0, compress: bool = False) -> int:
    """Write ``count`` synthetic proteins; returns the residues written."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer("".join(_FREQUENCIES).encode(), dtype=np.uint8)
    weights = np.array(list(_FREQUENCIES.values()))
    weights /= weights.sum()
    total = 0
    opener = gzip.open if compress else open
    with opener(path, "wb") as out:
        for start in range(0, count, 10_000):
            n = min(10_000, count - start)
            lengths = uniref_like_lengths(n, rng)
            residues = letters[rng.choice(len(letters), size=int(lengths.sum()), p=weights)].tobytes()
            parts, at = [], 0
            for k, length in enumerate(lengths.tolist()):
                i = start + k
                seq = residues[at : at + length]
                at += length
                parts.append(f">UniRef50_S{i:08d} Synthetic protein {i} n={1 + i % 7} Tax=Synthetic TaxID=0 "
                             f"RepID=S{i:08d}_SYN\n".encode())
                parts.extend(seq[j : j + 60] + b"\n" for j in range(0, length, 60))
            out.write(b"".join(parts))
            total += int(lengths.sum())
    return total


def _tree_rss_kib(pid: int) -> int:
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, AttributeError):
            continue
    return total


def run_prepare(fasta: Path, out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "plmforge.core.cli", "prepare", str(fasta), "-o", str(out),
               "--workers", str(workers), "--quiet"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    peak_tree = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while not stop.is_set():
            peak_tree = max(peak_tree, _tree_rss_kib(process.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"prepare failed:\n{stderr}")
    peak_process = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))
    return {"workers": workers, "seconds": seconds, "peak_rss_process_mb": peak_process / 1024,
            "peak_rss_tree_mb": peak_tree / 1024}


#: A short training run that times itself: spec loaded -> plmforge_run_start -> first step's end. Each
#: process (torchrun starts several) writes ``OUT.rankN.json`` with its marks, peak RSS and the examples
#: its streams planned and made (the run-end summary).
SHORT_RUN = textwrap.dedent("""
    import json, os, resource, sys, time
    started = time.perf_counter()
    from plmforge.core.hookspecs import hookimpl
    from plmforge.core.run import train
    from plmforge.core.spec import load_spec

    spec = load_spec(sys.argv[1])
    loaded = time.perf_counter()
    marks = {}

    class Timing:
        @hookimpl
        def plmforge_run_start(self, run, resumed_from_step):
            marks["run_start"] = time.perf_counter()

        @hookimpl
        def plmforge_step_end(self, run, step, metrics):
            marks.setdefault("first_step", time.perf_counter())

        @hookimpl
        def plmforge_run_end(self, run, status, summary):
            marks["examples"] = summary["examples"]

    result = train(spec, hooks=[Timing()], show_progress=False)
    with open(f"{sys.argv[2]}.rank{os.environ.get('RANK', '0')}.json", "w") as out:
        json.dump({"import_s": loaded - started, "setup_s": marks["run_start"] - loaded,
                   "startup_s": marks["first_step"] - loaded, "total_s": time.perf_counter() - started,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "examples": marks["examples"], "train_proteins": result.data_report.get("train.proteins")}, out)
""")

#: The short run's spec: a tiny model so that the run's own cost is the data's, one thread, no tracking.
TINY_MODEL = {"preset": None, "d_model": 32, "num_layers": 2, "num_decoder_layers": 1, "num_heads": 2, "d_kv": 16,
              "d_ff": 64, "dropout_rate": 0.0}


def short_run_spec(source: str, output_dir: Path, steps: int, **backend) -> dict:
    return {"name": "corpus-scale", "seed": 0, "output_dir": str(output_dir),
            "data": {"source": source, "max_length": 512},
            "model": dict(TINY_MODEL), "backend": {"name": "torch", "threads": 1, **backend},
            "objectives": [{"name": "mlm", "probabilities": [0.15, 0.2, 0.3]}],
            "training": {"steps": steps, "batch_size": {"tokens": 4096}, "log_every": 1, "eval_every": steps,
                         "eval_batches": 1, "checkpoint_every": steps, **({"gradient_accumulation": 2}
                                                                          if backend else {})},
            "tracking": {"enabled": False}}


def _limit_address_space(gigabytes: float | None):
    if not gigabytes:
        return None
    limit = int(gigabytes * 1024 ** 3)
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_short(label: str, source: str, work: Path, steps: int, timeout: float, limit_gb: float | None = None,
              processes: int = 1) -> dict:
    """One short run (``processes`` > 1: under torchrun, DDP) in a fresh subprocess under ``time -v``."""
    run_dir = work / "runs" / re.sub(r"[^\w.-]+", "-", label)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    backend = {"distributed": "ddp"} if processes > 1 else {}
    spec_file = run_dir / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(short_run_spec(source, run_dir / "out", steps, **backend)))
    script = work / "short_run.py"
    script.write_text(SHORT_RUN)
    result_stem = run_dir / "result"
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    command = ["/usr/bin/time", "-v", *launcher, str(script), str(spec_file), str(result_stem)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    try:
        process = subprocess.run(command, cwd=run_dir, env=env, capture_output=True, text=True, timeout=timeout,
                                 preexec_fn=_limit_address_space(limit_gb))
    except subprocess.TimeoutExpired:
        shutil.rmtree(run_dir, ignore_errors=True)
        return {"label": label, "source": source, "failed": f"did not reach its end within {timeout:.0f} s"}
    seconds = time.perf_counter() - start
    shutil.rmtree(run_dir / "out", ignore_errors=True)
    if process.returncode != 0:
        tail = process.stderr.strip().splitlines()[-3:]
        return {"label": label, "source": source, "failed": f"exit {process.returncode}: " + " | ".join(tail)}
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", process.stderr).group(1)) / 1024
    ranks = [json.loads(Path(f"{result_stem}.rank{rank}.json").read_text()) for rank in range(processes)]
    return {"label": label, "source": source, "process_s": seconds, "peak_rss_largest_process_mb": peak,
            "ranks": ranks, **ranks[0]}


def stream_against_model(label: str, corpus: Path, work: Path, batches: int, model_steps: int, rounds: int) -> dict:
    """``data_pipeline.py`` (mlm only) with the quickstart spec reading ``corpus``."""
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec["data"]["source"] = str(corpus)
    spec_file = work / f"quickstart-{label}.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    out = work / f"data-pipeline-{label}.json"
    command = [sys.executable, str(Path(__file__).with_name("data_pipeline.py")), "--spec", str(spec_file),
               "--objectives", "mlm", "--batches", str(batches), "--model-steps", str(model_steps),
               "--rounds", str(rounds), "--json", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    mlm = json.loads(out.read_text())["objectives"]["mlm"]
    return {"label": label, "stream_residues_per_s": mlm["pipeline_residues_per_s"],
            "model_residues_per_s": mlm["model_residues_per_s"], "stream_over_model": mlm["pipeline_over_model"]}


def _startup_line(row: dict, reference: dict | None) -> str:
    if "failed" in row:
        return f"  {row['label']:<22s} {row['failed']}"
    extra = ""
    if reference is not None and "failed" not in reference:
        extra = f", {row['peak_rss_largest_process_mb'] - reference['peak_rss_largest_process_mb']:+,.0f} MB"
    return (f"  {row['label']:<22s} start-up {row['startup_s']:6.2f} s (set-up {row['setup_s']:.2f} s, imports "
            f"{row['import_s']:.1f} s, process {row['process_s']:.1f} s), peak RSS "
            f"{row['peak_rss_largest_process_mb']:,.0f} MB{extra}; {row['train_proteins']:,} training proteins")


def prepare_rows(fasta: Path, proteins: int, workers: list[int], work: Path) -> tuple[list[dict], Path, int]:
    """``prepare`` with each worker count; keeps the first count's corpus (the others are removed)."""
    size = fasta.stat().st_size
    rows = []
    for count in workers:
        row = run_prepare(fasta, work / f"corpus-{proteins}-w{count}", count)
        row.update(mb_per_s=size / 1e6 / row["seconds"], proteins_per_s=proteins / row["seconds"])
        rows.append(row)
        print(f"  prepare, {count} worker(s): {row['seconds']:.1f} s, {row['mb_per_s']:.1f} MB/s, "
              f"{row['proteins_per_s']:,.0f} proteins/s; peak RSS {row['peak_rss_process_mb']:.0f} MB per "
              f"process, {row['peak_rss_tree_mb']:.0f} MB all processes", flush=True)
    corpus = work / f"corpus-{proteins}-w{workers[0]}"
    for count in workers[1:]:
        shutil.rmtree(work / f"corpus-{proteins}-w{count}", ignore_errors=True)
    written = sum(f.stat().st_size for f in corpus.rglob("*") if f.is_file())
    print(f"  corpus: {written / 1e6:,.1f} MB on disk ({written / size:.2f} x the input)", flush=True)
    return rows, corpus, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proteins", type=int, nargs="+", default=[500_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/corpus-scale"))
    parser.add_argument("--gzip", action="store_true", help="Write the FASTA gzip-compressed.")
    parser.add_argument("--steps", type=int, default=3, help="steps of each short run")
    parser.add_argument("--distributed-steps", type=int, default=10,
                        help="steps of the torchrun run")
    parser.add_argument("--fasta-max-proteins", type=int, default=500_000,
                        help="largest size whose FASTA file is also trained on directly (today's path)")
    parser.add_argument("--fasta-limit-gb", type=float, default=10.0, help="address-space limit of those runs")
    parser.add_argument("--fasta-timeout", type=float, default=300.0, help="seconds allowed to those runs")
    parser.add_argument("--stream-batches", type=int, default=100)
    parser.add_argument("--stream-model-steps", type=int, default=10)
    parser.add_argument("--stream-rounds", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated: prepare,startup,distributed,stream")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    args.dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    print_environment(env)
    results: dict = {"environment": env, "steps": args.steps, "sizes": []}

    reference = None
    if "startup" not in skip:
        print("short runs (spec loaded -> first step's end; peak RSS of the run):", flush=True)
        reference = run_short("builtin:scl2205", "builtin:scl2205", args.dir, args.steps, timeout=300)
        results["builtin"] = reference
        print(_startup_line(reference, None), flush=True)

    for proteins in args.proteins:
        fasta = args.dir / f"uniref-like-{proteins}.fasta{'.gz' if args.gzip else ''}"
        if not fasta.exists():
            start = time.perf_counter()
            residues = write_uniref_like_fasta(fasta, proteins, compress=args.gzip)
            print(f"generated {fasta} ({residues:,} residues) in {time.perf_counter() - start:.1f} s")
        size = fasta.stat().st_size
        print(f"\ninput {fasta.name}: {proteins:,} proteins, {size / 1e6:,.1f} MB", flush=True)
        entry: dict = {"proteins": proteins, "input_bytes": size}
        results["sizes"].append(entry)
        corpus = args.dir / f"corpus-{proteins}-w{args.workers[0]}"
        if "prepare" not in skip or not (corpus / "manifest.json").exists():
            entry["runs"], corpus, entry["corpus_bytes"] = prepare_rows(fasta, proteins, args.workers, args.dir)
        if "startup" not in skip:
            rows = [run_short(f"prepared {proteins:,}", str(corpus), args.dir, args.steps, timeout=300)]
            if proteins <= args.fasta_max_proteins:
                rows.append(run_short(f"FASTA {proteins:,}", str(fasta), args.dir, args.steps,
                                      timeout=args.fasta_timeout, limit_gb=args.fasta_limit_gb))
            entry["startup"] = rows
            for row in rows:
                print(_startup_line(row, reference), flush=True)
        if "distributed" not in skip and proteins == args.proteins[0]:
            row = run_short(f"torchrun-2 {proteins:,}", str(corpus), args.dir, args.distributed_steps, timeout=300,
                            processes=2)
            entry["distributed"] = row
            if "failed" in row:
                print(f"  torchrun, 2 processes: {row['failed']}", flush=True)
            for rank, r in enumerate(row.get("ranks", [])):
                made, planned = r["examples"]["made"], r["examples"]["planned"]
                print(f"  torchrun, 2 processes, rank {rank}: made {made:,} of the {planned:,} examples planned "
                      f"({made / planned:.1%}); start-up {r['startup_s']:.2f} s, peak RSS {r['peak_rss_mb']:,.0f} MB",
                      flush=True)
        if "stream" not in skip:
            row = stream_against_model(str(proteins), corpus, args.dir, args.stream_batches,
                                       args.stream_model_steps, args.stream_rounds)
            entry["stream"] = row
            print(f"  stream {row['stream_residues_per_s']:,} res/s against the quickstart model's "
                  f"{row['model_residues_per_s']:,} res/s: {row['stream_over_model']:.0f}x", flush=True)
    write_json(args.json, results)
    os.sync()


if __name__ == "__main__":
    main()
