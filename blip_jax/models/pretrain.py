"""BlipPretrain: ViT + text encoder + a decoder sharing all but its self-attention with the encoder.

As in the original BLIP_Pretrain, the decoder's embeddings, cross-attention and feed-forward
blocks ARE the encoder's (the same nnx modules, so `nnx.split` stores each array once and both
roles' gradients add up in it); each decoder layer owns only its causal self-attention, and the
decoder owns its LM head. Momentum (EMA) copies and feature queues are not module state: they
live in the train state (`blip_jax.train.state`), and the momentum forward reuses this module's
graph with the EMA parameters merged in. An original Salesforce checkpoint's momentum copies and
queues therefore reach the train state, not this module: `checkpoints.init_from` reads them (and
the temperature, which is a parameter here) and `train.tasks.training_init` places them.

HF-compatible export: `to_hf_state_dict()`-style naming is shared with BlipForImageTextRetrieval
(visual/text encoder, vision_proj, text_proj, itm_head) and BlipForConditionalGeneration
(text_decoder.*), so a pretrained model is saved as either.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from blip_jax.configuration import BlipConfig
from blip_jax.models.blip import l2_normalize
from blip_jax.models.layers import EMBED, dense
from blip_jax.models.text import BlipTextLMHeadModel, BlipTextModel
from blip_jax.models.vision import BlipVisionModel

# The sub-modules that have momentum copies (original: model_pairs).
MOMENTUM_MODULES = ("vision_model", "vision_proj", "text_encoder", "text_proj")


class BlipPretrain(nnx.Module):
    """The three-objective model. Submodule names follow the HF classes so checkpoints map 1:1."""

    def __init__(self, config: BlipConfig, *, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        tc, vc = config.text_config, config.vision_config
        proj = dict(dtype=tc.dtype, param_dtype=tc.param_dtype, std=0.02, rngs=rngs)
        self.vision_model = BlipVisionModel(vc, rngs=rngs)
        self.text_encoder = BlipTextModel(tc, add_pooling_layer=False, add_cross_attention=True, rngs=rngs)
        self.text_decoder = BlipTextLMHeadModel(tc, rngs=rngs)
        self.vision_proj = dense(vc.hidden_size, config.image_text_hidden_size, (EMBED, None), **proj)
        self.text_proj = dense(tc.hidden_size, config.image_text_hidden_size, (EMBED, None), **proj)
        self.itm_head = dense(tc.hidden_size, 2, (EMBED, None), **proj)
        self.temp = nnx.Param(jnp.asarray(0.07, jnp.float32))
        tie_decoder_to_encoder(self.text_decoder.bert, self.text_encoder)

    # ---- the three views of the data ----------------------------------------------------------
    def encode_image(self, pixel_values: jax.Array, deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
        """(B, H, W, 3) -> (image states (B, 1 + N, D_v), normalised ITC features (B, E))."""
        states = self.vision_model(pixel_values, deterministic=deterministic).last_hidden_state
        return states, l2_normalize(self.vision_proj(states[:, 0]))

    def encode_text(self, input_ids, attention_mask, deterministic: bool = True) -> jax.Array:
        """Unimodal text (B, T) -> normalised ITC features (B, E)."""
        states = self.text_encoder(input_ids, attention_mask, deterministic=deterministic).last_hidden_state
        return l2_normalize(self.text_proj(states[:, 0]))

    def image_kv(self, image_states: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        """Per-layer cross-attention (keys, values), each (B, N, S, H), of image states (B, S, D_v).

        Projected once per image: the ITM positives and negatives gather from them, and the
        decoder, whose cross-attention IS the encoder's, reads the same ones."""
        return self.text_encoder.precompute_cross_kv(image_states)

    def itm_logits(self, input_ids, attention_mask, image_states=None, *, image_kv=None,
                   deterministic: bool = True) -> jax.Array:
        """Image-grounded text: (B, T) ids with [ENC] first x image states (B, S, D_v) or their
        `image_kv` -> ITM logits (B, 2) float32."""
        out = self.text_encoder(
            input_ids, attention_mask, encoder_hidden_states=image_states, cross_kv=image_kv,
            deterministic=deterministic,
        )
        return self.itm_head(out.last_hidden_state[:, 0]).astype(jnp.float32)

    def lm_logits(self, input_ids, attention_mask, image_states=None, *, image_kv=None,
                  deterministic: bool = True) -> jax.Array:
        """Image-grounded decoder: (B, T) ids with [DEC] first x image states (B, S, D_v) or
        their `image_kv` -> logits (B, T, V) float32."""
        return self.text_decoder(
            input_ids, attention_mask, encoder_hidden_states=image_states, cross_kv=image_kv,
            deterministic=deterministic,
        ).logits


def tie_decoder_to_encoder(decoder: BlipTextModel, encoder: BlipTextModel) -> None:
    """Make the decoder reuse the encoder's modules except the self-attention blocks
    (original: tie_encoder_decoder_weights(..., skip_key='/attention'))."""
    decoder.embeddings = encoder.embeddings
    for dec, enc in zip(decoder.layers, encoder.layers, strict=True):
        dec.crossattention = enc.crossattention
        dec.crossattention_norm = enc.crossattention_norm
        dec.mlp = enc.mlp
        dec.mlp_norm = enc.mlp_norm


def init_queues(rng: jax.Array, queue_size: int, embed_dim: int) -> dict[str, jax.Array]:
    """Feature queues as in the original: random normal, L2-normalised, plus an image-id queue
    (-1 = no id: never a positive) and the write pointer."""
    k1, k2 = jax.random.split(rng)
    return {
        "image": l2_normalize(jax.random.normal(k1, (queue_size, embed_dim))),
        "text": l2_normalize(jax.random.normal(k2, (queue_size, embed_dim))),
        "idx": jnp.full((queue_size,), -1, jnp.int32),
        "ptr": jnp.zeros((), jnp.int32),
    }


def enqueue(queues: dict, image_feat: jax.Array, text_feat: jax.Array, idx: jax.Array | None = None) -> dict:
    """Write the global batch's momentum features at the pointer, wrapping around the end, so any
    global batch size works (the original asserted queue_size % batch == 0)."""
    q = queues["image"].shape[0]
    pos = (queues["ptr"] + jnp.arange(image_feat.shape[0])) % q
    idx = jnp.full((image_feat.shape[0],), -1, jnp.int32) if idx is None else idx.astype(jnp.int32)
    return {
        "image": queues["image"].at[pos].set(image_feat.astype(queues["image"].dtype)),
        "text": queues["text"].at[pos].set(text_feat.astype(queues["text"].dtype)),
        "idx": queues["idx"].at[pos].set(idx),
        "ptr": (queues["ptr"] + image_feat.shape[0]) % q,
    }
