"""The user-facing BLIP models: contrastive (BlipModel), captioning, retrieval (ITC/ITM), VQA.

Heads are thin: every class is a ViT plus one or two text stacks from `text.py` and a few
Linear layers. Inputs and outputs follow transformers' names; ``pixel_values`` are
channels-last (B, H, W, 3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from blip_jax.checkpoints.pretrained import PretrainedMixin
from blip_jax.configuration import BlipConfig
from blip_jax.models.layers import EMBED, dense
from blip_jax.models.losses import contrastive_loss
from blip_jax.models.outputs import (
    BlipForConditionalGenerationModelOutput,
    BlipImageTextMatchingModelOutput,
    BlipOutput,
    BlipTextVisionModelOutput,
)
from blip_jax.models.text import BlipTextLMHeadModel, BlipTextModel
from blip_jax.models.vision import BlipVisionModel


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Unit vectors along the last axis (as torch.nn.functional.normalize)."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def ones_mask(states: jax.Array) -> jax.Array:
    return jnp.ones(states.shape[:2], jnp.int32)


class _BlipBase(PretrainedMixin, nnx.Module):
    config_class = BlipConfig

    def _text_for_grounding(self, input_ids: jax.Array) -> jax.Array:
        """Original BLIP swaps [CLS] for [ENC] when text attends to the image; HF keeps [CLS]."""
        tc = self.config.text_config
        return jnp.asarray(input_ids).at[:, 0].set(tc.enc_token_id) if tc.use_enc_token_for_itm else input_ids

    def _proj(self, in_f, out_f, rngs, use_bias=True):
        tc = self.config.text_config
        return dense(
            in_f, out_f, (EMBED, None), dtype=tc.dtype, param_dtype=tc.param_dtype, std=0.02,
            use_bias=use_bias, rngs=rngs,
        )


class BlipModel(_BlipBase):
    """Contrastive image-text model (CLIP-like use of BLIP's two towers)."""

    def __init__(self, config: BlipConfig, *, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        tc, vc = config.text_config, config.vision_config
        self.text_model = BlipTextModel(tc, add_pooling_layer=True, rngs=rngs)
        self.vision_model = BlipVisionModel(vc, rngs=rngs)
        self.visual_projection = self._proj(vc.hidden_size, config.projection_dim, rngs, use_bias=False)
        self.text_projection = self._proj(tc.hidden_size, config.projection_dim, rngs, use_bias=False)
        self.logit_scale = nnx.Param(jnp.asarray(config.logit_scale_init_value, jnp.float32))

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None) -> jax.Array:
        """(B, T) -> projected pooled text features (B, P) (not normalised)."""
        out = self.text_model(input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return self.text_projection(out.pooler_output)

    def get_image_features(self, pixel_values, interpolate_pos_encoding: bool = False) -> jax.Array:
        """(B, H, W, 3) -> projected pooled image features (B, P) (not normalised)."""
        out = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        return self.visual_projection(out.pooler_output)

    def get_multimodal_features(
        self, input_ids, pixel_values, attention_mask=None, interpolate_pos_encoding: bool = False
    ) -> jax.Array:
        """Text encoded with cross-attention to the image, pooled and projected: (B, P)."""
        image_embeds = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        image_embeds = image_embeds.last_hidden_state
        out = self.text_model(
            input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
            encoder_attention_mask=ones_mask(image_embeds),
        )
        return self.text_projection(out.pooler_output)

    def __call__(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        return_loss: bool = False,
        interpolate_pos_encoding: bool = False,
        deterministic: bool = True,
    ) -> BlipOutput:
        vision_out = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, deterministic=deterministic
        )
        text_out = self.text_model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, deterministic=deterministic
        )
        image_embeds = l2_normalize(self.visual_projection(vision_out.pooler_output))
        text_embeds = l2_normalize(self.text_projection(text_out.pooler_output))
        logits_per_text = text_embeds @ image_embeds.T * jnp.exp(self.logit_scale[...].astype(jnp.float32))
        return BlipOutput(
            loss=contrastive_loss(logits_per_text) if return_loss else None,
            logits_per_image=logits_per_text.T,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_out,
            vision_model_output=vision_out,
        )


class BlipForConditionalGeneration(_BlipBase):
    """Captioning: ViT + image-grounded decoder."""

    def __init__(self, config: BlipConfig, *, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.vision_model = BlipVisionModel(config.vision_config, rngs=rngs)
        self.text_decoder = BlipTextLMHeadModel(config.text_config, rngs=rngs)

    def __call__(
        self,
        pixel_values: jax.Array,
        input_ids: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        labels: jax.Array | None = None,
        interpolate_pos_encoding: bool = False,
        label_smoothing: float | None = None,
        deterministic: bool = True,
    ) -> BlipForConditionalGenerationModelOutput:
        """HF semantics: the loss shifts ``labels`` by one; no [DEC] swap, pads are not masked
        unless set to -100 by the caller (the training objectives do both)."""
        vision_out = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, deterministic=deterministic
        )
        image_embeds = vision_out.last_hidden_state
        out = self.text_decoder(
            input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds, labels=labels,
            label_smoothing=label_smoothing, deterministic=deterministic,
        )
        return BlipForConditionalGenerationModelOutput(
            loss=out.loss, logits=out.logits, image_embeds=image_embeds, last_hidden_state=image_embeds
        )

    def generate(self, pixel_values, input_ids=None, attention_mask=None, interpolate_pos_encoding=False,
                 **generate_kwargs) -> jax.Array:
        """Caption images; see `blip_jax.generation.generate_captions` for the arguments."""
        from blip_jax.generation import generate_captions

        return generate_captions(
            self, pixel_values, input_ids=input_ids, attention_mask=attention_mask,
            interpolate_pos_encoding=interpolate_pos_encoding, **generate_kwargs,
        )


