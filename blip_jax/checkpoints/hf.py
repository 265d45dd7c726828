"""The map between transformers' BLIP state-dict keys and our parameter paths.

Each `Rule` ties one or more HF tensors to one or more of our parameters with a pair of
converters (torch Linear (out, in) <-> our kernel (in, out); torch Conv (D, C, p, p) <-> ours
(p, p, C, D); the ViT's fused qkv <-> our query/key/value). The same rules serve loading
(HF -> ours) and saving (ours -> HF), so the two directions cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

Path = tuple  # a parameter path inside an nnx state, e.g. ("vision_model", "layers", 0, "mlp", "fc1", "kernel")


@dataclasses.dataclass(frozen=True)
class Rule:
    hf_keys: tuple[str, ...]
    paths: tuple[Path, ...]
    to_ours: Callable[[list[np.ndarray]], list[np.ndarray]]
    to_hf: Callable[[list[np.ndarray]], list[np.ndarray]]


def _same(xs):
    return list(xs)


def _t(xs):
    return [np.ascontiguousarray(x.T) for x in xs]


def _conv_to_ours(xs):
    return [np.ascontiguousarray(xs[0].transpose(2, 3, 1, 0))]


def _conv_to_hf(xs):
    return [np.ascontiguousarray(xs[0].transpose(3, 2, 0, 1))]


def _qkv_w_to_ours(xs):
    return [np.ascontiguousarray(w.T) for w in np.split(xs[0], 3, axis=0)]


def _qkv_w_to_hf(xs):
    return [np.concatenate([w.T for w in xs], axis=0)]


def _qkv_b_to_ours(xs):
    return list(np.split(xs[0], 3))


def _qkv_b_to_hf(xs):
    return [np.concatenate(xs)]


def param(hf: str, path: Path) -> list[Rule]:
    return [Rule((hf,), (path,), _same, _same)]


def linear(hf: str, path: Path, bias: bool = True) -> list[Rule]:
    rules = [Rule((f"{hf}.weight",), (path + ("kernel",),), _t, _t)]
    if bias:
        rules.append(Rule((f"{hf}.bias",), (path + ("bias",),), _same, _same))
    return rules


def layer_norm(hf: str, path: Path) -> list[Rule]:
    return [
        Rule((f"{hf}.weight",), (path + ("scale",),), _same, _same),
        Rule((f"{hf}.bias",), (path + ("bias",),), _same, _same),
    ]


def embedding(hf: str, path: Path) -> list[Rule]:
    return [Rule((f"{hf}.weight",), (path + ("embedding",),), _same, _same)]


def vision_rules(hf: str, ours: Path, num_layers: int) -> list[Rule]:
    """BlipVisionModel: embeddings, encoder.layers.{i}, post_layernorm."""
    e = ours + ("embeddings",)
    rules = param(f"{hf}embeddings.class_embedding", e + ("class_embedding",))
    rules += param(f"{hf}embeddings.position_embedding", e + ("position_embedding",))
    rules += [
        Rule((f"{hf}embeddings.patch_embedding.weight",), (e + ("patch_embedding", "kernel"),),
             _conv_to_ours, _conv_to_hf),
        Rule((f"{hf}embeddings.patch_embedding.bias",), (e + ("patch_embedding", "bias"),), _same, _same),
    ]
    for i in range(num_layers):
        h, o = f"{hf}encoder.layers.{i}.", ours + ("layers", i)
        a = o + ("attention",)
        qkv = tuple(a + (n,) for n in ("query", "key", "value"))
        rules += [
            Rule((f"{h}self_attn.qkv.weight",), tuple(p + ("kernel",) for p in qkv), _qkv_w_to_ours, _qkv_w_to_hf),
            Rule((f"{h}self_attn.qkv.bias",), tuple(p + ("bias",) for p in qkv), _qkv_b_to_ours, _qkv_b_to_hf),
        ]
        rules += linear(f"{h}self_attn.projection", a + ("out",))
        rules += layer_norm(f"{h}layer_norm1", o + ("attention_norm",))
        rules += layer_norm(f"{h}layer_norm2", o + ("mlp_norm",))
        rules += linear(f"{h}mlp.fc1", o + ("mlp", "fc1"))
        rules += linear(f"{h}mlp.fc2", o + ("mlp", "fc2"))
    rules += layer_norm(f"{hf}post_layernorm", ours + ("post_layernorm",))
    return rules


def _bert_attention(h: str, o: Path, name: str, norm: str) -> list[Rule]:
    rules = []
    for n in ("query", "key", "value"):
        rules += linear(f"{h}self.{n}", o + (name, n))
    rules += linear(f"{h}output.dense", o + (name, "out"))
    rules += layer_norm(f"{h}output.LayerNorm", o + (norm,))
    return rules


def text_rules(hf: str, ours: Path, num_layers: int, cross: bool, pooler: bool) -> list[Rule]:
    """BlipTextModel: embeddings, encoder.layer.{i} (attention, crossattention, FFN), pooler."""
    e = ours + ("embeddings",)
    rules = embedding(f"{hf}embeddings.word_embeddings", e + ("word_embeddings",))
    rules += embedding(f"{hf}embeddings.position_embeddings", e + ("position_embeddings",))
    rules += layer_norm(f"{hf}embeddings.LayerNorm", e + ("layer_norm",))
    for i in range(num_layers):
        h, o = f"{hf}encoder.layer.{i}.", ours + ("layers", i)
        rules += _bert_attention(f"{h}attention.", o, "attention", "attention_norm")
        if cross:
            rules += _bert_attention(f"{h}crossattention.", o, "crossattention", "crossattention_norm")
        rules += linear(f"{h}intermediate.dense", o + ("mlp", "fc1"))
        rules += linear(f"{h}output.dense", o + ("mlp", "fc2"))
        rules += layer_norm(f"{h}output.LayerNorm", o + ("mlp_norm",))
    if pooler:
        rules += linear(f"{hf}pooler.dense", ours + ("pooler",))
    return rules


def lm_head_rules(hf: str, ours: Path, tied: bool) -> list[Rule]:
    """BlipTextLMHeadModel's cls.predictions.*; a tied decoder.weight is the word embedding."""
    rules = linear(f"{hf}transform.dense", ours + ("transform",))
    rules += layer_norm(f"{hf}transform.LayerNorm", ours + ("layer_norm",))
    rules += param(f"{hf}bias", ours + ("bias",))
    if not tied:
        rules += [Rule((f"{hf}decoder.weight",), (ours + ("decoder",),), _t, _t)]
    return rules


