"""Downstream heads on the JAX backend (``fit_head``) against the contract in :mod:`plmforge.core.heads`.

Sizes are tiny and shapes few (16-wide embeddings, batches of 4, proteins shorter than 32 residues
for training), so the whole file compiles a handful of functions and runs in well under a minute.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_spec_dict

pytest.importorskip("jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from plmforge.core.build import build_backend, build_objectives  # noqa: E402
from plmforge.core.errors import DataError  # noqa: E402
from plmforge.core.heads import IGNORE, HeadData, HeadProblem, HeadSettings, head_loss  # noqa: E402
from plmforge.core.registry import Registry  # noqa: E402
from plmforge.core.spec import validate_spec  # noqa: E402
from plmforge.plugins.backends.jax import heads  # noqa: E402

D = 16
PROJECTION = np.random.default_rng(123).normal(size=(D, 3))
RESIDUE_CLASSES = HeadProblem("residue", "classification", 3)
FAST = dict(batch_size=4, lr=1e-2)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    raw = tiny_spec_dict(tmp_path_factory.mktemp("jax-heads"))
    raw["backend"] = {"name": "jax"}
    spec = validate_spec(raw)
    vocab, slots = build_objectives(spec)
    return build_backend(spec, vocab, slots, Registry())


def embeddings(seed: int, count: int, low: int = 4, high: int = 30) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(int(rng.integers(low, high + 1)), D)).astype(np.float32) for _ in range(count)]


def residue_class_data(seed: int, count: int) -> HeadData:
    """Residue class = argmax of a fixed projection of its embedding (learnable by a linear probe)."""
    inputs = embeddings(seed, count)
    return HeadData(inputs, [np.argmax(x @ PROJECTION, axis=1).astype(np.int64) for x in inputs])


def labels_for(problem: HeadProblem, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    if problem.level == "pair":
        return rng.integers(0, 2, size=(n, n)).astype(np.int8)
    shape = (n,) if problem.level == "residue" else ()
    if problem.target == "regression":
        return rng.normal(size=shape).astype(np.float32)
    return rng.integers(0, problem.num_outputs, size=shape).astype(np.int64)


def data_for(problem: HeadProblem, inputs: list[np.ndarray], seed: int = 0) -> HeadData:
    rng = np.random.default_rng(seed)
    return HeadData(inputs, [labels_for(problem, x, rng) for x in inputs])


def expected_shape(problem: HeadProblem, length: int) -> tuple[int, ...]:
    outputs = () if problem.target == "regression" else (problem.num_outputs,)
    return {"residue": (length, *outputs), "pair": (length, length), "protein": outputs}[problem.level]


# -- shapes and padding ---------------------------------------------------------------------------------------
SHAPE_CASES = [
    ("linear", HeadProblem("residue", "regression", 1)),
    ("linear", HeadProblem("pair", "classification", 1)),
    ("linear", HeadProblem("protein", "classification", 3)),
    ("convbert", RESIDUE_CLASSES),
    ("convbert", HeadProblem("pair", "classification", 1)),
    ("convbert", HeadProblem("protein", "regression", 1)),
]


@pytest.mark.parametrize(("kind", "problem"), SHAPE_CASES, ids=[f"{k}-{p.level}-{p.target}" for k, p in SHAPE_CASES])
def test_predictions_have_the_contract_shapes_and_ignore_padding(backend, kind, problem):
    train = data_for(problem, embeddings(1, 6))
    validation = data_for(problem, embeddings(2, 3))
    alone = embeddings(3, 1, 5, 9)
    # ``alone[0]`` shares a batch with a 40-residue protein (rows padded to 64) in ``mixed``, and sits in a batch
    # of its own (padded to 32, three empty rows) in ``single``: its predictions must not change.
    mixed = data_for(problem, [embeddings(4, 1, 40, 40)[0], alone[0], *embeddings(5, 3)])
    single = data_for(problem, alone)
    settings = HeadSettings(kind=kind, epochs=1, **FAST)
    result = backend.fit_head(problem, settings, train, validation, [validation, mixed, single])
    assert len(result.predictions) == 3
    for data, predictions in zip((validation, mixed, single), result.predictions):
        assert len(predictions) == len(data)
        for x, prediction in zip(data.inputs, predictions):
            assert prediction.dtype == np.float32 and prediction.shape == expected_shape(problem, len(x))
            assert np.isfinite(prediction).all()
    np.testing.assert_allclose(result.predictions[2][0], result.predictions[1][1], rtol=1e-5, atol=1e-5)
    if problem.level == "pair":
        pair = result.predictions[1][0]
        np.testing.assert_allclose(pair, pair.T, rtol=1e-6, atol=1e-6)  # the logit is symmetric by construction
    assert result.trainable_parameters > 0


def test_a_batch_of_one_and_a_padded_batch_of_four_give_the_same_outputs():
    problem = HeadProblem("protein", "classification", 3)  # ConvBERT body, then masked max-pooling
    fit = heads._Fit(heads.HeadSpec.of(problem, HeadSettings(kind="convbert")))
    data = data_for(problem, embeddings(6, 3, 3, 40))
    params = heads.init_head(fit.head, D, jax.random.PRNGKey(0))
    apply = jax.jit(heads.apply_head, static_argnums=0)

    def outputs(indices, rows):
        batch = heads.collate(fit, data, indices, rows)
        return np.asarray(apply(fit.head, params, batch["x"], batch["mask"], None))[:len(indices)]

    together = outputs([0, 1, 2], 4)  # padded to 64 residues and one empty row
    for i in range(3):
        np.testing.assert_allclose(outputs([i], 1)[0], together[i], rtol=1e-5, atol=1e-5)


# -- learning ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "lr", "epochs", "least"), [("linear", 3e-2, 6, 0.9), ("convbert", 5e-3, 10, 0.75)])
def test_residue_classes_are_learnt(backend, kind, lr, epochs, least):
    validation = residue_class_data(11, 12)
    settings = HeadSettings(kind=kind, epochs=epochs, batch_size=4, lr=lr)
    result = backend.fit_head(RESIDUE_CLASSES, settings, residue_class_data(10, 40), validation, [validation])
    predicted = np.concatenate([p.argmax(axis=1) for p in result.predictions[0]])
    accuracy = np.mean(predicted == np.concatenate(validation.labels))
    assert accuracy > least  # chance is about 1/3; measured: 0.96 linear, 0.88 ConvBERT (40 proteins)


def test_protein_means_are_learnt(backend):
    problem = HeadProblem("protein", "regression", 1)

    def data(seed, count):
        inputs = embeddings(seed, count)
        return HeadData(inputs, [np.float32(3 * x[:, 0].mean()) for x in inputs])

    validation = data(13, 12)
    settings = HeadSettings(kind="linear", epochs=15, batch_size=4, lr=5e-2)
    result = backend.fit_head(problem, settings, data(12, 40), validation, [validation])
    targets = np.asarray(validation.labels)
    mse = np.mean((np.asarray(result.predictions[0]) - targets) ** 2)
    assert mse < 0.05 * targets.var()


def test_weight_decay_shrinks_weights_but_leaves_biases_free(backend):
    """Noise inputs, 80 % class 0: under strong decay the weights vanish, and the bias alone learns the prior."""
    problem = HeadProblem("protein", "classification", 2)

    def split(seed, count):
        return HeadData(embeddings(seed, count), [np.array(int(i % 5 == 0), np.int64) for i in range(count)])

    settings = HeadSettings(kind="linear", epochs=20, lr=1e-2, batch_size=4, weight_decay=50.0)  # |w| <~ 1/50
    result = backend.fit_head(problem, settings, split(1, 40), split(2, 8), [split(3, 20)])
    margins = np.array([p[0] - p[1] for p in result.predictions[0]])
    assert margins.std() < 0.1  # the weights are held near zero: every protein gets about the same logits
    assert 0.7 < np.mean(1 / (1 + np.exp(-margins))) < 0.9  # the (undecayed) bias has the class frequency


# -- ignored labels -----------------------------------------------------------------------------------------
def test_loss_is_the_mean_over_labelled_items():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4)), jnp.float32)
    labels = jnp.asarray([[1, IGNORE, 3], [IGNORE, 0, 2]])
    mask = jnp.asarray([[True, True, True], [True, True, False]])  # the last residue is padding
    total, count = head_loss(jnp, RESIDUE_CLASSES, logits, labels, mask)
    log_p = jax.nn.log_softmax(logits)
    np.testing.assert_allclose(total / count, -np.mean([log_p[0, 0, 1], log_p[0, 2, 3], log_p[1, 1, 0]]), rtol=1e-6)

    values = jnp.asarray([[1.0, 2.0, 3.0]])
    targets = jnp.asarray([[2.0, jnp.nan, 5.0]])
    total, count = head_loss(jnp, HeadProblem("residue", "regression", 1), values, targets, jnp.ones((1, 3), bool))
    assert float(count) == 2 and float(total / count) == pytest.approx(2.5)

    pair_logits = jnp.asarray([[[0.5, -1.0], [-1.0, 2.0]]])
    pair_labels = jnp.asarray([[[1, IGNORE], [IGNORE, 0]]], jnp.int8)
    total, count = head_loss(jnp, HeadProblem("pair", "classification", 1), pair_logits, pair_labels,
                                   jnp.ones((1, 2), bool))
    expected = np.mean([np.log1p(np.exp(-0.5)), np.log1p(np.exp(2.0))])
    assert float(count) == 2 and float(total / count) == pytest.approx(expected, rel=1e-6)

    def loss(x):  # an ignored item gets no gradient, even with a non-finite label
        total, count = head_loss(jnp, HeadProblem("residue", "regression", 1), x, targets, jnp.ones((1, 3), bool))
        return total / count

    assert float(jax.grad(loss)(values)[0, 1]) == 0.0


def test_ignored_labels_have_no_influence(backend):
    """Items labelled IGNORE (NaN) whose inputs are garbage leave the fitted head exactly as it was."""
    settings = HeadSettings(kind="linear", epochs=2, **FAST)
    clean = residue_class_data(20, 8)
    validation = residue_class_data(21, 4)
    rng = np.random.default_rng(0)
    noisy_inputs, labels = [], []
    for x, y in zip(clean.inputs, clean.labels):
        ignored = rng.random(len(y)) < 0.3
        noisy_inputs.append(np.where(ignored[:, None], 100 * rng.normal(size=x.shape), x).astype(np.float32))
        labels.append(np.where(ignored, IGNORE, y))
    a = backend.fit_head(RESIDUE_CLASSES, settings, HeadData(clean.inputs, labels), validation, [validation])
    b = backend.fit_head(RESIDUE_CLASSES, settings, HeadData(noisy_inputs, labels), validation, [validation])
    for p, q in zip(a.predictions[0], b.predictions[0]):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-6)

    problem = HeadProblem("protein", "regression", 1)
    inputs = embeddings(22, 8)
    targets = [np.float32(x[:, 0].mean()) if i % 3 else np.float32(np.nan) for i, x in enumerate(inputs)]
    garbage = [x if i % 3 else 100 * x for i, x in enumerate(inputs)]
    validation = HeadData(embeddings(23, 4), [np.float32(0.0)] * 4)
    a = backend.fit_head(problem, settings, HeadData(inputs, targets), validation, [validation])
    b = backend.fit_head(problem, settings, HeadData(garbage, targets), validation, [validation])
    np.testing.assert_allclose(np.asarray(a.predictions[0]), np.asarray(b.predictions[0]), rtol=1e-6, atol=1e-6)
    assert a.history == b.history


# -- determinism and epochs -------------------------------------------------------------------------------------
def test_a_seed_determines_the_fit_and_repeats_compile_nothing(backend):
    train, validation = residue_class_data(30, 10), residue_class_data(31, 4)

    def fit(seed):
        settings = HeadSettings(kind="convbert", epochs=1, seed=seed, **FAST)  # dropout 0.2, shuffled batches
        return backend.fit_head(RESIDUE_CLASSES, settings, train, validation, [validation])

    def compilations():
        return backend.counters()["compilations"], heads._train_step._cache_size(), heads._evaluate._cache_size()

    before = compilations()
    first = fit(0)
    after = compilations()
    assert after[1] - before[1] <= 1 and after[2] - before[2] <= 1  # one length rung: one step, one evaluation
    again, other = fit(0), fit(1)
    assert compilations() == after
    for p, q in zip(first.predictions[0], again.predictions[0]):
        np.testing.assert_array_equal(p, q)
    assert first.history == again.history
    assert not all(np.allclose(p, q) for p, q in zip(first.predictions[0], other.predictions[0]))


def test_history_has_an_entry_per_epoch_and_the_best_epoch_predicts(backend):
    rng = np.random.default_rng(40)
    train = residue_class_data(40, 8)
    validation = HeadData(embeddings(41, 4), [rng.integers(0, 3, len(x)) for x in embeddings(41, 4)])  # unlearnable
    settings = HeadSettings(kind="convbert", epochs=5, min_epochs=1, batch_size=4, lr=3e-2)
    result = backend.fit_head(RESIDUE_CLASSES, settings, train, validation, [validation])
    assert len(result.history) == 5
    assert all(set(entry) == {"train_loss", "validation_loss"} for entry in result.history)
    losses = [entry["validation_loss"] for entry in result.history]
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert result.best_epoch < 5  # random validation labels: it gets worse once the head learns the training set
    shorter = settings.model_copy(update={"epochs": result.best_epoch})
    replay = backend.fit_head(RESIDUE_CLASSES, shorter, train, validation, [validation])
    for p, q in zip(result.predictions[0], replay.predictions[0]):
        np.testing.assert_array_equal(p, q)


def test_min_epochs_and_patience_choose_and_stop_as_the_contract_says(backend):
    rng = np.random.default_rng(42)
    train = residue_class_data(42, 8)
    validation = HeadData(embeddings(43, 4), [rng.integers(0, 3, len(x)) for x in embeddings(43, 4)])  # unlearnable
    settings = HeadSettings(kind="linear", epochs=10, **FAST)
    full = backend.fit_head(RESIDUE_CLASSES, settings, train, validation, [validation])
    losses = [entry["validation_loss"] for entry in full.history]
    assert len(losses) == 10 and full.best_epoch == int(np.argmin(losses)) + 1
    held = backend.fit_head(RESIDUE_CLASSES, settings.model_copy(update={"min_epochs": 4, "patience": 2}), train,
                            validation, [validation])
    best, stop = 0, len(losses)  # the rule in words, replayed on the full run's losses
    for epoch, loss in enumerate(losses, start=1):
        if epoch >= 4 and (not best or loss < losses[best - 1]):
            best = epoch
        if best and epoch - best >= 2:
            stop = epoch
            break
    assert held.best_epoch == best >= 4 and len(held.history) == stop
    assert held.history == full.history[:stop]  # the same training, stopped


def test_a_projection_sets_the_convbert_width(backend):
    settings = HeadSettings(kind="convbert", projection=8, epochs=1, **FAST)
    params = heads.init_head(heads.HeadSpec.of(RESIDUE_CLASSES, settings), D, jax.random.PRNGKey(0))
    assert params["project"]["weight"].shape == (8, D) and params["attention"]["q"]["weight"].shape == (8, 8)
    assert params["ff1"]["weight"].shape == (4, 8) and params["out"]["weight"].shape == (3, 8)
    data = residue_class_data(44, 4)
    result = backend.fit_head(RESIDUE_CLASSES, settings, data, data, [data])
    assert result.trainable_parameters == heads._size(params)
    for x, prediction in zip(data.inputs, result.predictions[0]):
        assert prediction.shape == (len(x), 3)
    same_width = heads.init_head(heads.HeadSpec.of(RESIDUE_CLASSES, settings.model_copy(update={"projection": D})),
                                 D, jax.random.PRNGKey(0))
    assert same_width["project"]["weight"].shape == (D, D)  # asked for: a projection even at the input's width
    assert "project" not in heads.init_head(heads.HeadSpec.of(RESIDUE_CLASSES, HeadSettings(kind="convbert")), D,
                                            jax.random.PRNGKey(0))


def test_malformed_labels_are_refused(backend):
    data = residue_class_data(50, 2)
    bad = HeadData(data.inputs, [data.labels[0], data.labels[1][:-1]])
    with pytest.raises(DataError, match="train protein 1: residue-level labels should have shape"):
        backend.fit_head(RESIDUE_CLASSES, HeadSettings(kind="linear", epochs=1, **FAST), bad, data, [])
    bad = HeadData(data.inputs, [data.labels[0], data.labels[1] + 3])
    with pytest.raises(DataError, match="train protein 1: class labels outside 0..2"):
        backend.fit_head(RESIDUE_CLASSES, HeadSettings(kind="linear", epochs=1, **FAST), bad, data, [])


# -- fine-tuning ------------------------------------------------------------------------------------------------
def token_data(seed: int, count: int, prefix_id: int) -> HeadData:
    """Ids ``[prefix, residues..., </s>]`` (offset 1); the class of a residue is its token id modulo 3."""
    rng = np.random.default_rng(seed)
    residues = [rng.integers(3, 23, size=int(rng.integers(4, 25))) for _ in range(count)]
    ids = [np.concatenate([[prefix_id], r, [1]]).astype(np.int32) for r in residues]
    return HeadData(ids, [(r % 3).astype(np.int64) for r in residues], offset=1)


def test_finetuning_trains_the_encoder_and_leaves_the_backend_as_it_was(backend):
    prefix_id = 150
    train, validation = token_data(60, 8, prefix_id), token_data(61, 4, prefix_id)
    before = backend.weights()

    def frozen(data):  # the encoder's hidden states of the residues: what fine-tuning starts from
        hidden = backend.embed(np.stack([np.pad(ids, (0, 32 - len(ids))) for ids in data.inputs]))
        return HeadData([hidden[i, 1:len(ids) - 1] for i, ids in enumerate(data.inputs)], data.labels)

    settings = HeadSettings(kind="linear", epochs=2, lora_rank=2, **FAST)
    baseline = backend.fit_head(RESIDUE_CLASSES, settings, frozen(train), frozen(validation), [frozen(validation)])
    counts = {}
    for mode in ("full", "lora"):
        # an encoder that barely moves reproduces the frozen fit: the head sees residues offset..offset+L-1
        still = settings.model_copy(update={"finetune": mode, "encoder_lr": 1e-12})
        result = backend.fit_head(RESIDUE_CLASSES, still, train, validation, [validation])
        for p, q in zip(result.predictions[0], baseline.predictions[0]):
            np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-4)
        moving = settings.model_copy(update={"finetune": mode, "encoder_lr": 1e-2})
        result = backend.fit_head(RESIDUE_CLASSES, moving, train, validation, [validation])
        change = max(np.abs(p - q).max() for p, q in zip(result.predictions[0], baseline.predictions[0]))
        assert change > 1e-2
        counts[mode] = result.trainable_parameters
    after = backend.weights()
    assert after.keys() == before.keys()
    assert all(np.array_equal(before[name], after[name]) for name in before)

    model = backend.engine.context.model
    head = baseline.trainable_parameters
    assert head == (model.d_model + 1) * 3
    inner = model.num_heads * model.d_kv
    assert counts["lora"] == head + model.num_layers * 4 * 2 * (model.d_model + inner)
    encoder = sum(v.size for k, v in before.items() if k.startswith(("shared.", "encoder.")))
    assert counts["full"] == head + encoder
    assert 10 * counts["lora"] < counts["full"]
