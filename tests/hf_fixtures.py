"""Tiny transformers BLIP models with explicitly randomised weights, saved to local folders.

The transformers test suite's tiny sizes; every parameter is redrawn from N(0, scale^2) with a
fixed torch seed, because BLIP's vision initializer_range (1e-10) would otherwise leave the
embeddings near zero and hide bugs.
"""

from __future__ import annotations

import numpy as np

TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, bos_token_id=97, sep_token_id=2, eos_token_id=2, pad_token_id=0)
VISION = dict(image_size=30, patch_size=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37)


def hf_config(text_overrides=None, vision_overrides=None, **kw):
    import transformers

    text = transformers.BlipTextConfig(**{**TEXT, **(text_overrides or {})})
    vision = transformers.BlipVisionConfig(**{**VISION, **(vision_overrides or {})})
    return transformers.BlipConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16, image_text_hidden_size=16, **kw
    )


def randomize_(model, seed: int = 0, scale: float = 0.2):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            noise = torch.randn(p.shape, generator=g) * scale
            if "LayerNorm.weight" in name or "layer_norm" in name and name.endswith("weight") \
                    or "post_layernorm.weight" in name:
                noise = 1.0 + noise  # keep LayerNorm scales around one
            p.copy_(noise)
    model.eval()
    return model


def build_hf(cls_name: str, tmp_path, seed: int = 0, scale: float = 0.2, config=None, **config_kw):
    """Build transformers.<cls_name> with random weights, save it under tmp_path; returns (model, folder)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = config or hf_config(**config_kw)
    if cls_name == "BlipVisionModel":
        config = config.vision_config
    elif cls_name in ("BlipTextModel", "BlipTextLMHeadModel"):
        config = config.text_config
    model = getattr(transformers, cls_name)(config)
    randomize_(model, seed, scale)
    folder = tmp_path / cls_name
    model.save_pretrained(folder)
    return model, folder


def inputs(batch=3, length=9, image=30, seed=0, vocab=99, height=None):
    """Random pixel values (B, H, W, 3) channels-last and right-padded ids with a padding mask."""
    rng = np.random.default_rng(seed)
    h = height or image
    pixel_values = rng.normal(size=(batch, h, image, 3)).astype(np.float32)
    ids = rng.integers(3, vocab - 3, size=(batch, length)).astype(np.int64)
    ids[:, 0] = 1
    mask = np.ones((batch, length), np.int64)
    for b in range(batch):
        n = length - 2 * b
        mask[b, n:] = 0
        ids[b, n:] = 0
        ids[b, n - 1] = 2
    return pixel_values, ids, mask


def nchw(x: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
