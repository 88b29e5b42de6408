"""Built-in task plugins on their real data: labels, splits, problems, metrics and figures."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_spec_dict

from plmforge.core.errors import PlmforgeError
from plmforge.core.heads import IGNORE
from plmforge.core.registry import Registry
from plmforge.core.spec import validate_spec
from plmforge.plugins.tasks.builtin_data import DSSP8
from plmforge.plugins.tasks.contact import contact_labels
from plmforge.plugins.tasks.secondary_structure import state_labels


def task(name, **options):
    cls = Registry().load("task", name)
    return cls(cls.Config(**options))


def one_hot_logits(labels: np.ndarray, classes: int) -> np.ndarray:
    """Logits that predict ``labels`` exactly (ignored positions predict class 0)."""
    out = np.zeros((*labels.shape, classes), np.float32)
    np.put_along_axis(out, np.maximum(labels, 0)[..., None], 5.0, axis=-1)
    return out


def test_every_builtin_task_loads_through_its_entry_point():
    names = set(Registry().names("task"))
    assert {"secondary_structure", "contact", "localization", "antimicrobial", "custom"} <= names


def test_state_labels_map_dssp_letters_and_ignore_unassigned():
    np.testing.assert_array_equal(state_labels("HGIEBTS-X", DSSP8), [0, 1, 2, 3, 4, 5, 6, 7, IGNORE])
    np.testing.assert_array_equal(state_labels("HECX", "HEC"), [0, 1, 2, IGNORE])


@pytest.mark.parametrize("states", [3, 8])
def test_secondary_structure_splits_and_perfect_predictions(states):
    ss = task("secondary_structure", states=states)
    data = ss.load()
    assert [len(data.splits[s]) for s in ("train", "validation", "test")] == [75, 11, 22]
    assert data.classes == (list("HEC") if states == 3 else list(DSSP8))
    problem = ss.problem(data)
    assert (problem.level, problem.num_outputs) == ("residue", states)
    test = data.splits["test"]
    for sequence, labels in zip(test.sequences, test.labels):
        assert labels.shape == (len(sequence),) and set(np.unique(labels)) <= {IGNORE, *range(states)}
    metrics = ss.metrics([one_hot_logits(y, states) for y in test.labels], test, data)
    assert metrics[f"q{states}"] == 1.0 and set(metrics) == {f"q{states}", "macro_f1"}
    helix_only = [np.tile(np.eye(states, dtype=np.float32)[0] * 5, (len(y), 1)) for y in test.labels]
    labelled = np.concatenate(test.labels)
    share_of_helix = float(np.mean(labelled[labelled != IGNORE] == 0))
    assert ss.metrics(helix_only, test, data)[f"q{states}"] == pytest.approx(share_of_helix)


def test_contact_labels_ignore_near_diagonal_and_missing_atoms():
    cb = np.array([[0, 0, 0], [3.8, 0, 0], [7.6, 0, 0], [np.nan] * 3, [0, 7.9, 0], [0, 8.1, 0]], np.float32)
    labels = contact_labels(cb, 8.0, min_separation=2)
    assert (np.diag(labels) == IGNORE).all() and labels[0, 1] == IGNORE  # |i - j| < 2
    assert labels[0, 2] == 1 and labels[0, 4] == 1 and labels[0, 5] == 0
    assert (labels[3] == IGNORE).all() and (labels[:, 3] == IGNORE).all()
    np.testing.assert_array_equal(labels, labels.T)


def test_contact_task_on_real_chains():
    contact = task("contact")
    data = contact.load()
    problem = contact.problem(data)
    assert (problem.level, problem.target, problem.num_outputs) == ("pair", "classification", 1)
    test = data.splits["test"]
    assert all(y.shape == (len(s), len(s)) for s, y in zip(test.sequences, test.labels))
    # logits equal to the labels rank every contact first: precision is min(1, contacts / L//5)
    metrics = contact.metrics([y.astype(np.float32) for y in test.labels], test, data)
    for name, low, high in (("long", 24, None), ("medium", 12, 23)):
        expected = []
        for y in test.labels:
            i, j = np.triu_indices(len(y), low)
            keep = (j - i <= high) if high else np.ones_like(i, bool)
            pairs = y[i[keep], j[keep]]
            if (pairs != IGNORE).any():
                expected.append(min(1.0, np.sum(pairs == 1) / max(1, len(y) // 5)))
        assert metrics[f"{name}_P_L5"] == pytest.approx(np.mean(expected))


def test_localization_is_the_corpus_split_with_13_classes():
    loc = task("localization")
    data = loc.load()
    assert len(data.classes) == 13 and data.classes == sorted(data.classes)
    # the corpus split, less the 7 validation and 17+2 test proteins identical to an earlier split's
    assert [len(data.splits[s]) for s in ("train", "validation", "test")] == [15183, 1253, 2612]
    train, validation = set(data.splits["train"].sequences), set(data.splits["validation"].sequences)
    assert not (train | validation) & set(data.splits["test"].sequences)  # pretraining never saw a test protein
    assert not train & validation
    assert data.notes["dropped"] == "7 validation and 19 test proteins identical to one in an earlier split"
    labels = np.array([int(y) for y in data.splits["test"].labels])
    assert labels.min() == 0 and labels.max() == 12


def test_antimicrobial_is_binary_with_both_classes_everywhere():
    amp = task("antimicrobial")
    data = amp.load()
    assert data.classes == ["non-AMP", "AMP"]
    for split in data.splits.values():
        assert {int(y) for y in split.labels} == {0, 1}
    test = data.splits["test"]
    scores = [np.array([0.0, 1.0 if int(y) else -1.0], np.float32) for y in test.labels]
    assert amp.metrics(scores, test, data) == {"accuracy": 1.0, "mcc": 1.0, "auroc": 1.0}


def test_default_figures(tmp_path):
    ss = task("secondary_structure")
    data = ss.load()
    test = data.splits["test"]
    (matrix,) = ss.figures([one_hot_logits(y, 3) for y in test.labels], test, data, tmp_path / "ss")
    assert matrix.name == "confusion.png" and matrix.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # names: test_figures
    contact = task("contact")
    data = contact.load()
    test = data.splits["test"]
    (picture,) = contact.figures([y.astype(np.float32) for y in test.labels], test, data, tmp_path / "contact")
    assert picture.name == "map.png" and picture.stat().st_size > 1000


def test_head_options_in_a_spec_merge_over_the_task_defaults_of_their_kind():
    localization = Registry().load("task", "localization")
    default = localization.Config().head
    assert default.kind == "linear" and default.patience is not None and default.first_epoch == 1
    assert default.head_seeds == [0]  # a linear probe: one head
    shorter = localization.Config.model_validate({"head": {"epochs": 3}}).head
    assert shorter.kind == "linear" and shorter.epochs == 3 and shorter.patience == default.patience
    convbert = localization.Config.model_validate({"head": {"kind": "convbert", "projection": 64}}).head
    task_convbert = localization.Config.model_fields["head"].default_factory.for_kind("convbert")
    assert convbert.epochs == task_convbert["epochs"] != default.epochs  # ConvBERT's own defaults, not the probe's
    assert convbert.projection == 64 and convbert.head_seeds == [0, 1, 2]
    assert convbert.first_epoch == (convbert.epochs + 1) // 2


@pytest.mark.parametrize("name", ["secondary_structure", "contact", "localization", "antimicrobial"])
def test_builtin_tasks_measure_the_representation_with_a_linear_probe(name):
    head = Registry().load("task", name).Config().head
    assert head.kind == "linear" and head.finetune == "frozen" and head.weight_decay == 0
    # trained until validation loss stops falling (test_torch_heads checks one-hot ss3 converges), kept at its lowest
    assert head.patience is not None and head.epochs >= 100 and head.first_epoch == 1
    convbert = Registry().load("task", name).Config.model_validate({"head": {"kind": "convbert"}}).head
    assert convbert.projection == 128 and len(convbert.head_seeds) == 3  # the same small head on any width


@pytest.mark.parametrize(("head", "message"), [
    ({"kind": "linear", "projection": 64}, "projection applies to the ConvBERT head only"),
    ({"kind": "convbert", "projection": 30}, "projection \\(30\\) must be a multiple of heads \\(4\\).*use 28 or 32"),
    ({"epochs": 4, "min_epochs": 5}, "min_epochs \\(5\\) is more than epochs \\(4\\)"),
    ({"repeats": 0}, "repeats"),
    ({"patience": 0}, "patience"),
])
def test_bad_head_options_are_refused_at_their_place_in_the_spec(tmp_path, head, message):
    raw = tiny_spec_dict(tmp_path)
    raw["tasks"] = [{"name": "secondary_structure", "head": head}]
    with pytest.raises(PlmforgeError, match="tasks\\[0\\]\\.head") as info:
        validate_spec(raw)
    assert info.match(message)
