"""plmforge.testing.check_objective: every built-in objective passes; each kind of broken objective fails by name."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from pydantic import Field

from plmforge.core import losses
from plmforge.core.objective import (
    ENCODER_INPUT,
    ENCODER_LOGITS,
    Feature,
    LossOutput,
    ModelNeeds,
    Objective,
    ObjectiveConfig,
    Protein,
    ProteinSource,
)
from plmforge.core.registry import Registry
from plmforge.testing import ConformanceError, check_objective, installed_backends

BUILTIN_OBJECTIVES = [info.name for info in Registry().infos("objective") if info.distribution == "plmforge"]
#: Options for a built-in objective whose defaults cannot run on the default proteins (none so far).
BUILTIN_OPTIONS: dict[str, dict[str, Any]] = {}
TARGETS = "original_ids"


# -- a small valid objective, and broken variants of it ------------------------------------------------------
class HiddenResidueConfig(ObjectiveConfig):
    rate: float = Field(0.15, gt=0, lt=1, description="Share of residues hidden behind <unk>.")


class HiddenResidues(Objective):
    """Recover residues hidden behind ``<unk>`` from the encoder alone (a valid objective)."""

    Config = HiddenResidueConfig

    def needs(self) -> ModelNeeds:
        return ModelNeeds(encoder_lm=True)

    def features(self) -> dict[str, Feature]:
        return {ENCODER_INPUT: Feature("int32", "encoder"), TARGETS: Feature("int32", "encoder", pad_value=-1)}

    def hidden(self, length: int, rng: np.random.Generator) -> np.ndarray:
        return rng.random(length) < self.config.rate

    def make_example(self, protein: Protein, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tokens = np.asarray(protein.tokens, dtype=np.int32)
        encoder = np.where(self.hidden(len(tokens), rng), self.vocab.unk_id, tokens)
        return {ENCODER_INPUT: np.asarray([*self.prefix_ids, *encoder, self.vocab.eos_id], dtype=np.int32),
                TARGETS: np.asarray([-1] * len(self.prefix_ids) + [*tokens, -1], dtype=np.int32)}

    def weight(self, batch: Mapping[str, np.ndarray]) -> float:
        return float(np.count_nonzero(batch[TARGETS] >= 0))

    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], xp: Any) -> LossOutput:
        targets = batch[TARGETS]
        nll, correct = losses.token_nll(xp, outputs[ENCODER_LOGITS], targets)
        scored = targets >= 0
        return LossOutput(loss=losses.masked_sum(xp, nll, scored),
                          metrics={"accuracy": (losses.masked_sum(xp, correct, scored), losses.count(xp, scored))})

    def eval_metrics(self) -> tuple[str, ...]:
        return ("accuracy",)


class NothingHidden(HiddenResidues):
    """Deterministic by design: ignores ``rng`` (a note, not a failure)."""

    def hidden(self, length: int, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(length, dtype=bool)


class WrongDtype(HiddenResidues):
    def make_example(self, protein: Protein, rng: np.random.Generator) -> dict[str, np.ndarray]:
        example = super().make_example(protein, rng)
        return {**example, TARGETS: example[TARGETS].astype(np.int64)}


class UndeclaredFeature(HiddenResidues):
    def make_example(self, protein: Protein, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {**super().make_example(protein, rng), "hidden_mask": np.zeros(len(protein.tokens) + 1, bool)}


class GlobalRandom(HiddenResidues):
    def hidden(self, length: int, rng: np.random.Generator) -> np.ndarray:
        return np.random.random(length) < self.config.rate  # the bug under test


class EditsTokens(HiddenResidues):
    def make_example(self, protein: Protein, rng: np.random.Generator) -> dict[str, np.ndarray]:
        example = super().make_example(protein, rng)
        protein.tokens[0] = self.vocab.unk_id
        return example


class MisalignedTargets(HiddenResidues):
    def make_example(self, protein: Protein, rng: np.random.Generator) -> dict[str, np.ndarray]:
        example = super().make_example(protein, rng)
        return {**example, TARGETS: example[TARGETS][:-1]}  # one shorter than the encoder input


class ShortExtras(HiddenResidues):
    def prepare(self, proteins: Any, split: str) -> ProteinSource:
        return ProteinSource(proteins, lambda i: {"profile": np.zeros((len(proteins.tokens(i)) - 1, 20), np.float32)})


class NanLoss(HiddenResidues):
    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], xp: Any) -> LossOutput:
        out = super().loss(outputs, batch, xp)
        return LossOutput(loss=out.loss * float("nan"), metrics=out.metrics)


class IgnoresModel(HiddenResidues):
    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], xp: Any) -> LossOutput:
        return LossOutput(loss=losses.count(xp, batch[TARGETS] >= 0))

    def eval_metrics(self) -> tuple[str, ...]:
        return ()


class CountsPadding(HiddenResidues):
    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], xp: Any) -> LossOutput:
        nll, _ = losses.token_nll(xp, outputs[ENCODER_LOGITS], batch[TARGETS])
        return LossOutput(loss=xp.sum(nll))  # padded positions included

    def eval_metrics(self) -> tuple[str, ...]:
        return ()


class MeanLoss(HiddenResidues):
    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], xp: Any) -> LossOutput:
        out = super().loss(outputs, batch, xp)
        return LossOutput(loss=out.loss / losses.count(xp, batch[TARGETS] >= 0), metrics=out.metrics)  # a mean


class MeanMetric(HiddenResidues):
    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], xp: Any) -> LossOutput:
        out = super().loss(outputs, batch, xp)
        correct, scored = out.metrics["accuracy"]
        return LossOutput(loss=out.loss, metrics={"accuracy": (correct / scored, scored / scored)})  # a mean


class WeightCountsPadding(HiddenResidues):
    def weight(self, batch: Mapping[str, np.ndarray]) -> float:
        return float(batch[TARGETS].size)  # every position, padded ones included


class PerProteinLoss(HiddenResidues):
    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], xp: Any) -> LossOutput:
        targets = batch[TARGETS]
        nll, _ = losses.token_nll(xp, outputs[ENCODER_LOGITS], targets)
        return LossOutput(loss=xp.sum(xp.where(targets >= 0, nll, xp.zeros_like(nll)), axis=1))  # one per protein

    def eval_metrics(self) -> tuple[str, ...]:
        return ()


class TargetFeatureOnly(HiddenResidues):
    """Scores every real position of ``original_ids``, padded with <pad>: the default weight() counts them."""

    target_feature = TARGETS
    weight = Objective.weight  # the default, not HiddenResidues' own

    def features(self) -> dict[str, Feature]:
        return {ENCODER_INPUT: Feature("int32", "encoder"), TARGETS: Feature("int32", "encoder")}

    def make_example(self, protein: Protein, rng: np.random.Generator) -> dict[str, np.ndarray]:
        example = super().make_example(protein, rng)
        pad = [self.vocab.pad_id] * len(self.prefix_ids)
        return {**example, TARGETS: np.asarray([*pad, *protein.tokens, self.vocab.eos_id], dtype=np.int32)}

    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], xp: Any) -> LossOutput:
        nll, _ = losses.token_nll(xp, outputs[ENCODER_LOGITS], batch[TARGETS])
        return LossOutput(loss=losses.masked_sum(xp, nll, batch[TARGETS] != self.vocab.pad_id))

    def eval_metrics(self) -> tuple[str, ...]:
        return ()


class IgnoresPrefix(HiddenResidues):
    def make_example(self, protein: Protein, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tokens = np.asarray(protein.tokens, dtype=np.int32)
        return {ENCODER_INPUT: np.append(tokens, self.vocab.eos_id).astype(np.int32),
                TARGETS: np.append(tokens, -1).astype(np.int32)}


class PrefixOnlyOnTheEncoder(HiddenResidues):
    def make_example(self, protein: Protein, rng: np.random.Generator) -> dict[str, np.ndarray]:
        example = super().make_example(protein, rng)
        return {**example, TARGETS: np.append(protein.tokens, -1).astype(np.int32)}


class BackendDependent(HiddenResidues):
    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], xp: Any) -> LossOutput:
        out = super().loss(outputs, batch, xp)
        return LossOutput(loss=out.loss * (1.01 if "jax" in getattr(xp, "__name__", "") else 1.0), metrics=out.metrics)


class UndocumentedConfig(ObjectiveConfig):
    rate: float = 0.15
    weight: float = Field(1.0, description="Clashes with the spec's own key.")


class BadConfig(HiddenResidues):
    Config = UndocumentedConfig


def failure(excinfo: pytest.ExceptionInfo[ConformanceError], check: str) -> str:
    """The detail of failed check ``check``, asserting that it failed and that the message names it."""
    assert isinstance(excinfo.value, AssertionError)
    report = excinfo.value.report
    assert report.status(check) == "failed", str(report)
    assert f"FAILED {check}: " in str(excinfo.value)
    return next(c.detail for c in report.failed if c.name == check)


def proteins_with_builtin_msas(count: int = 16):
    """Training proteins that the built-in MSAs cover, so the profile objective is checked on real profiles."""
    from plmforge.core.data.profiles import build_profile_set
    from plmforge.core.data.sources import load_builtin

    train, profiles = load_builtin("scl2205")["train"], build_profile_set(["builtin:scl2205"])
    covered = [i for i in range(len(train)) if train.sequence(i) in profiles]
    return train.subset(covered[:count])


# -- every built-in objective conforms ------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTIN_OBJECTIVES)
def test_every_builtin_objective_passes_on_every_installed_backend(name):
    proteins = proteins_with_builtin_msas() if name == "profile" else None
    report = check_objective(Registry().load("objective", name), BUILTIN_OPTIONS.get(name), proteins=proteins)
    assert report.ok and not report.failed
    assert set(report.losses) == set(installed_backends())
    for check in ("config.schema", "examples.dtypes", "determinism.seed", "batch.weight", "padding.invariance"):
        assert report.status(check) == "passed", check
    for backend in report.losses:
        assert report.status(f"backend.{backend}.gradients") == "passed"
    if len(report.losses) >= 2:
        assert report.status("backends.agree") == "passed"
        first, *others = report.losses.values()
        assert all(other == pytest.approx(first, rel=1e-4) for other in others)


def test_a_valid_plugin_objective_passes_and_determinism_by_design_is_only_noted(plmforge_proteins):
    report = check_objective(NothingHidden, {"rate": 0.2}, backends=["torch"], proteins=plmforge_proteins)
    assert report.ok
    assert report.status("determinism.seed") == "passed"
    assert report.status("determinism.rng") == "skipped"
    assert "deterministic by design" in str(report)
    assert report.status("backends.agree") == "skipped"  # one backend asked for
    assert 0 < report.losses["torch"] < 10


def test_the_fixtures_come_from_the_entry_point(plmforge_proteins, plmforge_backends, plmforge_check_objective):
    assert 20 <= len(plmforge_proteins) <= 30 and plmforge_proteins.lengths.min() < 64 < plmforge_proteins.lengths.max()
    assert set(plmforge_backends) <= set(Registry().names("backend")) and "torch" in plmforge_backends
    report = plmforge_check_objective(HiddenResidues, backends=[])
    assert report.ok and report.status("backends") == "skipped"


def test_importing_the_kit_imports_no_framework():
    code = ("import sys, plmforge.testing, plmforge.testing.pytest_plugin; from plmforge.testing import "
            "check_objective; import plmforge.testing.conformance; "
            "print([m for m in ('torch', 'jax', 'mlflow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []


def test_a_backend_whose_framework_is_missing_is_skipped_with_a_note(fake_distribution):
    fake_distribution("plmforge-fakebackend", {"plmforge.backends": {"fakebk": "fakebk:FakeBackend"}}, {"fakebk": """
        from plmforge.core.backend import LazyBackend

        class FakeBackend(LazyBackend):
            implementation = "no_such_framework_xyz.trainer:Trainer"
    """})
    report = check_objective(HiddenResidues, backends=["fakebk", "torch"])
    assert report.ok
    assert report.status("backend.fakebk") == "skipped"
    assert "no_such_framework_xyz" in str(report) and "not installed" in str(report)
    assert report.status("backend.torch.gradients") == "passed"
    with pytest.raises(ValueError, match="unknown backend"):
        check_objective(HiddenResidues, backends=["no-such-backend"])


# -- broken objectives fail by check name ------------------------------------------------------------------
@pytest.mark.parametrize(("objective", "check", "says"), [
    (WrongDtype, "examples.dtypes", "'original_ids' is int64, declared int32"),
    (UndeclaredFeature, "examples.features", "undeclared feature(s) ['hidden_mask']"),
    (GlobalRandom, "determinism.seed", "the same seed and protein"),
    (EditsTokens, "examples.input", "changed protein.tokens in place"),
    (MisalignedTargets, "examples.shapes", "differ in length"),
    (ShortExtras, "prepare", "first axis must be the protein's"),
    (BadConfig, "config.fields", "without a description: rate"),
    (IgnoresPrefix, "examples.prefix", "with prefix '[NLU]', encoder_input_ids of"),
    (PrefixOnlyOnTheEncoder, "examples.prefix", "pad them by len(self.prefix_ids) too"),
])
def test_a_broken_example_side_fails_by_name(objective, check, says):
    with pytest.raises(ConformanceError) as excinfo:
        check_objective(objective, backends=[])
    assert says in failure(excinfo, check)


def test_reserved_option_names_are_refused():
    with pytest.raises(ConformanceError) as excinfo:
        check_objective(BadConfig, backends=[])
    assert "['weight'] clash with the spec's own keys" in failure(excinfo, "config.fields")


def test_a_decoder_objective_on_an_encoder_only_model_fails_needs():
    with pytest.raises(ConformanceError) as excinfo:
        check_objective(Registry().load("objective", "mlm"), model={"num_decoder_layers": 0}, backends=[])
    assert "no decoder" in failure(excinfo, "needs")


def test_invalid_options_stop_the_check():
    with pytest.raises(ConformanceError) as excinfo:
        check_objective(HiddenResidues, {"rate": 2.0})
    assert "rate" in failure(excinfo, "config.options")
    assert excinfo.value.report.status("init") is None  # nothing ran on options the spec would refuse


def test_a_nan_loss_fails_eval_and_train():
    with pytest.raises(ConformanceError) as excinfo:
        check_objective(NanLoss, backends=["torch"])
    assert "nan" in failure(excinfo, "backend.torch.eval")
    assert "nan" in failure(excinfo, "backend.torch.train")


@pytest.mark.parametrize(("backend", "check", "says"), [
    ("torch", "backend.torch.train", "does not depend on the model outputs"),
    ("jax", "backend.jax.gradients", "gradient norm (grad_norm) is 0.0"),
])
def test_a_loss_that_ignores_the_model_has_no_gradient(backend, check, says):
    pytest.importorskip(backend)
    with pytest.raises(ConformanceError) as excinfo:
        check_objective(IgnoresModel, backends=[backend])
    assert says in failure(excinfo, check)


def test_a_loss_that_counts_padding_fails_padding_invariance():
    with pytest.raises(ConformanceError) as excinfo:
        check_objective(CountsPadding, backends=["torch"])
    assert "counts padded positions" in failure(excinfo, "padding.invariance")
    assert excinfo.value.report.status("backend.torch.gradients") == "passed"  # only padding is wrong


def test_backends_that_disagree_fail_agreement():
    pytest.importorskip("jax")
    with pytest.raises(ConformanceError) as excinfo:
        check_objective(BackendDependent, backends=["torch", "jax"])
    detail = failure(excinfo, "backends.agree")
    assert "objective/loss" in detail and "written with xp only" in detail
    assert [c.name for c in excinfo.value.report.failed] == ["backends.agree"]


# -- sums, not means; weights without padding; one scalar loss ------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_mean_loss_fails_loss_sum(backend):
    pytest.importorskip(backend)
    with pytest.raises(ConformanceError) as excinfo:
        check_objective(MeanLoss, backends=[backend])
    detail = failure(excinfo, "loss.sum")
    assert "concatenated with itself" in detail and "the loss must be a sum over the batch, not a mean" in detail
    assert [c.name for c in excinfo.value.report.failed] == ["loss.sum"]


def test_a_mean_metric_fails_loss_sum():
    with pytest.raises(ConformanceError) as excinfo:
        check_objective(MeanMetric, backends=["torch"])
    detail = failure(excinfo, "loss.sum")
    assert "did not double the metric(s) objective/accuracy" in detail and "(sum, count) pair" in detail


def test_a_weight_that_counts_padding_fails_without_any_backend():
    with pytest.raises(ConformanceError) as excinfo:
        check_objective(WeightCountsPadding, backends=[])
    assert "it counts padding" in failure(excinfo, "padding.weight")
    assert excinfo.value.report.status("batch.weight") == "passed"  # finite and > 0: only padding is wrong


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_loss_per_protein_is_refused_as_not_a_scalar_sum(backend):
    pytest.importorskip(backend)
    with pytest.raises(ConformanceError) as excinfo:
        check_objective(PerProteinLoss, backends=[backend])
    for check in (f"backend.{backend}.eval", f"backend.{backend}.train"):
        detail = failure(excinfo, check)
        assert "the loss must be a scalar sum" in detail and "shape (" in detail
        assert "grad can be implicitly created" not in detail and "does not depend on the model" not in detail


def test_the_default_weight_counts_the_target_feature_without_padding():
    report = check_objective(TargetFeatureOnly, backends=["torch"])
    assert report.status("padding.weight") == report.status("loss.sum") == "passed"


def test_an_objective_without_weight_or_target_feature_cannot_be_built():
    class NoWeight(Objective):
        needs, features, make_example, loss = (HiddenResidues.needs, HiddenResidues.features,
                                               HiddenResidues.make_example, HiddenResidues.loss)

    with pytest.raises(ConformanceError) as excinfo:
        check_objective(NoWeight, backends=[])
    assert "must set target_feature" in failure(excinfo, "init")


def test_prefix_is_an_option_of_every_objective_and_check_objective_uses_it():
    report = check_objective(HiddenResidues, {"prefix": "[S2S]"}, backends=[])
    assert report.status("examples.prefix") == "passed"
    assert HiddenResidueConfig.model_fields["prefix"].description  # declared by ObjectiveConfig, documented
    with pytest.raises(ConformanceError) as excinfo:
        check_objective(IgnoresPrefix, {"prefix": "[S2S]"}, backends=[])
    assert "with prefix '[S2S]'" in failure(excinfo, "examples.prefix")
