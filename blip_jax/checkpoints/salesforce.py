"""Original Salesforce BLIP checkpoints (model_base*.pth, model_*_capfilt_large.pth, fine-tuned
caption / retrieval / VQA .pth files) mapped onto HF key names, then loaded by the HF rules.

Their ViT is timm's (visual_encoder.blocks.{i}.attn.qkv ...); the text stacks already use
HF/BERT names (text_encoder.*, text_decoder.bert.*, text_decoder.cls.*). Momentum copies, feature
queues and the ITC temperature (pretraining/retrieval state) have no place in the inference classes
and are reported as skipped; `training_state` hands them to BlipPretrain's initialisation
(`blip_jax.checkpoints.init_from`), which loads them as the original's load_checkpoint does.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig

logger = logging.getLogger("blip_jax.checkpoints")

_VIT_RENAMES = [
    (r"^visual_encoder\.cls_token$", "vision_model.embeddings.class_embedding"),
    (r"^visual_encoder\.pos_embed$", "vision_model.embeddings.position_embedding"),
    (r"^visual_encoder\.patch_embed\.proj\.", "vision_model.embeddings.patch_embedding."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm1\.", r"vision_model.encoder.layers.\1.layer_norm1."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm2\.", r"vision_model.encoder.layers.\1.layer_norm2."),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.qkv\.", r"vision_model.encoder.layers.\1.self_attn.qkv."),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"vision_model.encoder.layers.\1.self_attn.projection."),
    (r"^visual_encoder\.blocks\.(\d+)\.mlp\.", r"vision_model.encoder.layers.\1.mlp."),
    (r"^visual_encoder\.norm\.", "vision_model.post_layernorm."),
]
# Training-only state in pretrain / retrieval checkpoints (queue_ptr: BLIP_Pretrain's queue pointer,
# ptr_queue: BLIP_Retrieval's).
_SKIP = re.compile(r"^(\w+_m\.|\w+_m$|image_queue|text_queue|idx_queue|ptr_queue|queue_ptr$|temp$)")
# The momentum copies (original: model_pairs), under the names of the modules they copy.
_MOMENTUM = re.compile(r"^(visual_encoder|vision_proj|text_encoder|text_proj)_m\.")


def is_salesforce_state_dict(state: dict) -> bool:
    return any(k.startswith("visual_encoder.") for k in state)


def _count_layers(state: dict, pattern: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


def infer_config(state: dict) -> BlipConfig:
    """Read the architecture off tensor shapes; original-code behaviour flags are switched on
    (ViT LayerNorm eps 1e-6, [ENC] for image-grounded text, LM label smoothing 0.1)."""
    pos = state["visual_encoder.pos_embed"]
    patch = state["visual_encoder.patch_embed.proj.weight"].shape[-1]
    width = pos.shape[-1]
    side = int(round((pos.shape[1] - 1) ** 0.5))
    vision = BlipVisionConfig(
        hidden_size=width,
        intermediate_size=state["visual_encoder.blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count_layers(state, r"^visual_encoder\.blocks\.(\d+)\."),
        num_attention_heads=width // 64,
        image_size=side * patch,
        patch_size=patch,
        layer_norm_eps=1e-6,
    )
    text_prefix = "text_encoder." if any(k.startswith("text_encoder.") for k in state) else "text_decoder.bert."
    words = state[f"{text_prefix}embeddings.word_embeddings.weight"]
    text = BlipTextConfig(
        vocab_size=words.shape[0],
        hidden_size=words.shape[1],
        intermediate_size=state[f"{text_prefix}encoder.layer.0.intermediate.dense.weight"].shape[0],
        num_hidden_layers=_count_layers(state, rf"^{re.escape(text_prefix)}encoder\.layer\.(\d+)\."),
        num_attention_heads=words.shape[1] // 64,
        max_position_embeddings=state[f"{text_prefix}embeddings.position_embeddings.weight"].shape[0],
        use_enc_token_for_itm=True,
        label_smoothing=0.1,
    )
    embed_dim = state["vision_proj.weight"].shape[0] if "vision_proj.weight" in state else 256
    return BlipConfig(text_config=text, vision_config=vision, image_text_hidden_size=embed_dim)


def to_hf_state_dict(state: dict) -> dict:
    """Rename Salesforce keys to HF keys (the loader then fits the ViT position table to the model's
    image size: `loading.fit_position_table`)."""
    out, skipped = {}, []
    for key, value in state.items():
        if _SKIP.match(key):
            skipped.append(key)
            continue
        new = key
        for pattern, repl in _VIT_RENAMES:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        out[new] = value
    if skipped:
        logger.info("Salesforce checkpoint: skipped %d training-only tensors (momentum encoders, queues, temp; "
                    "a BlipPretrain reads them separately)", len(skipped))
    return out


def training_state(state: dict) -> dict:
    """The training-only tensors of a Salesforce state dict that BlipPretrain can use:
    {"temp": () array, "momentum": HF-named state dict of the momentum encoders (the online modules'
    names, e.g. vision_model.*, text_proj.*), "image_queue" / "text_queue": (Q, E) (the original
    stores (E, Q))}, each present only when the checkpoint has it. The image-id queue and the
    pointer start fresh (ids -1: no positives, pointer 0), as the original's retrieval model makes
    them when it starts from a pretraining checkpoint (which has neither); a retrieval checkpoint's
    idx_queue is not carried over, so its ids cannot collide with another dataset's."""
    out = {}
    if "temp" in state and np.asarray(state["temp"]).size == 1:
        out["temp"] = np.asarray(state["temp"], np.float32).reshape(())
    momentum = {_MOMENTUM.sub(r"\1.", k): v for k, v in state.items() if _MOMENTUM.match(k)}
    if momentum:
        out["momentum"] = to_hf_state_dict(momentum)
    for name in ("image_queue", "text_queue"):
        if name in state and np.asarray(state[name]).ndim == 2:
            out[name] = np.asarray(state[name]).T
    return out


def resize_position_table(pos: np.ndarray, num_patches: int) -> np.ndarray:
    """(1, 1 + n, D) -> (1, 1 + num_patches, D), bicubic over the square patch grid."""
    if pos.shape[1] == num_patches + 1:
        return pos
    from blip_jax.models.vision import bicubic_matrix

    old, new = int(round((pos.shape[1] - 1) ** 0.5)), int(round(num_patches**0.5))
    grid = pos[0, 1:].astype(np.float64).reshape(old, old, -1)
    m = bicubic_matrix(old, new).astype(np.float64)
    grid = np.einsum("ih,jw,hwd->ijd", m, m, grid).reshape(1, new * new, -1)
    logger.info("resized ViT position embeddings from %dx%d to %dx%d patches", old, old, new, new)
    return np.concatenate([pos[:, :1], grid.astype(pos.dtype)], axis=1)
