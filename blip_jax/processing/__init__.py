"""Image preprocessing, tokenizers and the combined BlipProcessor."""

from blip_jax.processing.image_processing import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    BatchFeature,
    BlipImageProcessor,
)
from blip_jax.processing.processor import BlipProcessor
from blip_jax.processing.tokenization import (
    SPM_SPECIALS,
    BatchEncoding,
    BlipTokenizer,
    SentencePieceTokenizer,
    WordPieceTokenizer,
    load_tokenizer,
)

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "SPM_SPECIALS",
    "BatchEncoding",
    "BatchFeature",
    "BlipImageProcessor",
    "BlipProcessor",
    "BlipTokenizer",
    "SentencePieceTokenizer",
    "WordPieceTokenizer",
    "load_tokenizer",
]
