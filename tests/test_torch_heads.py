"""Downstream heads on the PyTorch backend (``fit_head``, :mod:`plmforge.core.heads`): shapes, learning,
padding invariance, ignored labels, determinism, best-epoch choice and encoder fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_spec_dict

torch = pytest.importorskip("torch")
xp = pytest.importorskip("array_api_compat.torch")

from plmforge.core.build import build_backend, build_objectives  # noqa: E402
from plmforge.core.heads import IGNORE, HeadData, HeadProblem, HeadSettings, head_loss  # noqa: E402
from plmforge.core.registry import Registry  # noqa: E402
from plmforge.core.spec import validate_spec  # noqa: E402
from plmforge.plugins.backends.torch.heads import (  # noqa: E402
    HeadModel,
    TunedEncoder,
    build_head,
    fit_head,
    make_batch,
    predict_outputs,
)

DIM = 12
CPU = torch.device("cpu")
PROBLEMS = {
    "residue-classes": HeadProblem("residue", "classification", 3),
    "residue-values": HeadProblem("residue", "regression", 1),
    "pair": HeadProblem("pair", "classification", 1),
    "protein-classes": HeadProblem("protein", "classification", 4),
    "protein-value": HeadProblem("protein", "regression", 1),
}


class Frozen:
    """Stands in for a TorchEngine in frozen mode, where only ``device`` is used."""

    device = CPU
    model = None


def embeddings(count, seed, low=3, high=24, dim=DIM):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(int(rng.integers(low, high)), dim)).astype(np.float32) for _ in range(count)]


def labels_for(problem, inputs, seed=0):
    """Labels of the right shape and dtype (with some ignored items) for any problem."""
    rng = np.random.default_rng(seed)
    out = []
    for x in inputs:
        length = len(x)
        if problem.level == "pair":
            lab = rng.integers(0, 2, (length, length)).astype(np.int8)
            lab[rng.random((length, length)) < 0.2] = IGNORE
        elif problem.level == "residue" and problem.target == "classification":
            lab = rng.integers(0, problem.num_outputs, length).astype(np.int64)
            lab[rng.random(length) < 0.2] = IGNORE
        elif problem.level == "residue":
            lab = rng.normal(size=length).astype(np.float32)
            lab[rng.random(length) < 0.2] = np.nan
        elif problem.target == "classification":
            lab = np.array(rng.integers(0, problem.num_outputs), np.int64)
        else:
            lab = np.array(rng.normal(), np.float32)
        out.append(lab)
    return out


def data(problem, inputs, seed=0, offset=0):
    return HeadData(inputs, labels_for(problem, inputs, seed), offset)


def expected_shape(problem, length):
    classes = problem.target == "classification" and problem.level != "pair"
    return {"residue": (length, problem.num_outputs) if classes else (length,), "pair": (length, length),
            "protein": (problem.num_outputs,) if classes else ()}[problem.level]


# -- shapes ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "convbert"])
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_prediction_shapes_for_every_level_and_kind(kind, name):
    problem = PROBLEMS[name]
    train, test = embeddings(6, 0), embeddings(5, 1, low=1, high=11)
    settings = HeadSettings(kind=kind, epochs=2, batch_size=4, pair_dim=8)
    result = fit_head(Frozen(), problem, settings, data(problem, train), data(problem, train[:3], 1),
                      [data(problem, test, 2), data(problem, train[:2])])
    assert len(result.predictions) == 2 and len(result.predictions[0]) == 5 and len(result.predictions[1]) == 2
    for x, prediction in zip(test, result.predictions[0]):
        assert prediction.dtype == np.float32 and prediction.shape == expected_shape(problem, len(x))
        assert np.isfinite(prediction).all()
    assert len(result.history) == 2 and set(result.history[0]) == {"train_loss", "validation_loss"}
    assert 1 <= result.best_epoch <= 2 and result.trainable_parameters > 0


def test_convbert_projects_to_a_multiple_of_the_heads_and_pair_logits_are_symmetric():
    problem = PROBLEMS["pair"]
    head = build_head(10, problem, HeadSettings(kind="convbert", heads=4, pair_dim=8))  # 10 -> 12 wide
    assert head.project.out_features == 12 and head.layer.ff_in.out_features == 6
    model = HeadModel(head)
    logits = predict_outputs(model, problem, data(problem, embeddings(3, 0, dim=10)), 2, CPU)
    for matrix in logits:
        np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)


def convbert_parameters(dim, width, classes, kernel=7, project=True):
    """Parameters of a ConvBERT head by the contract: projection, q k v o, depthwise + pointwise, 2 LNs, FF, out."""
    ff = width // 2
    return ((dim * width + width if project else 0) + 4 * (width * width + width) + width * kernel + width
            + width * width + width + 2 * 2 * width + width * ff + ff + ff * width + width + width * classes + classes)


@pytest.mark.parametrize(("dim", "projection", "width"), [(40, 16, 16), (16, 16, 16), (10, None, 12)])
def test_a_projection_sets_the_convbert_width(dim, projection, width):
    problem = PROBLEMS["residue-classes"]
    settings = HeadSettings(kind="convbert", heads=4, projection=projection)
    head = build_head(dim, problem, settings)
    assert head.project.out_features == width and head.layer.q.in_features == width
    assert head.layer.ff_in.out_features == width // 2 and head.readout.out.in_features == width
    expected = convbert_parameters(dim, width, 3)
    assert sum(p.numel() for p in head.parameters()) == expected
    train = data(problem, embeddings(4, 0, dim=dim))
    result = fit_head(Frozen(), problem, settings.model_copy(update={"epochs": 1}), train, train, [train])
    assert result.trainable_parameters == expected
    for x, prediction in zip(train.inputs, result.predictions[0]):
        assert prediction.shape == (len(x), 3)


def test_a_projection_makes_a_wide_convbert_head_small():
    """The issue's case: 1,900-wide UniRep states; projected to 128 the head has ~1/50 of the parameters."""
    problem = PROBLEMS["residue-classes"]
    wide = sum(p.numel() for p in build_head(1900, problem, HeadSettings(kind="convbert")).parameters())
    projected = HeadSettings(kind="convbert", projection=128)
    small = sum(p.numel() for p in build_head(1900, problem, projected).parameters())
    assert wide == convbert_parameters(1900, 1900, 3, project=False) and wide > 20_000_000
    assert small == convbert_parameters(1900, 128, 3) and small * 50 < wide


