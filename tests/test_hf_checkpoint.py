"""Hugging Face T5 checkpoints (Ankh's and ProtT5's format) in and out: ``model.init_from`` and ``plmforge convert``.

Reference outputs come from transformers itself (a dev/test dependency): a randomly initialised
Ankh-shaped ``T5ForConditionalGeneration`` saved with ``save_pretrained``. Layer norms and position
biases are perturbed and the LM head is untied, so a mix-up in any of them shows in the outputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import random_hf_t5, tiny_spec_dict

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from plmforge.core import checkpoint as ckpt  # noqa: E402
from plmforge.core import run as run_module  # noqa: E402
from plmforge.core.build import build_backend, build_objectives, merged_needs  # noqa: E402
from plmforge.core.checkpoint import read_hf_checkpoint, read_safetensors  # noqa: E402
from plmforge.core.cli import main  # noqa: E402
from plmforge.core.conversion import load_init_from, parameter_shapes  # noqa: E402
from plmforge.core.embedding import load_model  # noqa: E402
from plmforge.core.errors import CheckpointError, SpecError  # noqa: E402
from plmforge.core.hookspecs import hookimpl  # noqa: E402
from plmforge.core.initialization import initial_weights  # noqa: E402
from plmforge.core.registry import Registry  # noqa: E402
from plmforge.core.run import Trainer  # noqa: E402
from plmforge.core.spec import validate_spec  # noqa: E402
from plmforge.core.vocab import Vocab  # noqa: E402

VOCAB = 144
SHAPE = dict(d_model=64, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16, d_ff=96,
             relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0)
ALIASES = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
GFP = ("MSKGEELFTGVVPILVELDGDVNGHKFSVSGEGEGDATYGKLTLKFICTTGKLPVPWPTLVTTFSYGVQCFSRYPDHMKQHDFFKSAMPEGYVQERTIFF"
       "KDDGNYKTRAEVKFEGDTLVNRIELKGIDFKEDGNILGHKLEYNYNSHNVYIMADKQKNGIKVNFKIRHNIEDGSVQLADHYQQNTPIGDGPVLLPDNHYLS"
       "TQSALSKDPNEKRDHMVLLEFVTAAGITHGMDELYK")  # 238 residues: beyond relative_attention_max_distance
UBIQUITIN = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"
PROTEINS = [GFP, UBIQUITIN, "GIGKFLHSAKKFGKAFVGEIMNS"]  # the last: magainin 2


# -- Hugging Face models --------------------------------------------------------------------------------
def hf_t5(tie: bool = False, encoder_only: bool = False, vocab: int = VOCAB, feed_forward_proj: str = "gated-gelu",
          seed: int = 0):
    return random_hf_t5(vocab, SHAPE, feed_forward_proj, tie=tie, encoder_only=encoder_only, seed=seed)


def save(model, path, **kwargs):
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    return path


@pytest.fixture(scope="module")
def ankh(tmp_path_factory):
    """An Ankh-like checkpoint directory and the transformers model it holds."""
    model = hf_t5()
    return save(model, tmp_path_factory.mktemp("ankh") / "ankh-like"), model


@pytest.fixture(scope="module")
def registry():
    return Registry()


def batch(vocab: Vocab):
    """Padded encoder ids of PROTEINS and unpadded decoder ids (start token, then residues) longer than 128."""
    encoded = [vocab.encode(p) for p in PROTEINS]
    ids = np.zeros((len(encoded), max(map(len, encoded))), np.int32)
    for row, e in enumerate(encoded):
        ids[row, :len(e)] = e
    gfp = vocab.encode_residues(GFP)
    dec = np.stack([np.concatenate([[0], gfp[10 * r:10 * r + 139]]) for r in range(len(PROTEINS))]).astype(np.int32)
    return ids, dec


def hf_outputs(model, ids, dec=None):
    with torch.no_grad():
        if dec is None:
            out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(ids != 0).long())
            return out.last_hidden_state.numpy(), None
        out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(ids != 0).long(),
                    decoder_input_ids=torch.from_numpy(dec).long())
    return out.encoder_last_hidden_state.numpy(), out.logits.numpy()


def plmforge_backend(registry, init_from, backend="torch", objectives=None, **model):
    raw = {"name": "from-hf", "model": {"init_from": str(init_from), **model},
           "backend": {"name": backend, **({"threads": 1} if backend == "torch" else {"platform": "cpu"})},
           "objectives": objectives or [{"name": "mlm"}], "tracking": {"enabled": False}}
    spec = validate_spec(raw, registry=registry)
    vocab, slots = build_objectives(spec)
    built = build_backend(spec, vocab, slots, registry)
    load_init_from(built, spec.model.init_from, vocab.tokens)
    return built, vocab, spec


def assert_same_encoder(ours, theirs, ids):
    keep = ids != 0
    np.testing.assert_allclose(ours[keep], theirs[keep], atol=1e-4, rtol=0)


# -- reading ----------------------------------------------------------------------------------------------
def test_reads_every_tensor_and_the_shape(ankh):
    path, model = ankh
    shape, weights, vocab_size = read_hf_checkpoint(path)
    assert vocab_size == VOCAB
    assert shape == {**SHAPE, "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "initializer_factor": 1.0}
    reference = {k: v.numpy() for k, v in model.state_dict().items() if k not in ALIASES}
    assert set(weights) == set(reference)
    for name, value in reference.items():
        assert weights[name].dtype == np.float32
        np.testing.assert_array_equal(weights[name], value, err_msg=name)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_outputs_equal_transformers(ankh, registry, backend):
    if backend == "jax":
        pytest.importorskip("jax")
    path, model = ankh
    ours, vocab, spec = plmforge_backend(registry, path, backend)
    assert spec.model.d_model == 64 and spec.model.preset is None and len(vocab) == VOCAB
    ids, dec = batch(vocab)
    hidden, logits = hf_outputs(model, ids, dec)
    assert_same_encoder(ours.embed(ids), hidden, ids)
    np.testing.assert_allclose(ours.decoder_logits(ids, dec), logits, atol=1e-4, rtol=0)


def test_spec_takes_the_shape_from_the_checkpoint(ankh, registry, tmp_path):
    path, _ = ankh
    raw = {"name": "x", "objectives": [{"name": "mlm"}],
           "model": {"init_from": str(path), "d_model": 64, "dropout_rate": 0.3, "gradient_checkpointing": True}}
    model = validate_spec(raw, registry=registry).model
    assert (model.num_layers, model.d_ff, model.relative_attention_num_buckets) == (2, 96, 32)
    assert model.dropout_rate == 0.3 and model.gradient_checkpointing  # training choices stay the spec's
    # a resolved spec (as saved with a run) validates again, even once the checkpoint has moved away
    resolved = validate_spec({**raw, "model": {**model.model_dump(), "init_from": str(path / "gone")}},
                             registry=registry)
    assert resolved.model == model.model_copy(update={"init_from": str(path / "gone")})
    spec_file = tmp_path / "resolved.yaml"  # ... but `plmforge validate` says it cannot train from it
    spec_file.write_text(resolved.to_yaml())
    out = CliRunner().invoke(main, ["validate", str(spec_file)])
    assert out.exit_code == 1 and "model.init_from" in out.output and "gone' does not exist" in out.output
    # num_decoder_layers: 0 keeps the encoder only
    encoder = validate_spec({**raw, "objectives": [{"name": "bert_mlm"}],
                             "model": {"init_from": str(path), "num_decoder_layers": 0}}, registry=registry)
    assert encoder.model.num_decoder_layers == 0 and encoder.model.num_layers == 2


def test_conflicting_spec_field_is_a_spec_error(ankh, registry):
    path, _ = ankh
    raw = {"name": "x", "objectives": [{"name": "mlm"}], "model": {"init_from": str(path), "d_model": 32}}
    with pytest.raises(SpecError) as error:
        validate_spec(raw, registry=registry)
    message = str(error.value)
    assert "model.d_model is 32" in message and "64 in" in message and "config.json" in message
    raw["model"] = {"init_from": str(path), "preset": "ankh-base"}  # an explicit preset sets the shape too
    with pytest.raises(SpecError, match="model.num_layers is 48 here but 2"):
        validate_spec(raw, registry=registry)


def test_missing_init_from_is_a_clear_error(tmp_path, registry):
    raw = {"name": "x", "objectives": [{"name": "mlm"}], "model": {"init_from": "no/such/ankh"}}
    with pytest.raises(SpecError) as error:
        validate_spec(raw, registry=registry)
    assert "model.init_from 'no/such/ankh' does not exist" in str(error.value)
    assert "working directory" in str(error.value)
    empty_run = tmp_path / "run"
    (empty_run / "checkpoints").mkdir(parents=True)
    with pytest.raises(SpecError, match="run directory without a complete checkpoint"):
        validate_spec({**raw, "model": {"init_from": str(empty_run)}}, registry=registry)


@pytest.mark.parametrize("dtype,stored", [(torch.bfloat16, "BF16"), (torch.float16, "F16")])
def test_half_precision_checkpoints_load_as_float32(tmp_path, dtype, stored):
    model = hf_t5().to(dtype)
    path = save(model, tmp_path / "half")
    header_size = int.from_bytes((path / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((path / "model.safetensors").read_bytes()[8:8 + header_size])
    assert header["shared.weight"]["dtype"] == stored
    _, weights, _ = read_hf_checkpoint(path)
    for name, value in model.state_dict().items():
        if name not in ALIASES:
            assert weights[name].dtype == np.float32
            np.testing.assert_array_equal(weights[name], value.float().numpy(), err_msg=name)


def test_sharded_checkpoint_loads(tmp_path, ankh):
    _, model = ankh
    path = save(model, tmp_path / "sharded", max_shard_size="100KB")
    assert (path / "model.safetensors.index.json").is_file() and not (path / "model.safetensors").exists()
    assert len(list(path.glob("model-*.safetensors"))) > 1
    _, weights, _ = read_hf_checkpoint(path)
    for name, value in model.state_dict().items():
        if name not in ALIASES:
            np.testing.assert_array_equal(weights[name], value.numpy(), err_msg=name)


def test_tied_embeddings_convert_exactly(tmp_path, registry):
    model = hf_t5(tie=True)  # original T5: lm_head is shared, decoder output scaled by d_model**-0.5
    path = save(model, tmp_path / "tied")
    _, weights, _ = read_hf_checkpoint(path)
    np.testing.assert_array_equal(weights["lm_head.weight"],
                                  model.shared.weight.detach().numpy() * np.float32(SHAPE["d_model"] ** -0.5))
    ours, vocab, _ = plmforge_backend(registry, path)
    ids, dec = batch(vocab)
    hidden, logits = hf_outputs(model, ids, dec)
    assert_same_encoder(ours.embed(ids), hidden, ids)
    np.testing.assert_allclose(ours.decoder_logits(ids, dec), logits, atol=1e-4, rtol=0)


def test_encoder_only_checkpoint_loads_as_encoder_only_model(tmp_path, registry):
    model = hf_t5(encoder_only=True)
    path = save(model, tmp_path / "encoder")
    shape, weights, _ = read_hf_checkpoint(path)
    assert shape["num_decoder_layers"] == 0 and not any(k.startswith("decoder.") for k in weights)
    # bert_mlm adds [MASK] (vocabulary 145) and an encoder LM head: both keep the run's fresh initialisation
    ours, vocab, spec = plmforge_backend(registry, path, objectives=[{"name": "bert_mlm"}])
    assert spec.model.num_decoder_layers == 0 and len(vocab) == VOCAB + 1
    ids, _ = batch(vocab)
    assert_same_encoder(ours.embed(ids), hf_outputs(model, ids)[0], ids)
    loaded = ours.weights()
    fresh = initial_weights({k: v.shape for k, v in loaded.items()}, spec.model, spec.seed)
    np.testing.assert_array_equal(loaded["shared.weight"][:VOCAB], weights["shared.weight"])
    np.testing.assert_array_equal(loaded["shared.weight"][VOCAB:], fresh["shared.weight"][VOCAB:])
    np.testing.assert_array_equal(loaded["encoder_lm_head.weight"], fresh["encoder_lm_head.weight"])
    # the plmforge model's parameters are what parameter_shapes says, without building it
    needs = merged_needs(build_objectives(spec)[1])
    assert parameter_shapes(spec.model, len(vocab), needs.encoder_lm) == {k: v.shape for k, v in loaded.items()}


def test_vocabulary_rows_are_appended_or_refused(ankh, tmp_path, registry):
    path, _ = ankh
    _, weights, _ = read_hf_checkpoint(path)
    # [NLU] and [S2S] (ids 144, 145) are new: the checkpoint's 144 rows are kept, the rest is fresh
    ours, vocab, spec = plmforge_backend(registry, path, objectives=[{"name": "mlm", "prefix": "[NLU]"}])
    assert len(vocab) == VOCAB + 2
    loaded = ours.weights()
    fresh = initial_weights({k: v.shape for k, v in loaded.items()}, spec.model, spec.seed)
    for name in ("shared.weight", "lm_head.weight"):
        np.testing.assert_array_equal(loaded[name][:VOCAB], weights[name])
        np.testing.assert_array_equal(loaded[name][VOCAB:], fresh[name][VOCAB:])
    bigger = save(hf_t5(vocab=150), tmp_path / "bigger")
    with pytest.raises(CheckpointError, match="vocabulary of 150 tokens, more than this run's 144"):
        plmforge_backend(registry, bigger)
    with pytest.raises(CheckpointError, match="vocabulary of 150 tokens"):
        CliRunner().invoke(main, ["--debug", "convert", str(bigger), str(tmp_path / "out")], catch_exceptions=False)


def test_pickle_only_directory_is_refused(tmp_path, registry):
    path = tmp_path / "pickled"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "t5", "feed_forward_proj": "gated-gelu"}))
    (path / "pytorch_model.bin").write_bytes(b"never read")
    with pytest.raises(CheckpointError) as error:
        read_hf_checkpoint(path)
    message = str(error.value)
    assert "pytorch_model.bin" in message and "never unpickles" in message
    assert "save_pretrained(dir, safe_serialization=True)" in message
    with pytest.raises(SpecError, match="pytorch_model.bin"):
        validate_spec({"name": "x", "objectives": [{"name": "mlm"}], "model": {"init_from": str(path)}},
                      registry=registry)


def test_t5_v1_0_relu_checkpoint_is_refused(tmp_path):
    path = save(hf_t5(feed_forward_proj="relu"), tmp_path / "t5-relu")
    with pytest.raises(CheckpointError) as error:
        read_hf_checkpoint(path)
    message = str(error.value)
    assert str(path / "config.json") in message and "feed_forward_proj 'relu'" in message
    assert "gated-gelu" in message


# -- training from a checkpoint, and exporting the result --------------------------------------------------
class Capture:
    """Records the backend's weights when the run starts (after init_from or resume loaded them)."""

    def __init__(self):
        self.backend = None
        self.slots = None
        self.start = None

    @hookimpl
    def plmforge_run_start(self, run, resumed_from_step):
        self.start = self.backend.weights()


