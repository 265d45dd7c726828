"""Initialising BlipPretrain from HF ViT + BERT folders (as BLIP starts from DeiT + BERT) and from a
BLIP retrieval checkpoint: the loaded towers reproduce the reference models' outputs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax import nnx  # noqa: E402

from blip_jax.checkpoints.init_from import initialise_pretrain_model  # noqa: E402
from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig  # noqa: E402
from blip_jax.models.pretrain import BlipPretrain  # noqa: E402
from tests.hf_fixtures import build_hf, inputs, nchw, randomize_  # noqa: E402


def _config(vocab=101):
    tc = BlipTextConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64)
    vc = BlipVisionConfig(image_size=30, patch_size=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=37, layer_norm_eps=1e-12)
    return BlipConfig.from_text_vision_configs(tc, vc, image_text_hidden_size=16)


def test_init_from_hf_vit_and_bert(tmp_path):
    torch.manual_seed(0)
    vit = randomize_(transformers.ViTModel(transformers.ViTConfig(
        image_size=30, patch_size=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, layer_norm_eps=1e-12, hidden_act="gelu")), seed=1)
    vit.save_pretrained(tmp_path / "vit")
    bert = randomize_(transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, type_vocab_size=1)), seed=2)
    bert.save_pretrained(tmp_path / "bert")
    model = BlipPretrain(_config(vocab=101), rngs=nnx.Rngs(0))
    initialise_pretrain_model(model, vision_hf=str(tmp_path / "vit"), text_hf=str(tmp_path / "bert"))

    px, ids, mask = inputs(batch=2, length=7)
    with torch.no_grad():
        want_v = vit(pixel_values=nchw(px)).last_hidden_state.numpy()
        # BLIP's text stack has no token-type embeddings: compare with BERT's type-0 row removed.
        bert.bert.embeddings.token_type_embeddings.weight.zero_()
        want_t = bert.bert(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    # HF ViTModel's last_hidden_state is after its final LayerNorm, as ours.
    got_v = np.asarray(model.vision_model(px).last_hidden_state)
    assert np.max(np.abs(got_v - want_v)) <= 1e-4
    got_t = np.asarray(model.text_encoder(ids, mask).last_hidden_state)
    assert np.max(np.abs(got_t - want_t)) <= 1e-4
    # The vocabulary grew by [DEC]/[ENC]; BERT's rows are intact.
    emb = np.asarray(model.text_encoder.embeddings.word_embeddings.embedding[...])
    assert emb.shape == (101, 32)
    np.testing.assert_array_equal(emb[:99], bert.bert.embeddings.word_embeddings.weight.detach().numpy())
    # The decoder's own self-attention starts from BERT's as well.
    np.testing.assert_array_equal(
        np.asarray(model.text_decoder.bert.layers[1].attention.query.kernel[...]),
        bert.bert.encoder.layer[1].attention.self.query.weight.detach().numpy().T)


def test_init_from_blip_retrieval_checkpoint(tmp_path):
    ref, folder = build_hf("BlipForImageTextRetrieval", tmp_path, seed=3)
    config = BlipConfig.from_pretrained(folder)
    model = BlipPretrain(config, rngs=nnx.Rngs(0))
    initialise_pretrain_model(model, blip_checkpoint=str(folder))
    px, ids, mask = inputs(batch=2, length=7)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), pixel_values=nchw(px), attention_mask=torch.tensor(mask)).itm_score
    states, _ = model.encode_image(px)
    got = model.itm_logits(ids, mask, states)
    assert np.max(np.abs(np.asarray(got) - want.numpy())) <= 1e-4
