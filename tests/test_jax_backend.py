"""The JAX backend on its own: bounded compilations, device meshes, precision, CLI and MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from helpers import tiny_spec_dict

pytest.importorskip("jax")

from plmforge.core.build import build_backend, build_objectives, make_planner  # noqa: E402
from plmforge.core.data.sources import load_splits  # noqa: E402
from plmforge.core.data.stream import ExampleStream  # noqa: E402
from plmforge.core.registry import Registry  # noqa: E402
from plmforge.core.spec import validate_spec  # noqa: E402
from plmforge.plugins.backends.jax.shapes import pad_batch, rung  # noqa: E402


def jax_raw(tmp_path, **training):
    raw = tiny_spec_dict(tmp_path, **training)
    raw["backend"] = {"name": "jax"}
    return raw


def built(raw):
    registry = Registry()
    spec = validate_spec(raw, registry=registry)
    vocab, slots = build_objectives(spec)
    stream = ExampleStream(slots[0].objective, load_splits(spec.data).splits["train"], make_planner(spec),
                           spec.seed, stream=0)
    return build_backend(spec, vocab, slots, registry), slots[0], stream


def test_ladder_rungs_are_multiples_and_grow_geometrically():
    assert [rung(n, 16, 1.25) for n in (1, 16, 17, 33, 65, 100, 257)] == [16, 16, 32, 48, 80, 112, 304]
    assert [rung(n, 16, 1.0) for n in (1, 17, 257)] == [16, 32, 272]  # 1.0: the planner's own rounding
    assert all(rung(n, 4, 1.25) % 4 == 0 and rung(n, 4, 1.25) >= n for n in range(1, 600))
    assert all(rung(n, 1, 1.5) <= 1.5 * n + 1 for n in range(1, 600))


def test_padded_rows_are_pad_values_and_shapes_are_few(tmp_path):
    raw = jax_raw(tmp_path)
    raw["data"]["max_length"] = 512
    raw["training"]["batch_size"] = {"tokens": 4096}
    _, slot, stream = built(raw)
    features = slot.objective.features()
    raw_shapes, padded_shapes = set(), set()
    for _ in range(300):
        arrays = stream.next().arrays
        padded = pad_batch(arrays, features, 1, 16, 1.25)
        rows = arrays["encoder_input_ids"].shape[0]
        for name, array in padded.items():
            assert array.shape[0] >= rows
            assert np.all(array[rows:] == features[name].pad_value)
            np.testing.assert_array_equal(array[tuple(slice(0, n) for n in arrays[name].shape)], arrays[name])
        raw_shapes.add(tuple(v.shape for v in arrays.values()))
        padded_shapes.add(tuple(v.shape for v in padded.values()))
    assert len(padded_shapes) <= 0.7 * len(raw_shapes)  # fewer shapes: fewer compilations


def test_compilations_are_counted_and_reused(tmp_path):
    backend, slot, stream = built(jax_raw(tmp_path))
    micro = [stream.next() for _ in range(3)]
    for batch in micro:
        backend.train_step({"mlm": [batch]}, 1e-3)
    first = backend.counters()["compilations"]
    for batch in micro:  # the same shapes again: no new compilation
        backend.train_step({"mlm": [batch]}, 1e-3)
    assert backend.counters()["compilations"] == first >= 2


def test_bf16_trains_close_to_fp32(tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        backend, _, stream = built(jax_raw(tmp_path, precision=precision))
        losses[precision] = [float(backend.train_step({"mlm": [stream.next()]}, 3e-3)["loss"][0]) for _ in range(4)]
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=2e-2)


def test_gradient_checkpointing_gives_the_same_step(tmp_path):
    results = []
    for remat in (False, True):
        raw = jax_raw(tmp_path)
        raw["model"]["gradient_checkpointing"] = remat
        backend, _, stream = built(raw)
        metrics = backend.train_step({"mlm": [stream.next()]}, 3e-3)
        results.append((float(metrics["loss"][0]), float(metrics["grad_norm"][0])))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5)


def test_resuming_with_another_backends_optimizer_state_is_refused(tmp_path):
    from plmforge.core.errors import CheckpointError

    backend, _, _ = built(jax_raw(tmp_path))
    with pytest.raises(CheckpointError, match="another backend"):
        backend.load_training_state({}, {"optimizer": "adamw", "framework": "torch"})


MESH_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    sys.path.insert(0, sys.argv[2])
    from test_jax_backend import built, jax_raw
    from pathlib import Path
    out = {}
    for devices, sharding in [(1, "data"), (4, "data"), (4, "fsdp")]:
        raw = jax_raw(Path(sys.argv[1]), gradient_accumulation=2,
                      optimizer={"name": sys.argv[3], "lr": 1e-2})
        raw["backend"].update(devices=devices, sharding=sharding)
        backend, _, stream = built(raw)
        losses = [float(backend.train_step({"mlm": [stream.next(), stream.next()]}, 1e-2)["loss"][0])
                  for _ in range(4)]
        impl = backend.engine
        name = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
        state_specs = {json.dumps(list(leaf.sharding.spec)) for leaf in jax.tree.leaves(impl.opt_state)
                       if leaf.shape == (64, 32)}
        out[f"{devices}-{sharding}"] = {
            "losses": losses, "weights": {k: v.tolist() for k, v in backend.weights().items() if "wi_0" in k},
            "param_spec": list(impl.params[name].sharding.spec), "state_specs": sorted(state_specs),
            "device": backend.describe()["device"]}
    print(json.dumps(out))
""")


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_four_device_mesh_matches_one_device(tmp_path, optimizer):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT, str(tmp_path), os.path.dirname(__file__), optimizer],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    single = out["1-data"]
    assert single["device"].startswith("1x") and out["4-fsdp"]["device"].startswith("4x")
    for key in ("4-data", "4-fsdp"):
        np.testing.assert_allclose(out[key]["losses"], single["losses"], rtol=1e-5)
        for name, value in single["weights"].items():  # looser: Adam magnifies differences in tiny gradients
            np.testing.assert_allclose(out[key]["weights"][name], value, rtol=1e-3, atol=1e-4)
    assert out["4-data"]["param_spec"] == []  # replicated
    assert out["4-fsdp"]["param_spec"] == ["data", None]  # split over the 4 devices
    if optimizer == "adamw":  # Adafactor's factored moments of this matrix are too small to split
        assert '["data", null]' in out["4-fsdp"]["state_specs"]  # the moments are split like the weight