class BlipForImageTextRetrieval(_BlipBase):
    """ITC (projected [CLS] cosine similarity) and ITM (matching head over image-grounded text)."""

    def __init__(self, config: BlipConfig, *, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        tc, vc = config.text_config, config.vision_config
        self.vision_model = BlipVisionModel(vc, rngs=rngs)
        self.text_encoder = BlipTextModel(tc, add_pooling_layer=False, rngs=rngs)
        self.vision_proj = self._proj(vc.hidden_size, config.image_text_hidden_size, rngs)
        self.text_proj = self._proj(tc.hidden_size, config.image_text_hidden_size, rngs)
        self.itm_head = self._proj(tc.hidden_size, 2, rngs)

    def image_features(self, image_embeds: jax.Array) -> jax.Array:
        """ViT states (B, 1 + N, D_v) -> normalised ITC features (B, E)."""
        return l2_normalize(self.vision_proj(image_embeds[:, 0]))

    def text_features(self, input_ids, attention_mask=None, deterministic: bool = True) -> jax.Array:
        """Unimodal text (B, T) -> normalised ITC features (B, E)."""
        out = self.text_encoder(input_ids, attention_mask=attention_mask, deterministic=deterministic)
        return l2_normalize(self.text_proj(out.last_hidden_state[:, 0]))

    def itm_logits(self, input_ids, image_embeds, attention_mask=None, deterministic: bool = True):
        """Image-grounded text (B, T) x image states (B, S, D_v) -> ITM logits (B, 2); 1 = match."""
        out = self.text_encoder(
            self._text_for_grounding(input_ids), attention_mask=attention_mask,
            encoder_hidden_states=image_embeds, encoder_attention_mask=ones_mask(image_embeds),
            deterministic=deterministic,
        )
        return self.itm_head(out.last_hidden_state[:, 0]).astype(jnp.float32), out.last_hidden_state

    def __call__(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array,
        use_itm_head: bool = True,
        attention_mask: jax.Array | None = None,
        interpolate_pos_encoding: bool = False,
        deterministic: bool = True,
    ) -> BlipImageTextMatchingModelOutput:
        vision_out = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, deterministic=deterministic
        )
        image_embeds = vision_out.last_hidden_state
        if use_itm_head:
            score, question_embeds = self.itm_logits(input_ids, image_embeds, attention_mask, deterministic)
        else:
            out = self.text_encoder(input_ids, attention_mask=attention_mask, deterministic=deterministic)
            question_embeds = out.last_hidden_state
            text_feat = l2_normalize(self.text_proj(question_embeds[:, 0]))
            score = self.image_features(image_embeds) @ text_feat.T
        return BlipImageTextMatchingModelOutput(
            itm_score=score, image_embeds=image_embeds, last_hidden_state=image_embeds,
            vision_pooler_output=vision_out.pooler_output, question_embeds=question_embeds,
        )


class BlipForQuestionAnswering(_BlipBase):
    """VQA: question encoded with image cross-attention; answer decoder over the question states."""

    def __init__(self, config: BlipConfig, *, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.vision_model = BlipVisionModel(config.vision_config, rngs=rngs)
        self.text_encoder = BlipTextModel(config.text_config, add_pooling_layer=False, rngs=rngs)
        self.text_decoder = BlipTextLMHeadModel(config.text_config, rngs=rngs)

    def encode_question(self, input_ids, image_embeds, attention_mask=None, deterministic: bool = True):
        """Question (B, T_q) grounded on image states (B, S, D_v) -> (B, T_q, D)."""
        return self.text_encoder(
            self._text_for_grounding(input_ids), attention_mask=attention_mask,
            encoder_hidden_states=image_embeds, encoder_attention_mask=ones_mask(image_embeds),
            deterministic=deterministic,
        ).last_hidden_state

    def __call__(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array,
        decoder_input_ids: jax.Array | None = None,
        decoder_attention_mask: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        labels: jax.Array | None = None,
        interpolate_pos_encoding: bool = False,
        label_smoothing: float | None = None,
        deterministic: bool = True,
    ) -> BlipTextVisionModelOutput:
        if labels is None and decoder_input_ids is None:
            raise ValueError("BlipForQuestionAnswering needs `labels` (training) or `decoder_input_ids`")
        vision_out = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, deterministic=deterministic
        )
        image_embeds = vision_out.last_hidden_state
        question_embeds = self.encode_question(input_ids, image_embeds, attention_mask, deterministic)
        if decoder_input_ids is None:
            decoder_input_ids = labels
        out = self.text_decoder(
            decoder_input_ids, attention_mask=decoder_attention_mask, encoder_hidden_states=question_embeds,
            encoder_attention_mask=attention_mask, labels=labels, label_smoothing=label_smoothing,
            deterministic=deterministic,
        )
        return BlipTextVisionModelOutput(
            loss=out.loss, logits=out.logits, image_embeds=image_embeds, last_hidden_state=image_embeds,
            question_embeds=question_embeds,
        )

    def generate(self, input_ids, pixel_values, attention_mask=None, interpolate_pos_encoding=False,
                 **generate_kwargs) -> jax.Array:
        """Generate answers; see `blip_jax.generation.generate_answers`."""
        from blip_jax.generation import generate_answers

        return generate_answers(
            self, input_ids, pixel_values, attention_mask=attention_mask,
            interpolate_pos_encoding=interpolate_pos_encoding, **generate_kwargs,
        )

