"""The Python API (``import plmforge``): light to import, and the same results and messages as the CLI.

One tiny run (trained once for the module, through ``plmforge.train``, with Ankh3's ``[NLU]`` prefix so
the vocabulary has task prefixes) serves the model tests: embeddings equal ``plmforge embed``'s,
completions equal ``plmforge generate``'s, and its ``save_pretrained`` export loads whole in transformers.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from helpers import TINY_MODEL, tiny_spec_dict

import plmforge
from plmforge.core.cli import main
from plmforge.core.data.sources import load_builtin
from plmforge.core.errors import CheckpointError, DataError, PlmforgeError, SpecError

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def proteins() -> list[str]:
    test = load_builtin("scl2205")["test"]
    return [test.sequence(i) for i in range(40) if len(test.sequence(i)) <= 300][:12]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Four steps of mlm with the [NLU] prefix; warmup is longer than the run, so training warns."""
    root = tmp_path_factory.mktemp("api")
    raw = tiny_spec_dict(root, steps=4, eval_every=4, checkpoint_every=4)
    raw["objectives"] = [{"name": "mlm", "prefix": "[NLU]", "probabilities": [0.15]}]
    raw["training"]["schedule"] = {"warmup_steps": 6}
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        run = plmforge.train(raw, progress=False)
    return run, stderr.getvalue(), root


@pytest.fixture(scope="module")
def model(trained):
    return trained[0].load()


# -- importing and specs ----------------------------------------------------------------------------------
def test_import_plmforge_and_validating_a_spec_import_no_framework():
    probe = textwrap.dedent(f"""
        import sys
        import plmforge
        assert not [m for m in ("torch", "jax", "mlflow") if m in sys.modules]
        spec = plmforge.Spec({str(REPO / "specs" / "quickstart.yaml")!r}, ["training.steps=5"])
        assert spec.training.steps == 5 and plmforge.Run and plmforge.Model and plmforge.compare
        print("HEAVY=" + ",".join(m for m in ("torch", "jax", "mlflow") if m in sys.modules))
        """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "HEAVY=\n" in out.stdout, out.stdout
    assert {"train", "load", "Spec", "compare", "Model", "Run"} <= set(dir(plmforge))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        plmforge.nothing  # noqa: B018


def test_spec_applies_overrides_as_set_does_and_dumps_what_validate_prints(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec_dict(tmp_path)))
    spec = plmforge.Spec(path, ["training.steps=3", "objectives[0].weight=2"])
    printed = cli("validate", path, "--print", "--set", "training.steps=3", "--set", "objectives[0].weight=2")
    assert printed.exit_code == 0 and spec.to_yaml() == printed.output
    assert spec == plmforge.Spec(path, {"training.steps": 3, "objectives[0].weight": 2})
    assert spec.training.steps == 3 and spec.objectives[0].weight == 2 and spec.overrides[0] == "training.steps=3"
    assert plmforge.Spec(spec.dump()) == spec  # the resolved spec validates again, unchanged
    longer = spec.with_overrides({"training.steps": 9, "output_dir": str(tmp_path / "other")})
    assert longer.training.steps == 9 and longer.objectives[0].weight == 2 and spec.training.steps == 3
    assert yaml.safe_load(longer.save(tmp_path / "saved.yaml").read_text()) == longer.dump()
    assert "3 steps" in repr(spec)


def test_spec_errors_are_the_validate_command_s(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nobjectives: [{name: mlm, probabilities: [2]}]\n")
    with pytest.raises(SpecError) as raised:
        plmforge.Spec(path)
    assert cli("validate", path).output == f"error: {raised.value}\n"
    with pytest.raises(SpecError, match=r"(?s)<spec>: invalid spec.*training\.steps"):
        plmforge.Spec({"name": "x", "objectives": [{"name": "mlm"}]}, "training.steps=-1")
    with pytest.raises(SpecError, match="--set 'steps': expected KEY=VALUE"):
        plmforge.Spec(path, "steps")


def test_a_warmup_longer_than_the_run_is_a_warning_of_validate_and_train(tmp_path, trained):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec_dict(tmp_path, steps=5)))
    message = "training.schedule.warmup_steps (10) is more than training.steps (5): the run ends still warming up"
    out = cli("validate", path, "--set", "training.schedule.warmup_steps=10")
    shown = " ".join(out.output.split())  # rich wraps long lines at the width of a console that is not a terminal
    assert out.exit_code == 0 and "warning:" in shown and message in shown and "valid" in shown
    assert "warning" not in cli("validate", path).output
    spec = plmforge.Spec(path, {"training.schedule.warmup_steps": 10})
    assert len(spec.warnings) == 1 and message in spec.warnings[0]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert spec.validate() is spec
    assert message in " ".join(stderr.getvalue().split())
    _, train_output, _ = trained  # the module's run: warmup 6, steps 4
    assert "warmup_steps (6) is more than training.steps (4)" in " ".join(train_output.split())


