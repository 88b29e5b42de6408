"""The assembly layer: a spec turned into the pieces of a run.

Every entry point (training, ``evaluate``, ``embed``, ``generate``, ``convert``, the plugin-author kit,
tests and benchmarks) builds objectives, backends, planners and data sources here, so they are built
one way and the modules that use them need not import each other. This module imports only contracts
and data modules, never the run loop or the entry points.

It also resolves the model's shape from ``model.init_from``: :func:`resolved_model_section` fills a
raw ``model:`` section from the checkpoint's config.json before the spec is validated, so every
:class:`~plmforge.core.spec.Spec` carries the shape it will be built with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plmforge.core.backend import Backend, BackendContext, ObjectiveSlot
from plmforge.core.checkpoint import MODEL_CONFIG, SHAPE_FIELDS, SOFT_FIELDS, read_shape
from plmforge.core.data.batching import BatchPlanner
from plmforge.core.data.stream import ExampleStream
from plmforge.core.errors import CheckpointError, PlmforgeError, SpecError
from plmforge.core.model_config import PRESETS
from plmforge.core.objective import ModelNeeds, ProteinSource
from plmforge.core.vocab import Vocab

if TYPE_CHECKING:
    from plmforge.core.data.proteins import ProteinSet
    from plmforge.core.data.sources import LoadedData
    from plmforge.core.registry import Registry
    from plmforge.core.spec import Spec


# -- the model's shape ------------------------------------------------------------------------------
def resolved_model_section(section: Mapping[str, Any]) -> dict[str, Any]:
    """A raw ``model:`` section with the shape of its ``init_from`` checkpoint filled in.

    Keys the section sets (itself or through an explicit preset) must agree with the checkpoint, except
    ``num_decoder_layers: 0``, which keeps only the encoder, and the training choices ``dropout_rate``
    and ``initializer_factor``; disagreements are one :class:`SpecError` naming every such key. A
    section that sets every shape key (a resolved spec, as saved with a run) is accepted even when the
    checkpoint has moved away since; it is read again only to train. Without ``init_from`` (or with a
    value the model's own validation refuses) the section is returned as it is.
    """
    data = dict(section)
    path, preset = data.get("init_from"), data.get("preset")
    if not isinstance(path, str):
        return data  # absent, or the field's own validation reports it
    if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):
        return data  # the model's own validation reports the preset
    given = {**(PRESETS[preset] if preset else {}), **data}
    if all(key in data for key in SHAPE_FIELDS) and path.strip() and "\0" not in path \
            and not Path(path).expanduser().exists():
        return {"preset": None, **data}
    try:
        found = read_shape(path, "model.init_from")
    except CheckpointError as exc:
        raise SpecError(str(exc)) from None
    source = found.path / MODEL_CONFIG
    conflicts = [f"model.{key} is {given[key]!r} here but {found.shape[key]!r} in {source}"
                 for key in SHAPE_FIELDS if key in given and not _same(given[key], found.shape[key])
                 and not (key == "num_decoder_layers" and given[key] == 0)]
    if conflicts:
        raise SpecError("; ".join(conflicts) + " (model.init_from sets the model's shape: leave "
                        f"{'that key' if len(conflicts) == 1 else 'those keys'} out or make them agree)")
    shape = {key: found.shape[key] for key in (*SHAPE_FIELDS, *SOFT_FIELDS)}
    return {**shape, **given, "preset": preset}


def _same(given: Any, found: Any) -> bool:
    """Whether a spec value states the checkpoint's (YAML reads ``1e-6`` as a string; pydantic would coerce it)."""
    if isinstance(found, (int, float)) and not isinstance(found, bool):
        try:
            return float(given) == float(found)
        except (TypeError, ValueError):
            return False
    return given == found


# -- objectives and the model they need -------------------------------------------------------------
def build_objectives(spec: Spec) -> tuple[Vocab, list[ObjectiveSlot]]:
    """The vocabulary (with every special token the objectives use) and the objective instances."""
    entries = spec.objectives
    extra = [tok for e in entries for tok in e.plugin.special_tokens(e.config)]
    vocab = Vocab(extra)
    slots = [ObjectiveSlot(label=label, objective=e.plugin(e.config, vocab), weight=e.weight)
             for e, label in zip(entries, spec.objective_labels())]
    return vocab, slots


def merged_needs(slots: Iterable[ObjectiveSlot]) -> ModelNeeds:
    """What the model must output for all ``slots`` together (one head per name, of one width)."""
    heads: dict[str, int] = {}
    decoder = encoder = False
    for slot in slots:
        needs = slot.objective.needs()
        decoder |= needs.decoder_lm
        encoder |= needs.encoder_lm
        for name, width in needs.per_residue_heads.items():
            if heads.setdefault(name, width) != width:
                raise PlmforgeError(f"objectives ask for head {name!r} with widths {heads[name]} and {width}")
    return ModelNeeds(decoder_lm=decoder, encoder_lm=encoder, per_residue_heads=heads)


# -- backends ---------------------------------------------------------------------------------------
def build_backend(spec: Spec, vocab: Vocab, slots: list[ObjectiveSlot], registry: Registry,
                  one_process: bool = False) -> Backend:
    """The spec's backend, set up for ``slots``; ``one_process`` for work outside a multi-process run."""
    options = spec.backend.config.for_one_process() if one_process else spec.backend.config
    return make_backend(registry.load("backend", spec.backend.name), options, spec, len(vocab), slots)


def make_backend(backend_cls: type[Backend], options: Any, spec: Spec, vocab_size: int,
                 slots: Iterable[ObjectiveSlot]) -> Backend:
    """A set-up backend of ``backend_cls`` for objective instances that need not be registered plugins."""
    slots = tuple(slots)
    needs = merged_needs(slots)
    if needs.decoder_lm and not spec.model.has_decoder:
        raise PlmforgeError("an objective needs decoder logits but model.num_decoder_layers is 0")
    context = BackendContext(model=spec.model, vocab_size=vocab_size, needs=needs, objectives=slots,
                             training=spec.training, seed=spec.seed)
    backend = backend_cls(options, context)
    backend.setup()
    return backend


def build_model(spec: Spec, registry: Registry) -> tuple[Backend, Vocab]:
    """The spec's model with its fresh initial weights, in this process alone (for embedding, evaluating)."""
    vocab, slots = build_objectives(spec)
    return build_backend(spec, vocab, slots, registry, one_process=True), vocab


# -- data -------------------------------------------------------------------------------------------
def make_planner(spec: Spec) -> BatchPlanner:
    """The length-bucketing batch planner of the spec's data and batch-size settings."""
    bs = spec.training.batch_size
    return BatchPlanner(max_length=spec.data.max_length, pad_to_multiple=spec.training.pad_to_multiple,
                        tokens=bs.tokens, sequences=bs.sequences)


def prepared_source(slot: ObjectiveSlot, proteins: ProteinSet, split: str, spec: Spec,
                    data_report: dict[str, int]) -> ProteinSource | None:
    """The objective's own view of a split; None for an empty validation split (it is then not evaluated)."""
    source = slot.objective.prepare(proteins, split)
    if len(source.proteins) != len(proteins):  # the objective chose; say so in the run's data tags
        data_report[f"{slot.label}.{split}.proteins"] = len(source.proteins)
    if len(source.proteins) == 0:
        if split == "train":
            raise PlmforgeError(f"objective {slot.label!r} kept none of the {len(proteins)} training proteins of "
                                f"{spec.data.source!r} (see its options, e.g. where its MSAs come from)")
        return None
    return source


def build_streams(spec: Spec, slots: Iterable[ObjectiveSlot], data: LoadedData
                  ) -> tuple[dict[str, ExampleStream], dict[str, ExampleStream]]:
    """Each objective's training stream, and its validation stream when it keeps validation proteins.

    Stream ``i`` is the i-th objective's: its example randomness is seeded by (seed, i), so adding an
    objective at the end leaves the others' examples unchanged.
    """
    train = data.splits.get("train")
    if train is None or len(train) == 0:
        raise PlmforgeError(f"data source {spec.data.source!r} yielded no training proteins")
    planner = make_planner(spec)
    validation = data.splits.get("validation")
    train_streams: dict[str, ExampleStream] = {}
    eval_streams: dict[str, ExampleStream] = {}
    for i, slot in enumerate(slots):
        train_source = prepared_source(slot, train, "train", spec, data.report)
        train_streams[slot.label] = ExampleStream(slot.objective, train_source, planner, spec.seed, stream=i)
        eval_source = (prepared_source(slot, validation, "validation", spec, data.report)
                       if validation is not None else None)
        if eval_source is not None:
            eval_streams[slot.label] = ExampleStream(slot.objective, eval_source, planner, spec.seed, stream=i)
    return train_streams, eval_streams
