"""Completing proteins with a trained encoder-decoder: greedy, beam search and temperature sampling.

Backend-agnostic: each step asks the backend for decoder logits (:meth:`Backend.decoder_logits`) and
picks tokens in numpy. Only the 20 standard amino acids and ``</s>`` can be generated. There is no
key/value cache — every step re-runs the decoder over the tokens so far — which is simple and fast
enough for looking at completions of small models; decoder lengths are padded to multiples of
``LENGTH_STEP`` so compiled backends compile a handful of shapes, not one per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from plmforge.core.backend import Backend
from plmforge.core.data.batching import round_up
from plmforge.core.embedding import check_prefix, encode_proteins, load_model
from plmforge.core.errors import PlmforgeError
from plmforge.core.vocab import Vocab

Strategy = Literal["greedy", "beam", "sample"]
#: Decoder inputs are padded to a multiple of this length (bounds compilations of compiled backends).
LENGTH_STEP = 32
#: The first 20 residue ids are the standard amino acids (A L G V S R E D T I P K F Q N Y M H W C).
STANDARD_RESIDUES = 20


@dataclass
class Completion:
    """One generated continuation: residues, whether it ended with ``</s>``, and its mean log-probability."""

    residues: str
    ended: bool
    mean_logprob: float


@dataclass(frozen=True)
class GenerationConfig:
    strategy: Strategy = "greedy"
    max_new_tokens: int = 256
    beams: int = 4
    length_penalty: float = 1.0  # beam scores are sum log p / length ** length_penalty
    temperature: float = 1.0
    top_k: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.strategy == "beam" and self.beams < 1:
            raise ValueError("beams must be at least 1")
        if self.strategy == "sample" and self.temperature <= 0:
            raise ValueError("temperature must be positive")


def encoder_inputs(vocab: Vocab, prompts: Sequence[str], prefix: str | None) -> np.ndarray:
    """Padded encoder ids ``[prefix] prompt </s>`` (as the completion objective builds them)."""
    encoded = encode_proteins(vocab, list(prompts), prefix)
    width = int(round_up(max(len(e) for e in encoded), 16))
    ids = np.zeros((len(encoded), width), dtype=np.int32)
    for row, e in enumerate(encoded):
        ids[row, : len(e)] = e
    return ids


def complete(backend: Backend, vocab: Vocab, prompts: Sequence[str], config: GenerationConfig,
             prefix: str | None = None) -> list[Completion]:
    """One completion per prompt (sampling: draw several by repeating a prompt)."""
    if not prompts:
        return []
    encoder = encoder_inputs(vocab, prompts, prefix)
    allowed = np.full(len(vocab), -np.inf, dtype=np.float32)
    allowed[vocab.residue_offset: vocab.residue_offset + STANDARD_RESIDUES] = 0.0
    allowed[vocab.eos_id] = 0.0
    if config.strategy == "beam":
        return [_beam_search(backend, vocab, encoder[i: i + 1], allowed, config) for i in range(len(prompts))]
    return _step_by_step(backend, vocab, encoder, allowed, config)


def _next_logprobs(backend: Backend, encoder: np.ndarray, tokens: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Log-probabilities over the vocabulary of the token after ``tokens`` (decoder ids after the start)."""
    rows, length = tokens.shape
    decoder = np.zeros((rows, int(round_up(length + 1, LENGTH_STEP))), dtype=np.int32)  # start token = pad = 0
    decoder[:, 1: length + 1] = tokens
    logits = backend.decoder_logits(encoder, decoder)[:, length] + allowed
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _step_by_step(backend: Backend, vocab: Vocab, encoder: np.ndarray, allowed: np.ndarray,
                  config: GenerationConfig) -> list[Completion]:
    """Greedy decoding or temperature sampling, all prompts in one batch."""
    rows = encoder.shape[0]
    rngs = [np.random.default_rng([config.seed, row]) for row in range(rows)]
    tokens = np.zeros((rows, 0), dtype=np.int32)
    done = np.zeros(rows, dtype=bool)
    logprob = np.zeros(rows)
    for _ in range(config.max_new_tokens):
        logp = _next_logprobs(backend, encoder, tokens, allowed)
        if config.strategy == "greedy":
            chosen = logp.argmax(axis=-1)
        else:
            chosen = np.asarray([_sample(logp[row], config, rngs[row]) for row in range(rows)])
        chosen = np.where(done, vocab.pad_id, chosen)
        logprob += np.where(done, 0.0, logp[np.arange(rows), chosen])
        tokens = np.concatenate([tokens, chosen[:, None].astype(np.int32)], axis=1)
        done |= chosen == vocab.eos_id
        if done.all():
            break
    return [_completion(vocab, tokens[row], logprob[row]) for row in range(rows)]


def _sample(logp: np.ndarray, config: GenerationConfig, rng: np.random.Generator) -> int:
    scaled = logp / config.temperature
    if config.top_k:
        cutoff = np.sort(scaled)[-config.top_k]
        scaled = np.where(scaled >= cutoff, scaled, -np.inf)
    p = np.exp(scaled - scaled.max())
    return int(rng.choice(len(p), p=p / p.sum()))


