"""The PyTorch backend's engine: the model, the optimizer, and every operation of the backend contract.

``TorchEngine`` is the :class:`~plmforge.core.backend.BackendEngine` that ``TorchBackend`` builds at
setup. Objective losses are written against the array API; here they receive torch tensors and the
``array_api_compat`` torch namespace, so autograd differentiates them directly. Metrics stay on the
device as (sum, count) tensors; the run loop converts them only when it logs.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping
from typing import Any

import array_api_compat.torch as xp
import numpy as np
import torch

from plmforge.core.backend import (
    BackendContext,
    BackendEngine,
    MicroBatch,
    StepMetrics,
    add_metric,
    check_same_optimizer,
    fit_weights,
)
from plmforge.core.errors import PlmforgeError
from plmforge.core.initialization import initial_weights
from plmforge.core.objective import DECODER_INPUT, ENCODER_INPUT
from plmforge.plugins.backends.torch import distributed
from plmforge.plugins.backends.torch.distributed import ProcessGroup
from plmforge.plugins.backends.torch.model import T5Model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PlmforgeError(f"backend.device is {name!r} but PyTorch sees no CUDA device")
    return device


class TorchEngine(BackendEngine):
    """Ankh/T5 in PyTorch on one device, or on one of several processes (DDP/FSDP via torchrun).

    Public members the heads (:mod:`.heads`) use: ``model`` (the T5 module; whole, not sharded, on
    the engine :meth:`single_process` returns), ``device``, and :meth:`autocast`.
    """

    def __init__(self, config: Any, context: BackendContext):
        super().__init__(config, context)
        self.training = context.training
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.set_float32_matmul_precision(config.matmul_precision)
        self.group: ProcessGroup | None = None
        if config.distributed != "none":
            self.group, self.device = distributed.join(config.distributed, config.device)
            self._check_accumulation()
        else:
            self.device = resolve_device(config.device)
        rank = self.group.rank if self.group else 0
        torch.manual_seed(context.seed + rank)  # dropout stream (per process); saved and restored with checkpoints
        needs = context.needs
        self.model = T5Model(context.model, context.vocab_size, heads=dict(needs.per_residue_heads),
                             encoder_lm_head=needs.encoder_lm, init=False)
        self.model.to(self.device)
        shapes = {name: tuple(value.shape) for name, value in self.model.state_dict().items()}
        self.load_weights(initial_weights(shapes, context.model, context.seed))  # equal on every backend
        self.param_names = {p: n for n, p in self.model.named_parameters()}
        self.outputs = {slot.label: slot.objective.needs().output_names() for slot in context.objectives}
        self.slots = {slot.label: slot for slot in context.objectives}
        # ``network`` is what training steps call: the model, or DDP around it, or the model sharded in place
        self.network: torch.nn.Module = self.model
        if self.group is not None:
            self.network = distributed.wrap(self.model, self.group, self.device, self._may_leave_unused())
            self.param_names = {p: n for n, p in self.model.named_parameters()}
        self.optimizer = self._make_optimizer()
        self.autocast_dtype = torch.bfloat16 if self.training.precision == "bf16" else None
        self.forward = torch.compile(self.network, dynamic=True) if config.compile else self.network

    @property
    def sharded(self) -> bool:
        return self.group is not None and self.group.kind == "fsdp"

    def _check_accumulation(self) -> None:
        if self.sharded and self.training.optimizer.name != "adamw":
            raise PlmforgeError(f"backend.distributed 'fsdp' needs training.optimizer.name 'adamw' (the factored "
                                f"state of {self.training.optimizer.name!r} does not shard with the parameters); "
                                f"use 'ddp' or adamw")
        world = self.group.world_size
        if self.training.gradient_accumulation % world:
            raise PlmforgeError(
                f"training.gradient_accumulation is {self.training.gradient_accumulation} but {world} processes "
                f"train together: each step's micro-batches are split over the processes, so it must be a multiple "
                f"of {world} (e.g. --set training.gradient_accumulation={world})")

    def _may_leave_unused(self) -> bool:
        """Whether some step can leave parameters without a gradient (DDP must then look for them)."""
        wanted = [frozenset(names) for names in self.outputs.values()]
        every = frozenset().union(*wanted)
        unused_decoder = self.model.has_decoder and not ({"decoder_logits", "decoder_hidden"} & every)
        return len(set(wanted)) > 1 or unused_decoder or any(
            name not in every for name in self.model.heads) or (
            self.model.encoder_lm_head is not None and "encoder_logits" not in every)

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
    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the model runs in: bf16 autocast when ``training.precision`` is bf16, else nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        return {k: torch.from_numpy(v).to(self.device, non_blocking=non_blocking) for k, v in arrays.items()}

    def _forward_loss(self, label: str, batch: dict[str, torch.Tensor], network: torch.nn.Module) -> Any:
        with self.autocast():
            outputs = network(batch[ENCODER_INPUT], batch.get(DECODER_INPUT), outputs=self.outputs[label])
        return self.slots[label].objective.loss(outputs, batch, xp)

    def train_step(self, micro_batches: Mapping[str, list[MicroBatch]], lr: float,
                   loss_weights: Mapping[str, float] | None = None) -> StepMetrics:
        self.network.train()
        metrics: StepMetrics = {}
        total = torch.zeros((), device=self.device)
        work = []  # (label, micro-batch, loss scale) this process computes
        # each objective's weight over the whole step: the batches here are this process's data_shard
        weights = {label: sum(b.weight for b in batches) for label, batches in micro_batches.items()}
        if self.group is not None:
            weights = distributed.sum_weights_over_processes(weights, self.device)
        for label, batches in micro_batches.items():
            loss_weight = self.slots[label].weight if loss_weights is None else loss_weights[label]
            weight = weights[label]
            if weight <= 0:
                continue
            work.extend((label, micro, loss_weight / weight) for micro in batches)
        # DDP and FSDP average gradients over processes; the step's gradient is their sum
        world = self.group.world_size if self.group else 1
        for i, (label, micro, scale) in enumerate(work):
            with self._gradient_sync(last=i == len(work) - 1):
                out = self._forward_loss(label, self._to_device(micro.arrays), self.forward)
                (out.loss * (scale * world)).backward()
            total = total + out.loss.detach() * scale
            add_metric(metrics, f"{label}/loss", out.loss.detach(), micro.weight)
            for name, (value, count) in out.metrics.items():
                add_metric(metrics, f"{label}/{name}", value.detach(), count.detach())
        if self.group is not None:
            metrics = distributed.sum_over_processes({**metrics, "loss": (total, torch.zeros(()))}, self.device)
            total = metrics.pop("loss")[0]
        clip = self.training.max_grad_norm if self.training.max_grad_norm is not None else float("inf")
        grad_norm = distributed.local_value(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        one = torch.ones((), device=self.device)
        metrics["loss"] = (total, one)
        metrics["grad_norm"] = (grad_norm.detach(), one)
        return metrics

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        if self.group is None:
            return contextlib.nullcontext()
        return distributed.gradient_sync(self.network, self.group, sync=last)

    @torch.inference_mode()
    def eval_step(self, batches: Mapping[str, MicroBatch]) -> StepMetrics:
        self.model.eval()
        metrics: StepMetrics = {}
        for label, micro in batches.items():
            out = self._forward_loss(label, self._to_device(micro.arrays), self.model)
            add_metric(metrics, f"{label}/loss", out.loss, micro.weight)
            for name, (value, count) in out.metrics.items():
                add_metric(metrics, f"{label}/{name}", value, count)
        return metrics

    @torch.inference_mode()
    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        self.model.eval()
        ids = torch.from_numpy(np.asarray(input_ids)).to(self.device)
        with self.autocast():
            hidden = self.model.encode(ids)
        return hidden.float().cpu().numpy()

    @torch.inference_mode()
    def decoder_logits(self, encoder_input_ids: np.ndarray, decoder_input_ids: np.ndarray) -> np.ndarray:
        if not self.model.has_decoder:
            raise PlmforgeError("this model has no decoder (num_decoder_layers is 0): it cannot generate")
        self.model.eval()
        encoder, decoder = (torch.from_numpy(np.asarray(a)).to(self.device) for a in (encoder_input_ids,
                                                                                       decoder_input_ids))
        with self.autocast():
            logits = self.model(encoder, decoder, outputs=("decoder_logits",))["decoder_logits"]
        return logits.float().cpu().numpy()

    def fit_head(self, problem: Any, settings: Any, train: Any, validation: Any, predict: Any) -> Any:
        """Downstream heads (:mod:`plmforge.core.heads`); imported lazily to keep this module light."""
        from plmforge.plugins.backends.torch.heads import fit_head

        return fit_head(self, problem, settings, train, validation, predict)

    # -- state ------------------------------------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        """Full weights; with FSDP every process must call this (shards are gathered)."""
        # copies: on CPU .numpy() would alias the live parameters, which the next step changes
        return {k: _full(v).float().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def load_weights(self, weights: Mapping[str, np.ndarray], strict: bool = True) -> None:
        live = self.model.state_dict()
        own = {k: tuple(v.shape) for k, v in live.items()}
        tensors = {k: _like(torch.from_numpy(np.asarray(v)), live[k])
                   for k, v in fit_weights(own, weights, strict).items()}
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
                    arrays[f"optimizer/{name}/{key}"] = _full(value).cpu().numpy()
                else:
                    scalars.setdefault(name, {})[key] = value
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
                  for g in state["param_groups"]]
        arrays.update(self._rng_states())
        meta = {"optimizer": self.training.optimizer.name, "param_groups": groups, "scalars": scalars,
                "param_order": [self.param_names[p] for p in order]}
        return arrays, meta

    def _rng_states(self) -> dict[str, np.ndarray]:
        """Dropout RNG streams: this process's, or every process's (``rng/rank<r>/...``) in a distributed run."""
        cpu = torch.get_rng_state()
        if self.group is None:
            arrays = {"rng/torch_cpu": cpu.numpy()}
            if torch.cuda.is_available():
                arrays.update({f"rng/cuda/{i}": s.numpy() for i, s in enumerate(torch.cuda.get_rng_state_all())})
            return arrays
        arrays = {f"rng/rank{r}/torch_cpu": s.numpy()
                  for r, s in enumerate(distributed.gather_tensor(cpu, self.group, self.device))}
        arrays["rng/torch_cpu"] = arrays["rng/rank0/torch_cpu"]
        if self.device.type == "cuda":
            cuda = torch.cuda.get_rng_state(self.device)
            arrays.update({f"rng/rank{r}/cuda": s.numpy()
                           for r, s in enumerate(distributed.gather_tensor(cuda, self.group, self.device))})
        return arrays

    def load_training_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        check_same_optimizer(meta, self.training.optimizer.name)
        index_of = {name: i for i, name in enumerate(meta["param_order"])}
        order = [p for group in self.optimizer.param_groups for p in group["params"]]
        state: dict[int, dict[str, Any]] = {}
        for key, value in arrays.items():
            if key.startswith("optimizer/"):
                name, field = key[len("optimizer/"):].rsplit("/", 1)
                index = index_of[name]
                state.setdefault(index, {})[field] = _like(torch.from_numpy(np.array(value)), order[index])
        for name, values in meta.get("scalars", {}).items():
            state.setdefault(index_of[name], {}).update(values)
        current = self.optimizer.state_dict()
        groups = [{**saved, "params": group["params"]} for saved, group in zip(meta["param_groups"],
                                                                               current["param_groups"])]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        self._load_rng_states(arrays)

    def _load_rng_states(self, arrays: Mapping[str, np.ndarray]) -> None:
        def tensor(key: str) -> torch.Tensor:
            return torch.from_numpy(np.array(arrays[key]))

        own = f"rng/rank{self.group.rank}/" if self.group else None
        if own and f"{own}torch_cpu" in arrays:
            torch.set_rng_state(tensor(f"{own}torch_cpu"))
        elif "rng/torch_cpu" in arrays:
            torch.set_rng_state(tensor("rng/torch_cpu"))
        if own and f"{own}cuda" in arrays and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensor(f"{own}cuda"), self.device)
        cuda_states = [tensor(k) for k in sorted(arrays) if k.startswith("rng/cuda/")]
        if own is None and cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)

    def is_main_process(self) -> bool:
        return self.group is None or self.group.is_main

    def data_shard(self) -> tuple[int, int]:
        """Each process makes and trains every world-size-th micro-batch, starting at its rank."""
        return (0, 1) if self.group is None else (self.group.rank, self.group.world_size)

    def single_process(self) -> TorchEngine | None:
        """A copy for work the main process does alone (downstream tasks) with the full weights.

        Every process calls it (FSDP gathers the shards); processes other than the main one get None.
        """
        if self.group is None:
            return self
        weights = self.weights()
        if not self.group.is_main:
            return None
        alone = copy.copy(self)
        alone.group = None
        if self.sharded:
            needs = self.context.needs
            alone.model = T5Model(self.context.model, self.context.vocab_size, heads=dict(needs.per_residue_heads),
                                  encoder_lm_head=needs.encoder_lm, init=False).to(self.device)
            alone.load_weights(weights)
        alone.network = alone.forward = alone.model
        alone.param_names = {p: n for n, p in alone.model.named_parameters()}
        return alone

    def describe(self) -> dict[str, str]:
        if self.group is None:
            parallelism = "single process"
        else:
            how = "DDP" if self.group.kind == "ddp" else "FSDP2 (fully_shard)"
            parallelism = f"{how} over {self.group.world_size} processes ({dist_backend()})"
        return {"device": str(self.device), "framework": f"torch {torch.__version__}",
                "precision": self.training.precision, "parallelism": parallelism}

    def counters(self) -> dict[str, float]:
        return {"compilations": 0.0}  # eager PyTorch compiles nothing

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _full(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor: FSDP2 parameters and their optimizer state are DTensors holding a shard."""
    return distributed.local_value(value.detach())


def _like(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor) laid out like ``target``: sharded the same way when it is a DTensor."""
    if hasattr(target, "device_mesh") and value.shape == target.shape:
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value.to(target.device), target.device_mesh, target.placements)
    return value


def dist_backend() -> str:
    import torch.distributed as dist

    return dist.get_backend() if dist.is_initialized() else "none"
