"""blip-jax: BLIP in JAX / Flax NNX.

Public classes are imported lazily so that `import blip_jax` stays cheap (no JAX import for
config-only or data-only use).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "BlipConfig": "blip_jax.configuration",
    "BlipTextConfig": "blip_jax.configuration",
    "BlipVisionConfig": "blip_jax.configuration",
    "BlipImageProcessor": "blip_jax.processing.image_processing",
    "BlipProcessor": "blip_jax.processing.processor",
    "WordPieceTokenizer": "blip_jax.processing.tokenization",
    "SentencePieceTokenizer": "blip_jax.processing.tokenization",
    "BlipVisionModel": "blip_jax.models.vision",
    "BlipTextModel": "blip_jax.models.text",
    "BlipTextLMHeadModel": "blip_jax.models.text",
    "BlipModel": "blip_jax.models.blip",
    "BlipForConditionalGeneration": "blip_jax.models.blip",
    "BlipForImageTextRetrieval": "blip_jax.models.blip",
    "BlipForQuestionAnswering": "blip_jax.models.blip",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'blip_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
