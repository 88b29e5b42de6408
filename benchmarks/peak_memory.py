"""Peak memory of one training step of the torch backend, with and without gradient checkpointing.

Each configuration runs in a fresh subprocess (one at a time): the quickstart spec with
``model.preset`` set, one protein of ``--length`` residues (a real training protein at least that
long, cropped; ``data.max_length = --length``, ``batch_size = {sequences: 1}``), and
``model.gradient_checkpointing`` false then true. In the child:

1. build the backend (weights) -> ``rss_weights``;
2. one training step (creates the optimizer state and gradients), ``gc`` + ``malloc_trim`` ->
   ``rss_setup``: the resident set after model + optimizer setup;
3. reset the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5; a 1 ms RSS sampler thread if
   that is not allowed), a second step on the same batch -> ``peak``: the step's peak RSS.

``activation = peak - rss_setup`` (activations, gradients and temporaries of the step; also shown
without the gradients, 4 bytes per parameter, which checkpointing cannot save; on CPU
PyTorch frees to malloc, which gives large blocks straight back, so RSS follows the live tensors).
``total`` is the process's lifetime peak (``ru_maxrss`` before the reset, or the step's peak if
higher), which includes setup transients (the initial weights are drawn in numpy, then copied).

ankh-base (~740M parameters) runs only with ``--include-base``. Its AdamW state alone is ~6 GB on top
of 3 GB of weights and 3 GB of gradients; ``--base-optimizer`` (default adamw) can switch it to
Adafactor. Each child runs under an address-space limit (``--limit-gb``, default 20) so an
oversized configuration fails with an allocation error instead of pressing the machine.

    python benchmarks/peak_memory.py [--length 512] [--include-base] [--base-optimizer adamw|adafactor]
        [--limit-gb 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import QUICKSTART, cpu_name, write_json

MB = 1024 * 1024


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss() -> int:
    return status_kb("VmRSS") * 1024


def trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakMeter:
    """Peak RSS over a block: the kernel's VmHWM after resetting it, else a sampling thread."""

    def __enter__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.kernel = status_kb("VmHWM") * 1024 <= rss() + 4 * MB
        except OSError:
            self.kernel = False
        self.samples = [rss()]
        self.stop = threading.Event()
        if not self.kernel:
            def sample():
                while not self.stop.is_set():
                    self.samples.append(rss())
                    time.sleep(0.001)
            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if not self.kernel:
            self.thread.join()
        self.peak = status_kb("VmHWM") * 1024 if self.kernel else max(self.samples + [rss()])
        self.method = "VmHWM after clear_refs" if self.kernel else "1 ms RSS sampling"