def _beam_search(backend: Backend, vocab: Vocab, encoder: np.ndarray, allowed: np.ndarray,
                 config: GenerationConfig) -> Completion:
    """Beam search for one prompt; hypotheses that emit ``</s>`` leave the beam and compete at the end."""
    k = config.beams
    beams = np.zeros((1, 0), dtype=np.int32)
    scores = np.zeros(1)
    finished: list[tuple[float, np.ndarray, float]] = []  # (normalised score, tokens with </s>, sum log p)
    for step in range(config.max_new_tokens):
        logp = _next_logprobs(backend, np.repeat(encoder, len(beams), axis=0), beams, allowed)
        total = scores[:, None] + logp  # [beams, vocab]
        order = np.argsort(-total, axis=None, kind="stable")[: 2 * k]
        live_beams, live_scores = [], []
        for flat in order.tolist():
            beam, token = divmod(flat, total.shape[1])
            if not np.isfinite(total[beam, token]):
                break
            sequence = np.append(beams[beam], token).astype(np.int32)
            if token == vocab.eos_id:
                finished.append((total[beam, token] / (step + 1) ** config.length_penalty, sequence,
                                 total[beam, token]))
            else:
                live_beams.append(sequence)
                live_scores.append(total[beam, token])
            if len(live_beams) == k:
                break
        if len(finished) >= k or not live_beams:
            break
        beams, scores = np.stack(live_beams), np.asarray(live_scores)
    if not finished:  # nothing ended within max_new_tokens: the best live hypothesis
        finished = [(s / beams.shape[1] ** config.length_penalty, b, s) for b, s in zip(beams, scores)]
    best = max(finished, key=lambda item: item[0])
    return _completion(vocab, best[1], best[2])


def _completion(vocab: Vocab, tokens: np.ndarray, logprob: float) -> Completion:
    ends = np.flatnonzero(tokens == vocab.eos_id)
    length = int(ends[0]) if ends.size else len(tokens)
    return Completion(residues=vocab.decode_residues(tokens[:length]), ended=bool(ends.size),
                      mean_logprob=float(logprob) / max(length + bool(ends.size), 1))


def identity(completion: str, truth: str) -> float:
    """Share of the true continuation's positions that the completion reproduces (position by position)."""
    if not truth:
        return float(not completion)
    same = sum(a == b for a, b in zip(completion, truth))
    return same / len(truth)


@dataclass
class PromptResult:
    """One prompt's completion, and the true continuation when the prompt was cut from a known protein."""

    name: str
    prompt: str
    completion: Completion
    truth: str | None = None

    @property
    def identity(self) -> float | None:
        return None if self.truth is None else identity(self.completion.residues, self.truth)


def generation_config(**options: Any) -> GenerationConfig:
    """A :class:`GenerationConfig`; a value it refuses is a PlmforgeError (the user's input)."""
    try:
        return GenerationConfig(**options)
    except ValueError as exc:
        raise PlmforgeError(str(exc)) from None


def sampled_prompts(prompts: Sequence[tuple[str, str]], num_samples: int, strategy: str) -> list[tuple[str, str]]:
    """Each ``(name, sequence)`` prompt ``num_samples`` times, named ``name#k`` (sampling only)."""
    if num_samples > 1 and strategy != "sample":
        raise PlmforgeError("num_samples > 1 needs --strategy sample (strategy='sample'): greedy and beam search are "
                            "deterministic")
    if num_samples == 1:
        return list(prompts)
    return [(f"{name}#{k}", sequence) for name, sequence in prompts for k in range(num_samples)]


def complete_prompts(backend: Backend, vocab: Vocab, prompts: Sequence[tuple[str, str]], config: GenerationConfig,
                     keep: float | None = None, prefix: str | None = "auto") -> list[PromptResult]:
    """Complete ``(name, sequence)`` prompts with a loaded model (see :func:`generate_from_checkpoint`)."""
    if prefix == "auto":
        prefix = "[S2S]" if "[S2S]" in vocab.extra_tokens else None
    check_prefix(vocab, prefix)
    cut = []
    for name, sequence in prompts:
        if keep is None:
            cut.append((name, sequence, None))
        else:
            split = int(np.clip(round(keep * len(sequence)), 1, max(len(sequence) - 1, 1)))
            cut.append((name, sequence[:split], sequence[split:]))
    completions = complete(backend, vocab, [prompt for _, prompt, _ in cut], config, prefix=prefix)
    return [PromptResult(name, prompt, completion, truth)
            for (name, prompt, truth), completion in zip(cut, completions)]


def generate_from_checkpoint(checkpoint_path, prompts: Sequence[tuple[str, str]], config: GenerationConfig,
                             keep: float | None = None, prefix: str | None = "auto",
                             backend_name: str | None = None) -> list[PromptResult]:
    """Complete ``(name, sequence)`` prompts with a checkpoint's model.

    With ``keep`` the prompt is only the first ``keep`` share of each sequence (as the completion
    objective splits), and the rest is kept as the truth to compare with. ``prefix="auto"`` uses
    ``[S2S]`` when the model's vocabulary has it.
    """
    backend, vocab = load_model(checkpoint_path, backend_name)
    return complete_prompts(backend, vocab, prompts, config, keep=keep, prefix=prefix)