def run_with_capture(spec, resume=False):
    capture = Capture()
    real = run_module.build_backend

    def spy(spec, vocab, slots, registry):
        capture.backend, capture.slots = real(spec, vocab, slots, registry), slots
        return capture.backend

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "build_backend", spy)
        trainer = Trainer(spec, hooks=[capture], show_progress=False)
        result = trainer.run(resume=resume)
    return result, capture, trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ankh):
    """Two steps of mlm + bert_mlm from the Ankh-like checkpoint (vocabulary 145 with [MASK])."""
    path, _ = ankh
    raw = tiny_spec_dict(tmp_path_factory.mktemp("init"), steps=2, eval_every=2, checkpoint_every=2)
    raw["model"] = {"init_from": str(path)}
    raw["objectives"] = [{"name": "mlm", "probabilities": [0.15]}, {"name": "bert_mlm"}]
    raw["tracking"]["enabled"] = False
    spec = validate_spec(raw)
    result, capture, trainer = run_with_capture(spec)
    return raw, spec, result, capture, trainer


def test_training_starts_from_init_from(trained, ankh):
    _, spec, result, capture, trainer = trained
    _, weights, _ = read_hf_checkpoint(ankh[0])
    assert result.status == "finished" and result.step == 2
    start = capture.start
    fresh = initial_weights({k: v.shape for k, v in start.items()}, spec.model, spec.seed)
    for name, value in weights.items():
        np.testing.assert_array_equal(start[name][:len(value)], value, err_msg=name)
    np.testing.assert_array_equal(start["shared.weight"][VOCAB:], fresh["shared.weight"][VOCAB:])  # [MASK]
    np.testing.assert_array_equal(start["encoder_lm_head.weight"], fresh["encoder_lm_head.weight"])
    final = ckpt.load_checkpoint(result.checkpoint).weights
    assert not np.array_equal(final["encoder.block.0.layer.0.SelfAttention.q.weight"],
                              weights["encoder.block.0.layer.0.SelfAttention.q.weight"])  # and it trained
    tags = trainer._tags(capture.backend, capture.slots, {})
    assert tags["plmforge.init_from"] == str(ankh[0].resolve())


