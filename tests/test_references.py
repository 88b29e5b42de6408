"""Reference plugins: discovery, spec items, failures that leave the rest running, and scoring any embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from helpers import tiny_spec_dict

from plmforge.core.errors import PlmforgeError, SpecError
from plmforge.core.reference import Reference
from plmforge.core.registry import Registry
from plmforge.core.spec import validate_spec
from plmforge.plugins.references.onehot import one_hot

#: A third party's references: one that cannot be built, one whose embedding fails, one that caches.
THIRD_PARTY = '''
import numpy as np
from plmforge.core.reference import Reference, ReferenceUnavailable

CALLS = []


class Broken(Reference):
    """Needs a package that is not installed."""

    def setup(self, context):
        raise ReferenceUnavailable("needs the package frobnicate (pip install frobnicate)")

    def embed(self, sequences):
        raise AssertionError("never called")


class Flaky(Reference):
    """Fails while embedding, with an error of its own."""

    def embed(self, sequences):
        CALLS.append(("flaky", len(sequences)))
        raise RuntimeError("lost the GPU")


class Lengths(Reference):
    """Two columns per residue: its position and the protein's length."""

    title = "lengths"

    def embed(self, sequences):
        CALLS.append(("lengths", len(sequences)))
        return [np.stack([np.arange(len(s)), np.full(len(s), len(s))], axis=1).astype(np.float32)
                for s in sequences]

    def cache_key(self):
        return "lengths-v1"
