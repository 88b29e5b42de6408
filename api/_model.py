"""``plmforge.load``: a trained model to embed, complete, evaluate and export, as the CLI commands do."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plmforge._spec import Overrides, Spec
from plmforge.core.errors import PlmforgeError

if TYPE_CHECKING:

    from plmforge.core import spec as core_spec
    from plmforge.core.backend import Backend
    from plmforge.core.generation import PromptResult
    from plmforge.core.vocab import Vocab


def load(checkpoint: str | Path | Any, backend: str | dict | None = None) -> Model:
    """The model of a checkpoint directory, or of a run directory or :class:`~plmforge.Run` (its latest checkpoint).

    It is rebuilt from the checkpoint's own spec on its own backend, or on ``backend`` (a name such as
    ``"jax"``, or a backend section such as ``{"name": "torch", "device": "cpu"}``).
    """
    from plmforge.core.embedding import load_model_and_spec

    if hasattr(checkpoint, "checkpoint") and hasattr(checkpoint, "output_dir"):  # a Run
        checkpoint = checkpoint.checkpoint or checkpoint.output_dir
    built, vocab, spec, path = load_model_and_spec(Path(checkpoint), backend)
    return Model(built, vocab, spec, path)


@dataclass
class Evaluation:
    """What :meth:`Model.evaluate` did: one outcome per task and representation, and the MLflow run."""

    outcomes: list[Any]  # plmforge.core.evaluation.TaskOutcome
    run_id: str | None

    def metrics(self, split: str = "test") -> dict[str, dict[str, dict[str, float]]]:
        """``{task label: {representation: {metric: value}}}`` of ``split`` (representation: model, onehot, ...)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for outcome in self.outcomes:
            out.setdefault(outcome.label, {})[outcome.reference] = dict(outcome.metrics.get(split, {}))
        return out

    def __str__(self) -> str:
        from plmforge.core.evaluation import outcomes_table

        return outcomes_table(self.outcomes)


