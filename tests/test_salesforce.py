"""Original Salesforce BLIP checkpoints: key mapping, config inference, position-table resize."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import blip_jax  # noqa: E402
from blip_jax.checkpoints import salesforce  # noqa: E402
from tests.hf_fixtures import build_hf, inputs, nchw  # noqa: E402

# HF names -> the original code's timm ViT names (the inverse of the loader's renames).
_TO_SALESFORCE = [
    (r"^vision_model\.embeddings\.class_embedding$", "visual_encoder.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding$", "visual_encoder.pos_embed"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm1\.", r"visual_encoder.blocks.\1.norm1."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm2\.", r"visual_encoder.blocks.\1.norm2."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"visual_encoder.blocks.\1.attn.qkv."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.", r"visual_encoder.blocks.\1.attn.proj."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"visual_encoder.blocks.\1.mlp."),
    (r"^vision_model\.post_layernorm\.", "visual_encoder.norm."),
]


def as_salesforce(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        for pattern, repl in _TO_SALESFORCE:
            key = re.sub(pattern, repl, key)
        out[key] = value.clone()
    return out


def test_retrieval_pth_matches_hf(tmp_path):
    px, ids, mask = inputs()
    ref, folder = build_hf("BlipForImageTextRetrieval", tmp_path, seed=3)
    state = as_salesforce(ref.state_dict())
    # Training-only tensors the original retrieval checkpoints carry.
    state["visual_encoder_m.cls_token"] = torch.zeros(1, 1, 32)
    state["image_queue"] = torch.zeros(16, 57600)
    state["idx_queue"] = torch.zeros(1, 57600)
    state["ptr_queue"] = torch.zeros(1, dtype=torch.long)
    state["queue_ptr"] = torch.zeros(1, dtype=torch.long)  # BLIP_Pretrain's name for the pointer
    state["temp"] = torch.tensor(0.07)
    pth = tmp_path / "model_base_retrieval_coco.pth"
    torch.save({"model": state, "epoch": 5, "config": {"image_size": 30}}, pth)
    config = blip_jax.BlipConfig.from_pretrained(folder)
    ours, info = blip_jax.BlipForImageTextRetrieval.from_pretrained(pth, config=config, output_loading_info=True)
    assert info.missing_keys == [] and info.unexpected_keys == []
    t = torch.tensor
    for itm in (True, False):
        with torch.no_grad():
            a = ref(input_ids=t(ids), pixel_values=nchw(px), attention_mask=t(mask), use_itm_head=itm)
        b = ours(ids, px, use_itm_head=itm, attention_mask=mask)
        assert np.max(np.abs(a.itm_score.numpy() - np.asarray(b.itm_score))) <= 1e-4


@pytest.mark.parametrize("source", ["salesforce_pth", "hf_folder"])
def test_checkpoint_resizes_position_table_like_torch(tmp_path, source):
    """A 224-px pretraining checkpoint fine-tuned at 384 px: the original bicubically resizes
    pos_embed on load; here a 30-px (15x15) table goes to 38 px (19x19), from a .pth and from an
    HF folder given a config at the new size."""
    ref, folder = build_hf("BlipForConditionalGeneration", tmp_path, seed=4)
    pth = tmp_path / "model_base_caption.pth"
    torch.save({"model": as_salesforce(ref.state_dict())}, pth)
    config = blip_jax.BlipConfig.from_pretrained(folder)
    config.vision_config.image_size = 38
    ours = blip_jax.BlipForConditionalGeneration.from_pretrained(pth if source == "salesforce_pth" else folder,
                                                                 config=config)
    pos = ref.vision_model.embeddings.position_embedding.detach()
    grid = pos[:, 1:].reshape(1, 15, 15, 32).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(19, 19), mode="bicubic", align_corners=False)
    want = torch.cat([pos[:, :1], want.permute(0, 2, 3, 1).reshape(1, 361, 32)], dim=1).numpy()
    got = np.asarray(ours.vision_model.embeddings.position_embedding[...])
    assert got.shape == (1, 362, 32)
    assert np.max(np.abs(got - want)) <= 1e-5


def test_infer_config_from_vit_b_shapes():
    """Architecture read off a model_base.pth-shaped state dict (shapes only, no weights)."""
    d, v = 768, 30524
    state = {
        "visual_encoder.pos_embed": np.empty((1, 197, d), np.float32),
        "visual_encoder.patch_embed.proj.weight": np.empty((d, 3, 16, 16), np.float32),
        "visual_encoder.blocks.0.mlp.fc1.weight": np.empty((3072, d), np.float32),
        "text_encoder.embeddings.word_embeddings.weight": np.empty((v, d), np.float32),
        "text_encoder.embeddings.position_embeddings.weight": np.empty((512, d), np.float32),
        "text_encoder.encoder.layer.0.intermediate.dense.weight": np.empty((3072, d), np.float32),
        "vision_proj.weight": np.empty((256, d), np.float32),
    }
    for i in range(12):
        state[f"visual_encoder.blocks.{i}.norm1.weight"] = np.empty((d,), np.float32)
        state[f"text_encoder.encoder.layer.{i}.output.dense.weight"] = np.empty((d, 3072), np.float32)
    cfg = salesforce.infer_config(state)
    vc, tc = cfg.vision_config, cfg.text_config
    assert (vc.hidden_size, vc.num_hidden_layers, vc.num_attention_heads, vc.image_size, vc.patch_size) == (
        768, 12, 12, 224, 16)
    assert vc.layer_norm_eps == 1e-6
    assert (tc.vocab_size, tc.num_hidden_layers, tc.num_attention_heads) == (30524, 12, 12)
    assert tc.use_enc_token_for_itm and tc.label_smoothing == 0.1
    assert cfg.image_text_hidden_size == 256


_MOMENTUM_HEADS = ("visual_encoder", "text_encoder", "vision_proj", "text_proj")


def _pretrain_pth(tmp_path, queue_size=24):
    """A model_base.pth-like checkpoint: online weights, momentum copies (online + 0.5, so they are
    told apart), feature queues stored (E, Q) as the original, queue_ptr and a trained temp."""
    ref, folder = build_hf("BlipForImageTextRetrieval", tmp_path, seed=3)
    state = as_salesforce(ref.state_dict())
    for key in list(state):
        head = key.split(".")[0]
        if head in _MOMENTUM_HEADS:
            state[f"{head}_m.{key[len(head) + 1:]}"] = state[key] + 0.5
    g = torch.Generator().manual_seed(0)
    state["image_queue"] = torch.nn.functional.normalize(torch.randn(16, queue_size, generator=g), dim=0)
    state["text_queue"] = torch.nn.functional.normalize(torch.randn(16, queue_size, generator=g), dim=0)
    state["queue_ptr"] = torch.tensor([12])
    state["temp"] = torch.tensor(0.0123)
    pth = tmp_path / "model_base.pth"
    torch.save({"model": state, "epoch": 19}, pth)
    return ref, state, pth, blip_jax.BlipConfig.from_pretrained(folder)


def test_pretrain_pth_gives_blip_pretrain_its_temp_momentum_encoders_and_queues(tmp_path, caplog):
    """As the original's load_checkpoint: temp, the momentum copies (*_m) and the queues of a
    pretraining checkpoint are loaded (the momentum ViT's position table resized like the online
    one's), not restarted at 0.07 / the online copy / random; the pointer and id queue start fresh;
    queue_ptr is skipped silently."""
    import optax
    from flax import nnx

    from blip_jax.checkpoints.init_from import initialise_pretrain_model, momentum_rules
    from blip_jax.checkpoints.loading import variable_at
    from blip_jax.models.pretrain import BlipPretrain
    from blip_jax.train import tasks
    from blip_jax.train.state import create_train_state, merge_momentum, split_model

    ref, state, pth, config = _pretrain_pth(tmp_path)
    config.vision_config.image_size = 38  # fine-tuning at a higher resolution: 15x15 -> 19x19 patches
    model = BlipPretrain(config, rngs=nnx.Rngs(0))
    with caplog.at_level("WARNING", logger="blip_jax.checkpoints"):
        extra = initialise_pretrain_model(model, blip_checkpoint=str(pth))
    assert "queue_ptr" not in caplog.text and "not used" not in caplog.text
    assert float(model.temp[...]) == pytest.approx(0.0123)
    np.testing.assert_allclose(np.asarray(model.vision_proj.kernel[...]), ref.vision_proj.weight.detach().numpy().T)

    gd, params, rest, mgd, ema = split_model(model)
    ema, queues = tasks.training_init(extra, model, mgd, ema, 24, 16, config)
    momentum = merge_momentum(mgd, ema, model)
    online = ref.state_dict()
    checked = 0
    for rule in momentum_rules(config):
        got = rule.to_hf([np.asarray(variable_at(momentum, p)[...]) for p in rule.paths])
        for key, value in zip(rule.hf_keys, got, strict=True):
            if key == "vision_model.embeddings.position_embedding":
                # bicubic weights sum to one: resize(table + 0.5) = resize(table) + 0.5
                want = np.asarray(variable_at(model, rule.paths[0])[...]) + 0.5
                assert value.shape == (1, 362, 32)
            else:
                want = online[key].numpy() + 0.5
            np.testing.assert_allclose(value, want, atol=1e-5, err_msg=key)
            checked += 1
    assert checked > 40
    state_0 = create_train_state(params, rest, ema, optax.sgd(0.1), jax.random.key(0), 24, 16, queues)
    np.testing.assert_array_equal(np.asarray(state_0.queues["image"]), state["image_queue"].numpy().T)
    np.testing.assert_array_equal(np.asarray(state_0.queues["text"]), state["text_queue"].numpy().T)
    assert int(state_0.queues["ptr"]) == 0 and np.all(np.asarray(state_0.queues["idx"]) == -1)


def test_pretrain_pth_queues_of_another_size_start_fresh(tmp_path, caplog):
    """Another objective.queue_size than the checkpoint's: the queues start random (as the original
    skips tensors of another shape), the momentum encoders still load."""
    from flax import nnx

    from blip_jax.checkpoints.init_from import initialise_pretrain_model
    from blip_jax.models.pretrain import BlipPretrain
    from blip_jax.train import tasks
    from blip_jax.train.state import merge_momentum, split_model

    ref, state, pth, config = _pretrain_pth(tmp_path, queue_size=20)
    config.text_config.hidden_dropout_prob = 0.1  # the paper configs' (dropout RNG streams in the model)
    model = BlipPretrain(config, rngs=nnx.Rngs(0))
    extra = initialise_pretrain_model(model, blip_checkpoint=str(pth))
    _, _, _, mgd, ema = split_model(model)
    with caplog.at_level("WARNING", logger="blip_jax.checkpoints"):
        ema, queues = tasks.training_init(extra, model, mgd, ema, 24, 16, config)
    assert queues is None and "start fresh" in caplog.text
    np.testing.assert_allclose(np.asarray(merge_momentum(mgd, ema, model).text_proj.kernel[...]),
                               state["text_proj_m.weight"].numpy().T, atol=1e-6)


def test_torch_load_is_weights_only(tmp_path):
    """A pickle carrying an arbitrary object is refused, never executed."""

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(Exception, match="weights_only"):
        blip_jax.BlipVisionModel.from_pretrained(path, config=blip_jax.BlipVisionConfig())