# -- train and load ---------------------------------------------------------------------------------------
def test_train_returns_the_run_and_load_its_model(trained, model):
    run, _, root = trained
    assert run.status == "finished" and run.step == 4 and run.output_dir == root / "run"
    assert run.checkpoint == root / "run" / "checkpoints" / "step-000004" and run.run_id
    assert np.isfinite(run.metrics["train/loss"]) and np.isfinite(run.metrics["val/loss"])
    assert run.tracking_uri == f"sqlite:///{root / 'mlflow.db'}"
    assert model.path == run.checkpoint and model.step == 4 and model.prefixes == ("[NLU]", "[S2S]")
    assert plmforge.load(run.output_dir).path == run.checkpoint  # a run directory: its latest checkpoint
    assert "finished at step 4" in repr(run) and "d_model 32" in repr(model)


def test_embed_equals_the_embed_command(model, proteins, tmp_path):
    fasta = tmp_path / "proteins.fasta"
    fasta.write_text("".join(f">p{i}\n{p}\n" for i, p in enumerate(proteins)))
    assert cli("embed", model.path, fasta, "-o", tmp_path / "mean.npy", "--per-protein",
               "--prefix", "[NLU]").exit_code == 0
    means = model.embed(proteins, per_protein=True, prefix="[NLU]")
    assert means.shape == (len(proteins), TINY_MODEL["d_model"]) and means.dtype == np.float32
    np.testing.assert_array_equal(means, np.load(tmp_path / "mean.npy"))
    from safetensors.numpy import load_file

    assert cli("embed", model.path, fasta, "-o", tmp_path / "residues.safetensors").exit_code == 0
    written = load_file(str(tmp_path / "residues.safetensors"))
    per_residue = model.embed(proteins)
    for i, (protein, vectors) in enumerate(zip(proteins, per_residue)):
        assert vectors.shape == (len(protein), TINY_MODEL["d_model"])
        np.testing.assert_array_equal(vectors, written[f"p{i}"])
    np.testing.assert_array_equal(model.embed(proteins[0]), per_residue[0])  # one string: one array


def test_generate_equals_the_generate_command(model):
    prompt = "MKTAYIAKQRQISFVKSHFSRQ"
    out = cli("generate", model.path, "--prompt", prompt, "--max-new-tokens", "6")
    assert out.exit_code == 0, out.output
    completion = out.output.splitlines()[1][len(prompt):]
    results = model.generate({"gfp": prompt.lower()}, max_new_tokens=6)
    assert results[0].name == "gfp" and results[0].prompt == prompt
    assert results[0].completion.residues == completion
    sampled = model.generate([prompt], strategy="sample", num_samples=2, max_new_tokens=3, keep=0.5)
    assert [r.name for r in sampled] == ["prompt1#0", "prompt1#1"] and all(r.identity is not None for r in sampled)
    with pytest.raises(PlmforgeError, match="--strategy sample"):
        model.generate(prompt, num_samples=2)
    with pytest.raises(PlmforgeError, match="temperature must be positive"):
        model.generate(prompt, strategy="sample", temperature=0)


def test_errors_are_the_cli_messages(model, tmp_path):
    with pytest.raises(PlmforgeError, match="not a plmforge checkpoint directory") as raised:
        plmforge.load(tmp_path)
    fasta = tmp_path / "one.fasta"
    fasta.write_text(">a\nMKV\n")
    assert cli("embed", tmp_path, fasta, "-o", tmp_path / "x.npy", "--per-protein").output == f"error: {raised.value}\n"
    with pytest.raises(PlmforgeError) as raised:
        model.embed(["MKV"], prefix="[FOO]")
    out = cli("embed", model.path, fasta, "-o", tmp_path / "x.npy", "--per-protein", "--prefix", "[FOO]")
    assert out.output == f"error: {raised.value}\n"
    with pytest.raises(DataError, match=r"sequence 2 of 2: invalid residue letter\(s\) 'J' \(first at position 3\)"):
        model.embed(["MKV", "MKJ"])
    with pytest.raises(PlmforgeError, match="strings of residue letters"):
        model.embed([b"MKV"])