def child(args: argparse.Namespace) -> dict:
    if args.limit_gb:
        limit = int(args.limit_gb * 1024 ** 3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np
    import torch

    from plmforge.core.build import build_backend, build_objectives, make_planner
    from plmforge.core.data.sources import load_splits
    from plmforge.core.data.stream import ExampleStream
    from plmforge.core.registry import Registry
    from plmforge.core.spec import load_spec

    overrides = [f"model.preset={args.preset}", f"model.gradient_checkpointing={str(args.gc).lower()}",
                 f"data.max_length={args.length}", "training.batch_size={sequences: 1}",
                 f"training.optimizer.name={args.optimizer}", "tasks=[]"]
    spec = load_spec(Path(args.spec), overrides)
    vocab, slots = build_objectives(spec)
    train = load_splits(spec.data).splits["train"]
    index = int(np.flatnonzero(train.lengths >= args.length)[0])
    stream = ExampleStream(slots[0].objective, train, make_planner(spec), spec.seed)
    micro = stream.make_batch(np.asarray([index]), 0, train=True)
    trim()
    rss_start = rss()
    backend = build_backend(spec, vocab, slots, Registry())
    trim()
    rss_weights = rss()
    batch = {slots[0].label: [micro]}
    start = time.perf_counter()
    backend.train_step(batch, 1e-4)
    first = time.perf_counter() - start
    trim()
    rss_setup = rss()
    setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # read before clear_refs resets it
    with PeakMeter() as meter:
        start = time.perf_counter()
        metrics = backend.train_step(batch, 1e-4)
        float(metrics["loss"][0])
        second = time.perf_counter() - start
    rss_after = rss()
    gradient_bytes = 4 * backend.num_parameters()  # float32 parameters (bf16 runs autocast)
    total = max(setup_peak, meter.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    step_times = [second]
    for _ in range(args.time_steps - 1):  # more steps on the same batch, for a steadier step time
        start = time.perf_counter()
        float(backend.train_step(batch, 1e-4)["loss"][0])
        step_times.append(time.perf_counter() - start)
    shapes = {k: list(v.shape) for k, v in micro.arrays.items()}
    return {
        "preset": args.preset, "gradient_checkpointing": args.gc, "optimizer": args.optimizer,
        "parameters": backend.num_parameters(), "residues": micro.residues, "batch_shapes": shapes,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "rss_start_mb": round(rss_start / MB), "rss_weights_mb": round(rss_weights / MB),
        "rss_setup_mb": round(rss_setup / MB), "step_peak_mb": round(meter.peak / MB),
        "activation_mb": round((meter.peak - rss_setup) / MB), "rss_after_step_mb": round(rss_after / MB),
        "gradients_mb": round(gradient_bytes / MB),
        "activation_without_gradients_mb": round((meter.peak - rss_setup - gradient_bytes) / MB),
        "total_peak_mb": round(total / MB), "peak_method": meter.method,
        "first_step_s": round(first, 2), "step_s": round(sorted(step_times)[len(step_times) // 2], 3),
        "step_times_s": [round(t, 3) for t in step_times],
    }


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(QUICKSTART))
    parser.add_argument("--length", type=int, default=512, help="residues of the one training protein")
    parser.add_argument("--quick-preset", default="ankh-tiny", help="the quickstart size")
    parser.add_argument("--include-base", action="store_true", help="also ankh-base (~740M parameters, >10 GB)")
    parser.add_argument("--base-optimizer", choices=["adamw", "adafactor"], default="adamw")
    parser.add_argument("--limit-gb", type=float, default=20.0, help="address-space limit of each child")
    parser.add_argument("--time-steps", type=int, default=5,
                        help="steps timed (median) at the quickstart size; ankh-base times the measured step only")
    parser.add_argument("--json", help="also write the results to this file")
    # child mode
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--gc", type=lambda s: s == "true", help=argparse.SUPPRESS)
    parser.add_argument("--optimizer", default="adamw", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    configs = [(args.quick_preset, "adamw")]
    if args.include_base:
        configs.append(("ankh-base", args.base_optimizer))
    print(f"one training step, one protein of {args.length} residues; cpu {cpu_name()}, {os.cpu_count()} cores",
          flush=True)
    results: dict = {"length": args.length, "cpu": cpu_name(), "limit_gb": args.limit_gb, "runs": []}
    for preset, optimizer in configs:
        pair = {}
        for checkpointing in (False, True):
            if preset == "ankh-base" and mem_available() < args.limit_gb * 1024 ** 3 * 0.8:
                print(f"  {preset} gc={checkpointing}: skipped, only {mem_available() / 1024 ** 3:.1f} GB available")
                continue
            command = [sys.executable, __file__, "--child", "--spec", args.spec, "--preset", preset,
                       "--gc", str(checkpointing).lower(), "--optimizer", optimizer, "--length", str(args.length),
                       "--limit-gb", str(args.limit_gb),
                       "--time-steps", str(1 if preset == "ankh-base" else args.time_steps)]
            start = time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                print(f"  {preset} gc={checkpointing}: FAILED (exit {proc.returncode}): {' | '.join(tail)}")
                results["runs"].append({"preset": preset, "gradient_checkpointing": checkpointing,
                                        "optimizer": optimizer, "error": tail})
                continue
            run = json.loads(lines[-1][len("RESULT "):])
            run["wall_s"] = round(time.perf_counter() - start, 1)
            results["runs"].append(run)
            pair[checkpointing] = run
            print(f"  {preset:9s} {optimizer:9s} checkpointing={str(checkpointing):5s}: weights "
                  f"{run['rss_weights_mb']:,} MB, after setup {run['rss_setup_mb']:,} MB, step peak "
                  f"{run['step_peak_mb']:,} MB, activation {run['activation_mb']:,} MB (gradients "
                  f"{run['gradients_mb']:,} MB + {run['activation_without_gradients_mb']:,} MB), total peak "
                  f"{run['total_peak_mb']:,} MB, step {run['step_s']} s ({run['peak_method']})", flush=True)
        if len(pair) == 2:
            off, on = pair[False], pair[True]
            saving = {"preset": preset,
                      "activation_reduction": round(1 - on["activation_mb"] / off["activation_mb"], 3),
                      "activation_without_gradients_reduction": round(
                          1 - on["activation_without_gradients_mb"] / off["activation_without_gradients_mb"], 3),
                      "step_peak_reduction": round(1 - on["step_peak_mb"] / off["step_peak_mb"], 3),
                      "step_time_ratio": round(on["step_s"] / off["step_s"], 2)}
            results.setdefault("checkpointing", []).append(saving)
            print(f"  {preset}: gradient checkpointing cuts activation memory by "
                  f"{saving['activation_reduction']:.0%} ({saving['activation_without_gradients_reduction']:.0%} "
                  f"without the gradients) and the step's peak RSS by {saving['step_peak_reduction']:.0%}; "
                  f"step time x{saving['step_time_ratio']}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
