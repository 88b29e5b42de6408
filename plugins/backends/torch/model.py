"""The Ankh / T5 v1.1 encoder-decoder in plain PyTorch, readable top to bottom.

Parameter names and layouts are exactly those of Hugging Face ``T5ForConditionalGeneration`` so that
``state_dict()`` loads into it (and Ankh checkpoints load here) without renaming. The T5 v1.1 recipe:

* pre-layer RMSNorm (no bias, no mean centring, variance in float32);
* relative position bias computed once per stack by the first layer and shared by all layers
  (bidirectional buckets in the encoder, causal buckets in the decoder);
* no 1/sqrt(d_kv) scaling of attention scores (the initialisation of ``q`` absorbs it);
* gated feed-forward ``wo(act(wi_0 x) * wi_1 x)`` with tanh-GELU ("gated-gelu") or SiLU ("gated-silu");
* no biases anywhere, untied LM head, unscaled embeddings and decoder outputs;
* dropout where Hugging Face puts it.

Extra heads that T5 lacks: ``encoder_lm_head`` (token logits over the encoder, for masked language
modelling on an encoder) and ``heads[name]`` (per-residue linear heads over the encoder output).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from plmforge.core.initialization import init_std
from plmforge.core.model_config import ModelConfig
from plmforge.core.model_outputs import BUILTIN_OUTPUTS, compute_outputs

PAD_ID = 0  # also the decoder start token, as in T5


# -- building blocks --------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """T5LayerNorm: scale by the root mean square (computed in float32); no bias, no mean subtraction."""

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):  # half weights: return half, like HF
            x = x.to(self.weight.dtype)
        return self.weight * x


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """Hugging Face's ``T5Attention._relative_position_bucket`` (from Mesh TensorFlow), unchanged.

    ``relative_position`` is key position minus query position. Half of the buckets (per direction
    when bidirectional) hold exact small distances, the rest log-spaced distances up to
    ``max_distance``; farther distances share the last bucket. Unidirectional (decoder) buckets only
    distinguish keys in the past.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        relative_position = relative_position.abs()
    else:
        relative_position = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    if_large = max_exact + (
        torch.log(relative_position.float() / max_exact) / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).long()
    if_large = torch.clamp(if_large, max=num_buckets - 1)
    return buckets + torch.where(is_small, relative_position, if_large)