# -- evaluate, export, compare, replicates ------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_fits_the_task_heads_on_the_model(model):
    task = {"name": "localization", "max_train_proteins": 150, "max_test_proteins": 40, "max_length": 64,
            "head": {"kind": "linear", "epochs": 1}}
    evaluation = model.evaluate([task], references=["onehot"], tracking=False, progress=False)
    metrics = evaluation.metrics()
    assert set(metrics["localization"]) == {"model", "onehot"} and evaluation.run_id is None
    assert 0 <= metrics["localization"]["model"]["accuracy"] <= 1
    assert "localization" in str(evaluation) and "one-hot" in str(evaluation)
    with pytest.raises(PlmforgeError, match="name at least one task"):
        model.evaluate([])


def test_save_pretrained_loads_whole_in_transformers(model, proteins, tmp_path):
    """The export's tokenizer gives plmforge's ids (prefix included); the model run on them gives its outputs."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    directory = model.save_pretrained(tmp_path / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    exported = transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()
    texts = ["[NLU]" + p for p in proteins[:4]] + [proteins[4]]
    encoded = tokenizer(texts, padding=True, return_tensors="np")
    for row, text in enumerate(texts):
        prefix = "[NLU]" if text.startswith("[NLU]") else None
        ids = model.vocab.encode(text.removeprefix("[NLU]"), prefix=prefix)
        np.testing.assert_array_equal(encoded["input_ids"][row, :len(ids)], ids)
    ids = encoded["input_ids"].astype(np.int32)
    decoder = np.concatenate([np.zeros((len(ids), 1), np.int32), ids[:, :-1]], axis=1)
    with torch.no_grad():
        out = exported(input_ids=torch.from_numpy(ids).long(),
                       attention_mask=torch.from_numpy(encoded["attention_mask"]).long(),
                       decoder_input_ids=torch.from_numpy(decoder).long())
    keep = encoded["attention_mask"].astype(bool)  # real positions, of the encoder and of the shifted decoder
    np.testing.assert_allclose(out.encoder_last_hidden_state.numpy()[keep], model.backend.embed(ids)[keep], atol=1e-4)
    np.testing.assert_allclose(out.logits.numpy()[keep], model.backend.decoder_logits(ids, decoder)[keep], atol=1e-4)
    with pytest.raises(CheckpointError, match="is not empty"):
        model.save_pretrained(directory)


def test_compare_reads_the_runs_back(trained):
    run, _, _ = trained
    comparison = plmforge.compare(run, metrics=["train/loss", "nothing/*"])
    assert comparison.run_ids == [run.run_id] and "train/loss" in comparison.columns
    assert comparison.values("train/loss") == [pytest.approx(run.metrics["train/loss"])]
    assert comparison.unmatched == ["nothing/*"] and "| train/loss |" in comparison._repr_markdown_()
    with pytest.raises(PlmforgeError, match="neither a Run nor a run id"):
        plmforge.compare(3)


@pytest.mark.slow
def test_seeds_train_one_replicate_per_seed(tmp_path):
    raw = tiny_spec_dict(tmp_path, steps=2, eval_every=2, checkpoint_every=2)
    raw["tracking"]["enabled"] = False
    runs = plmforge.train(raw, {"data.max_length": 32}, seeds="0-1", progress=False)
    assert [(r.spec.seed, r.output_dir, r.status) for r in runs] == [
        (0, tmp_path / "run" / "seed-0", "finished"), (1, tmp_path / "run" / "seed-1", "finished")]
    again = plmforge.train(raw, seeds=[0, 1], resume=True, progress=False)
    assert again == []  # both finished: resume skips them, as train --seeds --resume does
    with pytest.raises(PlmforgeError, match="given twice"):
        plmforge.train(raw, seeds=[2, 2], progress=False)
