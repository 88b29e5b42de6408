"""Helpers shared by tests (imported as ``helpers``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plmforge.core.hookspecs import hookimpl

#: A model small enough for tests to train in seconds on two CPU cores.
TINY_MODEL = dict(preset=None, d_model=32, num_layers=2, num_decoder_layers=1, num_heads=2, d_kv=16, d_ff=64,
                  dropout_rate=0.0)


def tiny_spec_dict(tmp_path: Path, **training: Any) -> dict[str, Any]:
    return {
        "name": "tiny",
        "seed": 7,
        "output_dir": str(tmp_path / "run"),
        "data": {"source": "builtin:scl2205", "max_length": 64},
        "model": dict(TINY_MODEL),
        "backend": {"name": "torch", "threads": 1},
        "objectives": [{"name": "mlm", "probabilities": [0.15, 0.3]}],
        "training": {"steps": 6, "batch_size": {"tokens": 1024}, "log_every": 1, "eval_every": 3,
                     "eval_batches": 2, "checkpoint_every": 3, "keep_checkpoints": 5,
                     "optimizer": {"name": "adamw", "lr": 3e-3}, "schedule": {"warmup_steps": 2}, **training},
        "tracking": {"enabled": True, "experiment": "tests", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }


class StopAt:
    """A hook that simulates Ctrl-C after a given step (for stop-and-resume tests)."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def plmforge_step_end(self, run, step, metrics):
        if step == self.step:
            raise KeyboardInterrupt


def random_hf_t5(vocab: int, shape: dict[str, Any], feed_forward_proj: str = "gated-gelu", tie: bool = False,
                 encoder_only: bool = False, seed: int = 0):
    """A randomly initialised transformers T5 (untied LM head unless ``tie``) whose norms and position
    bias are perturbed so that a comparison notices if they are mishandled."""
    import torch
    import transformers

    config = transformers.T5Config(vocab_size=vocab, feed_forward_proj=feed_forward_proj, tie_word_embeddings=tie,
                                   decoder_start_token_id=0, pad_token_id=0, **shape)
    torch.manual_seed(seed)
    cls = transformers.T5EncoderModel if encoder_only else transformers.T5ForConditionalGeneration
    model = cls(config).eval()
    with torch.no_grad():
        if not tie and not encoder_only:
            # transformers >= 5 ties a fresh T5's lm_head to shared: untie it, so a mix-up of the two shows.
            # Std d_model**-0.5 keeps logits O(1), so one absolute tolerance suits logits and hidden states.
            d_model = shape["d_model"]
            model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, d_model) * d_model ** -0.5)
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.add_(0.2 * torch.randn_like(param))
            if "relative_attention_bias" in name:
                param.normal_(0.0, 1.0)
    return model