def test_resume_continues_from_the_run_not_init_from(trained):
    raw, _, result, _, _ = trained
    raw = {**raw, "training": {**raw["training"], "steps": 3}}
    resumed, capture, _ = run_with_capture(validate_spec(raw), resume=True)
    assert resumed.step == 3
    saved = ckpt.load_checkpoint(result.checkpoint).weights
    for name, value in saved.items():
        np.testing.assert_array_equal(capture.start[name], value, err_msg=name)


def convert(*args):
    return CliRunner().invoke(main, ["convert", *map(str, args)])


def test_plmforge_checkpoint_exports_to_transformers(trained, tmp_path):
    _, _, result, _, _ = trained
    run_dir = result.checkpoint.parent.parent
    out = convert(run_dir, tmp_path / "hf")  # a run directory: its latest checkpoint, exported to hf by default
    assert out.exit_code == 0, out.output
    assert "left out (not T5 parameters): encoder_lm_head.weight" in out.output
    assert "AutoTokenizer.from_pretrained" in out.output
    exported = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    ours, vocab = load_model(run_dir)
    assert len(vocab) == VOCAB + 1 and exported.config.vocab_size == VOCAB + 1
    ids, dec = batch(vocab)
    # the whole export: its tokenizer gives the ids plmforge uses ([MASK] of bert_mlm included), and the
    # model run on them gives plmforge's encoder states and logits
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.mask_token_id == vocab.token_id("[MASK]") == VOCAB
    np.testing.assert_array_equal(tokenizer(PROTEINS, padding=True, return_tensors="np")["input_ids"], ids)
    hidden, logits = hf_outputs(exported, ids, dec)
    assert_same_encoder(ours.embed(ids), hidden, ids)
    np.testing.assert_allclose(ours.decoder_logits(ids, dec), logits, atol=1e-4, rtol=0)


