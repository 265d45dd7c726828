"""Numerical parity with transformers' PyTorch BLIP, run side by side in the same test.

Every transformers model is built with a tiny config, its weights redrawn at random, saved with
save_pretrained, loaded with our from_pretrained, and both are run on the same inputs (with
padding in the attention masks). Tolerance: max abs error <= 1e-4 in float32.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import blip_jax  # noqa: E402
from blip_jax.checkpoints.io import CheckpointError  # noqa: E402
from tests.hf_fixtures import build_hf, inputs, nchw  # noqa: E402

TOL = 1e-4


def err(a, b) -> float:
    a = a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)
    return float(np.max(np.abs(a - np.asarray(b, dtype=np.float32))))


@pytest.fixture(scope="module")
def batch():
    return inputs(batch=3, length=9)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("hf")


def test_vision_model(tmp, batch):
    px, _, _ = batch
    ref, folder = build_hf("BlipVisionModel", tmp)
    ours = blip_jax.BlipVisionModel.from_pretrained(folder)
    with torch.no_grad():
        a = ref(pixel_values=nchw(px), output_hidden_states=True)
    b = ours(px, output_hidden_states=True)
    assert err(a.last_hidden_state, b.last_hidden_state) <= TOL
    assert err(a.pooler_output, b.pooler_output) <= TOL
    assert len(a.hidden_states) == len(b.hidden_states) == 3
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert err(x, y) <= TOL


@pytest.mark.parametrize("height,width", [(38, 46), (44, 44)])
def test_vision_interpolate_pos_encoding(tmp, height, width):
    """Non-square and larger images: bicubic resize of the position table as torch does it."""
    ref, folder = build_hf("BlipVisionModel", tmp / f"interp{height}x{width}", seed=1)
    ours = blip_jax.BlipVisionModel.from_pretrained(folder)
    px = np.random.default_rng(3).normal(size=(2, height, width, 3)).astype(np.float32)
    with torch.no_grad():
        a = ref(pixel_values=nchw(px), interpolate_pos_encoding=True)
    b = ours(px, interpolate_pos_encoding=True)
    assert b.last_hidden_state.shape == (2, 1 + (height // 2) * (width // 2), 32)
    assert err(a.last_hidden_state, b.last_hidden_state) <= TOL
    assert err(a.pooler_output, b.pooler_output) <= TOL


def test_vision_wrong_size_without_interpolation_is_a_clear_error(tmp):
    _, folder = build_hf("BlipVisionModel", tmp / "wrong")
    ours = blip_jax.BlipVisionModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        ours(np.zeros((1, 40, 40, 3), np.float32))


def test_pixel_layout_and_dtype_mistakes_are_clear_errors(tmp):
    _, folder = build_hf("BlipForConditionalGeneration", tmp / "pixels")
    ours = blip_jax.BlipForConditionalGeneration.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"channels-last \(B, H, W, 3\), got shape \(2, 3, 30, 30\).*channels-first"):
        ours.generate(np.zeros((2, 3, 30, 30), np.float32), max_length=4)
    with pytest.raises(ValueError, match="got shape \\(30, 30, 3\\)"):
        ours.vision_model(np.zeros((30, 30, 3), np.float32))
    with pytest.raises(ValueError, match="dtype uint8.*BlipImageProcessor"):
        ours.generate(np.zeros((2, 30, 30, 3), np.uint8), max_length=4)


def test_text_model_encoder_and_decoder(tmp, batch):
    _, ids, mask = batch
    ref, folder = build_hf("BlipTextModel", tmp)
    ours = blip_jax.BlipTextModel.from_pretrained(folder)
    img = np.random.default_rng(1).normal(size=(3, 7, 32)).astype(np.float32)
    img_mask = np.ones((3, 7), np.int64)
    img_mask[1, 5:] = 0
    t = torch.tensor
    with torch.no_grad():
        enc = ref(input_ids=t(ids), attention_mask=t(mask), output_hidden_states=True)
        grounded = ref(input_ids=t(ids), attention_mask=t(mask), encoder_hidden_states=t(img),
                       encoder_attention_mask=t(np.ones((3, 7), np.int64)))
        dec = ref(input_ids=t(ids), attention_mask=t(mask), encoder_hidden_states=t(img), is_decoder=True)
    b = ours(ids, mask, output_hidden_states=True)
    assert err(enc.last_hidden_state, b.last_hidden_state) <= TOL
    assert err(enc.pooler_output, b.pooler_output) <= TOL
    for x, y in zip(enc.hidden_states, b.hidden_states):
        assert err(x, y) <= TOL
    g = ours(ids, mask, encoder_hidden_states=img, encoder_attention_mask=np.ones((3, 7), np.int32))
    assert err(grounded.last_hidden_state, g.last_hidden_state) <= TOL
    d = ours(ids, mask, encoder_hidden_states=img, is_decoder=True)
    assert err(dec.last_hidden_state, d.last_hidden_state) <= TOL
    # The image mask really masks: changing a masked image token changes nothing.
    img2 = img.copy()
    img2[1, 6] += 5.0
    g1 = ours(ids, mask, encoder_hidden_states=img, encoder_attention_mask=img_mask).last_hidden_state
    g2 = ours(ids, mask, encoder_hidden_states=img2, encoder_attention_mask=img_mask).last_hidden_state
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), atol=1e-6)


def test_blip_model(tmp, batch):
    px, ids, mask = batch
    ref, folder = build_hf("BlipModel", tmp)
    ours = blip_jax.BlipModel.from_pretrained(folder)
    t = torch.tensor
    with torch.no_grad():
        a = ref(input_ids=t(ids), pixel_values=nchw(px), attention_mask=t(mask), return_loss=True)
        tf = ref.get_text_features(input_ids=t(ids), attention_mask=t(mask))
        imf = ref.get_image_features(pixel_values=nchw(px))
        mm = ref.get_multimodal_features(input_ids=t(ids), pixel_values=nchw(px), attention_mask=t(mask))
    b = ours(ids, px, mask, return_loss=True)
    for name in ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        assert err(getattr(a, name), getattr(b, name)) <= TOL, name
    assert abs(a.loss.item() - float(b.loss)) <= TOL
    tf = getattr(tf, "pooler_output", tf)
    imf = getattr(imf, "pooler_output", imf)
    assert err(tf, ours.get_text_features(ids, mask)) <= TOL
    assert err(imf, ours.get_image_features(px)) <= TOL
    assert err(mm, ours.get_multimodal_features(ids, px, mask)) <= TOL


def test_conditional_generation_forward(tmp, batch):
    px, ids, mask = batch
    ref, folder = build_hf("BlipForConditionalGeneration", tmp)
    ours = blip_jax.BlipForConditionalGeneration.from_pretrained(folder)
    t = torch.tensor
    with torch.no_grad():
        a = ref(pixel_values=nchw(px), input_ids=t(ids), attention_mask=t(mask), labels=t(ids))
    b = ours(px, ids, mask, labels=ids)
    assert err(a.logits, b.logits) <= TOL
    assert err(a.image_embeds, b.image_embeds) <= TOL
    assert abs(a.loss.item() - float(b.loss)) <= TOL


def test_conditional_generation_label_smoothing(tmp, batch):
    px, ids, mask = batch
    ref, folder = build_hf("BlipForConditionalGeneration", tmp / "smooth", text_overrides={"label_smoothing": 0.1})
    ours = blip_jax.BlipForConditionalGeneration.from_pretrained(folder)
    labels = np.where(mask == 1, ids, -100)
    t = torch.tensor
    with torch.no_grad():
        a = ref(pixel_values=nchw(px), input_ids=t(ids), attention_mask=t(mask), labels=t(labels))
    b = ours(px, ids, mask, labels=labels)
    assert abs(a.loss.item() - float(b.loss)) <= TOL


@pytest.mark.parametrize("use_itm_head", [True, False])
def test_image_text_retrieval(tmp, batch, use_itm_head):
    px, ids, mask = batch
    ref, folder = build_hf("BlipForImageTextRetrieval", tmp / str(use_itm_head))
    ours = blip_jax.BlipForImageTextRetrieval.from_pretrained(folder)
    t = torch.tensor
    with torch.no_grad():
        a = ref(input_ids=t(ids), pixel_values=nchw(px), attention_mask=t(mask), use_itm_head=use_itm_head)
    b = ours(ids, px, use_itm_head=use_itm_head, attention_mask=mask)
    assert b.itm_score.shape == ((3, 2) if use_itm_head else (3, 3))
    assert err(a.itm_score, b.itm_score) <= TOL
    assert err(a.question_embeds, b.question_embeds) <= TOL


def test_question_answering(tmp, batch):
    """transformers 5.x drops the cross-attention mask inside BlipTextAttention, so the decoder's
    view of a padded question differs from the original BLIP and transformers 4.x; we keep the
    mask. Parity is therefore checked on unpadded questions, and the padded case is checked to be
    exactly the truncated (padding-free) computation."""
    px, ids, mask = batch
    ref, folder = build_hf("BlipForQuestionAnswering", tmp)
    ours = blip_jax.BlipForQuestionAnswering.from_pretrained(folder)
    full = np.ones_like(mask)
    answers = ids[:, :5].copy()
    t = torch.tensor
    with torch.no_grad():
        a = ref(input_ids=t(ids), pixel_values=nchw(px), attention_mask=t(full), labels=t(answers))
        img = ref.vision_model(pixel_values=nchw(px)).last_hidden_state
        q = ref.text_encoder(input_ids=t(ids), attention_mask=t(mask), encoder_hidden_states=img).last_hidden_state
    b = ours(ids, px, attention_mask=full, labels=answers)
    assert abs(a.loss.item() - float(b.loss)) <= TOL
    padded = ours(ids, px, attention_mask=mask, labels=answers)
    assert err(q, padded.question_embeds) <= TOL
    # Row 2 has 5 real question tokens: the padded batch must equal the question cut to 5 tokens.
    cut = ours(ids[2:3, :5], px[2:3], attention_mask=mask[2:3, :5], labels=answers[2:3])
    np.testing.assert_allclose(np.asarray(padded.logits[2]), np.asarray(cut.logits[0]), atol=1e-4)


def test_save_pretrained_loads_in_transformers(tmp, batch):
    px, ids, mask = batch
    ref, folder = build_hf("BlipForImageTextRetrieval", tmp / "roundtrip", seed=4)
    ours = blip_jax.BlipForImageTextRetrieval.from_pretrained(folder)
    out = ours.save_pretrained(tmp / "ours_saved")
    back = transformers.BlipForImageTextRetrieval.from_pretrained(out).eval()
    t = torch.tensor
    with torch.no_grad():
        a = ref(input_ids=t(ids), pixel_values=nchw(px), attention_mask=t(mask))
        c = back(input_ids=t(ids), pixel_values=nchw(px), attention_mask=t(mask))
    assert err(a.itm_score, c.itm_score) == 0.0
    for name, p in ref.state_dict().items():
        assert torch.equal(p, back.state_dict()[name]), name


@pytest.mark.parametrize("cls", ["BlipForConditionalGeneration", "BlipForQuestionAnswering", "BlipModel"])
def test_save_pretrained_round_trip_other_heads(tmp, batch, cls):
    px, ids, mask = batch
    ref, folder = build_hf(cls, tmp / f"rt_{cls}", seed=5)
    ours = getattr(blip_jax, cls).from_pretrained(folder)
    back = getattr(transformers, cls).from_pretrained(ours.save_pretrained(tmp / f"saved_{cls}")).eval()
    ref_state, back_state = ref.state_dict(), back.state_dict()
    assert set(ref_state) == set(back_state)
    for name, p in ref_state.items():
        assert torch.equal(p, back_state[name]), name


def test_sharded_and_bin_checkpoints(tmp, batch):
    px, _, _ = batch
    ref, _ = build_hf("BlipVisionModel", tmp / "formats", seed=6)
    sharded = tmp / "sharded"
    ref.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    binary = tmp / "bin"
    binary.mkdir()
    torch.save(ref.state_dict(), binary / "pytorch_model.bin")
    ref.config.save_pretrained(binary)
    with torch.no_grad():
        want = ref(pixel_values=nchw(px)).last_hidden_state
    for folder in (sharded, binary):
        assert err(want, blip_jax.BlipVisionModel.from_pretrained(folder)(px).last_hidden_state) <= TOL


def test_submodel_from_full_checkpoint(tmp, batch):
    """A BlipVisionModel reads vision_model.* out of a full captioning checkpoint."""
    px, _, _ = batch
    ref, folder = build_hf("BlipForConditionalGeneration", tmp / "full", seed=7)
    vision = blip_jax.BlipVisionModel.from_pretrained(folder)
    with torch.no_grad():
        want = ref.vision_model(pixel_values=nchw(px)).last_hidden_state
    assert err(want, vision(px).last_hidden_state) <= TOL


def test_caption_checkpoint_into_retrieval_warns_about_random_heads(tmp, caplog):
    _, folder = build_hf("BlipForConditionalGeneration", tmp / "cap", seed=8)
    with caplog.at_level(logging.WARNING, logger="blip_jax.checkpoints"):
        _, info = blip_jax.BlipForImageTextRetrieval.from_pretrained(folder, output_loading_info=True)
    assert "itm_head.weight" in info.missing_keys and "vision_proj.weight" in info.missing_keys
    assert any(k.startswith("text_encoder.") for k in info.missing_keys)
    assert any(k.startswith("text_decoder.") for k in info.unexpected_keys)
    assert not any(k.startswith("vision_model.") for k in info.missing_keys)
    text = caplog.text
    assert "RANDOMLY INITIALISED" in text and "itm_head" in text and "text_proj" in text


def test_shape_mismatch_names_parameter_and_shapes(tmp):
    ref, folder = build_hf("BlipVisionModel", tmp / "mismatch", seed=9)
    cfg = blip_jax.BlipVisionConfig.from_pretrained(folder).replace(intermediate_size=40)
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.0\.mlp\.fc1\.weight.*\(37, 32\).*\(40, 32\)"):
        blip_jax.BlipVisionModel.from_pretrained(folder, config=cfg)


def test_missing_weights_are_reported_not_silently_random(tmp, tmp_path):
    ref, _ = build_hf("BlipVisionModel", tmp / "missing", seed=10)
    state = {k: v for k, v in ref.state_dict().items() if "post_layernorm" not in k}
    torch.save(state, tmp_path / "pytorch_model.bin")
    ref.config.save_pretrained(tmp_path)
    _, info = blip_jax.BlipVisionModel.from_pretrained(tmp_path, output_loading_info=True)
    assert sorted(info.missing_keys) == ["post_layernorm.bias", "post_layernorm.weight"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no weights found"):
        blip_jax.BlipVisionModel.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        blip_jax.BlipVisionModel.from_pretrained(str(tmp_path / "nope" / "deeper" / "x"))


def test_bfloat16_forward_close_to_float32(tmp, batch):
    """bf16 compute (fp32 params): logits within 0.05 abs / 3% of the float32 logit range."""
    px, ids, mask = batch
    _, folder = build_hf("BlipForConditionalGeneration", tmp / "bf16", seed=11, scale=0.1)
    f32 = blip_jax.BlipForConditionalGeneration.from_pretrained(folder)
    bf16 = blip_jax.BlipForConditionalGeneration.from_pretrained(folder, dtype="bfloat16")
    a = np.asarray(f32(px, ids, mask).logits)
    out = bf16(px, ids, mask)
    b = np.asarray(out.logits, np.float32)
    assert out.image_embeds.dtype == np.dtype("bfloat16")
    scale = a.max() - a.min()
    assert np.max(np.abs(a - b)) <= max(0.05, 0.03 * scale)
    assert np.mean(a.argmax(-1) == b.argmax(-1)) >= 0.9
