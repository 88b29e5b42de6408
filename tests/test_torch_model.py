"""The PyTorch T5/Ankh model: Hugging Face parity (when transformers is installed) and its invariants."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import random_hf_t5

from plmforge.core.model_config import ModelConfig
from plmforge.plugins.backends.torch.model import T5Model, init_weights

VOCAB = 144
TINY = dict(preset=None, d_model=32, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=8, d_ff=48,
            relative_attention_num_buckets=8, relative_attention_max_distance=16)
HF_SHAPE = dict(d_model=64, num_layers=3, num_decoder_layers=2, num_heads=4, d_kv=16, d_ff=96,
                relative_attention_num_buckets=64, relative_attention_max_distance=128, dropout_rate=0.0)


def tiny_model(seed: int = 0, heads=None, encoder_lm_head: bool = False, **overrides) -> T5Model:
    config = ModelConfig(**{**TINY, "dropout_rate": 0.0, **overrides})
    model = T5Model(config, VOCAB, heads=heads or {}, encoder_lm_head=encoder_lm_head)
    init_weights(model, torch.Generator().manual_seed(seed))
    return model


def random_batch(lengths, seed: int = 0, total: int | None = None) -> torch.Tensor:
    """Residue ids ending in </s>, right-padded with 0 to ``total`` (default: the longest)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), total or max(lengths), dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(3, 28, (length,), generator=gen)
        ids[row, length - 1] = 1
    return ids


def decoder_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    ids = torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = 0  # decoder start token
    return ids