class Attention(nn.Module):
    """Multi-head attention without biases or score scaling; the additive mask carries the position bias.

    Only the first self-attention layer of each stack owns ``relative_attention_bias``; the stack
    asks it for the bias once per forward and hands the resulting mask to every layer.
    """

    def __init__(self, config: ModelConfig, has_relative_bias: bool, bidirectional: bool):
        super().__init__()
        inner = config.num_heads * config.d_kv
        self.num_heads, self.d_kv = config.num_heads, config.d_kv
        self.dropout = config.dropout_rate
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        if has_relative_bias:
            self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)
            self.bidirectional = bidirectional
            self.num_buckets = config.relative_attention_num_buckets
            self.max_distance = config.relative_attention_max_distance

    def position_bias(self, query_length: int, key_length: int, device: torch.device) -> torch.Tensor:
        """Learned bias per head and relative distance, [1, heads, query_length, key_length], float32."""
        query_pos = torch.arange(query_length, device=device)[:, None]
        key_pos = torch.arange(key_length, device=device)[None, :]
        buckets = relative_position_bucket(key_pos - query_pos, self.bidirectional, self.num_buckets,
                                           self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` attends to itself, or to ``context`` (cross-attention); ``mask`` is added to the scores."""
        context = x if context is None else context
        batch, q_len, _ = x.shape
        k_len = context.shape[1]
        q = self.q(x).view(batch, q_len, self.num_heads, self.d_kv).transpose(1, 2)
        k = self.k(context).view(batch, k_len, self.num_heads, self.d_kv).transpose(1, 2)
        v = self.v(context).view(batch, k_len, self.num_heads, self.d_kv).transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        mask = mask.to(q.dtype)
        if q.device.type == "cpu" and torch.is_grad_enabled():
            out = _attention_with_learned_mask(q, k, v, mask, dropout)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=1.0)
        return self.o(out.transpose(1, 2).reshape(batch, q_len, self.num_heads * self.d_kv))


def _attention_with_learned_mask(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                                 dropout: float) -> torch.Tensor:
    """Attention for training on CPU: matmul, softmax, matmul.

    PyTorch's CPU flash kernel cannot differentiate the mask (the position bias), so SDPA falls back
    to its math path, whose NaN-safe softmax costs about a tenth of a training step in extra passes;
    and for the cross-attention, whose mask needs no gradient, the flash kernel's backward is slower
    than these three ops at protein lengths (measured with benchmarks/train_vs_transformers.py).
    Our masks are finite (finfo.min, never -inf), so a plain softmax is safe and equal.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) + mask
    probs = torch.softmax(scores, dim=-1)
    if dropout > 0.0:
        probs = F.dropout(probs, p=dropout, training=True)
    return torch.matmul(probs, v)


class SelfAttentionLayer(nn.Module):
    """Pre-norm self-attention with a residual connection (HF ``T5LayerSelfAttention``)."""

    def __init__(self, config: ModelConfig, has_relative_bias: bool, bidirectional: bool):
        super().__init__()
        self.SelfAttention = Attention(config, has_relative_bias, bidirectional)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.SelfAttention(self.layer_norm(x), mask))


class CrossAttentionLayer(nn.Module):
    """Pre-norm attention from the decoder to the encoder output (HF ``T5LayerCrossAttention``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.EncDecAttention = Attention(config, has_relative_bias=False, bidirectional=True)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.EncDecAttention(self.layer_norm(x), mask, context))


class GatedFeedForward(nn.Module):
    """``wo(dropout(act(wi_0 x) * wi_1 x))`` (HF ``T5DenseGatedActDense``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.gelu = config.feed_forward_proj == "gated-gelu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.wi_0(x)
        gate = F.gelu(gate, approximate="tanh") if self.gelu else F.silu(gate)  # gelu_new == tanh GELU
        return self.wo(self.dropout(gate * self.wi_1(x)))


class FeedForwardLayer(nn.Module):
    """Pre-norm gated feed-forward with a residual connection (HF ``T5LayerFF``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.DenseReluDense = GatedFeedForward(config)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.DenseReluDense(self.layer_norm(x)))


class Block(nn.Module):
    """One layer: self-attention, cross-attention (decoder only), feed-forward, in ``self.layer``."""

    def __init__(self, config: ModelConfig, is_decoder: bool, has_relative_bias: bool):
        super().__init__()
        layers: list[nn.Module] = [SelfAttentionLayer(config, has_relative_bias, bidirectional=not is_decoder)]
        if is_decoder:
            layers.append(CrossAttentionLayer(config))
        layers.append(FeedForwardLayer(config))
        self.layer = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, self_mask: torch.Tensor, context: torch.Tensor | None = None,
                cross_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.layer[0](x, self_mask)
        if context is not None:
            x = self.layer[1](x, cross_mask, context)
        return self.layer[-1](x)


# -- masks --------------------------------------------------------------------------------------------
def _attention_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype attention scores will have: the autocast dtype when autocast is on, else ``x``'s."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def padding_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [B, 1, 1, L] from a boolean [B, L] (True = real token): 0 or the dtype's minimum.

    The finite minimum (not -inf) keeps an all-padding row finite instead of NaN.
    """
    mask = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    return mask.masked_fill(~keep, torch.finfo(dtype).min)[:, None, None, :]


# -- stacks and the model -------------------------------------------------------------------------------
class Stack(nn.Module):
    """Encoder or decoder stack (HF ``T5Stack`` without its own embedding; the model passes embeddings)."""

    def __init__(self, config: ModelConfig, num_layers: int, is_decoder: bool):
        super().__init__()
        self.is_decoder = is_decoder
        self.block = nn.ModuleList(
            [Block(config, is_decoder, has_relative_bias=(i == 0)) for i in range(num_layers)])
        self.final_layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.gradient_checkpointing = config.gradient_checkpointing

    def self_attention_mask(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Position bias plus masking, built once per forward and shared by every layer.

        Encoder: bias [1, H, L, L] with padded keys masked -> [B, H, L, L]. Decoder: causal only
        -> [1, H, L, L] (its padding sits at the end, where causality already hides it).
        """
        length = x.shape[1]
        bias = self.block[0].layer[0].SelfAttention.position_bias(length, length, x.device)
        dtype = _attention_dtype(x)
        if self.is_decoder:
            visible = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()[None, None]
        elif keep is not None:
            visible = keep[:, None, None, :]
        else:
            return bias.to(dtype)
        return torch.where(visible, bias, torch.finfo(dtype).min).to(dtype)

    def forward(self, embeddings: torch.Tensor, keep: torch.Tensor | None = None,
                context: torch.Tensor | None = None, cross_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = self.self_attention_mask(embeddings, keep)
        x = self.dropout(embeddings)
        for block in self.block:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, mask, context, cross_mask, use_reentrant=False)
            else:
                x = block(x, mask, context, cross_mask)
        return self.dropout(self.final_layer_norm(x))


class T5Model(nn.Module):
    """Ankh/T5 v1.1 encoder-decoder (or encoder only when ``num_decoder_layers == 0``) plus extra heads.

    ``heads`` maps a per-residue head name to its output width; ``encoder_lm_head`` adds token logits
    over the encoder output. Weights are initialised like Hugging Face T5 on construction (skipped
    with ``init=False`` by callers that load weights next); ``init_weights(model, generator)`` redoes
    it reproducibly.
    """

    def __init__(self, config: ModelConfig, vocab_size: int, heads: Mapping[str, int] = {},
                 encoder_lm_head: bool = False, init: bool = True):
        super().__init__()
        clash = set(heads) & set(BUILTIN_OUTPUTS)
        if clash:
            raise ValueError(f"head names {sorted(clash)} clash with built-in outputs {BUILTIN_OUTPUTS}")
        self.config = config
        self.vocab_size = vocab_size
        self.shared = nn.Embedding(vocab_size, config.d_model)  # encoder and decoder input embedding
        self.encoder = Stack(config, config.num_layers, is_decoder=False)
        if config.num_decoder_layers > 0:
            self.decoder = Stack(config, config.num_decoder_layers, is_decoder=True)
            self.lm_head = nn.Linear(config.d_model, vocab_size, bias=False)  # untied from ``shared``
        else:
            self.decoder = None
            self.lm_head = None
        self.encoder_lm_head = nn.Linear(config.d_model, vocab_size, bias=False) if encoder_lm_head else None
        self.heads = nn.ModuleDict({name: nn.Linear(config.d_model, width, bias=False)
                                    for name, width in heads.items()})
        if init:
            self.init_weights()

    @property
    def has_decoder(self) -> bool:
        return self.decoder is not None

    def encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> [B, L, d_model] encoder output; id 0 is padding and is never attended to."""
        return self.encoder(self.shared(input_ids), keep=input_ids != PAD_ID)

    def decode(self, decoder_input_ids: torch.Tensor, encoder_hidden: torch.Tensor,
               encoder_input_ids: torch.Tensor) -> torch.Tensor:
        """[B, Ld] decoder ids (starting with the start token 0) -> [B, Ld, d_model] decoder output."""
        if self.decoder is None:
            raise ValueError("this model has no decoder (num_decoder_layers == 0)")
        cross_mask = padding_mask(encoder_input_ids != PAD_ID, _attention_dtype(encoder_hidden))
        return self.decoder(self.shared(decoder_input_ids), context=encoder_hidden, cross_mask=cross_mask)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor | None = None,
                outputs: Collection[str] = ("decoder_logits",)) -> dict[str, torch.Tensor]:
        """Compute only the requested ``outputs``: any of ``BUILTIN_OUTPUTS`` and the head names."""
        decode = (None if decoder_input_ids is None else
                  lambda hidden: self.decode(decoder_input_ids, hidden, input_ids))
        return compute_outputs(outputs, self.heads, lambda: self.encode(input_ids), self.encoder_lm_head,
                               decode, self.lm_head)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Random weights with :mod:`plmforge.core.initialization`'s standard deviations (Hugging Face
        T5's, except output heads), deterministic for a given ``generator``.

        Training runs start from that module's numpy draws instead, which JAX draws identically.
        """
        for name, param in self.named_parameters():
            std = init_std(name, self.config)
            if std is None:
                param.fill_(self.config.initializer_factor)
            else:
                _normal_(param, std, generator)


def _normal_(weight: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    """Fill with N(0, std). Samples on the generator's device, so a CPU generator gives the same
    weights whether the model sits on CPU or GPU."""
    if generator is None or generator.device == weight.device:
        weight.normal_(0.0, std, generator=generator)
    else:
        sample = torch.empty(weight.shape, dtype=torch.float32, device=generator.device)
        weight.copy_(sample.normal_(0.0, std, generator=generator))


def init_weights(model: T5Model, generator: torch.Generator | None = None) -> None:
    """(Re)initialise ``model`` like Hugging Face T5; the same generator seed gives the same weights."""
    model.init_weights(generator)
