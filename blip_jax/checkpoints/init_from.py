"""Initialise a BlipPretrain from unimodal HF checkpoints (ViT/DeiT + BERT, as the original starts
from DeiT-B and bert-base-uncased) or from a BLIP checkpoint (HF folder or Salesforce .pth).

Loading goes through the same `Rule`s as from_pretrained, applied to *views*: HF-class-shaped
module objects whose submodules are the pretraining model's own, so values land in place.
"""

from __future__ import annotations

import dataclasses
import logging

import jax.numpy as jnp
import numpy as np

from blip_jax.checkpoints import hf, salesforce
from blip_jax.checkpoints.io import CheckpointError, read_state_dict, resolve_path
from blip_jax.checkpoints.loading import _report, apply_state_dict, as_hf_state, fit_position_table
from blip_jax.checkpoints.salesforce import resize_position_table

logger = logging.getLogger("blip_jax.checkpoints")


def _strip_prefix(state: dict, prefixes: tuple[str, ...]) -> dict:
    for p in prefixes:
        if any(k.startswith(p) for k in state):
            return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
    return state


def vit_to_blip_names(state: dict, num_patches: int) -> dict:
    """HF ViTModel / DeiTModel keys -> BlipVisionModel keys (distillation token dropped, position
    table resized bicubically when the image size differs)."""
    state = _strip_prefix(state, ("vit.", "deit."))
    out = {}
    for k, v in state.items():
        k2 = (k.replace("embeddings.cls_token", "embeddings.class_embedding")
               .replace("embeddings.position_embeddings", "embeddings.position_embedding")
               .replace("embeddings.patch_embeddings.projection", "embeddings.patch_embedding")
               .replace("encoder.layer.", "encoder.layers.")
               .replace(".layernorm_before.", ".layer_norm1.")
               .replace(".layernorm_after.", ".layer_norm2.")
               .replace(".attention.output.dense.", ".self_attn.projection.")
               .replace(".intermediate.dense.", ".mlp.fc1.")
               .replace(".output.dense.", ".mlp.fc2."))
        if k2.startswith("layernorm."):
            k2 = "post_layernorm." + k2[len("layernorm."):]
        out[k2] = np.asarray(v)
    # Separate q/k/v -> the fused qkv the BLIP vision rules expect.
    layers = sorted({int(k.split(".")[2]) for k in out if k.startswith("encoder.layers.")})
    for i in layers:
        base = f"encoder.layers.{i}.attention.attention."
        for kind in ("weight", "bias"):
            parts = [out.pop(f"{base}{n}.{kind}") for n in ("query", "key", "value")]
            out[f"encoder.layers.{i}.self_attn.qkv.{kind}"] = np.concatenate(parts, axis=0)
    pos = out.get("embeddings.position_embedding")
    if pos is not None:
        n_grid = round((pos.shape[1] - 1) ** 0.5) ** 2
        if pos.shape[1] - 1 != n_grid:  # DeiT distilled: [cls, dist, patches...]
            pos = np.concatenate([pos[:, :1], pos[:, 2:]], axis=1)
        out["embeddings.position_embedding"] = resize_position_table(pos, num_patches)
    return out


def bert_to_blip_names(state: dict, vocab_size: int, seed: int = 0) -> dict:
    """HF BertModel / BertForMaskedLM keys -> BlipTextModel (+ LM head) keys; the [DEC]/[ENC] rows
    the vocabulary gains are drawn from N(0, 0.02) (as resize_token_embeddings does)."""
    mlm = {k[len("cls."):]: v for k, v in state.items() if k.startswith("cls.predictions.")}
    state = _strip_prefix(state, ("bert.",))
    out = {k: np.asarray(v) for k, v in state.items() if not k.startswith(("cls.", "pooler."))}
    out.update({f"cls.{k}": np.asarray(v) for k, v in mlm.items()})
    rng = np.random.default_rng(seed)
    for key in ("embeddings.word_embeddings.weight", "cls.predictions.bias"):
        if key in out and out[key].shape[0] < vocab_size:
            old = out[key]
            extra_shape = (vocab_size - old.shape[0],) + old.shape[1:]
            extra = rng.normal(0, 0.02, extra_shape) if old.ndim == 2 else np.zeros(extra_shape)
            out[key] = np.concatenate([old, extra.astype(old.dtype)])
    out.pop("embeddings.token_type_embeddings.weight", None)  # BLIP's text stack has no token types
    return out


@dataclasses.dataclass
class TrainingInit:
    """What a checkpoint holds for the train state beyond BlipPretrain's parameters (original
    Salesforce pretraining / retrieval .pth files): the momentum encoders' weights (HF names of the
    online modules they copy, position table fitted to the model) and the feature queues (Q, E).
    The train loop puts them into the EMA and the queues (`blip_jax.train.tasks.training_init`)."""

    source: str
    momentum: dict[str, np.ndarray] | None = None
    queues: dict[str, np.ndarray] | None = None  # {"image", "text"}: (Q, E)

    def merged(self, later: TrainingInit | None) -> TrainingInit:
        """This, with what a later checkpoint of a list provides taking precedence."""
        if later is None:
            return self
        return TrainingInit(later.source, later.momentum if later.momentum is not None else self.momentum,
                            later.queues if later.queues is not None else self.queues)


