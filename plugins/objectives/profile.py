"""Profile prediction (Madani et al. 2020): predict each residue's MSA column distribution from one sequence.

A 20-way per-residue head over the encoder is trained with KL(profile || softmax(head)), averaged
over the positions that have a profile; padding, special tokens and proteins without an MSA are
excluded. Profiles come from MSA files (Stockholm, A3M, aligned FASTA; by default the built-in set
for a subset of the built-in corpus) and, optionally, from MSAs built with pyhmmer for the run's own
proteins and cached on disk (see :mod:`plmforge.core.data.msa_search`). A protein gets a profile when
its sequence is exactly the query (first sequence) of an MSA. Columns follow
:data:`plmforge.core.data.msa.PROFILE_ALPHABET` (the vocabulary's order of the 20 amino acids).

The paper's multi-task recipe, ``(1-α)·MLM + α·10·KL`` with α = 0.75, is a spec with ``bert_mlm``
(weight 0.25) and ``profile`` (weight 7.5): see ``specs/profile-multitask.yaml``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from plmforge.core import losses
from plmforge.core.data.msa import msa_source_problem
from plmforge.core.objective import (
    ENCODER_INPUT,
    Feature,
    LossOutput,
    ModelNeeds,
    Objective,
    ObjectiveConfig,
    Protein,
    ProteinSource,
)
from plmforge.core.strict import StrictModel, checked_path, file_problem

PROFILE = "profile_targets"
PROFILE_MASK = "profile_mask"
WIDTH = 20


class MsaSearchConfig(StrictModel):
    """Build MSAs with pyhmmer for proteins of the run that no MSA file covers (needs ``plmforge[msa]``)."""

    database: Annotated[str, checked_path(file_problem)] = Field(
        description="FASTA file to search (plain or compressed), relative to the working directory.")
    tool: Literal["phmmer", "jackhmmer"] = Field("phmmer", description="HMMER search program.")
    iterations: int = Field(3, ge=1, description="jackhmmer iterations.")
    evalue: float = Field(1e-3, gt=0, description="Inclusion E-value of hits.")
    max_sequences: int = Field(256, ge=2, description="Most rows per MSA (the query included).")
    max_queries: int = Field(
        256, ge=1, description="Most proteins searched per split (a fixed, seed-independent choice: the first by "
                               "sequence hash), so a search over a large corpus stays bounded.")
    cache_dir: str = Field(".plmforge/msa-cache", description="Where built MSAs are kept; a second run reuses them.")
    cpus: int = Field(0, ge=0, description="Search threads (0 = all cores).")


class ProfileConfig(ObjectiveConfig):
    msas: list[Annotated[str, checked_path(msa_source_problem)]] = Field(
        default_factory=lambda: ["builtin:scl2205"],
        description="MSA sources: files (Stockholm .sto, A3M .a3m, aligned FASTA .afa; .gz/.xz allowed), "
                    "directories, glob patterns, tar archives, or 'builtin:scl2205' (MSAs built with phmmer for "
                    "460 proteins of the built-in corpus).")
    search: MsaSearchConfig | None = Field(
        None, description="Also build MSAs with pyhmmer for proteins no MSA file covers; null = files only.")
    weighting: Literal["henikoff", "none"] = Field(
        "henikoff", description="Sequence weights: Henikoff position-based, or every row counts 1.")
    pseudocount: float = Field(
        1.0, ge=0.0, description="Pseudocount mass added to each column's weighted counts, spread by background.")
    background: Literal["uniform", "blosum62"] = Field(
        "uniform", description="Amino-acid distribution the pseudocount follows.")
    max_rows: int | None = Field(None, ge=1, description="Use only the first rows of each MSA (query included).")
    proteins: Literal["with_profile", "all"] = Field(
        "with_profile", description="Train on the proteins that have a profile, or on all proteins (those without "
                                    "one then add nothing to the loss).")
    head: str = Field("profile", description="Name of the 20-way per-residue head (objectives naming it share it).")

    @field_validator("head")
    @classmethod
    def _head_name(cls, value: str) -> str:
        """The head's name keys the model's outputs and its weights: a plain name, not a built-in output."""
        from plmforge.core.objective import DECODER_LOGITS, ENCODER_LOGITS

        if not value.isidentifier():
            raise ValueError(f"head name {value!r} must be a plain name (letters, digits, '_'), e.g. 'profile'")
        if value in (ENCODER_LOGITS, DECODER_LOGITS):
            raise ValueError(f"head name {value!r} is a built-in model output; choose another, e.g. 'profile'")
        return value


class ProfilePrediction(Objective):
    """KL divergence from each residue's MSA profile to a 20-way head over the encoder."""

    Config = ProfileConfig

    def __init__(self, config: ProfileConfig, vocab):
        super().__init__(config, vocab)
        self.config: ProfileConfig = config
        self._profiles: Any = None  # ProfileSet, loaded on first use

    def needs(self) -> ModelNeeds:
        return ModelNeeds(per_residue_heads={self.config.head: WIDTH})

    def features(self) -> dict[str, Feature]:
        return {
            ENCODER_INPUT: Feature("int32", "encoder"),
            PROFILE: Feature("float32", "encoder", trailing=(WIDTH,)),
            PROFILE_MASK: Feature("float32", "encoder"),
        }

    # -- data ------------------------------------------------------------------------------------------
    def profile_set(self) -> Any:
        """The profiles of the configured MSA files (computed once per objective instance)."""
        if self._profiles is None:
            from plmforge.core.data.profiles import build_profile_set

            c = self.config
            self._profiles = build_profile_set(c.msas, c.weighting, c.pseudocount, c.background, c.max_rows) \
                if c.msas else _empty_profile_set()
        return self._profiles

    def prepare(self, proteins: Any, split: str) -> ProteinSource:
        profiles = self.profile_set()
        sequences = [proteins.sequence(i) for i in range(len(proteins))]
        if self.config.search is not None:
            self._search(proteins, sequences)
        has = np.fromiter((s in profiles for s in sequences), dtype=bool, count=len(sequences))
        keep = np.flatnonzero(has) if self.config.proteins == "with_profile" else np.arange(len(sequences))
        kept = proteins.subset(keep) if len(keep) != len(sequences) else proteins
        kept_sequences = [sequences[i] for i in keep.tolist()]

        def extras(index: int) -> dict[str, np.ndarray]:
            found = profiles.get(kept_sequences[index])
            length = len(kept_sequences[index])
            if found is None:
                return {PROFILE: np.zeros((length, WIDTH), np.float32), PROFILE_MASK: np.zeros(length, np.float32)}
            profile, has_profile = found
            return {PROFILE: profile, PROFILE_MASK: has_profile.astype(np.float32)}

        return ProteinSource(kept, extras)

    def _search(self, proteins: Any, sequences: list[str]) -> None:
        """Build MSAs with pyhmmer for up to ``max_queries`` uncovered proteins and add their profiles."""
        from plmforge.core.data.msa_search import search_msas
        from plmforge.core.data.profiles import build_profile_set

        c = self.config
        search, profiles = c.search, self.profile_set()
        first_index: dict[str, int] = {}
        for i, sequence in enumerate(sequences):
            first_index.setdefault(sequence, i)
        missing = sorted((s for s in first_index if s not in profiles), key=_stable_hash)[: search.max_queries]
        names = {s: proteins.name(first_index[s]) for s in missing}
        paths = search_msas([(names[s], s) for s in missing], search.database, tool=search.tool,
                            iterations=search.iterations, evalue=search.evalue,
                            max_sequences=search.max_sequences, cache_dir=Path(search.cache_dir), cpus=search.cpus)
        if paths:
            profiles.extend(build_profile_set([str(p) for p in paths.values()], c.weighting, c.pseudocount,
                                              c.background, c.max_rows))

    def make_example(self, protein: Protein, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tokens = np.asarray(protein.tokens, dtype=np.int32)
        n, before = len(tokens), len(self.prefix_ids)
        profile = np.zeros((before + n + 1, WIDTH), np.float32)  # prefix and </s> have no profile
        mask = np.zeros(before + n + 1, np.float32)
        if PROFILE in protein.extras:
            profile[before: before + n] = protein.extras[PROFILE]
            mask[before: before + n] = protein.extras[PROFILE_MASK]
        return {
            ENCODER_INPUT: np.asarray([*self.prefix_ids, *tokens, self.vocab.eos_id], dtype=np.int32),
            PROFILE: profile,
            PROFILE_MASK: mask,
        }

    def weight(self, batch: Mapping[str, np.ndarray]) -> float:
        return float(np.count_nonzero(batch[PROFILE_MASK]))

    # -- loss (array API) ------------------------------------------------------------------------------
    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], xp: Any) -> LossOutput:
        logits = outputs[self.config.head]
        target = batch[PROFILE]
        mask = batch[PROFILE_MASK] > 0
        kl = losses.kl_divergence(xp, target, logits)
        total = losses.masked_sum(xp, kl, mask)
        positions = losses.count(xp, mask)
        agree = xp.argmax(logits, axis=-1) == xp.argmax(target, axis=-1)
        return LossOutput(loss=total, metrics={
            "profile_kl": (total, positions),
            "top_residue_agreement": (losses.masked_sum(xp, agree, mask), positions),
        })

    def eval_metrics(self) -> tuple[str, ...]:
        return ("profile_kl", "top_residue_agreement")


def _stable_hash(sequence: str) -> bytes:
    return hashlib.sha256(sequence.encode("ascii")).digest()


def _empty_profile_set() -> Any:
    from plmforge.core.data.profiles import ProfileSet

    return ProfileSet()
