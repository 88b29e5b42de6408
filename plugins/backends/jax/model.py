"""The Ankh / T5 v1.1 encoder-decoder in Flax NNX, the twin of the PyTorch backend's model.

Every parameter is an ``nnx.Param`` whose path, joined with dots, is its Hugging Face T5 name
(``encoder.block.0.layer.0.SelfAttention.q.weight``), stored in PyTorch's ``[out, in]`` layout, so
the two backends exchange weights without renaming or transposing. The architecture notes of
:mod:`plmforge.plugins.backends.torch.model` apply unchanged (pre-norm RMSNorm, shared relative
position bias, unscaled attention, gated feed-forward, untied heads, dropout where HF puts it).

Dropout draws from an explicit key handed to ``__call__`` (no RNG state in the module), so a
compiled step is a pure function of (parameters, batch, key).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from plmforge.core.initialization import init_std
from plmforge.core.model_config import ModelConfig
from plmforge.core.model_outputs import BUILTIN_OUTPUTS, compute_outputs

PAD_ID = 0


class Dropout:
    """Dropout with a key split per call site; identity when the rate is 0 or no key is given."""

    def __init__(self, rate: float, key: jax.Array | None):
        self.rate = rate
        self.key = key
        self.calls = 0

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.rate <= 0.0 or self.key is None:
            return x
        self.calls += 1
        keep = jax.random.bernoulli(jax.random.fold_in(self.key, self.calls), 1.0 - self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros((), x.dtype))


class Linear(nnx.Module):
    """Bias-free linear layer with a PyTorch-layout ``weight`` [out, in].

    The matmul runs in ``dtype`` (bfloat16 under the bf16 option) while weights and the residual
    stream stay float32, which is what PyTorch's autocast does.
    """

    def __init__(self, d_in: int, d_out: int, dtype: jnp.dtype = jnp.float32):
        self.weight = nnx.Param(jnp.zeros((d_out, d_in), jnp.float32))  # drawn by T5Model
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return _matmul_2d(x.astype(self.dtype), self.weight[...].astype(self.dtype).T)


def _matmul_2d(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` with ``x`` flattened to a matrix first.

    Same result, but the weight gradient then contracts one axis instead of two; XLA's CPU backend
    runs a two-axis contraction with a slow generic loop (about 5x slower for the feed-forward).
    """
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


class Embedding(nnx.Module):
    """Lookup table, computed as ``one_hot(ids) @ weight``.

    Protein vocabularies are tiny (Ankh: 144 tokens, 32 position buckets), so the one-hot matmul
    costs little, and its gradient is a matmul too; the gradient of a gather is a scatter-add,
    which XLA runs serially on CPU (it made a CPU training step about twice as slow).
    """

    def __init__(self, num: int, dim: int):
        self.weight = nnx.Param(jnp.zeros((num, dim), jnp.float32))  # drawn by T5Model

    def __call__(self, ids: jax.Array) -> jax.Array:
        table = self.weight[...]
        return _matmul_2d(jax.nn.one_hot(ids, table.shape[0], dtype=table.dtype), table)