def test_hf_to_plmforge_to_hf_preserves_every_tensor(ankh, tmp_path):
    path, model = ankh
    out = convert(path, tmp_path / "plm")  # a Hugging Face directory: to plmforge by default
    assert out.exit_code == 0, out.output
    assert "wrote plmforge checkpoint" in out.output and "freshly initialised" not in out.output
    assert (tmp_path / "plm" / "trainer_state.json").is_file()
    ours, vocab = load_model(tmp_path / "plm")  # what `plmforge embed` and `evaluate` do: a strict load
    ids, dec = batch(vocab)
    hidden, logits = hf_outputs(model, ids, dec)
    assert_same_encoder(ours.embed(ids), hidden, ids)
    np.testing.assert_allclose(ours.decoder_logits(ids, dec), logits, atol=1e-4, rtol=0)
    assert convert(tmp_path / "plm", tmp_path / "hf").exit_code == 0
    original, again = (read_safetensors(p / "model.safetensors") for p in (path, tmp_path / "hf"))
    assert set(again) == set(original) - ALIASES
    for name, value in again.items():
        np.testing.assert_array_equal(value, original[name], err_msg=name)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert {k: config[k] for k in SHAPE} == SHAPE and config["vocab_size"] == VOCAB


def test_encoder_only_round_trip_through_convert(tmp_path):
    model = hf_t5(encoder_only=True)
    path = save(model, tmp_path / "encoder")
    out = convert(path, tmp_path / "plm")
    assert out.exit_code == 0, out.output
    assert "bert_mlm" in out.output and "encoder_lm_head.weight" in out.output  # freshly initialised
    ours, vocab = load_model(tmp_path / "plm")
    ids, _ = batch(vocab)
    assert_same_encoder(ours.embed(ids), hf_outputs(model, ids)[0], ids)
    assert convert(tmp_path / "plm", tmp_path / "hf").exit_code == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["T5EncoderModel"]
    exported = transformers.T5EncoderModel.from_pretrained(tmp_path / "hf").eval()
    assert_same_encoder(hf_outputs(exported, ids)[0], hf_outputs(model, ids)[0], ids)


