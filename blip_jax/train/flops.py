"""Analytic FLOP counts (2 per multiply-add) of BLIP forward passes and train steps.

Counted: every matmul (projections, attention scores and values, MLPs, patch embedding, LM
head). Not counted: softmax, LayerNorm, GELU and other element-wise work (a few percent).
A backward pass costs twice its forward.
"""

from __future__ import annotations


def transformer_layer_flops(t: int, d: int, mlp: int, s_cross: int = 0, d_cross: int = 0, s_self: int | None = None,
                            cross_kv: bool = True):
    """One layer over t query tokens (self-attention over s_self keys, default t; optional
    cross-attention to s_cross tokens of width d_cross, projecting their keys/values unless
    ``cross_kv`` is False: they were projected once elsewhere and are shared)."""
    s_self = t if s_self is None else s_self
    f = 2 * t * d * d * 4  # q, k, v, out
    f += 2 * 2 * t * s_self * d  # scores + weighted values
    f += 2 * 2 * t * d * mlp
    if s_cross:
        f += 2 * t * d * d * 2  # q, out
        if cross_kv:
            f += cross_kv_flops(s_cross, d_cross, d)
        f += 2 * 2 * t * s_cross * d
    return f


def cross_kv_flops(s_cross: int, d_cross: int, d: int) -> int:
    """Keys and values of s_cross encoder tokens for one layer's cross-attention."""
    return 2 * s_cross * d_cross * d * 2


def vision_forward_flops(vc, image_size: int | None = None) -> int:
    """ViT forward for one image."""
    size = image_size or vc.image_size
    n = (size // vc.patch_size) ** 2
    t = n + 1
    patch = 2 * n * (vc.patch_size**2 * vc.num_channels) * vc.hidden_size
    return patch + vc.num_hidden_layers * transformer_layer_flops(t, vc.hidden_size, vc.intermediate_size)


def text_forward_flops(tc, length: int, image_tokens: int = 0, image_width: int = 0, lm_head: bool = False,
                       cross_kv: bool = True) -> int:
    """Text stack forward for one sequence (with cross-attention when image_tokens > 0)."""
    f = tc.num_hidden_layers * transformer_layer_flops(
        length, tc.hidden_size, tc.intermediate_size, image_tokens, image_width, cross_kv=cross_kv
    )
    if lm_head:
        f += 2 * length * tc.hidden_size * (tc.hidden_size + tc.vocab_size)
    return f


def pretrain_step_flops(config, batch: int, text_length: int, image_size: int | None = None,
                        itm: bool = True, lm: bool = True) -> int:
    """FLOPs of one BLIP pretraining step on a global batch: trained forward+backward of ViT,
    unimodal text, ITM (3 x batch grounded texts) and LM; forward-only momentum ViT + text. The
    image keys/values of the cross-attention are projected once per image and shared by ITM and
    LM (`BlipPretrain.image_kv`), so they count once."""
    vc, tc = config.vision_config, config.text_config
    size = image_size or vc.image_size
    s = (size // vc.patch_size) ** 2 + 1
    vit = vision_forward_flops(vc, size)
    text = text_forward_flops(tc, text_length)
    trained = vit + text
    if itm or lm:
        trained += tc.num_hidden_layers * cross_kv_flops(s, vc.hidden_size, tc.hidden_size)
    if itm:
        trained += 3 * text_forward_flops(tc, text_length, s, vc.hidden_size, cross_kv=False)
    if lm:
        trained += text_forward_flops(tc, text_length, s, vc.hidden_size, lm_head=True, cross_kv=False)
    momentum = vit + text
    return batch * (3 * trained + momentum)


def caption_step_flops(config, batch: int, text_length: int, image_size: int | None = None) -> int:
    """Captioning fine-tune step: ViT + decoder with LM head, forward and backward."""
    vc, tc = config.vision_config, config.text_config
    size = image_size or vc.image_size
    s = (size // vc.patch_size) ** 2 + 1
    fwd = vision_forward_flops(vc, size) + text_forward_flops(tc, text_length, s, vc.hidden_size, lm_head=True)
    return 3 * batch * fwd


def vqa_step_flops(config, batch: int, question_length: int, answers_shape, image_size: int | None = None) -> int:
    """VQA fine-tune step: ViT + grounded question encoder + K answers decoded over the question.

    The answer decoder's cross-attention keys/values of the question are projected once per
    question and layer, not once per answer: `layers.Attention` folds the K answers of a question
    onto that question's keys/values. Scores and weighted values are per answer."""
    vc, tc = config.vision_config, config.text_config
    size = image_size or vc.image_size
    s = (size // vc.patch_size) ** 2 + 1
    k, la = int(answers_shape[0]), int(answers_shape[1])
    fwd = vision_forward_flops(vc, size) + text_forward_flops(tc, question_length, s, vc.hidden_size)
    fwd += tc.num_hidden_layers * cross_kv_flops(question_length, tc.hidden_size, tc.hidden_size)
    fwd += k * text_forward_flops(tc, la, question_length, tc.hidden_size, lm_head=True, cross_kv=False)
    return 3 * batch * fwd
