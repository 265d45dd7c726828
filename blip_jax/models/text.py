"""BERT-style text transformer ("MED") -> `BlipTextModel`, `BlipTextLMHeadModel`.

One stack serves the three BLIP roles: unimodal encoder (bidirectional, no image), image-grounded
encoder (bidirectional + cross-attention to image tokens) and image-grounded decoder (causal +
cross-attention, with a static KV cache for decoding). Cross-attention runs only when image
states (or their precomputed keys/values) are passed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from blip_jax.checkpoints.pretrained import PretrainedMixin
from blip_jax.configuration import BlipTextConfig
from blip_jax.models.layers import (
    ACTIVATIONS,
    EMBED,
    VOCAB,
    TransformerLayer,
    as_dtype,
    causal_mask,
    dense,
    init_kv_cache,
    layer_norm,
    padding_mask,
    run_layers,
)
from blip_jax.models.losses import shifted_lm_loss
from blip_jax.models.outputs import BaseModelOutputWithPooling, CausalLMOutput


class TextEmbeddings(nnx.Module):
    """word + absolute position embeddings -> LayerNorm -> dropout."""

    def __init__(self, config: BlipTextConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=as_dtype(config.dtype), param_dtype=as_dtype(config.param_dtype), rngs=rngs)
        init = nnx.initializers.normal(config.initializer_range)
        self.word_embeddings = nnx.Embed(
            config.vocab_size, config.hidden_size, embedding_init=init,
            embedding_metadata={"logical_axes": (VOCAB, EMBED)}, **kw,
        )
        self.position_embeddings = nnx.Embed(
            config.max_position_embeddings, config.hidden_size, embedding_init=init,
            embedding_metadata={"logical_axes": (None, EMBED)}, **kw,
        )
        self.layer_norm = layer_norm(config.hidden_size, config.layer_norm_eps, **kw)
        rate = config.hidden_dropout_prob
        self.dropout = nnx.Dropout(rate, rngs=rngs) if rate > 0 else None

    def __call__(self, input_ids: jax.Array, position_ids: jax.Array, deterministic: bool = True):
        """input_ids (B, T), position_ids (B|1, T) -> (B, T, D)."""
        x = self.layer_norm(self.word_embeddings(input_ids) + self.position_embeddings(position_ids))
        if self.dropout is not None:
            x = self.dropout(x, deterministic=deterministic)
        return x


class BlipTextModel(PretrainedMixin, nnx.Module):
    """Embeddings -> L post-norm layers (-> pooler: tanh(dense(h[:, 0])))."""

    config_class = BlipTextConfig

    def __init__(
        self,
        config: BlipTextConfig,
        add_pooling_layer: bool = True,
        add_cross_attention: bool | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        # transformers builds cross-attention weights whenever config.is_decoder (its default).
        cross = config.is_decoder if add_cross_attention is None else add_cross_attention
        self.embeddings = TextEmbeddings(config, rngs=rngs)
        self.layers = nnx.List(
            [
                TransformerLayer(
                    config.hidden_size, config.num_attention_heads, config.intermediate_size,
                    pre_norm=False, layer_norm_eps=config.layer_norm_eps, act=config.hidden_act,
                    cross_attention_size=config.encoder_hidden_size if cross else None,
                    dtype=config.dtype, param_dtype=config.param_dtype, std=config.initializer_range,
                    dropout_rate=config.hidden_dropout_prob,
                    attention_dropout_rate=config.attention_probs_dropout_prob,
                    rngs=rngs,
                )
                for _ in range(config.num_hidden_layers)
            ]
        )
        self.pooler = (
            dense(
                config.hidden_size, config.hidden_size, (EMBED, EMBED), dtype=config.dtype,
                param_dtype=config.param_dtype, std=config.initializer_range, rngs=rngs,
            )
            if add_pooling_layer
            else None
        )

    @property
    def head_dim(self) -> int:
        return self.config.hidden_size // self.config.num_attention_heads

    def init_cache(self, batch_size: int, max_length: int, dtype=None) -> list[dict]:
        """Zeroed per-layer self-attention caches, each {"key","value"}: (B, N, L_max, H)."""
        dtype = dtype or self.config.dtype
        return [
            init_kv_cache(batch_size, max_length, self.config.num_attention_heads, self.head_dim, dtype)
            for _ in self.layers
        ]

    def precompute_cross_kv(self, encoder_hidden_states: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        """Image (or question) states (B, S, D_enc) -> per-layer cross-attention (keys, values)."""
        return [layer.crossattention.project_kv(encoder_hidden_states) for layer in self.layers]

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        encoder_hidden_states: jax.Array | None = None,
        encoder_attention_mask: jax.Array | None = None,
        is_decoder: bool = False,
        cache: list[dict] | None = None,
        cache_index: jax.Array | int | None = None,
        cross_kv: list | None = None,
        output_hidden_states: bool = False,
        deterministic: bool = True,
    ) -> BaseModelOutputWithPooling:
        """input_ids (B, T) -> last_hidden_state (B, T, D), pooler_output (B, D) or None.

        attention_mask: (B, T) 0/1 over the inputs, or (B, L_max) over the cache slots when
        decoding with ``cache``; ``cache_index`` is then the position of input_ids[:, 0].
        encoder_attention_mask: (B_img, S) 0/1 over image (or question) tokens.
        """
        t = input_ids.shape[1]
        offset = 0 if cache_index is None else cache_index
        if position_ids is None:
            position_ids = (offset + jnp.arange(t))[None, :]
        x = self.embeddings(input_ids, position_ids, deterministic)
        if is_decoder:
            key_length = cache[0]["key"].shape[2] if cache is not None else t
            mask = causal_mask(t, key_length, attention_mask, offset)
        else:
            if cache is not None:
                raise ValueError("a KV cache needs is_decoder=True")
            mask = padding_mask(attention_mask)
        cross = encoder_hidden_states is not None or cross_kv is not None
        layer_kw = dict(mask=mask, encoder_mask=padding_mask(encoder_attention_mask) if cross else None)
        if encoder_hidden_states is not None and cross_kv is None:
            layer_kw["encoder_hidden_states"] = encoder_hidden_states
        hidden_states = None
        if output_hidden_states:
            hidden_states, new_cache = [x], [] if cache is not None else None
            for i, layer in enumerate(self.layers):
                x, c = layer(
                    x, cache=None if cache is None else cache[i], cache_index=cache_index,
                    cross_kv=None if cross_kv is None else cross_kv[i], deterministic=deterministic,
                    **layer_kw,
                )
                hidden_states.append(x)
                if new_cache is not None:
                    new_cache.append(c)
            hidden_states = tuple(hidden_states)
        else:
            x, new_cache = run_layers(
                self.layers, x, remat=self.config.remat, deterministic=deterministic, caches=cache,
                cache_index=cache_index, cross_kvs=cross_kv, **layer_kw,
            )
        pooled = jnp.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None
        return BaseModelOutputWithPooling(
            last_hidden_state=x, pooler_output=pooled, hidden_states=hidden_states, cache=new_cache
        )


class LMHead(nnx.Module):
    """dense -> GELU -> LayerNorm -> logits against the (tied) word embeddings + bias."""

    def __init__(self, config: BlipTextConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=config.dtype, param_dtype=config.param_dtype, rngs=rngs)
        self.transform = dense(
            config.hidden_size, config.hidden_size, (EMBED, EMBED), std=config.initializer_range, **kw
        )
        self.act = ACTIVATIONS[config.hidden_act]
        self.layer_norm = layer_norm(config.hidden_size, config.layer_norm_eps, **kw)
        pdt = as_dtype(config.param_dtype)
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), pdt), logical_axes=(VOCAB,))
        self.decoder = (
            None
            if config.tie_word_embeddings
            else nnx.Param(
                nnx.initializers.normal(config.initializer_range)(
                    rngs.params(), (config.hidden_size, config.vocab_size), pdt
                ),
                logical_axes=(EMBED, VOCAB),
            )
        )
        self.dtype = as_dtype(config.dtype)

    def __call__(self, x: jax.Array, word_embeddings: nnx.Embed) -> jax.Array:
        """(B, T, D) -> logits (B, T, V) in float32."""
        h = self.layer_norm(self.act(self.transform(x)))
        if self.decoder is None:
            w = word_embeddings.embedding[...].astype(self.dtype)
            logits = jnp.einsum("btd,vd->btv", h, w, preferred_element_type=jnp.float32)
        else:
            w = self.decoder[...].astype(self.dtype)
            logits = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
        return logits + self.bias[...].astype(jnp.float32)


class BlipTextLMHeadModel(PretrainedMixin, nnx.Module):
    """The image-grounded decoder: causal BlipTextModel (no pooler) + LM head."""

    config_class = BlipTextConfig

    def __init__(self, config: BlipTextConfig, *, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.bert = BlipTextModel(config, add_pooling_layer=False, add_cross_attention=True, rngs=rngs)
        self.cls = LMHead(config, rngs=rngs)

    def logits(self, hidden_states: jax.Array) -> jax.Array:
        return self.cls(hidden_states, self.bert.embeddings.word_embeddings)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        encoder_hidden_states: jax.Array | None = None,
        encoder_attention_mask: jax.Array | None = None,
        labels: jax.Array | None = None,
        cache: list[dict] | None = None,
        cache_index: jax.Array | int | None = None,
        cross_kv: list | None = None,
        is_decoder: bool = True,
        reduction: str = "mean",
        label_smoothing: float | None = None,
        output_hidden_states: bool = False,
        deterministic: bool = True,
    ) -> CausalLMOutput:
        """logits (B, T, V) float32; with ``labels`` (B, T) (-100 = ignore) the shifted LM loss."""
        out = self.bert(
            input_ids, attention_mask=attention_mask, position_ids=position_ids,
            encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
            is_decoder=is_decoder, cache=cache, cache_index=cache_index, cross_kv=cross_kv,
            output_hidden_states=output_hidden_states, deterministic=deterministic,
        )
        logits = self.logits(out.last_hidden_state)
        loss = None
        if labels is not None:
            smoothing = self.config.label_smoothing if label_smoothing is None else label_smoothing
            loss = shifted_lm_loss(logits, labels, smoothing, reduction)
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, cache=out.cache)