def initialise_pretrain_model(model, *, blip_checkpoint: str = "", vision_hf: str = "",
                              text_hf: str = "") -> TrainingInit | None:
    """Fill a BlipPretrain in place; what is not in the given checkpoints stays random (reported).

    The HF rules address parameters by attribute path; BlipPretrain names its submodules as the HF
    classes do (vision_model, text_encoder, text_decoder, vision_proj, text_proj, itm_head), so the
    retrieval and captioning rules apply to it directly.

    From a Salesforce .pth the ITC temperature is loaded too (the original's load_checkpoint loads
    every tensor of matching shape), and the momentum encoders and feature queues it carries are
    returned as a `TrainingInit` for the train state (they are not module state here); None when
    the checkpoint has neither."""
    config = model.config
    tc, vc = config.text_config, config.vision_config
    if blip_checkpoint:
        raw, source = read_state_dict(resolve_path(blip_checkpoint))
        state = as_hf_state(raw, config)
        # Decoder first, then the encoder: the parameters they share end with the encoder's values.
        for name in ("BlipForConditionalGeneration", "BlipForImageTextRetrieval"):
            rules = hf.blip_rules(name, config)
            if name == "BlipForConditionalGeneration" and not any(k.startswith("text_decoder.") for k in state):
                continue
            info = apply_state_dict(model, state, source, rules)
            _report(type(model), info)
        extra = salesforce.training_state(raw) if salesforce.is_salesforce_state_dict(raw) else {}
        del raw, state
        if "temp" in extra:
            model.temp.value = jnp.asarray(extra["temp"], model.temp.dtype)
            logger.info("loaded the ITC temperature %.4f from %s", float(extra["temp"]), source)
        momentum = fit_position_table(extra["momentum"], config) if "momentum" in extra else None
        queues = ({"image": extra["image_queue"], "text": extra["text_queue"]}
                  if "image_queue" in extra and "text_queue" in extra else None)
        if momentum is None and queues is None:
            return None
        return TrainingInit(source, momentum, queues)
    if vision_hf:
        state, source = read_state_dict(resolve_path(vision_hf))
        state = vit_to_blip_names(state, vc.num_patches)
        rules = hf.vision_rules("", ("vision_model",), vc.num_hidden_layers)
        info = apply_state_dict(model, state, source, rules)
        if info.missing_keys:
            raise CheckpointError(f"{source}: not a ViT/DeiT checkpoint of this size; missing {info.missing_keys[:5]}")
        logger.info("initialised the ViT from %s", source)
    if text_hf:
        state, source = read_state_dict(resolve_path(text_hf))
        state = bert_to_blip_names(state, tc.vocab_size)
        # The decoder's own self-attention (and the LM head, from BERT's MLM head if present) start
        # from BERT too, as the original loads bert-base-uncased into both; cross-attention starts random.
        dec_rules = hf.text_rules("", ("text_decoder", "bert"), tc.num_hidden_layers, False, False)
        if any(k.startswith("cls.predictions.") for k in state):
            dec_rules += hf.lm_head_rules("cls.predictions.", ("text_decoder", "cls"), tc.tie_word_embeddings)
        apply_state_dict(model, state, source, dec_rules)
        enc_rules = hf.text_rules("", ("text_encoder",), tc.num_hidden_layers, False, False)
        info = apply_state_dict(model, state, source, enc_rules)
        if info.missing_keys:
            raise CheckpointError(f"{source}: not a BERT checkpoint of this size; missing {info.missing_keys[:5]}")
        logger.info("initialised the text encoder/decoder from %s (cross-attention starts random)", source)


def momentum_rules(config) -> list[hf.Rule]:
    """HF-named rules of the momentum-tracked modules (blip_jax.models.pretrain.MOMENTUM_MODULES)."""
    tc, vc = config.text_config, config.vision_config
    rules = hf.vision_rules("vision_model.", ("vision_model",), vc.num_hidden_layers)
    rules += hf.text_rules("text_encoder.", ("text_encoder",), tc.num_hidden_layers, True, False)
    for head in ("vision_proj", "text_proj"):
        rules += hf.linear(head, (head,))
    return rules


def load_momentum(momentum_view, state: dict[str, np.ndarray], source: str, config) -> None:
    """Fill the momentum encoders (a `blip_jax.train.state.MomentumEncoders` merged from the EMA
    state) from `TrainingInit.momentum` in place; tensors the checkpoint lacks keep their values
    (the online copy the EMA starts from), and are reported."""
    info = apply_state_dict(momentum_view, state, source, momentum_rules(config))
    if info.missing_keys or info.unexpected_keys:
        _report(type(momentum_view), info)
    logger.info("initialised the momentum encoders from %s", source)


__all__ = ["TrainingInit", "initialise_pretrain_model", "load_momentum", "vit_to_blip_names", "bert_to_blip_names"]
