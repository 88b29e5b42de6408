"""Bad input gets one clear message naming the key or the file and line, a non-zero exit, no traceback.

Each class of bad input a fuzzer found is a parametrized case here; `plmforge validate` must refuse
what `plmforge train` would refuse (files, devices and the output directory included).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import stat
import sys

import pytest
import yaml
from click.testing import CliRunner

from plmforge.core.cli import main
from plmforge.core.data.fasta import read_fasta
from plmforge.core.errors import DataError, SpecError
from plmforge.core.spec import load_spec

BASE = {
    "name": "bad",
    "data": {"source": "builtin:scl2205", "max_length": 64},
    "model": {"preset": "ankh-tiny"},
    "backend": {"name": "torch", "device": "cpu"},
    "objectives": [{"name": "mlm", "probabilities": [0.15]}],
    "training": {"steps": 2},
    "tracking": {"enabled": False},
}


def validate(tmp_path, spec_path, *args: str):
    """`plmforge validate` run in-process from ``tmp_path``; returns (exit code, stderr+stdout)."""
    runner = CliRunner()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = runner.invoke(main, ["validate", str(spec_path), *args])
    finally:
        os.chdir(cwd)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def spec_file(tmp_path, raw, name="spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def with_value(path: str, value):
    """BASE with ``value`` set at the dotted/indexed ``path`` (``objectives[0].weight``)."""
    raw = json.loads(json.dumps(BASE))
    node = raw
    parts = [int(p) if p.isdigit() else p for p in path.replace("[", ".").replace("]", "").split(".")]
    for part in parts[:-1]:
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[parts[-1]] = value
    return raw


def test_the_base_spec_is_valid(tmp_path):
    code, out = validate(tmp_path, spec_file(tmp_path, BASE))
    assert code == 0, out


# -- values the spec accepted that crashed training or diverged silently --------------------------------
BAD_VALUES = [
    ("training.optimizer.betas", [2, 2], "less than 1"),
    ("training.optimizer.betas", [float("nan"), 0.999], "finite"),
    ("training.optimizer.betas", [-1, 0], "greater than or equal to 0"),
    ("training.optimizer.lr", float("inf"), "finite"),
    ("training.optimizer.lr", float("nan"), "finite"),
    ("training.optimizer.lr", 1e30, "less than or equal to 1"),
    ("training.optimizer.weight_decay", float("inf"), "finite"),
    ("training.optimizer.eps", float("inf"), "finite"),
    ("objectives[0].probability_weights", [float("nan")], "finite"),
    ("objectives[0].probability_weights", [float("inf")], "finite"),
    ("objectives[0].weight", float("inf"), "finite"),
    ("objectives[0].prefix", "A", "residue letter"),
    ("objectives[0].prefix", "<pad>", "special token"),
    ("objectives[0].prefix", "", "at least 1 character"),
    ("objectives[0].label", "", "at least 1 character"),
    ("seed", -5, "greater than or equal to 0"),
    ("seed", 2**70, "less than or equal to"),
    ("backend.device", "banana", "unknown device"),
    ("model.relative_attention_num_buckets", 1, "greater than or equal to 4"),
    ("model.relative_attention_max_distance", 2, "must exceed half"),
    ("model.initializer_factor", 1e30, "less than or equal to 100"),
    ("model.preset", {"a": 1}, "valid string"),
    ("data.source", "", "at least 1 character"),
    ("data.source", "builtin:nope", "unknown built-in corpus"),
    ("name", "a" * 300, "255"),
    ("name", "a\x00b", "control character"),
]


@pytest.mark.parametrize(("key", "value", "expected"), BAD_VALUES,
                         ids=[f"{k}={str(v)[:12]}" for k, v, _ in BAD_VALUES])
def test_bad_value_is_refused_naming_its_key_and_line(tmp_path, key, value, expected):
    code, out = validate(tmp_path, spec_file(tmp_path, with_value(key, value)))
    assert code == 1, out
    assert expected in out
    assert f"{key}:" in out or f"{key}[" in out
    assert "line " in out


def test_json_infinity_is_refused(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(with_value("training.optimizer.lr", float("inf"))))  # writes Infinity
    assert "Infinity" in path.read_text()
    code, out = validate(tmp_path, path)
    assert code == 1 and "training.optimizer.lr: Input should be a finite number" in out


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("objectives", [{"name": "profile", "head": ""}], "at least 1 character"),
    ("objectives", [{"name": "profile", "head": "encoder_logits"}], "built-in model output"),
    ("objectives", [{"name": "profile", "pseudocount": float("inf")}], "finite"),
    ("objectives", [{"name": "profile", "msas": [""]}], "at least 1 character"),
    ("tasks", [{"name": "localization", "label": ""}], "at least 1 character"),
    ("tasks", [{"name": "localization", "prefix": "<unk>"}], "special token"),
])
def test_bad_plugin_option_is_refused(tmp_path, key, value, expected):
    code, out = validate(tmp_path, spec_file(tmp_path, {**BASE, key: value}))
    assert code == 1 and expected in out, out
    assert f"{key}[0]." in out and "line " in out


# -- files, devices and the output directory: validate refuses what train would --------------------------
def test_missing_files_are_found_by_validate(tmp_path):
    raw = {**BASE, "objectives": [{"name": "profile", "msas": ["missing.a3m", "nothing/*.sto", "builtin:nope"],
                                   "search": {"database": "missing.fasta"}}],
           "tasks": [{"name": "custom", "train": "train.csv", "test": "~/surely-missing-test.csv"}]}
    code, out = validate(tmp_path, spec_file(tmp_path, raw))
    assert code == 1
    assert "objectives[0].msas[0]: MSA file 'missing.a3m' not found" in out
    assert "objectives[0].msas[1]: the pattern 'nothing/*.sto' matches no MSA file" in out
    assert "objectives[0].msas[2]: unknown built-in MSA set 'builtin:nope'" in out
    assert "objectives[0].search.database: file 'missing.fasta' not found" in out
    assert "tasks[0].train: file 'train.csv' not found" in out
    assert f"tasks[0].test: file '~/surely-missing-test.csv' not found (looked at {os.path.expanduser('~')}" in out


def test_existing_files_pass_and_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "proteins.fasta").write_text(">a\nMKV\n")
    code, out = validate(tmp_path, spec_file(tmp_path, with_value("data.source", "~/proteins.fasta")))
    assert code == 0, out


def test_a_bad_fasta_record_is_found_by_validate(tmp_path):
    (tmp_path / "proteins.fasta").write_text(">good\nMKV\n>bad\nMKV1\n")
    code, out = validate(tmp_path, spec_file(tmp_path, with_value("data.source", "proteins.fasta")))
    assert code == 1 and "proteins.fasta:3: record 'bad'" in out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_is_refused_and_never_read(tmp_path):
    pipe = tmp_path / "proteins.fasta"
    os.mkfifo(pipe)
    code, out = validate(tmp_path, spec_file(tmp_path, with_value("data.source", str(pipe))))
    assert code == 1 and "data.source" in out and "not a regular file" in out
    with pytest.raises(DataError, match="not a regular file"):
        read_fasta(pipe)  # would block forever if it opened the pipe


@pytest.mark.parametrize("setting", ["file", "below_file", "unwritable"])
def test_an_unusable_output_dir_is_refused(tmp_path, setting):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if setting == "unwritable" and os.access(locked, os.W_OK):
        pytest.skip("running as a user that may write anywhere")
    target = {"file": blocker, "below_file": blocker / "run", "unwritable": locked / "run"}[setting]
    try:
        code, out = validate(tmp_path, spec_file(tmp_path, {**BASE, "output_dir": str(target)}))
    finally:
        locked.chmod(stat.S_IRWXU)
    assert code == 1 and "output_dir: " in out and "line " in out


@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_a_cuda_device_this_machine_lacks_is_refused(tmp_path, monkeypatch, device):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no device visible, whatever the machine has
    code, out = validate(tmp_path, spec_file(tmp_path, with_value("backend.device", device)))
    if sys.platform.startswith("linux") and not os.path.exists("/dev/kfd"):
        assert code == 1 and "backend.device: device" in out and "not on this machine" in out
    # without a machine check (a spec read elsewhere, e.g. by `evaluate`) it is a valid device name
    assert load_spec(spec_file(tmp_path, with_value("backend.device", device))).backend.config.device == device


def test_jax_gpu_platform_without_gpus_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    raw = {**BASE, "backend": {"name": "jax", "platform": "gpu"}}
    code, out = validate(tmp_path, spec_file(tmp_path, raw))
    if sys.platform.startswith("linux") and not os.path.exists("/dev/kfd"):
        assert code == 1 and "platform 'gpu' needs a GPU" in out


def test_cuda_visible_devices_narrows_the_count(monkeypatch):
    from plmforge.core import devices

    monkeypatch.setattr(devices, "_nvidia_gpus_present", lambda: 4)
    monkeypatch.setattr(devices.sys, "platform", "linux")
    for visible, expected in [(None, 4), ("", 0), ("0,1", 2), ("3,5,1", 1), ("GPU-abc", 1), ("-1", 0)]:
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        if not os.path.exists("/dev/kfd"):
            assert devices.cuda_device_count() == expected, visible


# -- the spec file itself ----------------------------------------------------------------------------------
def _text(tmp_path):
    return yaml.safe_dump(BASE, sort_keys=False)


SPEC_BYTES = {
    "latin1_comment": (lambda t: ("# caf\xe9\n" + t).encode("latin-1"), "line 1: not a UTF-8 text file"),
    "utf16_bom": (lambda t: t.encode("utf-16"), "UTF-16"),
    "binary": (lambda t: bytes(range(256)), "not a UTF-8 text file"),
    "gzip": (lambda t: gzip.compress(t.encode()), "gzip-compressed"),
    "nul": (lambda t: t.encode() + b"\x00", "NUL byte"),
    "deep_flow": (lambda t: ("x: " + "[" * 20000 + "]" * 20000 + "\n").encode(), "nested too deeply"),
    "syntax": (lambda t: t.encode() + b"oops: [unclosed\n", "line "),
    "duplicate": (lambda t: t.encode() + b"seed: 1\nseed: 2\n", "duplicate key 'seed' (first given on line"),
}


@pytest.mark.parametrize("case", sorted(SPEC_BYTES))
def test_unreadable_spec_file_is_one_clear_error(tmp_path, case):
    make, expected = SPEC_BYTES[case]
    path = tmp_path / "spec.yaml"
    path.write_bytes(make(_text(tmp_path)))
    code, out = validate(tmp_path, path)
    assert code == 1 and out.startswith("error: ") and expected in out, out
    assert out.count("\n") <= 2


def test_duplicate_keys_name_both_lines(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: a\nobjectives:\n  - name: mlm\n    probabilities: [0.1]\n    probabilities: [0.2]\n")
    with pytest.raises(SpecError, match=r"line 5: duplicate key 'probabilities' \(first given on line 4\)"):
        load_spec(path)
    path = tmp_path / "spec.json"
    path.write_text('{"name": "a",\n "objectives": [{"name": "mlm",\n    "name": "completion"}]}')
    with pytest.raises(SpecError, match=r"line 3: duplicate key 'name' \(first given on line 2\)"):
        load_spec(path)


def test_yaml_merge_keys_may_still_override(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("base: &b {steps: 2, log_every: 1}\nname: a\nobjectives: [{name: mlm}]\n"
                    "training: {<<: *b, steps: 3}\n")
    with pytest.raises(SpecError, match="unknown key 'base'"):  # merging itself is fine; 'base' is not a key
        load_spec(path)


def test_set_keeps_the_line_numbers_of_other_errors(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: a\nobjectives:\n  - name: mlm\n    probabilites: [0.1]\ntraining:\n  steps: 3\n")
    code, out = validate(tmp_path, path, "--set", "training.steps=5", "--set", "training.log_every=0")
    assert code == 1
    assert "line 4: objectives[0]: unknown key 'probabilites'" in out
    assert "--set training.log_every=0: training.log_every: " in out


def test_plugins_command_never_cuts_an_error(monkeypatch):
    from plmforge.core.registry import Registry

    error = "No module named 'reverse_complement_objective_with_a_rather_long_module_name_that_is_cut'"
    real = Registry.try_load_all

    def with_broken(self):
        infos = real(self)
        return [*infos, dataclasses.replace(infos[0], name="broken", error=error, loaded=None)]

    monkeypatch.setattr(Registry, "try_load_all", with_broken)
    result = CliRunner().invoke(main, ["plugins"], terminal_width=80)
    assert result.exit_code == 0
    assert error in result.output