# -- learning ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "convbert"])
def test_residue_classes_from_a_fixed_projection_are_learnt(kind):
    projection = np.random.default_rng(5).normal(size=(DIM, 3))

    def split(count, seed):
        xs = embeddings(count, seed)
        return HeadData(xs, [np.argmax(x @ projection, axis=1).astype(np.int64) for x in xs])

    test = split(12, 3)
    result = fit_head(Frozen(), PROBLEMS["residue-classes"], HeadSettings(kind=kind, epochs=8, lr=1e-2, batch_size=8),
                      split(40, 1), split(10, 2), [test])
    correct = np.concatenate([p.argmax(1) == y for p, y in zip(result.predictions[0], test.labels)])
    assert correct.mean() > 0.8  # chance is about 1/3
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]


def test_protein_mean_feature_is_learnt_by_regression():
    def split(count, seed):
        xs = embeddings(count, seed)
        return HeadData(xs, [np.array(x[:, 0].mean(), np.float32) for x in xs])

    test = split(16, 3)
    result = fit_head(Frozen(), PROBLEMS["protein-value"], HeadSettings(kind="linear", epochs=15, lr=3e-2,
                                                                         batch_size=8),
                      split(40, 1), split(10, 2), [test])
    truth = np.array(test.labels)
    mse = np.mean((np.array(result.predictions[0]) - truth) ** 2)
    assert mse < 0.1 * truth.var()