# -- parameter names --------------------------------------------------------------------------------------
def expected_keys(num_layers: int, num_decoder_layers: int, heads=(), encoder_lm_head=False) -> set[str]:
    keys = {"shared.weight", "encoder.final_layer_norm.weight",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"}
    for i in range(num_layers):
        p = f"encoder.block.{i}.layer"
        keys |= {f"{p}.0.SelfAttention.{w}.weight" for w in "qkvo"}
        keys |= {f"{p}.0.layer_norm.weight", f"{p}.1.layer_norm.weight"}
        keys |= {f"{p}.1.DenseReluDense.{w}.weight" for w in ("wi_0", "wi_1", "wo")}
    if num_decoder_layers:
        keys |= {"decoder.final_layer_norm.weight", "lm_head.weight",
                 "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"}
    for i in range(num_decoder_layers):
        p = f"decoder.block.{i}.layer"
        keys |= {f"{p}.0.SelfAttention.{w}.weight" for w in "qkvo"}
        keys |= {f"{p}.1.EncDecAttention.{w}.weight" for w in "qkvo"}
        keys |= {f"{p}.{j}.layer_norm.weight" for j in range(3)}
        keys |= {f"{p}.2.DenseReluDense.{w}.weight" for w in ("wi_0", "wi_1", "wo")}
    keys |= {f"heads.{name}.weight" for name in heads}
    if encoder_lm_head:
        keys.add("encoder_lm_head.weight")
    return keys


def test_state_dict_keys_match_hugging_face_names():
    model = tiny_model(heads={"ss3": 3, "profile": 20}, encoder_lm_head=True)
    state = model.state_dict()
    assert set(state) == expected_keys(2, 2, heads=("ss3", "profile"), encoder_lm_head=True)
    assert len(state) == len(list(model.parameters()))  # no shared/duplicated tensors
    assert state["encoder.block.0.layer.0.SelfAttention.q.weight"].shape == (16, 32)  # [out, in]
    assert state["encoder.block.1.layer.1.DenseReluDense.wo.weight"].shape == (32, 48)
    assert state["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape == (8, 2)
    assert state["lm_head.weight"].shape == state["encoder_lm_head.weight"].shape == (VOCAB, 32)
    assert state["heads.ss3.weight"].shape == (3, 32)


def test_encoder_only_model_has_no_decoder():
    model = tiny_model(num_decoder_layers=0, encoder_lm_head=True)
    assert set(model.state_dict()) == expected_keys(2, 0, encoder_lm_head=True)
    ids = random_batch([5, 3])
    out = model(ids, outputs=["encoder_hidden", "encoder_logits"])
    assert out["encoder_hidden"].shape == (2, 5, 32) and out["encoder_logits"].shape == (2, 5, VOCAB)
    with pytest.raises(ValueError, match="no decoder"):
        model(ids, decoder_ids(2, 4), outputs=["decoder_logits"])


def test_forward_returns_only_what_is_asked():
    model = tiny_model(heads={"ss3": 3}).eval()
    ids = random_batch([6, 4])
    assert set(model(ids, outputs=["ss3"])) == {"ss3"}  # no decoder ids needed: the decoder is not run
    out = model(ids, decoder_ids(2, 5), outputs=["decoder_hidden", "decoder_logits", "encoder_hidden"])
    assert set(out) == {"decoder_hidden", "decoder_logits", "encoder_hidden"}
    assert out["decoder_logits"].shape == (2, 5, VOCAB)
    torch.testing.assert_close(out["decoder_logits"], model.lm_head(out["decoder_hidden"]))
    with pytest.raises(ValueError, match="unknown outputs"):
        model(ids, outputs=["nope"])
    with pytest.raises(ValueError, match="encoder_lm_head"):
        model(ids, outputs=["encoder_logits"])
    with pytest.raises(ValueError, match="clash"):
        T5Model(ModelConfig(**TINY), VOCAB, heads={"decoder_logits": 3})


# -- invariants ---------------------------------------------------------------------------------------------
def test_padding_does_not_change_outputs():
    model = tiny_model(dropout_rate=0.1).eval()  # eval: dropout off
    dec = decoder_ids(1, 7)
    alone = random_batch([9])
    padded = torch.cat([random_batch([9], total=40), random_batch([40], seed=5)])
    with torch.no_grad():
        a = model(alone, dec, outputs=["encoder_hidden", "decoder_logits"])
        b = model(padded, dec.expand(2, -1), outputs=["encoder_hidden", "decoder_logits"])
    torch.testing.assert_close(b["encoder_hidden"][0, :9], a["encoder_hidden"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(b["decoder_logits"][0], a["decoder_logits"][0], atol=1e-5, rtol=1e-5)


def test_decoder_is_causal():
    model = tiny_model().eval()
    ids = random_batch([10, 6])
    dec = decoder_ids(2, 12)
    changed = dec.clone()
    changed[:, 7] = (changed[:, 7] + 1 - 3) % (VOCAB - 3) + 3
    with torch.no_grad():
        before = model(ids, dec)["decoder_logits"]
        after = model(ids, changed)["decoder_logits"]
    torch.testing.assert_close(after[:, :7], before[:, :7], atol=1e-6, rtol=0)
    assert (after[:, 7:] - before[:, 7:]).abs().amax(dim=-1).min() > 1e-4


def test_gradients_reach_every_parameter():
    model = tiny_model(heads={"ss3": 3}, encoder_lm_head=True, dropout_rate=0.1).train()
    ids = random_batch([8, 5])
    out = model(ids, decoder_ids(2, 6), outputs=["decoder_logits", "encoder_logits", "ss3"])
    sum(v.float().square().mean() for v in out.values()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_same_loss_and_gradients():
    plain = tiny_model(dropout_rate=0.1).train()
    ckpt = tiny_model(dropout_rate=0.1, gradient_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    ids, dec = random_batch([8, 5]), decoder_ids(2, 6)
    losses = []
    for model in (plain, ckpt):
        torch.manual_seed(123)  # same dropout masks; checkpoint replays the RNG when recomputing
        loss = model(ids, dec)["decoder_logits"].log_softmax(-1)[..., 3].mean()
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=0)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_bfloat16_autocast_runs_and_stays_close():
    model = tiny_model(heads={"ss3": 3}).eval()
    ids, dec = random_batch([12, 7]), decoder_ids(2, 5)
    with torch.no_grad():
        ref = model(ids, dec, outputs=["decoder_logits", "ss3"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(ids, dec, outputs=["decoder_logits", "ss3"])
    for name in ref:
        assert low[name].dtype == torch.bfloat16
        err = (low[name].float() - ref[name]).abs().max() / ref[name].abs().max()
        assert err < 0.05, (name, err)


# -- initialisation -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_init_matches_t5_standard_deviations(factor):
    config = ModelConfig(preset=None, d_model=256, num_layers=2, num_decoder_layers=1, num_heads=8, d_kv=32,
                         d_ff=512, initializer_factor=factor)
    model = T5Model(config, VOCAB, heads={"profile": 64}, encoder_lm_head=True)
    init_weights(model, torch.Generator().manual_seed(0))
    d, dkv, h, dff = 256, 32, 8, 512
    # output heads: d_model^-0.5 (plmforge's choice for O(1) initial logits; HF uses 1)
    expected = {"shared": 1.0, "lm_head": d ** -0.5, "encoder_lm_head": d ** -0.5, "profile": d ** -0.5,
                "q": (d * dkv) ** -0.5, "k": d ** -0.5, "v": d ** -0.5, "o": (h * dkv) ** -0.5,
                "relative_attention_bias": d ** -0.5, "wi_0": d ** -0.5, "wi_1": d ** -0.5, "wo": dff ** -0.5}
    for name, param in model.named_parameters():
        module = name.split(".")[-2]  # e.g. "q" in encoder.block.0.layer.0.SelfAttention.q.weight
        if module.endswith("layer_norm"):
            assert torch.all(param == factor), name
            continue
        std = factor * expected[module]
        assert abs(param.std().item() / std - 1) < 0.1, name
        assert abs(param.mean().item()) < 0.1 * std, name


def test_init_is_deterministic_for_a_seed():
    a, b, c = tiny_model(seed=7), tiny_model(seed=7), tiny_model(seed=8)
    for (name, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(p, q), name
        assert "layer_norm" in name or not torch.equal(p, r), name


# -- Hugging Face parity (needs transformers) -------------------------------------------------------------------
def hf_model(feed_forward_proj: str):
    pytest.importorskip("transformers")
    return random_hf_t5(VOCAB, HF_SHAPE, feed_forward_proj)


def our_model(feed_forward_proj: str) -> T5Model:
    return T5Model(ModelConfig(preset=None, feed_forward_proj=feed_forward_proj, **HF_SHAPE), VOCAB).eval()


def assert_same_outputs(hf, ours):
    # Lengths beyond relative_attention_max_distance=128 reach the far buckets in both stacks.
    ids = random_batch([200, 150, 7], seed=3)
    dec = decoder_ids(3, 140, seed=4)
    dec[2, 30:] = 0  # decoder padding at the end
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=(ids != 0).long(), decoder_input_ids=dec)
        mine = ours(ids, dec, outputs=["encoder_hidden", "decoder_logits"])
    torch.testing.assert_close(mine["encoder_hidden"], theirs.encoder_last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine["decoder_logits"], theirs.logits, atol=1e-5, rtol=0)


TIED_EMBEDDINGS = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}


@pytest.mark.parametrize("feed_forward_proj", ["gated-gelu", "gated-silu"])
def test_matches_hugging_face_t5(feed_forward_proj):
    hf = hf_model(feed_forward_proj)
    ours = our_model(feed_forward_proj)
    ours.load_state_dict({k: v for k, v in hf.state_dict().items() if k not in TIED_EMBEDDINGS}, strict=True)
    assert_same_outputs(hf, ours)


@pytest.mark.parametrize("feed_forward_proj", ["gated-gelu", "gated-silu"])
def test_our_weights_load_into_hugging_face(feed_forward_proj, tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    ours = our_model(feed_forward_proj)
    init_weights(ours, torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours.lm_head.weight.mul_(HF_SHAPE["d_model"] ** -0.5)  # O(1) logits, as in hf_model
    hf = hf_model(feed_forward_proj)  # lm_head already untied from shared
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    assert set(missing) <= TIED_EMBEDDINGS and not unexpected
    assert_same_outputs(hf, ours)

    # The export path: safetensors + ModelConfig.hf_config as config.json, read by from_pretrained.
    save_file(ours.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(ours.config.hf_config(VOCAB)))
    loaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert_same_outputs(loaded, ours)


def test_learned_mask_attention_path_equals_sdpa():
    """The CPU training path for attention with a differentiable bias matches PyTorch's SDPA."""
    from plmforge.plugins.backends.torch.model import _attention_with_learned_mask

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 17, 8, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 2, 17, 17, requires_grad=True)
    keep = torch.ones(3, 17, dtype=torch.bool)
    keep[1, 11:] = False
    mask = torch.where(keep[:, None, None, :], bias, torch.finfo(torch.float32).min)
    ours = _attention_with_learned_mask(q, k, v, mask, dropout=0.0)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(ours.square().sum(), (q, k, v, bias), retain_graph=True)
    expected = torch.autograd.grad(reference.square().sum(), (q, k, v, bias))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
