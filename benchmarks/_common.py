"""Shared helpers of the benchmark scripts (not a benchmark itself).

The scripts run as ``python benchmarks/NAME.py``, so this module is imported as ``_common``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "specs" / "quickstart.yaml"

#: Names the Hugging Face T5 shares with ``shared.weight`` (absent from our state dict).
HF_TIED_EMBEDDINGS = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Versions, threads and CPU, for the summary and the JSON output."""
    info: dict[str, Any] = {"python": platform.python_version(), "cpu": cpu_name(), "cores": os.cpu_count(),
                            "platform": platform.platform()}
    for name in ("torch", "transformers", "numpy", "jax"):
        module = sys.modules.get(name)
        if module is not None:
            info[name] = getattr(module, "__version__", "?")
    if "torch" in sys.modules:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
        info["cuda"] = torch.cuda.is_available()
    return info


def print_environment(info: Mapping[str, Any]) -> None:
    keys = ("torch", "transformers", "numpy", "jax", "torch_threads", "cpu", "cores", "python")
    print("environment: " + ", ".join(f"{k}={info[k]}" for k in keys if k in info), flush=True)


def summarize(times: list[float]) -> dict[str, float]:
    return {"best_s": round(min(times), 4), "median_s": round(statistics.median(times), 4),
            "all_s": [round(t, 4) for t in times]}


def write_json(path: str | None, results: Mapping[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {path}")


def hf_t5_from_ours(hf_config: Mapping[str, Any], state: Mapping[str, Any], encoder_only: bool = False):
    """A Hugging Face ``T5ForConditionalGeneration`` (or ``T5EncoderModel``) holding our weights.

    transformers >= 5 always ties ``lm_head`` to ``shared`` in a freshly built T5 (its T5Config forces
    ``tie_word_embeddings``); our LM head is untied, so it gets its own parameter before loading.
    ``hf_config`` is :meth:`ModelConfig.hf_config` (``tie_word_embeddings: false`` also turns off HF's
    d_model**-0.5 scaling of decoder outputs, as in our model).
    """
    import torch
    import transformers

    config = transformers.T5Config.from_dict(dict(hf_config))
    if encoder_only:
        model = transformers.T5EncoderModel(config)
        state = {k: v for k, v in state.items() if k == "shared.weight" or k.startswith("encoder.")}
    else:
        model = transformers.T5ForConditionalGeneration(config)
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
    tensors = {k: torch.as_tensor(v) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if set(missing) - HF_TIED_EMBEDDINGS or unexpected:
        raise RuntimeError(f"weights do not map onto transformers' T5: missing {sorted(missing)}, "
                           f"unexpected {sorted(unexpected)}")
    if not encoder_only:
        assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    return model


def attention_implementation(model: Any) -> str:
    return str(getattr(model.config, "_attn_implementation", "?"))


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy so far (/proc/stat), or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Timer:
    """Wall time of a block, the CPU this process used (in cores) and the CPU other processes used meanwhile.

    ``others_cores`` flags rounds disturbed by other work on a shared machine (0 on a quiet one).
    """

    def __enter__(self) -> Timer:
        import time

        self._busy, self._cpu, self._wall = _busy_seconds(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        import time

        self.seconds = time.perf_counter() - self._wall
        cpu = time.process_time() - self._cpu
        busy = _busy_seconds()
        self.own_cores = cpu / self.seconds
        self.others_cores = (max(busy - self._busy - cpu, 0.0) / self.seconds
                             if busy is not None and self._busy is not None else float("nan"))


def interleaved_rounds(contenders: list[tuple[str, Any]], rounds: int, quiet: float | None = None,
                       max_rounds: int | None = None, work: float | None = None, unit: str = "res/s") -> dict:
    """Time each contender once per round, alternating which goes first, until ``rounds`` clean rounds.

    A round is clean when other processes used at most ``quiet`` CPU cores during it (None: every round
    counts); at most ``max_rounds`` rounds run (default 3 x rounds). Returns per contender the seconds
    of every round, the other processes' cores, which rounds were clean, and the seconds of the rounds
    that count (the clean ones, or all when none was clean).
    """
    names = [name for name, _ in contenders]
    times: dict[str, list[float]] = {n: [] for n in names}
    others: dict[str, list[float]] = {n: [] for n in names}
    clean: list[bool] = []
    limit = max_rounds or (3 * rounds if quiet is not None else rounds)
    r = 0
    while r < limit and sum(clean) < rounds:
        for name, fn in (contenders if r % 2 == 0 else contenders[::-1]):
            with Timer() as timer:
                fn()
            times[name].append(timer.seconds)
            others[name].append(round(timer.others_cores, 2))
        busy = max(others[n][-1] for n in names)
        clean.append(quiet is None or busy <= quiet)
        rates = ", ".join(f"{n} {work / times[n][-1]:,.0f} {unit}" if work else f"{n} {times[n][-1]:.3f} s"
                          for n in names)
        print(f"round {r + 1}: {rates} (other processes used {busy:.2f} cores"
              f"{'' if clean[-1] else ', not counted'})", flush=True)
        r += 1
    counted = [i for i, ok in enumerate(clean) if ok] or list(range(len(clean)))
    return {"seconds": times, "other_processes_cores": others, "clean": clean,
            "counted": {n: [times[n][i] for i in counted] for n in names}}