class RMSNorm(nnx.Module):
    """T5LayerNorm: scale by the root mean square (computed in float32); no bias, no centring."""

    def __init__(self, d_model: int, eps: float):
        self.weight = nnx.Param(jnp.ones((d_model,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        return (self.weight[...] * (x32 * jax.lax.rsqrt(variance + self.eps))).astype(x.dtype)


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
    """Hugging Face's ``T5Attention._relative_position_bucket`` (see the PyTorch model)."""
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
        relative_position = jnp.abs(relative_position)
    else:
        relative_position = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    # the maximum() only keeps log() finite for small distances, which is_small discards anyway
    scaled = jnp.log(jnp.maximum(relative_position, 1).astype(jnp.float32) / max_exact)
    if_large = max_exact + (scaled / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(
        relative_position.dtype)
    if_large = jnp.minimum(if_large, num_buckets - 1)
    return buckets + jnp.where(is_small, relative_position, if_large)


class Attention(nnx.Module):
    """Multi-head attention without biases or score scaling; the additive mask carries the position bias."""

    def __init__(self, config: ModelConfig, has_relative_bias: bool, bidirectional: bool, dtype: jnp.dtype):
        c = config
        inner = c.num_heads * c.d_kv
        self.num_heads, self.d_kv = c.num_heads, c.d_kv
        self.q = Linear(c.d_model, inner, dtype)
        self.k = Linear(c.d_model, inner, dtype)
        self.v = Linear(c.d_model, inner, dtype)
        self.o = Linear(inner, c.d_model, dtype)
        self.has_relative_bias = has_relative_bias
        if has_relative_bias:
            self.relative_attention_bias = Embedding(c.relative_attention_num_buckets, c.num_heads)
            self.bidirectional = bidirectional
            self.num_buckets = c.relative_attention_num_buckets
            self.max_distance = c.relative_attention_max_distance

    def position_bias(self, query_length: int, key_length: int) -> jax.Array:
        """[1, heads, query_length, key_length] float32 learned bias per relative distance."""
        relative = jnp.arange(key_length)[None, :] - jnp.arange(query_length)[:, None]
        buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        return jnp.transpose(self.relative_attention_bias(buckets), (2, 0, 1))[None]

    def __call__(self, x: jax.Array, mask: jax.Array, dropout: Dropout,
                 context: jax.Array | None = None) -> jax.Array:
        context = x if context is None else context
        batch, q_len, _ = x.shape
        k_len = context.shape[1]
        q = self.q(x).reshape(batch, q_len, self.num_heads, self.d_kv)
        k = self.k(context).reshape(batch, k_len, self.num_heads, self.d_kv)
        v = self.v(context).reshape(batch, k_len, self.num_heads, self.d_kv)
        # scores and mask are added in float32: the mask's finite minimum does not exist in bfloat16
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) + mask.astype(jnp.float32)
        probs = dropout(jax.nn.softmax(scores, axis=-1).astype(q.dtype))
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        return self.o(out.reshape(batch, q_len, self.num_heads * self.d_kv))


class SelfAttentionLayer(nnx.Module):
    def __init__(self, config: ModelConfig, has_relative_bias: bool, bidirectional: bool, dtype: jnp.dtype):
        self.SelfAttention = Attention(config, has_relative_bias, bidirectional, dtype)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def __call__(self, x: jax.Array, mask: jax.Array, dropout: Dropout) -> jax.Array:
        return x + dropout(self.SelfAttention(self.layer_norm(x), mask, dropout))


class CrossAttentionLayer(nnx.Module):
    def __init__(self, config: ModelConfig, dtype: jnp.dtype):
        self.EncDecAttention = Attention(config, False, True, dtype)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def __call__(self, x: jax.Array, mask: jax.Array, context: jax.Array, dropout: Dropout) -> jax.Array:
        return x + dropout(self.EncDecAttention(self.layer_norm(x), mask, dropout, context))


class GatedFeedForward(nnx.Module):
    """``wo(dropout(act(wi_0 x) * wi_1 x))`` with tanh-GELU or SiLU."""

    def __init__(self, config: ModelConfig, dtype: jnp.dtype):
        c = config
        self.wi_0 = Linear(c.d_model, c.d_ff, dtype)
        self.wi_1 = Linear(c.d_model, c.d_ff, dtype)
        self.wo = Linear(c.d_ff, c.d_model, dtype)
        self.gelu = c.feed_forward_proj == "gated-gelu"

    def __call__(self, x: jax.Array, dropout: Dropout) -> jax.Array:
        gate = self.wi_0(x)
        gate = jax.nn.gelu(gate, approximate=True) if self.gelu else jax.nn.silu(gate)
        return self.wo(dropout(gate * self.wi_1(x)))


class FeedForwardLayer(nnx.Module):
    def __init__(self, config: ModelConfig, dtype: jnp.dtype):
        self.DenseReluDense = GatedFeedForward(config, dtype)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def __call__(self, x: jax.Array, dropout: Dropout) -> jax.Array:
        return x + dropout(self.DenseReluDense(self.layer_norm(x), dropout))


class Block(nnx.Module):
    """One layer: self-attention, cross-attention (decoder only), feed-forward, in ``self.layer``."""

    def __init__(self, config: ModelConfig, is_decoder: bool, has_relative_bias: bool, dtype: jnp.dtype):
        layers: list[nnx.Module] = [SelfAttentionLayer(config, has_relative_bias, not is_decoder, dtype)]
        if is_decoder:
            layers.append(CrossAttentionLayer(config, dtype))
        layers.append(FeedForwardLayer(config, dtype))
        self.layer = nnx.List(layers)

    def __call__(self, x: jax.Array, self_mask: jax.Array, dropout: Dropout, context: jax.Array | None = None,
                 cross_mask: jax.Array | None = None) -> jax.Array:
        x = self.layer[0](x, self_mask, dropout)
        if context is not None:
            x = self.layer[1](x, cross_mask, context, dropout)
        return self.layer[-1](x, dropout)


class Stack(nnx.Module):
    """Encoder or decoder stack; the embedding lives in the model (``shared``)."""

    def __init__(self, config: ModelConfig, num_layers: int, is_decoder: bool, dtype: jnp.dtype):
        self.is_decoder = is_decoder
        self.block = nnx.List([Block(config, is_decoder, i == 0, dtype) for i in range(num_layers)])
        self.final_layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.remat = config.gradient_checkpointing

    def self_attention_mask(self, x: jax.Array, keep: jax.Array | None) -> jax.Array:
        """Position bias plus masking, once per forward: [B or 1, H, L, L] in ``x``'s dtype."""
        length = x.shape[1]
        bias = self.block[0].layer[0].SelfAttention.position_bias(length, length)
        minimum = jnp.finfo(x.dtype).min
        if self.is_decoder:
            visible = jnp.tril(jnp.ones((length, length), bool))[None, None]
        elif keep is not None:
            visible = keep[:, None, None, :]
        else:
            return bias.astype(x.dtype)
        return jnp.where(visible, bias, minimum).astype(x.dtype)

    def __call__(self, embeddings: jax.Array, dropout: Dropout, keep: jax.Array | None = None,
                 context: jax.Array | None = None, cross_mask: jax.Array | None = None) -> jax.Array:
        mask = self.self_attention_mask(embeddings, keep)
        x = dropout(embeddings)
        for block in self.block:
            if self.remat:
                x = nnx.remat(lambda b, h, m, c, cm: b(h, m, dropout, c, cm))(block, x, mask, context, cross_mask)
            else:
                x = block(x, mask, dropout, context, cross_mask)
        return dropout(self.final_layer_norm(x))


class T5Model(nnx.Module):
    """Ankh/T5 v1.1 encoder-decoder (encoder only when ``num_decoder_layers == 0``) plus extra heads.

    Initialised from ``rngs`` like Hugging Face T5 with plmforge's one change (output heads get std
    d_model^-0.5), see :mod:`plmforge.core.initialization`; ``rngs=None`` leaves placeholders for
    callers that load weights next.
    """

    def __init__(self, config: ModelConfig, vocab_size: int, heads: Mapping[str, int] = {},
                 encoder_lm_head: bool = False, *, rngs: nnx.Rngs | None, dtype: jnp.dtype = jnp.float32):
        clash = set(heads) & set(BUILTIN_OUTPUTS)
        if clash:
            raise ValueError(f"head names {sorted(clash)} clash with built-in outputs {BUILTIN_OUTPUTS}")
        c = config
        self.config = config
        self.dropout_rate = c.dropout_rate
        self.shared = Embedding(vocab_size, c.d_model)
        self.encoder = Stack(c, c.num_layers, False, dtype)
        self.decoder = Stack(c, c.num_decoder_layers, True, dtype) if c.num_decoder_layers else None
        self.lm_head = Linear(c.d_model, vocab_size, dtype) if c.num_decoder_layers else None
        self.encoder_lm_head = Linear(c.d_model, vocab_size, dtype) if encoder_lm_head else None
        self.heads = nnx.Dict({name: Linear(c.d_model, width, dtype) for name, width in heads.items()})
        if rngs is not None:
            self._initialise(rngs)

    def _initialise(self, rngs: nnx.Rngs) -> None:
        """Random weights with :mod:`plmforge.core.initialization`'s standard deviations.

        Training runs start from that module's numpy draws instead, which PyTorch draws identically.
        """
        for path, variable in nnx.to_flat_state(nnx.state(self, nnx.Param)):
            name = ".".join(str(part) for part in path)
            std = init_std(name, self.config)
            shape = variable.get_value().shape
            value = (jnp.full(shape, self.config.initializer_factor, jnp.float32) if std is None
                     else std * jax.random.normal(rngs.params(), shape, jnp.float32))
            variable.set_value(value)

    def encode(self, input_ids: jax.Array, dropout: Dropout | None = None) -> jax.Array:
        """[B, L] ids -> [B, L, d_model] encoder output; id 0 is padding and is never attended to."""
        dropout = dropout or Dropout(0.0, None)
        return self.encoder(self.shared(input_ids), dropout, keep=input_ids != PAD_ID)

    def decode(self, decoder_input_ids: jax.Array, encoder_hidden: jax.Array, encoder_input_ids: jax.Array,
               dropout: Dropout) -> jax.Array:
        if self.decoder is None:
            raise ValueError("this model has no decoder (num_decoder_layers == 0)")
        keep = encoder_input_ids != PAD_ID
        cross_mask = jnp.where(keep, 0.0, jnp.finfo(encoder_hidden.dtype).min).astype(encoder_hidden.dtype)
        return self.decoder(self.shared(decoder_input_ids), dropout, context=encoder_hidden,
                            cross_mask=cross_mask[:, None, None, :])

    def __call__(self, input_ids: jax.Array, decoder_input_ids: jax.Array | None = None,
                 outputs: Collection[str] = ("decoder_logits",),
                 dropout_key: jax.Array | None = None) -> dict[str, jax.Array]:
        """Compute only the requested ``outputs``: any of ``BUILTIN_OUTPUTS`` and the head names."""
        dropout = Dropout(self.dropout_rate, dropout_key)
        decode = (None if decoder_input_ids is None else
                  lambda hidden: self.decode(decoder_input_ids, hidden, input_ids, dropout))
        return compute_outputs(outputs, self.heads, lambda: self.encode(input_ids, dropout), self.encoder_lm_head,
                               decode, self.lm_head)
