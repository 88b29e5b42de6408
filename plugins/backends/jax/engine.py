"""The JAX backend's engine: compiled training and evaluation steps, and every operation of the backend contract.

``JaxEngine`` is the :class:`~plmforge.core.backend.BackendEngine` that ``JaxBackend`` builds at
setup. Parameters are a flat dict ``{Hugging Face name: jax.Array}``; a step merges them into the NNX model
(``nnx.merge``, free at run time) and differentiates the objective's array-API loss written against
``jax.numpy``. A step is two compiled functions: ``accumulate`` adds one micro-batch's scaled
gradient (one compilation per objective and padded shape), ``apply`` clips and updates (one
compilation). Padded shapes come from :mod:`.shapes`, so compilations stay few; their count is a
logged counter.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from plmforge.core.backend import (
    BackendContext,
    BackendEngine,
    MicroBatch,
    StepMetrics,
    add_metric,
    check_same_optimizer,
    fit_weights,
)
from plmforge.core.errors import CheckpointError, PlmforgeError
from plmforge.core.initialization import initial_weights
from plmforge.core.objective import DECODER_INPUT, ENCODER_INPUT, Feature
from plmforge.plugins.backends.jax.distribution import (
    Placement,
    exchange_step_plan,
    join_processes,
    make_mesh,
    select_devices,
    to_host,
)
from plmforge.plugins.backends.jax.model import T5Model
from plmforge.plugins.backends.jax.optimizers import make_optimizer
from plmforge.plugins.backends.jax.shapes import ladder_shapes, pad_batch, pad_to_shapes

Params = dict[str, jax.Array]


def param_name(path: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in path)


class JaxEngine(BackendEngine):
    """Ankh/T5 in Flax NNX + optax over a one-axis device mesh (data parallel or fully sharded).

    Public members the heads (:mod:`.heads`) use: ``params`` (the flat parameter dict, read and
    never written by them), ``placement``, :attr:`shape_growth`, :meth:`encoder_params`,
    :meth:`model_with` and :meth:`note_signature`.
    """

    def __init__(self, config: Any, context: BackendContext):
        super().__init__(config, context)
        self.training = context.training
        if config.multi_host:  # must precede any other JAX call; the environment describes the cluster
            join_processes()
        devices = select_devices(config.platform, config.devices, every_process=config.multi_host)
        self.placement = Placement(make_mesh(devices), config.sharding)
        self.compute_dtype = jnp.bfloat16 if self.training.precision == "bf16" else jnp.float32
        needs = context.needs
        model = T5Model(context.model, context.vocab_size, heads=dict(needs.per_residue_heads),
                        encoder_lm_head=needs.encoder_lm, rngs=None, dtype=self.compute_dtype)
        self.graphdef, state = nnx.split(model, nnx.Param)
        flat = [(param_name(path), path, var.get_value().shape) for path, var in nnx.to_flat_state(state)]
        self.paths = {name: path for name, path, _ in flat}
        shapes = {name: tuple(shape) for name, _, shape in flat}
        host_params = initial_weights(shapes, context.model, context.seed)  # equal on every backend
        self.param_shardings = self.placement.tree(host_params)
        self.params: Params = self.placement.put(host_params, self.param_shardings)
        self.optimizer = make_optimizer(self.training.optimizer, self.params)
        self.opt_shardings = self.placement.tree(jax.eval_shape(self.optimizer.init, self.params))
        self.opt_state = jax.jit(self.optimizer.init, out_shardings=self.opt_shardings)(self.params)
        self.dropout_key = jax.random.key(context.seed)
        self.steps_done = 0  # folds into the dropout key; saved with the training state
        self.slots = {slot.label: slot for slot in context.objectives}
        self.outputs = {slot.label: slot.objective.needs().output_names() for slot in context.objectives}
        self.features = {slot.label: slot.objective.features() for slot in context.objectives}
        self._signatures: set[tuple] = set()  # distinct compiled shapes: what `compilations` counts
        self.compile_steps()

    def compile_steps(self) -> None:
        """(Re)build the jitted step functions for this engine's shardings (a one-process copy calls it again)."""
        self._accumulate = jax.jit(self._accumulate_fn, static_argnames="label", donate_argnums=(1,))
        self._apply = jax.jit(self._apply_fn, donate_argnums=(0, 1),
                              out_shardings=(self.param_shardings, self.opt_shardings, self.placement.replicated))
        self._zeros = jax.jit(lambda p: jax.tree.map(jnp.zeros_like, p), out_shardings=self.param_shardings)
        self._evaluate = jax.jit(self._evaluate_fn, static_argnames="label")
        self._encode = jax.jit(self._encode_fn)
        self._decoder_logits = jax.jit(self._decoder_logits_fn)

    # -- what the heads borrow ---------------------------------------------------------------------
    @property
    def shape_growth(self) -> float:
        """The geometric ladder batch shapes are padded up (``backend.shape_growth``; 1.0 = none)."""
        return float(self.config.shape_growth)

    def encoder_params(self) -> Params:
        """The parameters the encoder reads (embedding and encoder stack), as the live arrays."""
        return {name: value for name, value in self.params.items() if name.startswith(("shared.", "encoder."))}

    def note_signature(self, signature: tuple) -> None:
        """Record a compiled function's shape signature; the distinct ones are the ``compilations`` counter."""
        self._signatures.add(signature)

    def model_with(self, params: Params) -> T5Model:
        """The NNX model with ``params`` (free under ``jax.jit``: a merge of the graph and the arrays)."""
        state = nnx.from_flat_state([(self.paths[name], nnx.Param(value)) for name, value in params.items()])
        return nnx.merge(self.graphdef, state)

    # -- pure functions (traced) ------------------------------------------------------------------
    def _loss(self, params: Params, batch: Mapping[str, jax.Array], key: jax.Array | None, label: str):
        outputs = self.model_with(params)(batch[ENCODER_INPUT], batch.get(DECODER_INPUT), outputs=self.outputs[label],
                                      dropout_key=key)
        out = self.slots[label].objective.loss(outputs, batch, jnp)
        return out.loss, out.metrics

    def _accumulate_fn(self, params: Params, grads: Params, batch: Mapping[str, jax.Array], scale: jax.Array,
                       key: jax.Array, *, label: str):
        (loss, metrics), step_grads = jax.value_and_grad(self._loss, has_aux=True)(params, batch, key, label)
        grads = jax.tree.map(lambda total, g: total + scale * g, grads, step_grads)
        grads = jax.lax.with_sharding_constraint(grads, self.param_shardings)
        return grads, loss, metrics

    def _apply_fn(self, params: Params, opt_state: Any, grads: Params, lr: jax.Array):
        norm = optax.tree.norm(grads)
        max_norm = self.training.max_grad_norm
        if max_norm is not None:  # torch.nn.utils.clip_grad_norm_'s rule
            factor = jnp.minimum(1.0, max_norm / (norm + 1e-6))
            grads = jax.tree.map(lambda g: g * factor, grads)
        opt_state.hyperparams["learning_rate"] = lr
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, norm

    def _evaluate_fn(self, params: Params, batch: Mapping[str, jax.Array], *, label: str):
        return self._loss(params, batch, None, label)

    def _encode_fn(self, params: Params, input_ids: jax.Array) -> jax.Array:
        return self.model_with(params).encode(input_ids).astype(jnp.float32)

    def _decoder_logits_fn(self, params: Params, encoder_ids: jax.Array, decoder_ids: jax.Array) -> jax.Array:
        logits = self.model_with(params)(encoder_ids, decoder_ids, outputs=("decoder_logits",))["decoder_logits"]
        return logits.astype(jnp.float32)

    # -- steps ------------------------------------------------------------------------------------
    def _device_batch(self, label: str, arrays: Mapping[str, np.ndarray], kind: str) -> dict[str, jax.Array]:
        padded = pad_batch(arrays, self.features[label], self.placement.size, self.training.pad_to_multiple,
                           self.shape_growth)
        self.note_signature((kind, label, *sorted((k, v.shape, str(v.dtype)) for k, v in padded.items())))
        return self.placement.put_batch(padded)

    def _global_batches(self, micro_batches: Mapping[str, list[MicroBatch]]
                        ) -> dict[str, list[tuple[dict[str, jax.Array], float]]]:
        """Each objective's global batches of the step, each with the weight its loss sum is normalised by.

        With one data shard they are the micro-batches as given. With one shard per process (see
        :meth:`data_shard`) the k-th global batch joins every process's k-th micro-batch, rows side by
        side: a small host exchange gives all processes each other's weights and padded shapes, so
        they agree on the global shapes, and each places only its own rows.
        """
        if self.data_shard()[1] == 1:
            return {label: [(self._device_batch(label, micro.arrays, "train"), micro.weight) for micro in batches]
                    for label, batches in micro_batches.items()}
        local_rows = len(self.placement.mesh.local_devices)
        # each micro-batch's own ladder shapes; the processes then pad once, to the largest of each
        ladders = {label: [ladder_shapes(micro.arrays, self.features[label], local_rows,
                                         self.training.pad_to_multiple, self.shape_growth) for micro in batches]
                   for label, batches in micro_batches.items()}
        weights = [micro.weight for batches in micro_batches.values() for micro in batches]
        shapes = [shape for per_label in ladders.values() for ladder in per_label
                  for _, shape in sorted(ladder.items())]
        everyone_weights, everyone_shapes = exchange_step_plan(weights, shapes)
        largest = iter(everyone_shapes.max(axis=0).tolist())
        totals = iter(everyone_weights.sum(axis=0).tolist())
        joined: dict[str, list[tuple[dict[str, jax.Array], float]]] = {}
        for label, batches in micro_batches.items():
            joined[label] = []
            for micro, ladder in zip(batches, ladders[label]):
                target = {key: tuple(next(largest) for _ in shape) for key, shape in sorted(ladder.items())}
                local = pad_to_shapes(micro.arrays, self.features[label], target)
                self.note_signature(("train", label, *sorted((k, v.shape, str(v.dtype)) for k, v in local.items())))
                joined[label].append((self.placement.put_process_rows(local), float(next(totals))))
        return joined

    def train_step(self, micro_batches: Mapping[str, list[MicroBatch]], lr: float,
                   loss_weights: Mapping[str, float] | None = None) -> StepMetrics:
        metrics: StepMetrics = {}
        grads = self._zeros(self.params)
        total = jnp.zeros((), jnp.float32)
        step_key = jax.random.fold_in(self.dropout_key, self.steps_done)
        index = 0
        for label, batches in self._global_batches(micro_batches).items():
            loss_weight = self.slots[label].weight if loss_weights is None else loss_weights[label]
            weight = sum(batch_weight for _, batch_weight in batches)
            if weight <= 0:
                continue
            scale = jnp.float32(loss_weight / weight)
            for batch, batch_weight in batches:
                key = jax.random.fold_in(step_key, index)
                index += 1
                grads, loss, out = self._accumulate(self.params, grads, batch, scale, key, label=label)
                total = total + scale * loss
                add_metric(metrics, f"{label}/loss", loss, batch_weight)
                for name, (value, count) in out.items():
                    add_metric(metrics, f"{label}/{name}", value, count)
        self.note_signature(("apply",))
        self.params, self.opt_state, norm = self._apply(self.params, self.opt_state, grads, jnp.float32(lr))
        self.steps_done += 1
        metrics["loss"] = (total, 1.0)
        metrics["grad_norm"] = (norm, 1.0)
        return metrics

    def eval_step(self, batches: Mapping[str, MicroBatch]) -> StepMetrics:
        metrics: StepMetrics = {}
        for label, micro in batches.items():
            loss, out = self._evaluate(self.params, self._device_batch(label, micro.arrays, "eval"), label=label)
            add_metric(metrics, f"{label}/loss", loss, micro.weight)
            for name, (value, count) in out.items():
                add_metric(metrics, f"{label}/{name}", value, count)
        return metrics

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(input_ids, dtype=np.int32)
        padded = pad_batch({ENCODER_INPUT: ids}, {}, self.placement.size, 1, self.shape_growth)[ENCODER_INPUT]
        self.note_signature(("embed", padded.shape))
        hidden = self._encode(self.params, self.placement.put_batch({"ids": padded})["ids"])
        return np.asarray(to_host(hidden))[: ids.shape[0]]

    def decoder_logits(self, encoder_input_ids: np.ndarray, decoder_input_ids: np.ndarray) -> np.ndarray:
        if not self.context.model.has_decoder:
            raise PlmforgeError("this model has no decoder (num_decoder_layers is 0): it cannot generate")
        features = {ENCODER_INPUT: Feature("int32", "encoder"), DECODER_INPUT: Feature("int32", "decoder")}
        arrays = {ENCODER_INPUT: np.asarray(encoder_input_ids, np.int32),
                  DECODER_INPUT: np.asarray(decoder_input_ids, np.int32)}
        padded = pad_batch(arrays, features, self.placement.size, 1, self.shape_growth)
        self.note_signature(("decoder_logits", padded[ENCODER_INPUT].shape, padded[DECODER_INPUT].shape))
        batch = self.placement.put_batch(padded)
        logits = self._decoder_logits(self.params, batch[ENCODER_INPUT], batch[DECODER_INPUT])
        rows, length = arrays[DECODER_INPUT].shape
        return np.asarray(to_host(logits))[:rows, :length]

    def fit_head(self, problem, settings, train, validation, predict):
        from plmforge.plugins.backends.jax.heads import fit_head

        return fit_head(self, problem, settings, train, validation, predict)

    # -- state ------------------------------------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(to_host(value), dtype=np.float32) for name, value in self.params.items()}

    def load_weights(self, weights: Mapping[str, np.ndarray], strict: bool = True) -> None:
        expected = {name: tuple(value.shape) for name, value in self.params.items()}
        fitted = {name: value.astype(np.float32) for name, value in fit_weights(expected, weights, strict).items()}
        placed = self.placement.put(fitted, {name: self.param_shardings[name] for name in fitted})
        self.params = {**self.params, **placed}  # parameters not in ``weights`` (strict=False) stay

    def training_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {f"optimizer/{jax.tree_util.keystr(path)}": np.asarray(to_host(leaf))
                  for path, leaf in jax.tree_util.tree_flatten_with_path(self.opt_state)[0]}
        arrays["rng/jax_dropout_key"] = np.asarray(jax.random.key_data(self.dropout_key))
        meta = {"optimizer": self.training.optimizer.name, "framework": "jax", "steps_done": self.steps_done}
        return arrays, meta

    def load_training_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        check_same_optimizer(meta, self.training.optimizer.name)
        if meta.get("framework") != "jax":
            raise CheckpointError("the checkpoint's optimizer state was written by another backend; its weights "
                                  "load in any backend, but resuming needs the backend that wrote it")
        leaves, treedef = jax.tree_util.tree_flatten_with_path(self.opt_state)
        restored = []
        for path, leaf in leaves:
            key = f"optimizer/{jax.tree_util.keystr(path)}"
            if key not in arrays or tuple(np.shape(arrays[key])) != tuple(leaf.shape):
                raise CheckpointError(f"checkpoint optimizer state lacks or mis-shapes {key}")
            restored.append(np.asarray(arrays[key]).astype(leaf.dtype))
        host_state = jax.tree_util.tree_unflatten(treedef, restored)
        self.opt_state = self.placement.put(host_state, self.opt_shardings)
        self.dropout_key = jax.random.wrap_key_data(np.asarray(arrays["rng/jax_dropout_key"]))
        self.steps_done = int(meta.get("steps_done", 0))

    def describe(self) -> dict[str, str]:
        devices = self.placement.mesh.devices.ravel()
        how = "fully sharded" if self.config.sharding == "fsdp" else "data parallel"
        return {"device": f"{len(devices)}x {devices[0].device_kind} ({devices[0].platform})",
                "framework": f"jax {jax.__version__}, flax {_version('flax')}, optax {_version('optax')}",
                "precision": self.training.precision,
                "parallelism": f"{how} over {len(devices)} device(s), {jax.process_count()} process(es)"}

    def num_parameters(self) -> int:
        return int(sum(value.size for value in self.params.values()))

    def is_main_process(self) -> bool:
        return jax.process_index() == 0

    def data_shard(self) -> tuple[int, int]:
        """One shard per process when the processes can split each step's micro-batches evenly.

        Otherwise (e.g. ``training.gradient_accumulation`` 1 on two processes) every process makes
        every micro-batch and places only its devices' rows of it.
        """
        processes = jax.process_count()
        if not self.placement.mesh.is_multi_process or self.training.gradient_accumulation % processes:
            return 0, 1
        return jax.process_index(), processes

    def single_process(self) -> JaxEngine | None:
        """A copy over this process's own devices with the full weights, for work the main process does alone.

        Every process calls it (gathering sharded weights across processes is collective); processes
        other than the main one get None. The copy has no optimizer state: downstream tasks do not train it.
        """
        if jax.process_count() == 1:
            return self
        weights = self.weights()
        if not self.is_main_process():
            return None
        alone = copy.copy(self)
        alone.placement = Placement(make_mesh(jax.local_devices()), self.config.sharding)
        alone.param_shardings = alone.placement.tree(weights)
        alone.params = alone.placement.put(weights, alone.param_shardings)
        alone.opt_shardings = alone.placement.tree(jax.eval_shape(self.optimizer.init, alone.params))
        alone.opt_state = None
        alone.compile_steps()  # the shallow copy shares the compilations counter with the run
        return alone

    def counters(self) -> dict[str, float]:
        return {"compilations": float(len(self._signatures))}


@functools.cache
def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)
