"""Model outputs with transformers' field names; pytrees, so they pass through jax.jit."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax


class ModelOutput:
    """Attribute and key access (``out.logits`` / ``out["logits"]``); None fields are absent keys."""

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.to_tuple()[key]
        value = getattr(self, key)
        if value is None:
            raise KeyError(key)
        return value

    def keys(self):
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())

    def __contains__(self, key):
        return key in self.keys()


def _output(cls):
    return jax.tree_util.register_dataclass(dataclasses.dataclass(cls))


@_output
class BaseModelOutputWithPooling(ModelOutput):
    last_hidden_state: Any = None  # (B, T, D)
    pooler_output: Any = None  # (B, D)
    hidden_states: Any = None  # tuple of (B, T, D): embeddings, then every layer
    cache: Any = None  # per-layer self-attention KV caches when decoding


@_output
class CausalLMOutput(ModelOutput):
    loss: Any = None  # ()
    logits: Any = None  # (B, T, V)
    hidden_states: Any = None
    cache: Any = None


@_output
class BlipOutput(ModelOutput):
    loss: Any = None
    logits_per_image: Any = None  # (B_img, B_txt)
    logits_per_text: Any = None  # (B_txt, B_img)
    text_embeds: Any = None  # (B, P), L2-normalised
    image_embeds: Any = None  # (B, P), L2-normalised
    text_model_output: Any = None
    vision_model_output: Any = None


@_output
class BlipForConditionalGenerationModelOutput(ModelOutput):
    loss: Any = None
    logits: Any = None  # (B, T, V)
    image_embeds: Any = None  # (B, 1 + N_patches, D_vision)
    last_hidden_state: Any = None
    hidden_states: Any = None


@_output
class BlipTextVisionModelOutput(ModelOutput):
    loss: Any = None
    logits: Any = None  # answer decoder logits (B, T, V) when decoder inputs are given
    image_embeds: Any = None
    last_hidden_state: Any = None
    hidden_states: Any = None
    question_embeds: Any = None  # (B, T_q, D_text)


@_output
class BlipImageTextMatchingModelOutput(ModelOutput):
    itm_score: Any = None  # (B, 2) ITM logits, or (B_img, B_txt) cosine similarities
    loss: Any = None
    image_embeds: Any = None
    last_hidden_state: Any = None
    hidden_states: Any = None
    vision_pooler_output: Any = None
    question_embeds: Any = None
