"""BlipConfig / BlipTextConfig / BlipVisionConfig: transformers' fields and defaults, config.json in
and out (against transformers' own classes), and clear errors for unknown or ill-typed fields."""

from __future__ import annotations

import json

import pytest

transformers = pytest.importorskip("transformers")

from blip_jax import configuration  # noqa: E402
from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig, ConfigError  # noqa: E402
from tests.hf_fixtures import hf_config  # noqa: E402


def _shared_fields(ours: dict, theirs: dict) -> list[str]:
    return sorted(k for k in ours if k in theirs and not isinstance(ours[k], dict) and k != "dtype")


@pytest.mark.parametrize("cls_name", ["BlipTextConfig", "BlipVisionConfig", "BlipConfig"])
def test_defaults_match_transformers(cls_name):
    ours = getattr(configuration, cls_name)().to_dict()
    theirs = getattr(transformers, cls_name)().to_dict()
    shared = _shared_fields(ours, theirs)
    assert len(shared) >= 6
    assert {k: ours[k] for k in shared} == {k: theirs[k] for k in shared}


def test_reads_the_config_json_transformers_writes(tmp_path):
    hf = hf_config()
    hf.save_pretrained(tmp_path)
    ours = BlipConfig.from_pretrained(tmp_path)
    assert ours.text_config.vocab_size == 99 and ours.text_config.bos_token_id == 97
    assert ours.vision_config.image_size == 30 and ours.vision_config.patch_size == 2
    assert ours.image_text_hidden_size == 16 and ours.projection_dim == 16
    for sub in ("text_config", "vision_config"):
        mine, theirs = getattr(ours, sub).to_dict(), getattr(hf, sub).to_dict()
        shared = _shared_fields(mine, theirs)
        assert {k: mine[k] for k in shared} == {k: theirs[k] for k in shared}, sub


def test_config_json_we_write_reads_in_transformers_and_round_trips(tmp_path):
    text = BlipTextConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=128, bos_token_id=118, label_smoothing=0.1)
    vision = BlipVisionConfig(image_size=64, patch_size=8, hidden_size=48, num_hidden_layers=3,
                              num_attention_heads=4, intermediate_size=96, layer_norm_eps=1e-6)
    ours = BlipConfig.from_text_vision_configs(text, vision, image_text_hidden_size=32)
    ours.save_pretrained(tmp_path)
    assert BlipConfig.from_pretrained(tmp_path) == ours
    theirs = transformers.BlipConfig.from_pretrained(tmp_path)
    assert (theirs.text_config.vocab_size, theirs.text_config.hidden_size, theirs.text_config.bos_token_id) == (
        120, 64, 118)
    assert (theirs.vision_config.hidden_size, theirs.vision_config.layer_norm_eps) == (48, 1e-6)
    assert theirs.image_text_hidden_size == 32
    # [ENC] follows [DEC] in BLIP's tokenizer; the default keeps it inside this vocabulary.
    assert json.loads((tmp_path / "config.json").read_text())["text_config"]["enc_token_id"] == 119


def test_unknown_field_names_class_field_value_and_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "blip_vision_model", "hiden_size": 64}))
    with pytest.raises(ConfigError) as e:
        BlipVisionConfig.from_pretrained(path)
    assert all(s in str(e.value) for s in ("BlipVisionConfig", "'hiden_size'", "64", str(path)))


def test_ill_typed_field_names_field_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"BlipTextConfig\.hidden_size.*'768'"):
        BlipTextConfig(hidden_size="768")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "blip", "text_config": {"num_hidden_layers": 2.5}}))
    with pytest.raises(ConfigError, match=r"num_hidden_layers.*2\.5.*" + str(path).replace("/", ".")):
        BlipConfig.from_pretrained(path)
    with pytest.raises(ConfigError, match="dtype.*'fp8'"):
        BlipVisionConfig(dtype="fp8")
    assert BlipTextConfig(hidden_size=64.0).hidden_size == 64  # JSON writers may emit 64.0


def test_not_json_is_a_clear_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        BlipConfig.from_pretrained(path)


def test_enc_token_default_and_check():
    assert BlipTextConfig().enc_token_id == 30523  # BLIP's [ENC] after [DEC] = 30522
    assert BlipTextConfig(vocab_size=50, bos_token_id=48).enc_token_id == 49
    assert BlipTextConfig(vocab_size=50, bos_token_id=48, enc_token_id=7).enc_token_id == 7
    # Unused (HF flavour): BLIP's default ids are tolerated, as HF configs carry them.
    BlipTextConfig(vocab_size=50)
    with pytest.raises(ConfigError, match="enc_token_id: 30523 is outside the vocabulary"):
        BlipTextConfig(vocab_size=50, use_enc_token_for_itm=True)


def test_from_text_vision_configs_and_dict_round_trip():
    text, vision = BlipTextConfig(hidden_size=64), BlipVisionConfig(hidden_size=32)
    cfg = BlipConfig.from_text_vision_configs(text, vision, projection_dim=24)
    assert cfg.text_config.hidden_size == 64 and cfg.vision_config.hidden_size == 32 and cfg.projection_dim == 24
    again = BlipConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.text_config is not cfg.text_config
    # Fields transformers writes with no meaning here survive a round trip.
    d = cfg.to_dict()
    d["architectures"] = ["BlipForConditionalGeneration"]
    assert BlipConfig.from_dict(d).to_dict()["architectures"] == ["BlipForConditionalGeneration"]