def test_weight_decay_shrinks_weights_but_leaves_biases_free():
    """Noise inputs, 80 % class 0: under strong decay the weights vanish, and the bias alone learns the prior."""
    problem = HeadProblem("protein", "classification", 2)

    def split(count, seed):
        xs = embeddings(count, seed)
        return HeadData(xs, [np.array(int(i % 5 == 0), np.int64) for i in range(count)])

    settings = HeadSettings(kind="linear", epochs=40, lr=1e-2, batch_size=8, weight_decay=50.0)  # |w| <~ 1/50
    result = fit_head(Frozen(), problem, settings, split(40, 1), split(10, 2), [split(20, 3)])
    margins = np.array([p[0] - p[1] for p in result.predictions[0]])
    assert margins.std() < 0.1  # the weights are held near zero: every protein gets about the same logits
    assert 0.7 < np.mean(1 / (1 + np.exp(-margins))) < 0.9  # the (undecayed) bias has the class frequency


# -- padding ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "convbert"])
@pytest.mark.parametrize("name", ["residue-classes", "pair", "protein-classes", "protein-value"])
def test_predictions_do_not_depend_on_the_batch(kind, name):
    problem = PROBLEMS[name]
    torch.manual_seed(0)
    model = HeadModel(build_head(DIM, problem, HeadSettings(kind=kind, pair_dim=8)))
    split = data(problem, embeddings(7, 4, low=1, high=30))
    alone = predict_outputs(model, problem, split, 1, CPU)
    batched = predict_outputs(model, problem, split, 4, CPU)
    for a, b in zip(alone, batched):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


# -- ignored labels ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_loss_is_the_mean_over_labelled_items_only(name):
    problem = PROBLEMS[name]
    split = data(problem, embeddings(4, 0, low=1, high=9))
    batch = make_batch(problem, split, [0, 1, 2, 3], False, CPU)
    torch.manual_seed(0)
    outputs = torch.randn(batch.labels.shape + ((problem.num_outputs,) if problem.target == "classification"
                                                  and problem.level != "pair" else ()), requires_grad=True)
    total, count = head_loss(xp, problem, outputs, batch.labels, batch.keep)
    labelled = ~torch.isnan(batch.labels) if problem.target == "regression" else batch.labels != IGNORE
    assert count == labelled.sum()
    total.backward()
    ignored_grad = outputs.grad[~labelled]
    assert torch.all(ignored_grad == 0)
    changed = outputs.detach().clone()
    changed[~labelled] = 1e6  # anything at ignored (or padded) items
    again, _ = head_loss(xp, problem, changed, batch.labels, batch.keep)
    assert float(again) == float(total.detach())
    if problem.level == "residue" and problem.target == "classification":  # against a by-hand mean
        logp = torch.log_softmax(outputs.detach(), -1)[labelled]
        by_hand = -logp.gather(1, batch.labels[labelled][:, None]).mean()
        np.testing.assert_allclose(float(total.detach() / count), float(by_hand), rtol=1e-6)


@pytest.mark.parametrize("name", ["residue-classes", "residue-values"])
def test_ignored_items_do_not_change_the_trained_head(name):
    """Inputs at ignored residues changed wildly: a per-residue linear head trains to the same weights."""
    problem = PROBLEMS[name]
    train, validation, test = data(problem, embeddings(10, 0), 1), data(problem, embeddings(4, 1), 2), \
        data(problem, embeddings(4, 2), 3)
    settings = HeadSettings(kind="linear", epochs=3, batch_size=4, lr=1e-2)
    first = fit_head(Frozen(), problem, settings, train, validation, [test])
    noisy = []
    for x, y in zip(train.inputs, train.labels):
        x = x.copy()
        ignored = np.isnan(y) if problem.target == "regression" else y == IGNORE
        x[ignored] = np.random.default_rng(9).normal(scale=100.0, size=x[ignored].shape)
        noisy.append(x)
    second = fit_head(Frozen(), problem, settings, HeadData(noisy, train.labels), validation, [test])
    assert [h["validation_loss"] for h in first.history] == pytest.approx(
        [h["validation_loss"] for h in second.history], rel=1e-6)
    for a, b in zip(first.predictions[0], second.predictions[0]):
        np.testing.assert_allclose(a, b, atol=1e-6)


