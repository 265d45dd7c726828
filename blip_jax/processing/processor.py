"""BlipProcessor: one object that prepares images and text for the BLIP models.

Like transformers' ``BlipProcessor`` it only forwards: images go to the image processor, text to the
tokenizer (which adds ``[CLS] ... [SEP]`` and nothing else: [DEC]/[ENC] substitution belongs to the
models, as in transformers). Outputs differ from transformers only in layout/dtype: ``pixel_values``
are channels-last (B, H, W, 3) float32 and ids/masks are int32.
"""

from __future__ import annotations

import os
from typing import Any

from blip_jax.processing.image_processing import BatchFeature, BlipImageProcessor
from blip_jax.processing.tokenization import BlipTokenizer, load_tokenizer


class BlipProcessor:
    """Wraps a ``BlipImageProcessor`` and a ``BlipTokenizer``."""

    model_input_names = ("pixel_values", "input_ids", "attention_mask")

    def __init__(self, image_processor: BlipImageProcessor, tokenizer: BlipTokenizer):
        if not isinstance(image_processor, BlipImageProcessor):
            raise TypeError(
                f"image_processor must be a BlipImageProcessor, got {type(image_processor).__name__}"
            )
        if not isinstance(tokenizer, BlipTokenizer):
            raise TypeError(f"tokenizer must be a BlipTokenizer, got {type(tokenizer).__name__}")
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = "np",
        add_special_tokens: bool = True,
        return_attention_mask: bool = True,
        padding_side: str | None = None,
        **image_kwargs: Any,
    ) -> BatchFeature:
        """Process images and/or text.

        Args:
          images: anything ``BlipImageProcessor`` accepts; ``image_kwargs`` override its settings
            (size, do_resize, ..., data_format).
          text: a str or list of str for the tokenizer; padding/truncation/max_length/add_special_tokens/
            return_attention_mask/padding_side are passed on.
          return_tensors: "np" (default), "jax" or None (lists).

        Returns:
          BatchFeature with ``pixel_values`` (B, H, W, 3) float32 when images are given and
          ``input_ids`` / ``attention_mask`` (B, L) int32 when text is given.
        """
        if images is None and text is None:
            raise ValueError("BlipProcessor needs images, text or both")
        out = BatchFeature()
        if images is not None:
            out.update(self.image_processor(images, return_tensors=return_tensors, **image_kwargs))
        elif image_kwargs:
            raise TypeError(f"Unexpected arguments without images: {sorted(image_kwargs)}")
        if text is not None:
            out.update(self.tokenizer(
                text, padding=padding, truncation=truncation, max_length=max_length,
                return_tensors=return_tensors, add_special_tokens=add_special_tokens,
                return_attention_mask=return_attention_mask, padding_side=padding_side,
            ))
        return out

    def decode(self, ids: Any, skip_special_tokens: bool = True,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """The tokenizer's ``decode`` (None -> its ``clean_up_tokenization_spaces``)."""
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens,
                                     clean_up_tokenization_spaces=clean_up_tokenization_spaces)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = True,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        """The tokenizer's ``batch_decode`` (None -> its ``clean_up_tokenization_spaces``)."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens,
                                           clean_up_tokenization_spaces=clean_up_tokenization_spaces)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """preprocessor_config.json + the tokenizer's files, in the layout transformers reads."""
        os.makedirs(folder, exist_ok=True)
        self.image_processor.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> BlipProcessor:
        """A local folder as written by ``save_pretrained`` or by transformers (4.x or 5.x), or a hub
        id ("Salesforce/blip-image-captioning-base": its processor files, through huggingface_hub's
        cache)."""
        from blip_jax.checkpoints.io import processor_path

        folder = processor_path(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"Processor folder not found: {folder}")
        return cls(BlipImageProcessor.from_pretrained(folder), load_tokenizer(folder))

    def __repr__(self) -> str:
        return f"BlipProcessor(image_processor={self.image_processor!r}, tokenizer={self.tokenizer!r})"