def test_convert_refuses_a_non_empty_destination(ankh, tmp_path):
    path, _ = ankh
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    out = convert(path, dest)
    assert out.exit_code == 1 and "is not empty" in out.output and "--force" in out.output
    assert (dest / "notes.txt").read_text() == "keep me"
    out = convert(path, dest, "--force", "--to", "hf")
    assert out.exit_code == 0, out.output
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors", "special_tokens_map.json",
                                                      "tokenizer.json", "tokenizer_config.json"]
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".stale-*"))
    out = convert(tmp_path / "nowhere", tmp_path / "x")
    assert out.exit_code == 1 and "SOURCE" in out.output and "does not exist" in out.output


def test_exported_tokenizer_follows_the_source_vocabulary(tmp_path):
    """A Hugging Face source is read as Ankh's vocabulary, plus Ankh3's prefixes for one or two more rows;
    of any other size the tokens are unknown, and no tokenizer is written."""
    ankh3 = save(hf_t5(vocab=VOCAB + 2), tmp_path / "ankh3-like")
    assert convert(ankh3, tmp_path / "hf3", "--to", "hf").exit_code == 0
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf3")
    assert tokenizer("[NLU]MK")["input_ids"] == Vocab(["[NLU]"]).encode("MK", prefix="[NLU]").tolist()
    assert tokenizer.convert_tokens_to_ids(["[NLU]", "[S2S]"]) == [VOCAB, VOCAB + 1]
    other = save(hf_t5(vocab=200), tmp_path / "other")
    out = convert(other, tmp_path / "hf", "--to", "hf")
    assert out.exit_code == 0, out.output
    assert "no tokenizer files" in out.output and not (tmp_path / "hf" / "tokenizer.json").exists()