# -- seeds and epochs -------------------------------------------------------------------------------------
def test_a_seed_gives_the_same_head_and_leaves_the_global_rng_alone():
    problem = PROBLEMS["protein-classes"]
    train, validation, test = data(problem, embeddings(12, 0)), data(problem, embeddings(4, 1), 1), \
        data(problem, embeddings(4, 2), 2)
    state = torch.random.get_rng_state()
    runs = [fit_head(Frozen(), problem, HeadSettings(kind="convbert", seed=seed, epochs=2, batch_size=4), train,
                     validation, [test])
            for seed in (0, 0, 1)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert runs[0].history == runs[1].history
    for a, b in zip(runs[0].predictions[0], runs[1].predictions[0]):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(runs[0].predictions[0][0], runs[2].predictions[0][0])


def test_the_epoch_with_the_lowest_validation_loss_makes_the_predictions():
    """Validation labels follow the opposite rule of the training ones, so validation loss turns up."""
    problem = PROBLEMS["residue-classes"]
    train, validation = overfitting_split()
    settings = HeadSettings(kind="linear", epochs=6, lr=3e-2, batch_size=8)
    test = data(problem, embeddings(3, 2))
    result = fit_head(Frozen(), problem, settings, train, validation, [test])
    losses = [h["validation_loss"] for h in result.history]
    assert len(result.history) == 6
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert 1 <= result.best_epoch < 6, losses  # this setup overfits: a later epoch is not the best
    shorter = fit_head(Frozen(), problem, settings.model_copy(update={"epochs": result.best_epoch}), train,
                       validation, [test])
    assert shorter.history == result.history[:result.best_epoch]
    for a, b in zip(result.predictions[0], shorter.predictions[0]):
        np.testing.assert_array_equal(a, b)


def overfitting_split():
    """Validation labels follow the opposite rule of the training ones on half the residues: validation loss
    falls for a few epochs, then rises as the head learns the training rule."""
    projection = np.random.default_rng(5).normal(size=(DIM, 3))
    xs = embeddings(24, 0)
    train = HeadData(xs, [np.argmax(x @ projection, 1) for x in xs])
    val_x = embeddings(8, 1)
    validation = HeadData(val_x, [np.where(np.arange(len(x)) % 2 == 0, np.argmax(x @ projection, 1),
                                           np.argmin(x @ projection, 1)) for x in val_x])
    return train, validation


def test_min_epochs_keeps_no_earlier_epoch():
    problem = PROBLEMS["residue-classes"]
    train, validation = overfitting_split()
    test = data(problem, embeddings(3, 2))
    settings = HeadSettings(kind="linear", epochs=8, lr=3e-2, batch_size=8)
    free = fit_head(Frozen(), problem, settings, train, validation, [test])
    losses = [h["validation_loss"] for h in free.history]
    assert free.best_epoch < 5, losses  # without min_epochs an early epoch wins here
    held = fit_head(Frozen(), problem, settings.model_copy(update={"min_epochs": 5}), train, validation, [test])
    assert held.history == free.history  # the same training, another choice
    assert held.best_epoch == 5 + int(np.argmin(losses[4:]))
    replay = fit_head(Frozen(), problem, settings.model_copy(update={"epochs": held.best_epoch,
                                                                    "min_epochs": held.best_epoch}),
                      train, validation, [test])  # trained exactly that long: its predictions are the kept ones
    for a, b in zip(held.predictions[0], replay.predictions[0]):
        np.testing.assert_array_equal(a, b)
    # ConvBERT's default: the first half of the epochs is never kept
    convbert = HeadSettings(kind="convbert", epochs=6, lr=3e-2, batch_size=8)
    assert convbert.first_epoch == 3
    assert fit_head(Frozen(), problem, convbert, train, validation, [test]).best_epoch >= 3


def test_patience_stops_training_after_the_best_epoch():
    problem = PROBLEMS["residue-classes"]
    train, validation = overfitting_split()
    test = data(problem, embeddings(3, 2))
    settings = HeadSettings(kind="linear", epochs=12, lr=3e-2, batch_size=8)
    full = fit_head(Frozen(), problem, settings, train, validation, [test])
    stopped = fit_head(Frozen(), problem, settings.model_copy(update={"patience": 2}), train, validation, [test])
    assert stopped.best_epoch == full.best_epoch and len(stopped.history) == full.best_epoch + 2 < 12
    assert stopped.history == full.history[:len(stopped.history)]
    for a, b in zip(full.predictions[0], stopped.predictions[0]):
        np.testing.assert_array_equal(a, b)
    # patience counts from min_epochs on: never stops before min_epochs + patience
    late = fit_head(Frozen(), problem, settings.model_copy(update={"patience": 2, "min_epochs": 6}), train,
                    validation, [test])
    assert late.best_epoch >= 6 and len(late.history) >= 8


def test_the_default_secondary_structure_probe_trains_one_hot_residues_to_convergence():
    """The built-in task's default probe on its real chains: it trains until validation loss stops falling
    (the old 5-epoch budget stopped at Q3 0.35, on the way up; converged, one-hot residues give 0.47-0.48)."""
    from plmforge.core.evaluation import prepared_splits, standardize
    from plmforge.plugins.references.onehot import one_hot
    from plmforge.plugins.tasks.secondary_structure import SecondaryStructure

    task = SecondaryStructure(SecondaryStructure.Config())
    settings = task.config.head
    assert settings.kind == "linear" and settings.patience is not None
    data = task.load()
    splits = prepared_splits(task, data, 0)
    inputs = {name: HeadData([one_hot(s) for s in split.sequences], split.labels) for name, split in splits.items()}
    standardize(inputs)
    result = fit_head(Frozen(), task.problem(data), settings, inputs["train"], inputs["validation"], [inputs["test"]])
    assert 30 <= result.best_epoch and len(result.history) == result.best_epoch + settings.patience < settings.epochs
    assert task.metrics(result.predictions[0], splits["test"], data)["q3"] > 0.46


# -- fine-tuning the backend's encoder ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    raw = tiny_spec_dict(tmp_path_factory.mktemp("heads"))
    spec = validate_spec(raw, registry=Registry())
    vocab, slots = build_objectives(spec)
    return build_backend(spec, vocab, slots, Registry())


def token_split(count, seed, offset=1):
    """Token ids: a prefix token, residues (ids 3..27), ``</s>``; residue class = token id mod 3."""
    rng = np.random.default_rng(seed)
    inputs, labels = [], []
    for _ in range(count):
        residues = rng.integers(3, 28, int(rng.integers(4, 16)))
        inputs.append(np.concatenate([[30] * offset, residues, [1]]).astype(np.int32))
        labels.append((residues % 3).astype(np.int64))
    return HeadData(inputs, labels, offset)


def frozen_view(backend, split):
    """The same split as the backend's (eval-mode) residue embeddings."""
    inputs = []
    for ids in split.inputs:
        hidden = backend.embed(ids[None].astype(np.int64))[0]
        inputs.append(hidden[split.offset:len(ids) - 1])
    return HeadData(inputs, split.labels)


def test_fine_tuning_trains_the_encoder_and_leaves_the_backend_as_it_was(backend):
    problem = PROBLEMS["residue-classes"]
    train, validation, test = token_split(12, 0), token_split(4, 1), token_split(4, 2)
    before = backend.weights()
    state = torch.random.get_rng_state()
    settings = HeadSettings(kind="linear", epochs=2, batch_size=4, lr=1e-2, lora_rank=2)
    frozen = fit_head(Frozen(), problem, settings, frozen_view(backend, train), frozen_view(backend, validation),
                      [frozen_view(backend, test)])
    results = {}
    for mode in ("full", "lora"):
        # an encoder learning rate of ~0 must reproduce the frozen head on the backend's embeddings
        still = backend.fit_head(problem, settings.model_copy(update={"finetune": mode, "encoder_lr": 1e-12}),
                                 train, validation, [test])
        for a, b in zip(frozen.predictions[0], still.predictions[0]):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
        results[mode] = backend.fit_head(problem, settings.model_copy(update={"finetune": mode, "encoder_lr": 1e-2}),
                                         train, validation, [test])
        for x, prediction in zip(test.labels, results[mode].predictions[0]):
            assert prediction.shape == (len(x), 3)
        changed = max(np.abs(a - b).max() for a, b in zip(frozen.predictions[0], results[mode].predictions[0]))
        assert changed > 1e-3, mode
    after = backend.weights()
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    assert torch.equal(torch.random.get_rng_state(), state)
    d_model, layers, head = 32, 2, 32 * 3 + 3
    assert results["lora"].trainable_parameters == head + layers * 4 * 2 * (2 * d_model)  # A and B of q, k, v, o
    assert results["full"].trainable_parameters == head + sum(a.size for k, a in before.items()
                                                              if k.startswith(("shared.", "encoder.")))
    assert results["lora"].trainable_parameters * 4 < results["full"].trainable_parameters


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_fine_tuned_predictions_do_not_depend_on_the_batch(backend, mode):
    problem = PROBLEMS["protein-classes"]
    settings = HeadSettings(kind="convbert", finetune=mode, pair_dim=8, lora_rank=2)
    torch.manual_seed(0)
    encoder = TunedEncoder(backend.engine.model, mode, settings, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if name.endswith("lora_b"):
                p.normal_()  # a non-zero update, so the adapters take part
    model = HeadModel(build_head(32, problem, settings), encoder, offset=1)
    split = token_split(6, 3)
    split.labels = [np.array(0, np.int64)] * 6
    alone = predict_outputs(model, problem, split, 1, CPU)
    batched = predict_outputs(model, problem, split, 4, CPU)
    for a, b in zip(alone, batched):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_labels_that_do_not_fit_the_inputs_are_reported(backend):
    from plmforge.core.errors import PlmforgeError

    problem = PROBLEMS["residue-classes"]
    split = token_split(2, 0)
    split.labels[1] = split.labels[1][:-1]
    with pytest.raises(PlmforgeError, match="protein 1"):
        backend.fit_head(problem, HeadSettings(finetune="lora"), split, split, [])
    with pytest.raises(PlmforgeError, match="token ids"):
        backend.fit_head(problem, HeadSettings(finetune="full"), frozen_view(backend, token_split(2, 0)),
                         token_split(2, 0), [])


def test_lora_under_bf16_checkpointing_and_dropout_is_reproducible(tmp_path):
    raw = tiny_spec_dict(tmp_path)
    raw["training"]["precision"] = "bf16"
    raw["model"].update(gradient_checkpointing=True, dropout_rate=0.1)
    spec = validate_spec(raw, registry=Registry())
    vocab, slots = build_objectives(spec)
    bf16 = build_backend(spec, vocab, slots, Registry())
    before = bf16.weights()
    problem = PROBLEMS["pair"]
    splits = [token_split(n, seed) for n, seed in ((8, 0), (3, 1), (3, 2))]
    for split in splits:  # contacts: residues closer than 3 in sequence
        split.labels = [(np.abs(np.subtract.outer(np.arange(len(y)), np.arange(len(y)))) < 3).astype(np.int8)
                        for y in split.labels]
    settings = HeadSettings(kind="convbert", finetune="lora", epochs=2, batch_size=4, pair_dim=8, encoder_lr=1e-3)
    runs = [bf16.fit_head(problem, settings, splits[0], splits[1], [splits[2]]) for _ in range(2)]
    assert runs[0].history == runs[1].history
    for a, b, y in zip(runs[0].predictions[0], runs[1].predictions[0], splits[2].labels):
        assert a.dtype == np.float32 and a.shape == y.shape and np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)
    after = bf16.weights()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