@pytest.mark.slow
def test_cli_trains_on_jax_and_embeds_from_its_checkpoint(tmp_path):
    import mlflow

    raw = tiny_spec_dict(tmp_path, steps=4, log_every=2, eval_every=2, checkpoint_every=4)
    raw["backend"] = {"name": "torch"}  # no torch-only options, so --set backend.name=jax is all it takes
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(raw))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "plmforge.core.cli", *map(str, args)], capture_output=True,
                              text=True, timeout=600)

    for backend in ("torch", "jax"):
        proc = cli("train", spec_file, "--no-progress", "--set", f"backend.name={backend}",
                   "--set", f"output_dir={tmp_path / backend}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    fasta = tmp_path / "p.fasta"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMLSDEDFKAVFGMTRSAFANLPLWKQQNLKKEKGLF\n")
    proc = cli("embed", tmp_path / "jax" / "checkpoints" / "step-000004", fasta, "-o", tmp_path / "e.npy",
               "--per-protein")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.load(tmp_path / "e.npy").shape == (2, 32)

    mlflow.set_tracking_uri(raw["tracking"]["tracking_uri"])
    runs = {r.data.tags["plmforge.backend"]: r for r in
            mlflow.search_runs(experiment_names=["tests"], output_format="list")}
    torch_run, jax_run = runs["torch"], runs["jax"]
    assert set(torch_run.data.metrics) == set(jax_run.data.metrics)  # the runs compare side by side
    assert {k for k in torch_run.data.tags if k.startswith("plmforge.")} - {"plmforge.plugin.backend.torch"} == \
        {k for k in jax_run.data.tags if k.startswith("plmforge.")} - {"plmforge.plugin.backend.jax"}
    assert int(jax_run.data.tags["plmforge.backend.compilations"]) >= 2 and not any(
        k.startswith("backend/") for k in jax_run.data.metrics)
    assert jax_run.data.tags["plmforge.backend.framework"].startswith("jax ")
    for key in ("train/loss", "val/mlm/masked_residue_ce"):
        assert jax_run.data.metrics[key] == pytest.approx(torch_run.data.metrics[key], rel=0.05)


def test_standalone_model_draws_with_the_shared_standard_deviations():
    from flax import nnx

    from plmforge.core.initialization import init_std
    from plmforge.core.model_config import ModelConfig
    from plmforge.plugins.backends.jax.model import T5Model

    config = ModelConfig(preset=None, d_model=256, num_layers=2, num_decoder_layers=1, num_heads=8, d_kv=32,
                         d_ff=512, initializer_factor=0.5)
    model = T5Model(config, 144, heads={"profile": 64}, encoder_lm_head=True, rngs=nnx.Rngs(params=0))
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name, value = ".".join(map(str, path)), np.asarray(variable.get_value())
        std = init_std(name, config)
        if std is None:
            assert np.all(value == 0.5), name
        else:
            assert abs(value.std() / std - 1) < 0.1 and abs(value.mean()) < 0.1 * std, name