class Model:
    """A trained model on a backend, with the vocabulary and spec it was trained with.

    ``backend`` is the :class:`plmforge.core.backend.Backend` holding the weights; ``path`` the
    checkpoint directory they came from.
    """

    def __init__(self, backend: Backend, vocab: Vocab, spec: core_spec.Spec, path: Path):
        self.backend, self.vocab, self.spec, self.path = backend, vocab, spec, Path(path)

    @property
    def step(self) -> int:
        """The training step of the checkpoint."""
        from plmforge.core.checkpoint import TRAINER_STATE

        state = self.path / TRAINER_STATE
        return int(json.loads(state.read_text()).get("step", 0)) if state.is_file() else 0

    @property
    def prefixes(self) -> tuple[str, ...]:
        """Tokens beyond Ankh's vocabulary the model was trained with (task prefixes such as ``[S2S]``)."""
        return self.vocab.extra_tokens

    # -- embeddings ---------------------------------------------------------------------------------------
    def embed(self, sequences: str | Iterable[str], per_protein: bool = False, prefix: str | None = None,
              batch_tokens: int = 8192) -> Any:
        """Encoder embeddings, as ``plmforge embed`` writes them (the ``</s>`` and prefix positions dropped).

        Per residue: a list with one ``[L, d_model]`` float32 array per sequence. ``per_protein``: the mean
        over residues, one ``[N, d_model]`` array. A single string gives a single array. ``prefix`` puts a
        task prefix the model knows (e.g. ``"[NLU]"``) before each protein.
        """
        import numpy as np

        from plmforge.core.embedding import embed_sequences

        single = isinstance(sequences, str)
        listed = [sequences] if single else list(sequences)
        wrong = next((s for s in listed if not isinstance(s, str)), None)
        if wrong is not None:
            raise PlmforgeError(f"sequences must be strings of residue letters, not {type(wrong).__name__}")
        vectors = [np.asarray(v, dtype=np.float32) for v in
                   embed_sequences(self.backend, self.vocab, listed, prefix=prefix, batch_tokens=batch_tokens,
                                   per_protein=per_protein)]
        if single:
            return vectors[0]
        if per_protein:
            return np.stack(vectors) if vectors else np.zeros((0, self.spec.model.d_model), np.float32)
        return vectors

    # -- completions ------------------------------------------------------------------------------------------
    def generate(self, prompts: str | Sequence[str] | Mapping[str, str], *, strategy: str = "greedy",
                 max_new_tokens: int = 256, beams: int = 4, temperature: float = 1.0, top_k: int | None = None,
                 seed: int = 0, num_samples: int = 1, keep: float | None = None,
                 prefix: str | None = "auto") -> list[PromptResult]:
        """Complete proteins with the decoder, as ``plmforge generate`` does (a model trained with ``completion``).

        ``prompts``: a sequence, a list of them (named prompt1, prompt2, ...) or a mapping name -> sequence.
        Each result has ``name``, ``prompt``, ``completion.residues`` (and ``ended``, ``mean_logprob``); with
        ``keep`` only that share of each sequence is the prompt and ``identity`` scores the completion
        against the true rest. ``prefix="auto"`` uses ``[S2S]`` when the model has it.
        """
        from plmforge.core.generation import complete_prompts, generation_config, sampled_prompts

        if isinstance(prompts, str):
            prompts = [prompts]
        named = list(prompts.items()) if isinstance(prompts, Mapping) else \
            [(f"prompt{i + 1}", p) for i, p in enumerate(prompts)]
        if not named:
            raise PlmforgeError("nothing to complete: prompts is empty")
        named = sampled_prompts([(name, seq.strip().upper()) for name, seq in named], num_samples, strategy)
        config = generation_config(strategy=strategy, max_new_tokens=max_new_tokens, beams=beams,
                                   temperature=temperature, top_k=top_k, seed=seed)
        return complete_prompts(self.backend, self.vocab, named, config, keep=keep, prefix=prefix)

    # -- downstream tasks ------------------------------------------------------------------------------------
    def evaluate(self, tasks: Any, *, references: Sequence[Any] | None = None, overrides: Overrides = None,
                 tracking: bool = True, progress: bool = True) -> Evaluation:
        """Fit the heads of downstream tasks on this model, as ``plmforge evaluate --checkpoint`` does.

        ``tasks`` is either an evaluation spec (a file, mapping or :class:`~plmforge.Spec` with a ``tasks:``
        section, as the command takes), or task names / ``tasks:`` items (``"localization"``, or
        ``{"name": "localization", "max_train_proteins": 500}``) run with this model's own spec settings.
        ``references`` replaces ``evaluation.references`` (``[]``: the model only). The evaluation is a
        top-level MLflow run with a nested run per task, unless ``tracking=False``.
        """
        from plmforge.core.evaluation import evaluate_checkpoint
        from plmforge.core.progress import say

        spec = self._evaluation_spec(tasks, references, overrides)
        outcomes, run_id = evaluate_checkpoint(spec, self.path, say=say if progress else (lambda text: None),
                                               tracking=tracking)
        return Evaluation(outcomes, run_id)

    def _evaluation_spec(self, tasks: Any, references: Sequence[Any] | None, overrides: Overrides) -> core_spec.Spec:
        from plmforge.core import spec as core_spec

        is_spec = isinstance(tasks, Spec | core_spec.Spec | Path) or (isinstance(tasks, str) and (
            tasks.endswith((".yaml", ".yml", ".json")) or Path(tasks).is_file())) or (
            isinstance(tasks, Mapping) and "tasks" in tasks)
        if is_spec:
            raw = Spec(tasks).dump()
        else:
            items = [tasks] if isinstance(tasks, str | Mapping) else list(tasks)
            if not items:
                raise PlmforgeError("evaluate: name at least one task (e.g. 'localization')")
            raw = self.spec.to_dict()
            raw["tasks"] = [{"name": item} if isinstance(item, str) else dict(item) for item in items]
        if references is not None:
            raw["evaluation"] = {**raw.get("evaluation", {}), "references": list(references)}
        return Spec(raw, overrides).resolved

    # -- export -------------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, force: bool = False) -> Path:
        """A Hugging Face T5 directory of this model, as ``plmforge convert --to hf`` writes it: weights,
        config.json and tokenizer files, so ``transformers`` loads model and ``AutoTokenizer`` whole."""
        from plmforge.core.conversion import convert_checkpoint

        return convert_checkpoint(self.path, directory, "hf", force).dest

    def __repr__(self) -> str:
        m = self.spec.model
        return (f"Model({str(self.path)!r}: d_model {m.d_model}, {m.num_layers}+{m.num_decoder_layers} layers, "
                f"vocabulary {len(self.vocab)}, backend {self.spec.backend.name})")
