"""Training and evaluation steps of the PyTorch backend.

Objective losses are written against the array API; here they receive torch tensors and the
``array_api_compat`` torch namespace, so autograd differentiates them directly. Metrics stay on the
device as (sum, count) tensors; the run loop converts them only when it logs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import array_api_compat.torch as xp
import numpy as np
import torch

from plmforge.core.backend import BackendContext, MicroBatch, StepMetrics, add_metric, fit_weights
from plmforge.core.errors import CheckpointError, PlmforgeError
from plmforge.core.initialization import initial_weights
from plmforge.core.objective import DECODER_INPUT, ENCODER_INPUT
from plmforge.plugins.backends.torch.model import T5Model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PlmforgeError(f"backend.device is {name!r} but PyTorch sees no CUDA device")
    return device


class TorchTrainer:
    def __init__(self, config: Any, context: BackendContext):
        self.context = context
        self.training = context.training
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.set_float32_matmul_precision(config.matmul_precision)
        self.device = resolve_device(config.device)
        torch.manual_seed(context.seed)  # dropout stream; saved and restored with checkpoints
        needs = context.needs
        self.model = T5Model(context.model, context.vocab_size, heads=dict(needs.per_residue_heads),
                             encoder_lm_head=needs.encoder_lm, init=False)
        self.model.to(self.device)
        shapes = {name: tuple(value.shape) for name, value in self.model.state_dict().items()}
        self.load_weights(initial_weights(shapes, context.model, context.seed))  # equal on every backend
        self.param_names = {p: n for n, p in self.model.named_parameters()}
        self.optimizer = self._make_optimizer()
        self.autocast_dtype = torch.bfloat16 if self.training.precision == "bf16" else None
        self.outputs = {slot.label: slot.objective.needs().output_names() for slot in context.objectives}
        self.slots = {slot.label: slot for slot in context.objectives}

    def _make_optimizer(self) -> torch.optim.Optimizer:
        opt = self.training.optimizer
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]  # RMSNorm scales
        groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if opt.name == "adamw":
            return torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps,
                                     foreach=self.device.type != "cpu" or None)
        return torch.optim.Adafactor(groups, lr=opt.lr)

    # -- steps ------------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        return {k: torch.from_numpy(v).to(self.device, non_blocking=non_blocking) for k, v in arrays.items()}

    def _forward_loss(self, label: str, batch: dict[str, torch.Tensor]) -> Any:
        with self._autocast():
            outputs = self.model(batch[ENCODER_INPUT], batch.get(DECODER_INPUT),
                                 outputs=self.outputs[label])
        return self.slots[label].objective.loss(outputs, batch, xp)

    def train_step(self, micro_batches: Mapping[str, list[MicroBatch]], lr: float,
                   loss_weights: Mapping[str, float] | None = None) -> StepMetrics:
        self.model.train()
        metrics: StepMetrics = {}
        total = torch.zeros((), device=self.device)
        for label, batches in micro_batches.items():
            loss_weight = self.slots[label].weight if loss_weights is None else loss_weights[label]
            weight = sum(b.weight for b in batches)
            if weight <= 0:
                continue
            for micro in batches:
                out = self._forward_loss(label, self._to_device(micro.arrays))
                scaled = out.loss * (loss_weight / weight)
                scaled.backward()
                total = total + scaled.detach()
                add_metric(metrics, f"{label}/loss", out.loss.detach(), micro.weight)
                for name, (value, count) in out.metrics.items():
                    add_metric(metrics, f"{label}/{name}", value.detach(), count.detach())
        clip = self.training.max_grad_norm if self.training.max_grad_norm is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        one = torch.ones((), device=self.device)
        metrics["loss"] = (total, one)
        metrics["grad_norm"] = (grad_norm.detach(), one)
        return metrics

    @torch.inference_mode()
    def eval_step(self, batches: Mapping[str, MicroBatch]) -> StepMetrics:
        self.model.eval()
        metrics: StepMetrics = {}
        for label, micro in batches.items():
            out = self._forward_loss(label, self._to_device(micro.arrays))
            add_metric(metrics, f"{label}/loss", out.loss, micro.weight)
            for name, (value, count) in out.metrics.items():
                add_metric(metrics, f"{label}/{name}", value, count)
        return metrics

    @torch.inference_mode()
    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        self.model.eval()
        ids = torch.from_numpy(np.asarray(input_ids)).to(self.device)
        with self._autocast():
            hidden = self.model.encode(ids)
        return hidden.float().cpu().numpy()

    @torch.inference_mode()
    def decoder_logits(self, encoder_input_ids: np.ndarray, decoder_input_ids: np.ndarray) -> np.ndarray:
        if not self.model.has_decoder:
            raise PlmforgeError("this model has no decoder (num_decoder_layers is 0): it cannot generate")
        self.model.eval()
        encoder, decoder = (torch.from_numpy(np.asarray(a)).to(self.device) for a in (encoder_input_ids,
                                                                                       decoder_input_ids))
        with self._autocast():
            logits = self.model(encoder, decoder, outputs=("decoder_logits",))["decoder_logits"]
        return logits.float().cpu().numpy()

    def fit_head(self, problem: Any, settings: Any, train: Any, validation: Any, predict: Any) -> Any:
        """Downstream heads (:mod:`plmforge.core.heads`); imported lazily to keep this module light."""
        from plmforge.plugins.backends.torch.heads import fit_head

        return fit_head(self, problem, settings, train, validation, predict)

    # -- state ------------------------------------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        # copies: on CPU .numpy() would alias the live parameters, which the next step changes
        return {k: v.detach().float().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def load_weights(self, weights: Mapping[str, np.ndarray], strict: bool = True) -> None:
        own = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        tensors = {k: torch.from_numpy(v) for k, v in fit_weights(own, weights, strict).items()}
        self.model.load_state_dict(tensors, strict=False)

    def training_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        state = self.optimizer.state_dict()
        order = [p for group in self.optimizer.param_groups for p in group["params"]]
        arrays: dict[str, np.ndarray] = {}
        scalars: dict[str, dict[str, Any]] = {}
        for index, values in state["state"].items():
            name = self.param_names[order[index]]
            for key, value in values.items():
                if torch.is_tensor(value):
                    arrays[f"optimizer/{name}/{key}"] = value.detach().cpu().numpy()
                else:
                    scalars.setdefault(name, {})[key] = value
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
                  for g in state["param_groups"]]
        arrays["rng/torch_cpu"] = torch.get_rng_state().numpy()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                arrays[f"rng/cuda/{i}"] = s.numpy()
        meta = {"optimizer": self.training.optimizer.name, "param_groups": groups, "scalars": scalars,
                "param_order": [self.param_names[p] for p in order]}
        return arrays, meta

    def load_training_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        if meta.get("optimizer") != self.training.optimizer.name:
            raise CheckpointError(f"checkpoint optimizer {meta.get('optimizer')!r} differs from the spec's "
                                  f"{self.training.optimizer.name!r}")
        index_of = {name: i for i, name in enumerate(meta["param_order"])}
        state: dict[int, dict[str, Any]] = {}
        for key, value in arrays.items():
            if key.startswith("optimizer/"):
                name, field = key[len("optimizer/"):].rsplit("/", 1)
                state.setdefault(index_of[name], {})[field] = torch.from_numpy(np.array(value))
        for name, values in meta.get("scalars", {}).items():
            state.setdefault(index_of[name], {}).update(values)
        current = self.optimizer.state_dict()
        groups = [{**saved, "params": group["params"]} for saved, group in zip(meta["param_groups"],
                                                                               current["param_groups"])]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        if "rng/torch_cpu" in arrays:
            torch.set_rng_state(torch.from_numpy(np.array(arrays["rng/torch_cpu"])))
        cuda_states = [torch.from_numpy(np.array(arrays[k])) for k in sorted(arrays) if k.startswith("rng/cuda/")]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)

    def describe(self) -> dict[str, str]:
        return {"device": str(self.device), "framework": f"torch {torch.__version__}",
                "precision": self.training.precision, "parallelism": "single process"}

    def counters(self) -> dict[str, float]:
        return {"compilations": 0.0}  # eager PyTorch compiles nothing

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

