"""Downstream evaluation: reference inputs, the embedding cache, nested MLflow runs and `plmforge evaluate`."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from helpers import tiny_spec_dict

from plmforge.core.errors import PlmforgeError
from plmforge.core.evaluation import EmbeddingCache, weights_key
from plmforge.core.registry import Registry
from plmforge.core.uncertainty import read_outcomes

pytest.importorskip("torch")

#: Small real tasks: peptides and PDB chains, capped so a head trains in a second.
TASKS = [
    {"name": "antimicrobial", "label": "amp", "max_train_proteins": 120, "max_test_proteins": 60,
     "head": {"kind": "linear", "epochs": 2, "batch_size": 32}},
    {"name": "secondary_structure", "label": "ss3", "max_train_proteins": 24, "max_test_proteins": 12,
     "max_length": 128, "head": {"kind": "convbert", "epochs": 2, "batch_size": 8}},
]


def test_weights_key_depends_on_values_and_names():
    a = {"w": np.ones((2, 2), np.float32)}
    assert weights_key(a) == weights_key({"w": np.ones((2, 2), np.float64)})
    assert weights_key(a) != weights_key({"w": np.full((2, 2), 1.0001, np.float32)})
    assert weights_key(a) != weights_key({"v": np.ones((2, 2), np.float32)})


def test_embedding_cache_round_trip_and_recovery(tmp_path):
    calls = []

    def compute(sequences):
        calls.append(list(sequences))
        return [np.arange(len(s) * 3, dtype=np.float32).reshape(len(s), 3) / 7 for s in sequences]

    cache = EmbeddingCache(tmp_path / "cache")
    first = cache.get("model-a", "[NLU]", ["MKT", "GS"], compute)
    again = cache.get("model-a", "[NLU]", ["MKT", "GS"], compute)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    for x, y in zip(first, again):
        np.testing.assert_allclose(x, y, atol=1e-3)  # stored as float16
    cache.get("model-b", "[NLU]", ["MKT", "GS"], compute)  # other weights: computed again
    cache.get("model-a", None, ["MKT", "GS"], compute)  # other prefix: computed again
    assert len(calls) == 3
    entry = next(p for p in (tmp_path / "cache" / "model-a").iterdir() if p.name.startswith("[NLU]-"))
    entry.write_bytes(b"truncated")  # a damaged entry is recomputed, not trusted
    recovered = cache.get("model-a", "[NLU]", ["MKT", "GS"], compute)
    assert len(calls) == 4 and recovered[0].shape == (3, 3)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def _child_runs(client, parent_id):
    runs = client.search_runs([client.get_run(parent_id).info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {(r.data.tags["plmforge.task"], r.data.tags["plmforge.reference"]): r for r in runs}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_tasks_after_pretraining_are_nested_runs(tmp_path, backend):
    from mlflow.tracking import MlflowClient

    from plmforge.core.run import train
    from plmforge.core.spec import validate_spec

    raw = tiny_spec_dict(tmp_path, steps=4, checkpoint_every=4, eval_every=4)
    raw["tasks"] = TASKS
    raw["evaluation"] = {"references": ["onehot"], "bootstrap_resamples": 200}
    raw["backend"] = {"name": backend}
    result = train(validate_spec(raw), show_progress=False)
    assert [(o.label, o.reference) for o in result.tasks] == [("amp", "model"), ("amp", "onehot"),
                                                               ("ss3", "model"), ("ss3", "onehot")]
    client = MlflowClient(raw["tracking"]["tracking_uri"])
    parent = client.get_run(result.tracking_run_id)
    assert parent.data.tags["plmforge.kind"] == "pretrain" and parent.data.tags["plmforge.backend"] == backend
    for key in ("task/amp/accuracy", "task/amp/mcc", "task/amp/auroc", "task/ss3/q3", "task/ss3/macro_f1"):
        assert key in parent.data.metrics, key
    assert 0.0 <= parent.data.metrics["task/ss3/q3"] <= 1.0
    # the parent holds the model's task metrics only: references are on their own child runs, under the same names
    assert not [key for key in parent.data.metrics if key.startswith(("reference/", "test/", "validation/"))]
    children = _child_runs(client, result.tracking_run_id)
    assert set(children) == {("amp", "model"), ("amp", "onehot"), ("ss3", "model"), ("ss3", "onehot")}
    ss3, onehot = children[("ss3", "model")], children[("ss3", "onehot")]
    assert ss3.data.tags["plmforge.kind"] == "task" and ss3.info.status == "FINISHED"
    assert ss3.data.metrics["task/ss3/q3"] == pytest.approx(parent.data.metrics["task/ss3/q3"])
    assert set(onehot.data.metrics) == set(ss3.data.metrics)  # a reference logs what the model logs
    assert onehot.data.metrics["task/ss3/q3"] == pytest.approx(result.tasks[3].metrics["test"]["q3"])
    for run in children.values():
        assert not [key for key in run.data.metrics if not key.startswith("task/")], run.info  # all under its task
    assert "task/ss3/validation/q3" in ss3.data.metrics and "task/ss3/head/best_epoch" in ss3.data.metrics
    # a child run starts before its embedding: its duration covers embedding and fitting, each timed apart
    for (label, _), run in children.items():
        prefix = f"task/{label}/time"
        work = run.data.metrics[f"{prefix}/embedding_seconds"] + run.data.metrics[f"{prefix}/fit_seconds"]
        assert run.data.metrics[f"{prefix}/bootstrap_seconds"] >= 0
        assert (run.info.end_time - run.info.start_time) / 1000 >= work - 0.002, run.info.run_name
    assert ss3.info.run_name == f"ss3·model {parent.info.run_id[:6]}"
    assert children[("amp", "onehot")].info.run_name == f"amp·onehot {parent.info.run_id[:6]}"
    assert ss3.data.tags["plmforge.embedding"] == "computed"
    assert ss3.data.params["head.kind"] == "convbert" and ss3.data.params["proteins.test"] == "12"
    assert len(client.get_metric_history(ss3.info.run_id, "task/ss3/head/train_loss")) == 2  # one per epoch
    figures = [a.path for a in client.list_artifacts(ss3.info.run_id) if a.path.endswith(".png")]
    assert figures == ["ss3.model.confusion.png"]  # at the root, where MLflow's compare view finds it
    # nested runs are not top-level runs: the experiment has exactly one run without a parent
    top = [r for r in client.search_runs([parent.info.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_id for r in top] == [result.tracking_run_id]
    # uncertainty: an interval next to every test metric, the per-protein outcomes as the parent's artifact
    q3, low, high = (parent.data.metrics[f"task/ss3/q3{end}"] for end in ("", "_ci_low", "_ci_high"))
    assert low <= q3 <= high and low < high
    assert "task/amp/mcc_ci_high" in parent.data.metrics
    assert "task/amp/auroc_ci_low" in children[("amp", "onehot")].data.metrics
    assert ss3.data.metrics["task/ss3/q3_ci_low"] == pytest.approx(low)
    assert ss3.data.params["bootstrap.resamples"] == "200"
    assert {a.path for a in client.list_artifacts(result.tracking_run_id, "outcomes/ss3")} == {
        "outcomes/ss3/model.npz", "outcomes/ss3/onehot.npz"}
    local = client.download_artifacts(result.tracking_run_id, "outcomes/ss3/model.npz", str(tmp_path))
    outcomes = read_outcomes(local)
    assert outcomes.metric_names == ["q3", "macro_f1"] and outcomes.replicates.shape == (200, 2)
    assert len(outcomes.protein_ids) == 12 and outcomes.offsets[-1] == len(outcomes.labels)
    assert outcomes.point[0] == pytest.approx(q3)
    assert result.tasks[2].intervals["q3"] == pytest.approx((low, high))
    seeds = result.tasks[2].head_seeds  # metrics are means over the head seeds; their spread is logged
    assert ss3.data.params["head.seeds"] == ",".join(map(str, seeds)) and outcomes.head_seeds == len(seeds)
    assert ("task/ss3/q3_head_sd" in ss3.data.metrics) == (len(seeds) > 1)


@pytest.mark.slow
def test_evaluate_command_nests_under_an_evaluation_run_and_reuses_embeddings(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from plmforge.core import embedding
    from plmforge.core.cli import main
    from plmforge.core.run import train
    from plmforge.core.spec import validate_spec

    raw = tiny_spec_dict(tmp_path, steps=2, checkpoint_every=2, eval_every=2)
    result = train(validate_spec(raw), show_progress=False)
    evaluation = dict(raw, name="tiny-eval", tasks=TASKS[1:], evaluation={"references": ["onehot", "random"]})
    evaluation["tracking"] = dict(raw["tracking"], experiment="evaluations")
    spec_file = tmp_path / "evaluate.yaml"
    spec_file.write_text(yaml.safe_dump(evaluation))
    embedded = []
    original = embedding.embed_sequences
    monkeypatch.setattr(embedding, "embed_sequences",
                        lambda *a, **k: embedded.append(len(a[2])) or original(*a, **k))
    runner = CliRunner()
    out = runner.invoke(main, ["evaluate", str(spec_file), "--checkpoint", str(tmp_path / "run"),
                               "--no-progress", "--json", str(tmp_path / "out.json")])
    assert out.exit_code == 0, out.output
    assert "ss3" in out.output and "random init" in out.output
    assert re.search(r"q3 0\.\d{4} \[0\.\d{4}, 0\.\d{4}\]", out.output)  # value [interval]
    rows = json.loads((tmp_path / "out.json").read_text())
    assert all(len(row["intervals"]["q3"]) == 2 and row["outcomes_file"] for row in rows)
    assert len(embedded) == 6  # three splits, for the model and for the random-init model
    client = MlflowClient(raw["tracking"]["tracking_uri"])
    experiment = client.get_experiment_by_name("evaluations")
    runs = client.search_runs([experiment.experiment_id])
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(top) == 1 and top[0].data.tags["plmforge.kind"] == "evaluation"
    assert top[0].data.tags["plmforge.checkpoint"] == str(result.checkpoint.resolve())
    assert top[0].data.params["model.d_model"] == "32"
    children = _child_runs(client, top[0].info.run_id)
    assert set(children) == {("ss3", "model"), ("ss3", "onehot"), ("ss3", "random")}
    model_q3 = top[0].data.metrics["task/ss3/q3"]
    random_q3 = children[("ss3", "random")].data.metrics["task/ss3/q3"]
    assert model_q3 != random_q3  # two different encoders, not one evaluated twice
    assert children[("ss3", "random")].data.tags["plmforge.embedding"] == "computed"
    # a second evaluation of the same checkpoint embeds nothing, and says so
    again = runner.invoke(main, ["evaluate", str(spec_file), "--checkpoint", str(result.checkpoint),
                                 "--no-progress"])
    assert again.exit_code == 0, again.output
    assert len(embedded) == 6
    second = next(r for r in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
                  if "mlflow.parentRunId" not in r.data.tags)
    rerun = _child_runs(client, second.info.run_id)
    assert rerun[("ss3", "random")].data.tags["plmforge.embedding"] == "cached"
    # told apart from the first evaluation's runs by the parent's short label
    names = {r.info.run_name for r in children.values()}
    assert names.isdisjoint(r.info.run_name for r in rerun.values()) and "ss3·random " in "".join(names)
    # seed replicates of an evaluation pool only with runs of the same evaluation
    group = second.data.tags["plmforge.replicate_group"]
    assert group == top[0].data.tags["plmforge.replicate_group"]
    assert second.data.tags["plmforge.seed"] == str(validate_spec(raw).seed)
    from plmforge.core.evaluation import evaluation_group
    from plmforge.core.tracking import flatten

    model_params = flatten(validate_spec(raw).to_dict())
    evaluated = validate_spec(evaluation)
    other_seed = flatten(validate_spec(dict(raw, seed=3)).to_dict())
    assert evaluation_group(model_params, evaluated) == group == evaluation_group(other_seed, evaluated)
    fewer = validate_spec(dict(evaluation, evaluation={"references": ["onehot"]}))
    more_resamples = validate_spec(dict(evaluation, evaluation={"references": ["onehot", "random"],
                                                                "bootstrap_resamples": 50}))
    other_head = validate_spec(dict(evaluation, tasks=[dict(TASKS[1], head=dict(TASKS[1]["head"], epochs=3))]))
    assert len({group, *(evaluation_group(model_params, s) for s in (fewer, more_resamples, other_head))}) == 4


def test_standardize_uses_train_statistics_for_every_split():
    from plmforge.core.evaluation import standardize
    from plmforge.core.heads import HeadData

    train = HeadData([np.array([[1.0, 5.0], [3.0, 5.0]], np.float32), np.array([[2.0, 5.0]], np.float32)],
                     [np.zeros(2), np.zeros(1)])
    test = HeadData([np.array([[4.0, 6.0]], np.float32)], [np.zeros(1)])
    inputs = {"train": train, "test": test}
    standardize(inputs)
    # column 0: mean 2, std sqrt(2/3); column 1 is constant: std floored, centred to 0
    np.testing.assert_allclose(inputs["train"].inputs[0][:, 0], [-1 / np.sqrt(2 / 3), 1 / np.sqrt(2 / 3)], rtol=1e-6)
    np.testing.assert_allclose(inputs["test"].inputs[0][0, 0], 2 / np.sqrt(2 / 3), rtol=1e-6)
    assert inputs["train"].inputs[0][0, 1] == 0 and inputs["test"].inputs[0][0, 1] == pytest.approx(1e6)


def test_standardize_overwrites_float32_inputs_with_the_float64_result():
    from plmforge.core.evaluation import standardize
    from plmforge.core.heads import HeadData

    rng = np.random.default_rng(0)

    def split(n):
        return HeadData([rng.normal(5.0, 3.0, (int(k), 48)).astype(np.float32) for k in rng.integers(5, 60, n)],
                        [np.int64(0)] * n)

    inputs = {"train": split(40), "validation": split(6), "test": split(6)}
    inputs["test"].inputs[1].flags.writeable = False  # e.g. read from a file: standardised into a copy
    flat = np.concatenate(inputs["train"].inputs).astype(np.float64)
    mean, std = flat.mean(axis=0), flat.std(axis=0)
    expected = {name: [(x - mean) / std for x in data.inputs] for name, data in inputs.items()}
    before = list(inputs["train"].inputs)
    standardize(inputs)
    assert all(x is y for x, y in zip(inputs["train"].inputs, before))  # overwritten, no copy of the states
    for name, data in inputs.items():
        for x, y in zip(data.inputs, expected[name]):
            assert x.dtype == np.float32
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_unknown_prefix_and_missing_tasks_are_clear_errors(tmp_path):
    from plmforge.core.evaluation import evaluate_checkpoint
    from plmforge.core.run import train
    from plmforge.core.spec import validate_spec

    raw = tiny_spec_dict(tmp_path, steps=1, checkpoint_every=1, eval_every=1)
    raw["tracking"]["enabled"] = False
    train(validate_spec(raw), show_progress=False)
    with pytest.raises(PlmforgeError, match="lists no tasks"):
        evaluate_checkpoint(validate_spec(raw), tmp_path / "run")
    raw["tasks"] = [dict(TASKS[0], prefix="[NLU]")]
    with pytest.raises(PlmforgeError, match=r"task amp: prefix '\[NLU\]' is not in this model's vocabulary"):
        evaluate_checkpoint(validate_spec(raw), tmp_path / "run")


def test_spec_rejects_duplicate_task_labels_and_bad_head_options(tmp_path):
    from plmforge.core.errors import SpecError
    from plmforge.core.spec import validate_spec

    raw = tiny_spec_dict(tmp_path)
    raw["tasks"] = [{"name": "secondary_structure"}, {"name": "secondary_structure", "states": 8}]
    with pytest.raises(SpecError, match="both labelled 'secondary_structure'"):
        validate_spec(raw)
    raw["tasks"] = [{"name": "secondary_structure", "states": 4, "head": {"kind": "mlp"}}]
    with pytest.raises(SpecError) as info:
        validate_spec(raw)
    assert "tasks[0].states" in str(info.value) and "tasks[0].head.kind" in str(info.value)
    raw["tasks"] = [{"name": "no_such_task"}]
    with pytest.raises(SpecError, match=r"tasks\[0\]\.name"):
        validate_spec(raw)


@pytest.mark.slow
def test_lora_fine_tuning_with_a_task_prefix_leaves_the_model_unchanged(tmp_path):
    from plmforge.core.build import build_backend, build_objectives
    from plmforge.core.evaluation import EvaluationPlan, run_tasks
    from plmforge.core.spec import validate_spec
    from plmforge.core.tracking import Tracker

    raw = tiny_spec_dict(tmp_path)
    raw["objectives"] = [{"name": "mlm", "prefix": "[NLU]", "probabilities": [0.15]}]
    raw["tasks"] = [{"name": "antimicrobial", "label": "amp", "prefix": "[NLU]", "max_train_proteins": 64,
                     "max_test_proteins": 32, "head": {"kind": "linear", "finetune": "lora", "epochs": 2,
                                                        "encoder_lr": 1e-2, "batch_size": 16}}]
    raw["evaluation"] = {"references": ["onehot"]}
    spec = validate_spec(raw)
    vocab, slots = build_objectives(spec)
    backend = build_backend(spec, vocab, slots, Registry())
    before = backend.weights()
    outcomes = run_tasks(EvaluationPlan.from_spec(spec, tmp_path), backend, vocab, Tracker(False, None, "x", "x"))
    assert [(o.reference, sorted(o.metrics["test"])) for o in outcomes] == [
        ("model", ["accuracy", "auroc", "mcc"]), ("onehot", ["accuracy", "auroc", "mcc"])]
    assert not (tmp_path / "embedding-cache").exists()  # fine-tuning reads token ids, not cached embeddings
    after = backend.weights()
    assert all(np.array_equal(before[name], after[name]) for name in before)
