"""The paper-scale configs carry the original's regularisation and objective settings (salesforce/BLIP
configs/bert_config.json, med_config.json, models/blip.py create_vit, blip_retrieval.py); the tiny
configs (minutes from scratch on 2 CPU cores) train without dropout but sample as the original."""

from __future__ import annotations

import os

import pytest

from blip_jax.config_loader import load_config_file
from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig
from blip_jax.train import tasks
from blip_jax.train.loop import model_config
from blip_jax.train.step import ObjectiveConfig

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

# (config spec, ViT drop path rate): the original's create_vit gives ViT-L 0.1 always, ViT-B the
# config's (0 except VQA's 0.1).
PAPER = [("pretrain.py:vit_b_14m", 0.0), ("pretrain.py:vit_b_129m", 0.0), ("pretrain.py:vit_l_129m", 0.1),
         ("finetune.py:retrieval_coco", 0.0), ("finetune.py:retrieval_flickr", 0.0),
         ("finetune.py:caption_coco", 0.0), ("finetune.py:vqa", 0.1)]
TINY = ["pretrain_tiny.py", "pretrain_tiny.py:smoke", "finetune_tiny.py:retrieval", "finetune_tiny.py:caption",
        "finetune_tiny.py:vqa"]


def load(spec: str):
    return load_config_file(os.path.join(CONFIGS, spec))


@pytest.mark.parametrize("spec,drop_path", PAPER)
def test_paper_configs_train_with_the_original_dropouts(spec, drop_path):
    cfg = load(spec)
    config = model_config(cfg)
    tc, vc = config.text_config, config.vision_config
    assert (tc.hidden_dropout_prob, tc.attention_probs_dropout_prob) == (0.1, 0.1)
    assert vc.drop_path_rate == drop_path
    ocfg = ObjectiveConfig.from_config(cfg.objective, tc)
    assert ocfg.retrieval_itm_negatives == "online"  # ITM negatives as blip_retrieval.py


def test_vit_l_pretraining_batch_divides_the_queue():
    cfg = load("pretrain.py:vit_l_129m")
    assert cfg.data.batch_size == 2304 and cfg.objective.queue_size % cfg.data.batch_size == 0


@pytest.mark.parametrize("spec", TINY)
def test_tiny_configs_keep_their_recorded_settings(spec):
    cfg = load(spec)
    config = model_config(cfg, vocab_size=128, special_ids=dict(bos_token_id=120, enc_token_id=121))
    tc, vc = config.text_config, config.vision_config
    assert (tc.hidden_dropout_prob, tc.attention_probs_dropout_prob, vc.drop_path_rate) == (0.0, 0.0, 0.0)
    # every config samples retrieval's ITM negatives as blip_retrieval.py (only retrieval reads it)
    assert ObjectiveConfig.from_config(cfg.objective, tc).retrieval_itm_negatives == "online"


@pytest.mark.parametrize("variant", ["caption_coco", "vqa"])
def test_fine_tuning_from_an_hf_folder_keeps_the_config_dropouts(tmp_path, variant):
    """Caption / VQA fine-tuning takes the architecture from the folder's config.json (dropouts 0.0
    there, as HF's defaults), and BLIP's dropouts from the config file."""
    folder = tmp_path / "export"
    tc = BlipTextConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40)
    vc = BlipVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=64)
    BlipConfig.from_text_vision_configs(tc, vc, image_text_hidden_size=16).save_pretrained(folder)
    cfg = load(f"finetune.py:{variant},/data,{folder}")
    loaded = tasks.fine_tune_config(cfg, model_config(cfg))
    assert loaded.text_config.hidden_size == 32  # the folder's architecture
    assert (loaded.text_config.hidden_dropout_prob, loaded.text_config.attention_probs_dropout_prob) == (0.1, 0.1)
    assert loaded.vision_config.drop_path_rate == (0.1 if variant == "vqa" else 0.0)