'''
REFERENCES = {"plmforge.references": {"broken": "third_refs:Broken", "flaky": "third_refs:Flaky",
                                      "lengths": "third_refs:Lengths"}}

#: Small real tasks: peptides and PDB chains, capped so a head trains in a second.
AMP = {"name": "antimicrobial", "label": "amp", "max_train_proteins": 48, "max_test_proteins": 24,
       "head": {"kind": "linear", "epochs": 2, "batch_size": 16}}
SS3 = {"name": "secondary_structure", "label": "ss3", "max_train_proteins": 16, "max_test_proteins": 8,
       "max_length": 96, "head": {"kind": "convbert", "epochs": 2, "batch_size": 8}}


def test_one_hot_marks_standard_residues_only():
    encoded = one_hot("ACYXU")
    assert encoded.shape == (5, 20) and encoded.dtype == np.float32
    assert encoded[0, 0] == 1 and encoded[1, 1] == 1 and encoded[2, 19] == 1
    assert encoded[3].sum() == 0 and encoded[4].sum() == 0  # X and U are no standard residue
    assert encoded.sum() == 3


def test_builtin_references_are_plugins_listed_by_the_plugins_command():
    registry = Registry()
    assert {"onehot", "random", "unirep", "t5_encoder"} <= set(registry.names("reference"))
    onehot, random = registry.load("reference", "onehot"), registry.load("reference", "random")
    assert issubclass(onehot, Reference) and issubclass(random, Reference)
    assert (onehot(onehot.Config()).label, onehot.title) == ("onehot", "one-hot")
    assert (random(random.Config()).label, random.title) == ("random", "random init")
    assert onehot(onehot.Config(label="residues")).label == "residues"
    from plmforge.core.cli import main

    out = CliRunner().invoke(main, ["plugins", "--json"])
    assert out.exit_code == 0, out.output
    rows = {(row["kind"], row["name"]): row for row in json.loads(out.output)}
    assert rows[("reference", "onehot")]["status"] == "loaded"
    assert rows[("reference", "random")]["distribution"] == "plmforge"


def test_spec_references_are_resolved_like_tasks(tmp_path):
    raw = tiny_spec_dict(tmp_path)
    spec = validate_spec(raw)
    assert [r.reference_label() for r in spec.evaluation.references] == ["onehot", "random"]  # the default
    raw["evaluation"] = {"references": ["onehot", {"name": "random", "label": "fresh"}]}
    spec = validate_spec(raw)
    assert [r.reference_label() for r in spec.evaluation.references] == ["onehot", "fresh"]
    assert validate_spec(spec.to_dict()).evaluation.references[1].reference_label() == "fresh"  # resolved spec
    raw["evaluation"] = {"references": ["onehot", "onehott"]}
    with pytest.raises(SpecError, match=r"evaluation\.references\[1\]\.name: unknown reference plugin 'onehott'; "
                                        r"did you mean 'onehot'\? \(available: .*random"):
        validate_spec(raw)
    raw["evaluation"] = {"references": [{"name": "onehot", "size": 3}, {"name": "random", "label": "a b"}]}
    with pytest.raises(SpecError) as info:
        validate_spec(raw)
    assert "evaluation.references[0]: unknown key 'size'" in str(info.value)
    assert "evaluation.references[1].label" in str(info.value)
    raw["evaluation"] = {"references": ["random", {"name": "onehot", "label": "random"}, {"name": "onehot",
                                                                                          "label": "model"}]}
    with pytest.raises(SpecError) as info:
        validate_spec(raw)
    assert "evaluation.references[1] and evaluation.references[0] are both labelled 'random'" in str(info.value)
    assert "evaluation.references[2]: the label 'model'" in str(info.value)


def test_validate_command_names_the_references(tmp_path):
    from plmforge.core.cli import main

    raw = tiny_spec_dict(tmp_path)
    raw["tasks"] = [AMP]
    raw["evaluation"] = {"references": ["onehot", {"name": "random", "label": "fresh"}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    out = CliRunner().invoke(main, ["validate", str(tmp_path / "spec.yaml")])
    assert out.exit_code == 0, out.output
    assert "references onehot, fresh" in out.output


def _children(client, parent_id):
    runs = client.search_runs([client.get_run(parent_id).info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {(r.data.tags["plmforge.task"], r.data.tags["plmforge.reference"]): r for r in runs}


@pytest.mark.slow
def test_failing_references_are_left_out_and_the_rest_is_logged(fake_distribution, tmp_path):
    from mlflow.tracking import MlflowClient

    from plmforge.core.build import build_model
    from plmforge.core.evaluation import EvaluationPlan, run_tasks
    from plmforge.core.tracking import Tracker

    fake_distribution("third-refs", REFERENCES, {"third_refs": THIRD_PARTY})
    import third_refs

    raw = tiny_spec_dict(tmp_path)
    lora = dict(AMP, label="amp_lora", head=dict(AMP["head"], finetune="lora", encoder_lr=1e-2))
    raw["tasks"] = [dict(AMP, head=dict(AMP["head"], epochs=1)), lora]
    raw["evaluation"] = {"references": ["onehot", "broken", "flaky", {"name": "lengths", "label": "len"}]}
    spec = validate_spec(raw)
    registry = Registry()
    backend, vocab = build_model(spec, registry)
    uri = raw["tracking"]["tracking_uri"]
    warnings = []

    def evaluate() -> tuple[list, str]:
        tracker = Tracker(True, uri, "refs", "refs")
        run_id = tracker.start()
        outcomes = run_tasks(EvaluationPlan.from_spec(spec, tmp_path / "out"), backend, vocab, tracker,
                             warn=warnings.append)
        tracker.end()
        return outcomes, run_id

    outcomes, run_id = evaluate()
    assert [(o.label, o.reference) for o in outcomes] == [
        ("amp", "model"), ("amp", "onehot"), ("amp", "len"), ("amp_lora", "model"), ("amp_lora", "onehot"),
        ("amp_lora", "len")]
    assert len(warnings) == 2 and warnings[0].startswith("reference broken: unavailable")
    assert "frobnicate" in warnings[0] and warnings[1].startswith("reference flaky: unavailable")
    assert [c for c in third_refs.CALLS if c[0] == "flaky"] == [("flaky", 48)]  # tried once, then left out
    client = MlflowClient(uri)
    parent = client.get_run(run_id)
    assert "pip install frobnicate" in parent.data.tags["plmforge.reference_error.broken"]
    assert parent.data.tags["plmforge.reference_error.flaky"] == "RuntimeError: lost the GPU"
    assert {"task/amp/auroc", "task/amp_lora/auroc"} <= set(parent.data.metrics)
    assert not [key for key in parent.data.metrics if key.startswith("reference/")]  # references: on their runs
    children = _children(client, run_id)
    # a reference that failed while embedding leaves a FAILED run saying why; one never built, none
    assert set(children) == {(o.label, o.reference) for o in outcomes} | {("amp", "flaky")}
    flaky = children[("amp", "flaky")]
    assert flaky.info.status == "FAILED" and flaky.data.tags["plmforge.reference_error"] == "RuntimeError: lost the GPU"
    assert "task/amp/auroc" in children[("amp", "onehot")].data.metrics
    assert "task/amp_lora/auroc_ci_low" in children[("amp_lora", "len")].data.metrics
    assert children[("amp", "len")].info.run_name == f"amp·len {run_id[:6]}"
    # a fine-tuning task fine-tunes the model; on a reference without an encoder the head is fitted frozen
    tuned, onehot = children[("amp_lora", "model")], children[("amp_lora", "onehot")]
    assert tuned.data.params["head.finetune"] == "lora" and "plmforge.note" not in tuned.data.tags
    assert onehot.data.params["head.finetune"] == "frozen"
    assert "no encoder to fine-tune: head fitted frozen instead of lora" in onehot.data.tags["plmforge.note"]
    # the cache is keyed by Reference.cache_key(): evaluating again embeds nothing for 'lengths'
    embedded = len([c for c in third_refs.CALLS if c[0] == "lengths"])
    assert embedded == 3  # three splits of one protein set (both tasks use the same proteins)
    again, _ = evaluate()
    assert len([c for c in third_refs.CALLS if c[0] == "lengths"]) == embedded
    assert [o.metrics for o in again if o.reference == "len"] == [o.metrics for o in outcomes if o.reference == "len"]


@pytest.mark.slow
def test_evaluate_embeddings_scores_embed_output_like_the_checkpoint(tmp_path):
    from mlflow.tracking import MlflowClient
    from safetensors.numpy import load_file, save_file

    from plmforge.core.cli import main
    from plmforge.core.run import train

    raw = tiny_spec_dict(tmp_path, steps=2, checkpoint_every=2, eval_every=2)
    train(validate_spec(dict(raw, tracking=dict(raw["tracking"], enabled=False))), show_progress=False)
    evaluation = dict(raw, name="tiny-eval", tasks=[AMP, SS3], evaluation={"references": ["onehot", "random"]})
    evaluation["tracking"] = dict(raw["tracking"], experiment="evaluations")
    spec_file = tmp_path / "evaluate.yaml"
    spec_file.write_text(yaml.safe_dump(evaluation))
    runner = CliRunner()

    def cli(*args: str) -> str:
        out = runner.invoke(main, [*args])
        assert out.exit_code == 0, out.output
        return out.output

    fasta = tmp_path / "proteins.fasta"
    assert "wrote" in cli("evaluate", str(spec_file), "--write-proteins", str(fasta))
    records = fasta.read_text().split(">")[1:]
    ids = [record.split()[0] for record in records]
    assert len(ids) == len(set(ids)) == 48 + 24 + 24 + 16 + 8 + 8  # every protein once (amp's validation: 24)
    assert cli("evaluate", str(spec_file), "--write-proteins", str(tmp_path / "again.fasta")) and \
        (tmp_path / "again.fasta").read_text() == fasta.read_text()  # stable
    embeddings = tmp_path / "embeddings.safetensors"
    cli("embed", str(tmp_path / "run"), str(fasta), "-o", str(embeddings))
    cli("evaluate", str(spec_file), "--embeddings", str(embeddings), "--no-progress", "--json",
        str(tmp_path / "embeddings.json"))
    cli("evaluate", str(spec_file), "--checkpoint", str(tmp_path / "run"), "--no-progress", "--json",
        str(tmp_path / "checkpoint.json"))
    from_file = {(o["task"], o["reference"]): o["metrics"]["test"]
                 for o in json.loads((tmp_path / "embeddings.json").read_text())}
    from_checkpoint = {(o["task"], o["reference"]): o["metrics"]["test"]
                       for o in json.loads((tmp_path / "checkpoint.json").read_text())}
    assert set(from_file) == {("amp", "model"), ("amp", "onehot"), ("ss3", "model"), ("ss3", "onehot")}
    for key, metrics in from_file.items():
        assert metrics == pytest.approx(from_checkpoint[key], abs=1e-6), key
    client = MlflowClient(raw["tracking"]["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("evaluations").experiment_id],
                              filter_string=f"tags.`plmforge.embeddings` = '{embeddings.resolve()}'")
    (top,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert top.data.tags["plmforge.kind"] == "evaluation"
    assert "--embeddings" in top.data.tags["plmforge.reference_error.random"]  # random needs a model: left out
    assert top.data.metrics["task/ss3/q3"] == pytest.approx(from_checkpoint[("ss3", "model")]["q3"], abs=1e-6)
    from plmforge.core.evaluation import evaluation_group  # the file stands for the model; the evaluation counts

    width = str(next(iter(load_file(str(embeddings)).values())).shape[1])
    assert top.data.tags["plmforge.replicate_group"] == evaluation_group(
        {"embeddings.path": str(embeddings.resolve()), "embeddings.width": width}, validate_spec(evaluation))

    # bad files: some proteins missing, widths that differ, one vector per protein
    arrays = load_file(str(embeddings))
    save_file({k: v for k, v in arrays.items() if k not in ids[:5]}, str(tmp_path / "partial.safetensors"))
    out = runner.invoke(main, ["evaluate", str(spec_file), "--embeddings", str(tmp_path / "partial.safetensors")])
    assert out.exit_code == 1 and f"5 of the {len(ids)} proteins the spec's tasks use have no embedding" in out.output
    assert ids[0] in out.output and "--write-proteins" in out.output
    wide = dict(arrays, **{ids[3]: np.zeros((arrays[ids[3]].shape[0], 7), np.float32)})
    save_file(wide, str(tmp_path / "wide.safetensors"))
    out = runner.invoke(main, ["evaluate", str(spec_file), "--embeddings", str(tmp_path / "wide.safetensors")])
    assert out.exit_code == 1 and "must all have one width" in out.output and ids[3] in out.output
    cli("embed", str(tmp_path / "run"), str(fasta), "--per-protein", "-o", str(tmp_path / "mean.safetensors"))
    out = runner.invoke(main, ["evaluate", str(spec_file), "--embeddings", str(tmp_path / "mean.safetensors")])
    assert out.exit_code == 1 and "per-residue" in out.output
    out = runner.invoke(main, ["evaluate", str(spec_file)])
    assert out.exit_code == 1 and "give one of --checkpoint, --embeddings or --write-proteins" in out.output


def test_embeddings_file_errors_without_a_model(tmp_path):
    from plmforge.core.precomputed import EmbeddingFile, protein_id

    with pytest.raises(PlmforgeError, match="embeddings file not found"):
        EmbeddingFile(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PlmforgeError, match="not a readable safetensors file"):
        EmbeddingFile(tmp_path / "bad.safetensors")
    from safetensors.numpy import save_file

    save_file({protein_id("MKT"): np.zeros((4, 3), np.float32)}, str(tmp_path / "rows.safetensors"))
    with pytest.raises(PlmforgeError, match=r"has 4 rows for 3 residues"):
        EmbeddingFile(tmp_path / "rows.safetensors").check({protein_id("MKT"): ("MKT", "amp/test/p1")})


def test_the_documented_reference_plugin_installs_and_embeds(fake_distribution, tmp_path):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "references.md").read_text()
    code = re.search(r"`my_refs/hydropathy.py`:\n\n```python\n(.*?)```", text, re.S).group(1)
    fake_distribution("my-refs", {"plmforge.references": {"hydropathy": "hydropathy_doc:Hydropathy"}},
                      {"hydropathy_doc": code})
    raw = tiny_spec_dict(tmp_path)
    raw["evaluation"] = {"references": ["onehot", {"name": "hydropathy", "window": 5}]}
    (section,) = validate_spec(raw).evaluation.references[1:]
    reference = section.build()
    assert reference.label == "hydropathy5" and reference.title == "hydropathy"
    (vectors,) = reference.embed(["MKTAYIAK"])
    assert vectors.shape == (8, 2) and vectors.dtype == np.float32 and vectors[0, 0] == pytest.approx(1.9)
    raw["evaluation"] = {"references": [{"name": "hydropathy", "window": 0}]}
    with pytest.raises(SpecError, match=r"evaluation\.references\[0\]\.window"):
        validate_spec(raw)
