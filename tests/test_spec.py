"""The spec: validation errors with paths and lines, did-you-mean, overrides, schema, CLI behaviour."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from plmforge.core.errors import SpecError
from plmforge.core.spec import apply_overrides, load_spec, validate_spec

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path, overrides: list[str] = ()) -> str:
    with pytest.raises(SpecError) as excinfo:
        load_spec(path, list(overrides))
    return str(excinfo.value)


def test_plugin_option_error_carries_its_path_and_line(tmp_path):
    path = write(tmp_path, """\
        name: bad
        objectives:
          - name: mlm
            probabilities: [0.15, 1.5]
        """)
    message = error_of(path)
    assert "objectives[0].probabilities[1]: Input should be less than 1" in message
    assert "line 4" in message and str(path) in message


def test_unknown_keys_get_did_you_mean(tmp_path):
    path = write(tmp_path, """\
        name: typo
        objectives: [{name: mlm, probabilites: [0.2]}]
        training: {stpes: 10}
        """)
    message = error_of(path)
    assert "objectives[0]: unknown key 'probabilites'; did you mean 'probabilities'?" in message
    assert "training: unknown key 'stpes'; did you mean 'steps'?" in message
    assert "2 errors" in message


def test_missing_required_and_wrong_types(tmp_path):
    message = error_of(write(tmp_path, "objectives: [{name: mlm}]\ntraining: {steps: many}\n"))
    assert "name: required key is missing" in message
    assert "training.steps" in message and "line 2" in message


def test_unknown_objective_name(tmp_path):
    message = error_of(write(tmp_path, "name: x\nobjectives: [{name: mlmm}]\n"))
    assert "objectives[0].name" in message and "did you mean 'mlm'" in message


def test_broken_yaml_and_missing_file(tmp_path):
    assert "not valid YAML" in error_of(write(tmp_path, "name: [unclosed\n"))
    assert "spec file not found" in error_of(tmp_path / "nope.yaml")
    assert "must be a mapping" in error_of(write(tmp_path, "- just\n- a list\n"))


def test_duplicate_labels_rejected():
    with pytest.raises(SpecError, match="both labelled 'mlm'"):
        validate_spec({"name": "x", "objectives": [{"name": "mlm"}, {"name": "mlm"}]})
    spec = validate_spec({"name": "x", "objectives": [{"name": "mlm"}, {"name": "mlm", "label": "mlm30",
                                                                         "probabilities": [0.3]}]})
    assert spec.objective_labels() == ["mlm", "mlm30"]


def test_overrides_reach_nested_keys_and_list_items(tmp_path):
    path = write(tmp_path, "name: x\nobjectives: [{name: mlm}]\n")
    spec = load_spec(path, ["training.steps=200", "objectives[0].weight=2", "objectives[0].probabilities=[0.1,0.4]",
                            "training.optimizer.name=adafactor", "model.preset=ankh-base"])
    assert spec.training.steps == 200
    assert spec.objectives[0].weight == 2.0
    assert spec.objectives[0].config.probabilities == [0.1, 0.4]
    assert spec.training.optimizer.name == "adafactor"
    assert spec.model.num_layers == 48 and spec.model.d_model == 768
    assert "objectives[3] does not exist" in error_of(path, ["objectives[3].weight=1"])
    assert "expected KEY=VALUE" in error_of(path, ["training.steps"])
    raw = {"a": {"b": [1, 2]}}
    apply_overrides(raw, ["a.c.d=x", "a.b[-1]=5"])
    assert raw == {"a": {"b": [1, 5], "c": {"d": "x"}}}


def test_resolved_spec_has_every_default(tmp_path):
    spec = validate_spec({"name": "x", "objectives": [{"name": "mlm"}]})
    resolved = spec.to_dict()
    assert resolved["objectives"][0] == {"name": "mlm", "weight": 1.0, "label": None,
                                         "probabilities": [0.15, 0.2, 0.3], "probability_weights": None,
                                         "mean_span_length": 1.0, "prefix": None}
    assert resolved["model"]["d_model"] == 128 and resolved["backend"]["device"] == "auto"
    # the resolved spec is itself a valid spec that resolves to the same thing
    again = validate_spec(yaml.safe_load(spec.to_yaml()))
    assert again.to_dict() == resolved


def test_schema_includes_plugin_options_with_descriptions():
    from plmforge.core.schema import spec_json_schema

    schema = spec_json_schema()
    text = json.dumps(schema)
    assert "Masking probabilities; each example draws one" in text
    mlm = next(d for k, d in schema["$defs"].items() if k.startswith("Objective_mlm"))
    assert mlm["properties"]["name"]["const"] == "mlm"
    assert mlm["additionalProperties"] is False
    assert "weight" in mlm["properties"] and "probabilities" in mlm["properties"]
    assert "device" in json.dumps(schema["$defs"]["Backend_torch"])
    # the quickstart spec validates against the schema
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(yaml.safe_load((REPO / "specs" / "quickstart.yaml").read_text()), schema)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plmforge.core.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_cli_user_error_is_one_message_without_traceback(tmp_path):
    path = write(tmp_path, "name: x\nobjectives: [{name: mlm, probabilities: [2]}]\n")
    out = run_cli("validate", str(path))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ") and "objectives[0].probabilities" in out.stderr
    debug = run_cli("--debug", "validate", str(path))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_fast_commands_import_no_framework(tmp_path):
    """--help, plugins, validate and schema must not import torch, jax or mlflow."""
    probe = textwrap.dedent("""
        import sys
        from plmforge.core.cli import main
        try:
            main(sys.argv[1:], standalone_mode=False)
        finally:
            heavy = sorted(m for m in ("torch", "jax", "mlflow") if m in sys.modules)
            print("HEAVY=" + ",".join(heavy), file=sys.stderr)
        """)
    quickstart = str(REPO / "specs" / "quickstart.yaml")
    for args in (["--help"], ["plugins"], ["validate", quickstart], ["schema"]):
        out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "HEAVY=\n" in out.stderr, (args, out.stderr)


def test_validate_reports_missing_fasta(tmp_path):
    path = write(tmp_path, "name: x\ndata: {source: missing.fasta}\nobjectives: [{name: mlm}]\n")
    out = run_cli("validate", str(path))
    assert out.returncode == 1 and "missing.fasta" in out.stderr and "not found" in out.stderr