# Keys that never carry weights of their own: buffers, and aliases of tied parameters.
def is_ignorable(key: str) -> bool:
    return key.endswith("position_ids") or key.endswith("cls.predictions.decoder.bias")


def tied_decoder_keys(rules: list[Rule]) -> dict[str, str]:
    """For each LM head with a tied decoder: its decoder.weight key -> the word embedding key."""
    out = {}
    for r in rules:
        k = r.hf_keys[0]
        if k.endswith("cls.predictions.bias"):
            prefix = k[: -len("cls.predictions.bias")]
            out[f"{prefix}cls.predictions.decoder.weight"] = f"{prefix}bert.embeddings.word_embeddings.weight"
    return out


def rules_for(model) -> list[Rule]:
    """All rules for one of our model instances (dispatch on its class name)."""
    name = type(model).__name__
    cfg = model.config
    if name == "BlipVisionModel":
        return vision_rules("", (), cfg.num_hidden_layers)
    if name == "BlipTextModel":
        return text_rules("", (), cfg.num_hidden_layers, model.layers[0].crossattention is not None,
                          model.pooler is not None)
    if name == "BlipTextLMHeadModel":
        return _lm_model_rules("", (), cfg)
    if name == "BlipModel":
        return blip_rules(name, cfg, text_cross=model.text_model.layers[0].crossattention is not None)
    return blip_rules(name, cfg)


def blip_rules(name: str, cfg, text_cross: bool = True) -> list[Rule]:
    """Rules of the BlipConfig-based classes, by transformers class name. Their submodule names
    are shared with BlipPretrain, so the same rules load retrieval or captioning weights into it."""
    tc, vc = cfg.text_config, cfg.vision_config
    rules = vision_rules("vision_model.", ("vision_model",), vc.num_hidden_layers)
    if name == "BlipModel":
        rules += text_rules("text_model.", ("text_model",), tc.num_hidden_layers, text_cross, True)
        rules += linear("visual_projection", ("visual_projection",), bias=False)
        rules += linear("text_projection", ("text_projection",), bias=False)
        rules += param("logit_scale", ("logit_scale",))
    if name in ("BlipForImageTextRetrieval", "BlipForQuestionAnswering"):
        rules += text_rules("text_encoder.", ("text_encoder",), tc.num_hidden_layers, True, False)
    if name in ("BlipForConditionalGeneration", "BlipForQuestionAnswering"):
        rules += _lm_model_rules("text_decoder.", ("text_decoder",), tc)
    if name == "BlipForImageTextRetrieval":
        for head in ("vision_proj", "text_proj", "itm_head"):
            rules += linear(head, (head,))
    if name not in ("BlipModel", "BlipForImageTextRetrieval", "BlipForQuestionAnswering",
                    "BlipForConditionalGeneration"):
        raise TypeError(f"no checkpoint mapping for {name}")
    return rules


def _lm_model_rules(hf: str, ours: Path, tc) -> list[Rule]:
    return text_rules(f"{hf}bert.", ours + ("bert",), tc.num_hidden_layers, True, False) + lm_head_rules(
        f"{hf}cls.predictions.", ours + ("cls",), tc.tie_word_embeddings
    )


# transformers class names our classes save as (config.json "architectures").
HF_ARCHITECTURES = {
    "BlipVisionModel": "BlipVisionModel",
    "BlipTextModel": "BlipTextModel",
    "BlipTextLMHeadModel": "BlipTextLMHeadModel",
    "BlipModel": "BlipModel",
    "BlipForConditionalGeneration": "BlipForConditionalGeneration",
    "BlipForImageTextRetrieval": "BlipForImageTextRetrieval",
    "BlipForQuestionAnswering": "BlipForQuestionAnswering",
}