# -- the format's pieces -------------------------------------------------------------------------------------
def test_an_interrupted_directory_write_keeps_what_was_there(tmp_path):
    dest = tmp_path / "out" / "ckpt"
    with ckpt.atomic_directory(dest) as work:
        (work / "a.txt").write_text("first")
    with pytest.raises(KeyboardInterrupt), ckpt.atomic_directory(dest) as work:
        (work / "a.txt").write_text("half")
        raise KeyboardInterrupt
    assert (dest / "a.txt").read_text() == "first" and [p.name for p in dest.parent.iterdir()] == ["ckpt"]
    with ckpt.atomic_directory(dest) as work:  # a complete write replaces the directory whole
        (work / "b.txt").write_text("second")
    assert [p.name for p in dest.iterdir()] == ["b.txt"] and [p.name for p in dest.parent.iterdir()] == ["ckpt"]


def test_trainer_state_records_the_tokens_beyond_the_ankh_vocabulary():
    vocab = Vocab(["[MASK]", "[NLU]"])
    state = ckpt.trainer_state(vocab.tokens, "torch", converted_from="x")
    assert state["vocab"] == list(vocab.extra_tokens) == vocab.tokens[144:] and "[MASK]" in state["vocab"]
    assert state["backend_name"] == "torch" and state["converted_from"] == "x" and "step" not in state


def test_the_converted_spec_names_the_objective_a_plugin_offers(registry):
    from plmforge.core.conversion import conversion_objective
    from plmforge.core.errors import PluginError

    assert conversion_objective(registry, has_decoder=True) == "mlm"
    assert conversion_objective(registry, has_decoder=False) == "bert_mlm"

    class Offers:  # a registry of a broken plugin and one that offers itself for encoder-only models
        plugins = {"a_broken": None, "b_encoder": type("Encoder", (), {"conversion_default": ("encoder",)})}

        def names(self, kind):
            return sorted(self.plugins)

        def load(self, kind, name):
            if self.plugins[name] is None:
                raise PluginError("broken")
            return self.plugins[name]

    assert conversion_objective(Offers(), has_decoder=False) == "b_encoder"
    with pytest.raises(CheckpointError, match="no installed objective plugin offers to train an encoder-decoder"):
        conversion_objective(Offers(), has_decoder=True)
