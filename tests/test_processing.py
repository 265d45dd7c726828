"""blip_jax.processing against transformers' BLIP image processor, BERT tokenizer and BlipProcessor.

Everything is built here: images drawn with PIL/numpy, a small BERT-style vocab.txt whose special
tokens sit at bert-base-uncased's ids, a generated caption corpus for sentencepiece. transformers is
imported lazily (pytest.importorskip) so the rest still runs without it.
"""

from __future__ import annotations

import json
import os
import random
import string
import time
import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

from blip_jax.processing import (
    BatchFeature,
    BlipImageProcessor,
    BlipProcessor,
    BlipTokenizer,
    SentencePieceTokenizer,
    WordPieceTokenizer,
    load_tokenizer,
)

TOL = 1e-5

# ----------------------------------------------------------------------------------------- fixtures
WORDS = """a an the of on in at with and is are was two three man men woman women dog dogs cat cats
sitting standing beach picture photo people person table red blue green white black small large running
ride riding bike street car cars near next to her his their front field grass playing ball frisbee pizza
plate food group train station cafe naive over under sky water boat boats tree trees child children
kitchen room bed sofa laptop phone holding looking eating young old wooden""".split()
WORDPIECES = ["##s", "##ing", "##ed", "##er", "##ly", "##es", "##ful", "##ness", "##able", "##pp", "##y",
              "##sum", "##e", "##é", "##n", "##t", "un", "play", "walk", "jump", "happy", "re", "caf", "é",
              "日", "本", "do", "don"]


def make_vocab() -> list[str]:
    """~370 tokens laid out like bert-base-uncased: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += list(string.punctuation) + list(string.digits) + list(string.ascii_lowercase)
    vocab += ["##" + c for c in string.ascii_lowercase + string.digits]
    vocab += WORDS + WORDPIECES
    out, seen = [], set()
    for t in vocab:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


SENTENCES = [
    "A Man RIDING a bike, near the café!",
    "two dogs playing frisbee in the field.",
    "Résumé: a naïve cat sitting on the table... (unplayable?)",
    "the woman's phone; her child's ball -- 3 boats & 12 trees",
    "zzyzx qwerty flibbertigibbet",
    "  leading and   trailing   spaces  ",
    "日本 cafe\twith\nnew lines and a\u00a0non-breaking space",
    "don't jump! isn't it happy? WALKING, Walked, walks",
    "hello [MASK] world [dec] [DEC]x [ENC] [UNK] ##s",
    "",
    " ".join(["a large group of people standing near the train station"] * 12),
]


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("vocab")
    path = os.path.join(folder, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(make_vocab()) + "\n")
    return path


@pytest.fixture(scope="module")
def wp(vocab_file) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_vocab_file(vocab_file)


def _blip_hf_tokenizer(tok):
    """transformers' BLIP tokenizer setup (BLIP's init_tokenizer)."""
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


@pytest.fixture(scope="module")
def hf_bert(vocab_file):
    transformers = pytest.importorskip("transformers")
    return _blip_hf_tokenizer(transformers.BertTokenizer(vocab=vocab_file))


@pytest.fixture(scope="module")
def hf_bert_legacy(vocab_file):
    transformers = pytest.importorskip("transformers")
    legacy = getattr(transformers, "BertTokenizerLegacy", None)
    if legacy is None:
        pytest.skip("this transformers has no BertTokenizerLegacy")
    return _blip_hf_tokenizer(legacy(vocab_file))


@pytest.fixture(scope="module")
def hf_image_processor_cls():
    pytest.importorskip("transformers")
    try:  # transformers >= 5: explicit PIL backend (the default one needs torchvision)
        from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil as cls
    except ImportError:  # transformers 4.x: the slow processor is the PIL one
        from transformers import BlipImageProcessor as cls
    return cls


def _drawn_image(width: int, height: int, seed: int) -> Image.Image:
    """Gradients + noise + drawn shapes, so resampling is exercised on real-looking content."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height) + 64], -1)
    base += rng.normal(0, 18, base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse([width // 5, height // 5, width // 2, height // 2], fill=(210, 40, 50))
    draw.rectangle([width // 2, height // 3, width - 3, height - 3], outline=(20, 20, 230), width=3)
    draw.line([0, height - 1, width - 1, 0], fill=(255, 255, 0), width=2)
    draw.text((3, 3), "BLIP", fill=(0, 0, 0))
    return img


def _with_alpha(img: Image.Image, seed: int) -> Image.Image:
    w, h = img.size
    rgba = np.array(img.convert("RGBA"))
    alpha = np.tile(np.linspace(0, 255, w), (h, 1))  # 0 (transparent) ... 255 (opaque), partial between
    alpha[: h // 4] = 255
    rgba[..., 3] = np.clip(alpha + np.random.default_rng(seed).normal(0, 5, alpha.shape), 0, 255)
    return Image.fromarray(rgba)


def _image_cases() -> dict:
    rgb = _drawn_image(640, 480, 0)
    tall = _drawn_image(333, 517, 1)
    thin = _drawn_image(31, 1000, 2)
    rgba = _with_alpha(tall, 3)
    p_trans = _drawn_image(120, 90, 4).convert("P")
    p_trans.info["transparency"] = int(np.array(p_trans)[0, 0])
    i16 = np.clip(np.array(tall.convert("L"), dtype=np.float64) * 2.5, 0, 65535).astype(np.uint16)
    return {
        "RGB 640x480": rgb,
        "RGBA 333x517 partial alpha": rgba,
        "L 31x1000": thin.convert("L"),
        "P 640x480": rgb.convert("P"),
        "P with transparency": p_trans,
        "LA": rgba.convert("LA"),
        "PA": rgba.convert("PA"),
        "CMYK": rgb.convert("CMYK"),
        "I;16": Image.fromarray(i16),
        "1 (bilevel)": thin.convert("1"),
        "np uint8 HWC": np.array(rgb),
        "np uint8 CHW": np.ascontiguousarray(np.array(tall).transpose(2, 0, 1)),
        "np float64 in [0,1]": np.array(thin, dtype=np.float64) / 255.0,
        "np float integer-valued": np.array(tall).astype(np.float32),
        "np RGBA uint8": np.array(rgba),
        "np RGBA float": np.array(rgba, dtype=np.float32) / 255.0,
        "np (H,W,1)": np.array(thin.convert("L"))[..., None],
    }


IMAGE_CASES = _image_cases()


def _hf_nhwc(hf_proc, images, **kw) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = hf_proc(images, return_tensors="np", **kw)["pixel_values"]
    return np.asarray(out).transpose(0, 2, 3, 1)


# ---------------------------------------------------------------------------------- image processor
def test_image_processor_defaults_match_transformers(hf_image_processor_cls):
    ours, theirs = BlipImageProcessor(), hf_image_processor_cls()
    assert ours.size == {"height": 384, "width": 384} == dict(theirs.size)
    assert ours.resample == int(theirs.resample) == Image.Resampling.BICUBIC
    assert ours.image_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert ours.image_std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    assert list(ours.image_mean) == list(theirs.image_mean) and list(ours.image_std) == list(theirs.image_std)
    assert ours.rescale_factor == theirs.rescale_factor == 1 / 255
    for key in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
        assert getattr(ours, key) is True and getattr(theirs, key) is True


@pytest.mark.parametrize("name", list(IMAGE_CASES))
def test_pixel_values_match_transformers(name, hf_image_processor_cls):
    image = IMAGE_CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the float [0, 1] case warns about double rescaling, on purpose
        out = BlipImageProcessor()(image)
    assert isinstance(out, BatchFeature) and out.pixel_values is out["pixel_values"]
    ours = out["pixel_values"]
    assert ours.shape == (1, 384, 384, 3) and ours.dtype == np.float32
    theirs = _hf_nhwc(hf_image_processor_cls(), image)
    err = float(np.abs(ours - theirs).max())
    assert err <= TOL, f"{name}: max abs error {err}"
    assert ours.std() > 0.05  # real content, not a constant image


@pytest.mark.parametrize(
    "overrides",
    [
        {"size": {"height": 224, "width": 160}, "resample": Image.Resampling.BILINEAR},
        {"size": 96, "resample": "nearest"},
        {"do_resize": False},
        {"do_normalize": False},
        {"do_rescale": False},
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 1.0], "rescale_factor": 1 / 127.5},
    ],
)
def test_overrides_match_transformers(overrides, hf_image_processor_cls):
    image = IMAGE_CASES["RGBA 333x517 partial alpha"]
    ours = BlipImageProcessor()(image, **overrides)["pixel_values"]
    hf_kw = dict(overrides)
    if isinstance(hf_kw.get("resample"), str):
        hf_kw["resample"] = Image.Resampling[hf_kw["resample"].upper()]
    if isinstance(hf_kw.get("size"), int):
        hf_kw["size"] = {"height": hf_kw["size"], "width": hf_kw["size"]}
    theirs = _hf_nhwc(hf_image_processor_cls(), image, **hf_kw)
    assert ours.shape == theirs.shape
    assert float(np.abs(ours - theirs).max()) <= TOL
    # The same settings given at construction time give the same result.
    assert np.array_equal(BlipImageProcessor(**overrides)(image)["pixel_values"], ours)


def test_batch_of_mixed_inputs(hf_image_processor_cls):
    names = ["RGB 640x480", "L 31x1000", "np uint8 CHW", "CMYK", "RGBA 333x517 partial alpha"]
    batch = [IMAGE_CASES[n] for n in names]
    ours = BlipImageProcessor()(batch, size=(64, 48))["pixel_values"]
    assert ours.shape == (5, 64, 48, 3)
    theirs = _hf_nhwc(hf_image_processor_cls(), batch, size={"height": 64, "width": 48})
    assert float(np.abs(ours - theirs).max()) <= TOL
    # One image at a time gives the same rows; a 4-D array is a batch too.
    for i, image in enumerate(batch):
        np.testing.assert_array_equal(BlipImageProcessor()(image, size=(64, 48))["pixel_values"][0], ours[i])
    stacked = np.stack([np.array(IMAGE_CASES["RGB 640x480"])] * 2)
    assert BlipImageProcessor()(stacked, size=32)["pixel_values"].shape == (2, 32, 32, 3)


def test_output_layouts_and_types():
    proc = BlipImageProcessor(size=32)
    img = IMAGE_CASES["RGB 640x480"]
    nhwc = proc(img)["pixel_values"]
    nchw = proc(img, data_format="channels_first")["pixel_values"]
    assert nchw.shape == (1, 3, 32, 32)
    np.testing.assert_array_equal(nchw.transpose(0, 2, 3, 1), nhwc)
    listed = proc([img, img], return_tensors=None)["pixel_values"]
    assert isinstance(listed, list) and len(listed) == 2 and listed[0].shape == (32, 32, 3)
    # Different sizes without resizing only work as a list.
    uneven = [IMAGE_CASES["L 31x1000"], IMAGE_CASES["RGB 640x480"]]
    shapes = [a.shape for a in proc(uneven, do_resize=False, return_tensors=None)["pixel_values"]]
    assert shapes == [(1000, 31, 3), (480, 640, 3)]
    with pytest.raises(ValueError, match="different shapes"):
        proc(uneven, do_resize=False)
    # A plain 2-D array is read as grayscale (transformers rejects it).
    gray = np.array(IMAGE_CASES["L 31x1000"])
    np.testing.assert_array_equal(proc(gray)["pixel_values"], proc(IMAGE_CASES["L 31x1000"])["pixel_values"])


def test_jax_arrays_in_and_out():
    jnp = pytest.importorskip("jax.numpy")
    proc = BlipImageProcessor(size=16)
    arr = np.array(IMAGE_CASES["RGB 640x480"])
    out = proc(jnp.asarray(arr), return_tensors="jax")["pixel_values"]
    assert out.shape == (1, 16, 16, 3) and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), proc(arr)["pixel_values"])


def test_image_input_errors():
    proc = BlipImageProcessor()
    with pytest.raises(TypeError, match="str"):
        proc("photo.jpg")
    with pytest.raises(TypeError, match="dict"):
        proc({"image": 1})
    with pytest.raises(TypeError, match="NoneType"):
        proc([IMAGE_CASES["RGB 640x480"], None])
    with pytest.raises(ValueError, match="empty"):
        proc([])
    with pytest.raises(ValueError, match="channel axis"):
        proc(np.zeros((10, 12, 7), np.uint8))
    with pytest.raises(ValueError, match="outside"):
        proc(np.full((8, 8, 3), 2.5, np.float32))
    with pytest.raises(TypeError, match="unsupported argument"):
        BlipImageProcessor(do_center_crop=True)
    with pytest.raises(ValueError, match="shortest_edge"):
        BlipImageProcessor(size={"shortest_edge": 384})
    with pytest.warns(UserWarning, match="do_rescale=False"):
        proc(np.full((8, 8, 3), 0.5))
    # Explicit channel layout resolves ambiguous shapes (3x8x3 would be read channels-first).
    amb = np.random.default_rng(0).integers(0, 255, (3, 8, 3), dtype=np.uint8)
    last = proc(amb, input_data_format="channels_last", size=8)["pixel_values"]
    chw = np.ascontiguousarray(amb.transpose(2, 0, 1))
    np.testing.assert_array_equal(last, proc(chw, size=8)["pixel_values"])
    assert not np.array_equal(last, proc(amb, size=8)["pixel_values"])


def test_image_processor_save_load_with_transformers(tmp_path, hf_image_processor_cls):
    custom = BlipImageProcessor(size={"height": 224, "width": 192}, resample=2, image_mean=[0.5, 0.4, 0.3],
                                image_std=[0.2, 0.3, 0.4], do_convert_rgb=True)
    custom.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "preprocessor_config.json").read_text())
    assert config["image_processor_type"] == "BlipImageProcessor" and config["resample"] == 2
    assert BlipImageProcessor.from_pretrained(tmp_path / "ours") == custom
    theirs = hf_image_processor_cls.from_pretrained(str(tmp_path / "ours"))
    assert dict(theirs.size) == {"height": 224, "width": 192} and int(theirs.resample) == 2
    img = IMAGE_CASES["P with transparency"]
    assert float(np.abs(custom(img)["pixel_values"] - _hf_nhwc(theirs, img)).max()) <= TOL
    # And the other way: transformers' own file (here with an int size, as some hub configs have).
    hf_proc = hf_image_processor_cls(size={"height": 100, "width": 100}, image_mean=[0.1, 0.2, 0.3])
    hf_proc.save_pretrained(str(tmp_path / "theirs"))
    loaded = BlipImageProcessor.from_pretrained(tmp_path / "theirs")
    assert loaded.size == {"height": 100, "width": 100} and loaded.image_mean == (0.1, 0.2, 0.3)
    assert float(np.abs(loaded(img)["pixel_values"] - _hf_nhwc(hf_proc, img)).max()) <= TOL
    (tmp_path / "int_size").mkdir()
    (tmp_path / "int_size" / "preprocessor_config.json").write_text(json.dumps({"size": 240, "resample": 3}))
    assert BlipImageProcessor.from_pretrained(tmp_path / "int_size").size == {"height": 240, "width": 240}
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        BlipImageProcessor.from_pretrained(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="preprocessor_config.json"):
        BlipImageProcessor.from_pretrained(tmp_path / "bad")


# ---------------------------------------------------------------------------------------- WordPiece
def test_wordpiece_special_ids_follow_blip(wp, vocab_file, hf_bert):
    n = len(make_vocab())
    assert isinstance(wp, BlipTokenizer)
    assert (wp.pad_token_id, wp.unk_token_id, wp.cls_token_id, wp.sep_token_id, wp.mask_token_id) == (
        0, 100, 101, 102, 103)
    assert (wp.bos_token_id, wp.enc_token_id, wp.vocab_size, len(wp)) == (n, n + 1, n + 2, n + 2)
    assert wp.bos_token_id == hf_bert.bos_token_id
    assert wp.enc_token_id == hf_bert.convert_tokens_to_ids("[ENC]")
    assert wp.vocab_size == len(hf_bert)
    assert wp.convert_ids_to_tokens([wp.bos_token_id, wp.enc_token_id]) == ["[DEC]", "[ENC]"]


@pytest.mark.parametrize("which", ["fast", "legacy"])
def test_wordpiece_ids_match_transformers(which, wp, hf_bert, hf_bert_legacy):
    hf = hf_bert if which == "fast" else hf_bert_legacy
    for sentence in SENTENCES:
        assert wp.encode(sentence) == hf.encode(sentence), sentence
        assert wp.encode(sentence, add_special_tokens=False) == hf.encode(sentence, add_special_tokens=False)
        assert wp.tokenize(sentence) == hf.tokenize(sentence)
    settings = [
        {},
        {"padding": True},
        {"padding": "longest", "truncation": True, "max_length": 12},
        {"padding": "max_length", "truncation": True, "max_length": 20},
        {"padding": "max_length", "max_length": 64},
        {"truncation": True, "max_length": 5},
        {"truncation": True, "max_length": 2},
        {"add_special_tokens": False, "truncation": True, "max_length": 4, "padding": "max_length"},
    ]
    for kw in settings:
        ours = wp(SENTENCES, **kw)
        theirs = hf(SENTENCES, return_token_type_ids=False, **kw)
        assert ours["input_ids"] == theirs["input_ids"], kw
        assert ours["attention_mask"] == theirs["attention_mask"], kw
        single = wp(SENTENCES[0], **kw)
        assert single["input_ids"] == hf(SENTENCES[0], **kw)["input_ids"]
    ours = wp(SENTENCES, padding="max_length", truncation=True, max_length=16, return_tensors="np")
    theirs = hf(SENTENCES, padding="max_length", truncation=True, max_length=16, return_tensors="np")
    assert ours["input_ids"].dtype == np.int32 and ours["input_ids"].shape == (len(SENTENCES), 16)
    np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
    np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"])
    # Truncation keeps the final [SEP] and counts it.
    assert ours["input_ids"][-1, -1] == wp.sep_token_id and ours["input_ids"][-1, 0] == wp.cls_token_id


def test_wordpiece_decode_matches_transformers(wp, hf_bert):
    # A tokenizer built from a bare vocab.txt cleans up by default (BERT's and the original BLIP's
    # behaviour); transformers 5's BertTokenizer(vocab=...) does not, so the option is passed there.
    assert wp.clean_up_tokenization_spaces is True and hf_bert.clean_up_tokenization_spaces is False
    for sentence in SENTENCES:
        ids = wp.encode(sentence)
        assert wp.decode(ids) == hf_bert.decode(ids, skip_special_tokens=True,
                                                clean_up_tokenization_spaces=True), sentence
        assert wp.decode(ids, skip_special_tokens=False) == hf_bert.decode(
            ids, clean_up_tokenization_spaces=True), sentence
        for clean in (True, False):
            assert wp.decode(ids, clean_up_tokenization_spaces=clean) == hf_bert.decode(
                ids, skip_special_tokens=True, clean_up_tokenization_spaces=clean), (sentence, clean)
    batch = wp(SENTENCES, padding=True, return_tensors="np")["input_ids"]
    assert wp.batch_decode(batch) == hf_bert.batch_decode(batch.tolist(), skip_special_tokens=True,
                                                          clean_up_tokenization_spaces=True)
    assert wp.batch_decode(batch, clean_up_tokenization_spaces=False) == hf_bert.batch_decode(
        batch.tolist(), skip_special_tokens=True)
    # Round trips for text made of known words: decode(encode(s)) is the normalised text.
    for text in ["two dogs playing frisbee in the field.", "A Young WOMAN riding her bike, near the cafe!",
                 "the naïve man on 2 boats"]:
        assert wp.decode(wp.encode(text)) == text.lower().replace("ï", "i")
    # Clean-up rejoins the apostrophe (as transformers 4.x / legacy); without it it stays spaced out.
    assert wp.decode(wp.encode("the man's dog")) == "the man's dog"
    assert wp.decode(wp.encode("the man's dog"), clean_up_tokenization_spaces=False) == "the man ' s dog"
    dog = wp.encode("a dog", add_special_tokens=False)
    assert wp.decode([wp.bos_token_id, *dog, wp.sep_token_id, 0, 0]) == "a dog"
    assert wp.decode(np.array([101, *dog, 102]), skip_special_tokens=False) == "[CLS] a dog [SEP]"


def test_wordpiece_call_contract(wp):
    enc = wp("a dog")
    assert enc.input_ids == enc["input_ids"] == [101, *wp.encode("a dog", add_special_tokens=False), 102]
    assert enc["attention_mask"] == [1] * len(enc["input_ids"])
    assert wp("a dog", return_tensors="np")["input_ids"].shape == (1, len(enc["input_ids"]))
    assert "attention_mask" not in wp("a dog", return_attention_mask=False)
    with pytest.raises(ValueError, match="different lengths"):
        wp(["a", "a dog"], return_tensors="np")
    with pytest.raises(ValueError, match="max_length=1"):
        wp("a dog", truncation=True, max_length=1)
    with pytest.raises(ValueError, match="padding"):
        wp("a dog", padding="sideways")
    with pytest.raises(TypeError, match="int"):
        wp(["a", 3])
    # Without truncation=True a max_length only pads (transformers would truncate silently).
    assert len(wp(SENTENCES[-1], max_length=8)["input_ids"]) > 8
    # truncation without max_length uses model_max_length (512 = BLIP's position table).
    assert len(wp(" ".join(["dog"] * 600), truncation=True)["input_ids"]) == 512
    jnp = pytest.importorskip("jax.numpy")
    out = wp(["a dog", "a"], padding=True, return_tensors="jax")
    assert out["input_ids"].dtype == jnp.int32 and out["input_ids"].shape == (2, 4)


def test_wordpiece_save_load_roundtrip_with_transformers(tmp_path, wp, hf_bert, vocab_file):
    transformers = pytest.importorskip("transformers")
    wp.save_pretrained(tmp_path / "ours")
    assert {"vocab.txt", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(tmp_path / "ours"))
    for loader in (WordPieceTokenizer.from_pretrained, load_tokenizer):
        again = loader(tmp_path / "ours")
        assert isinstance(again, WordPieceTokenizer)
        assert again(SENTENCES, padding=True) == wp(SENTENCES, padding=True)
        assert (again.bos_token_id, again.enc_token_id) == (wp.bos_token_id, wp.enc_token_id)
    theirs = transformers.BertTokenizer.from_pretrained(str(tmp_path / "ours"))
    assert theirs.bos_token_id == wp.bos_token_id and theirs.convert_tokens_to_ids("[ENC]") == wp.enc_token_id
    assert theirs(SENTENCES)["input_ids"] == wp(SENTENCES)["input_ids"]
    # transformers' own save (tokenizer.json + tokenizer_config.json only) loads here.
    hf_bert.save_pretrained(str(tmp_path / "theirs"))
    loaded = load_tokenizer(tmp_path / "theirs")
    assert loaded(SENTENCES, truncation=True, max_length=9)["input_ids"] == wp(
        SENTENCES, truncation=True, max_length=9)["input_ids"]
    assert (loaded.bos_token_id, loaded.enc_token_id) == (wp.bos_token_id, wp.enc_token_id)
    # A plain BERT folder with only vocab.txt gets [DEC]/[ENC] appended exactly like BLIP does.
    os.makedirs(tmp_path / "plain")
    with open(vocab_file, encoding="utf-8") as src, open(tmp_path / "plain" / "vocab.txt", "w") as dst:
        dst.write(src.read())
    plain = load_tokenizer(tmp_path / "plain")
    assert plain.vocab_size == wp.vocab_size and plain.bos_token_id == wp.bos_token_id
    # Cased option: no lowercasing, no accent stripping.
    cased = WordPieceTokenizer.from_vocab_file(vocab_file, do_lower_case=False)
    cased_hf = _blip_hf_tokenizer(transformers.BertTokenizer(vocab=vocab_file, do_lower_case=False))
    for sentence in SENTENCES:
        assert cased.encode(sentence) == cased_hf.encode(sentence)


def test_wordpiece_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "empty.txt")
    (tmp_path / "nounk.txt").write_text("[PAD]\n[CLS]\n[SEP]\na\n")
    with pytest.raises(ValueError, match=r"nounk.txt.*\[UNK\]"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "nounk.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(ValueError, match="binary.txt"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "binary.txt")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text('{"model": {"type": "WordPiece"')
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "broken")
    (tmp_path / "bpe").mkdir()
    (tmp_path / "bpe" / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    with pytest.raises(ValueError, match="BPE"):
        load_tokenizer(tmp_path / "bpe")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_tokenizer(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        load_tokenizer(tmp_path / "missing_dir")


# ------------------------------------------------------------- tokenizer options read like transformers
CLEANUP_SENTENCES = ["a dog's bed", "the cat isn't sitting", "i'm on the table, we've a dog",
                     "the dog's bed , it 's here . really !", "don't jump! they're happy ?", *SENTENCES]


def _hf_folder(path, vocab_file, **config) -> str:
    """A transformers-style folder: vocab.txt + tokenizer_config.json (+ ``config``)."""
    os.makedirs(path, exist_ok=True)
    with open(vocab_file, encoding="utf-8") as src, open(os.path.join(path, "vocab.txt"), "w") as dst:
        dst.write(src.read())
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512,
                   "bos_token": "[DEC]", "extra_special_tokens": ["[ENC]"], **config}, f)
    return str(path)


def _edit_config(folder, **changes) -> None:
    path = os.path.join(folder, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


def _hf_load(folder, **kw):
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoTokenizer.from_pretrained(str(folder), **kw)


def test_decode_clean_up_tokenization_spaces_matches_transformers(tmp_path, vocab_file):
    transformers = pytest.importorskip("transformers")
    from blip_jax.processing.tokenization import clean_up_tokenization

    assert clean_up_tokenization("a dog ' s bed , isn ' t it ? i ' m ok . we ' ve ! they ' re") == \
        "a dog's bed, isn't it? i'm ok. we've! they're"
    for config_value in (True, False):
        folder = _hf_folder(tmp_path / f"cleanup_{config_value}", vocab_file,
                            clean_up_tokenization_spaces=config_value)
        ours, hf = load_tokenizer(folder), _hf_load(folder)
        assert ours.clean_up_tokenization_spaces is hf.clean_up_tokenization_spaces is config_value
        ids_batch = [hf.encode(t) for t in CLEANUP_SENTENCES]
        for ids in ids_batch:
            assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)
            assert ours.decode(ids, skip_special_tokens=False) == hf.decode(ids)
            for clean in (True, False):
                assert ours.decode(ids, clean_up_tokenization_spaces=clean) == hf.decode(
                    ids, skip_special_tokens=True, clean_up_tokenization_spaces=clean)
        for clean in (None, True, False):
            assert ours.batch_decode(ids_batch, clean_up_tokenization_spaces=clean) == hf.batch_decode(
                ids_batch, skip_special_tokens=True, clean_up_tokenization_spaces=clean)
            proc = BlipProcessor(BlipImageProcessor(), ours)
            assert proc.batch_decode(np.array([ids_batch[0]]), clean_up_tokenization_spaces=clean) == [
                hf.decode(ids_batch[0], skip_special_tokens=True, clean_up_tokenization_spaces=clean)]
            assert proc.decode(ids_batch[1], clean_up_tokenization_spaces=clean) == hf.decode(
                ids_batch[1], skip_special_tokens=True, clean_up_tokenization_spaces=clean)
    ids = hf.encode("a dog's bed")
    assert ours.decode(ids) == "a dog ' s bed" and ours.decode(ids, clean_up_tokenization_spaces=True) == "a dog's bed"
    # The original BLIP (transformers 4.15's BertTokenizer, clean-up on) decodes like a bare vocab.txt here.
    legacy_cls = getattr(transformers, "BertTokenizerLegacy", None)
    bare = WordPieceTokenizer.from_vocab_file(vocab_file)
    if legacy_cls is not None:
        legacy = _blip_hf_tokenizer(legacy_cls(vocab_file))
        assert [bare.decode(legacy.encode(t)) for t in CLEANUP_SENTENCES] == [
            legacy.decode(legacy.encode(t), skip_special_tokens=True) for t in CLEANUP_SENTENCES]
    # A folder holding only vocab.txt is a bare vocab: clean-up on; an override wins.
    os.makedirs(tmp_path / "vocab_only")
    with open(vocab_file) as src, open(tmp_path / "vocab_only" / "vocab.txt", "w") as dst:
        dst.write(src.read())
    assert load_tokenizer(tmp_path / "vocab_only").clean_up_tokenization_spaces is True
    assert load_tokenizer(tmp_path / "vocab_only", clean_up_tokenization_spaces=False).decode(ids) == "a dog ' s bed"
    # A config without the key: True (transformers 4), unless transformers 5 wrote it (False, as it reads it).
    no_key = _hf_folder(tmp_path / "no_key", vocab_file)
    assert load_tokenizer(no_key).clean_up_tokenization_spaces is True
    v5_saved = tmp_path / "v5_saved"
    _hf_load(no_key).save_pretrained(str(v5_saved))
    assert load_tokenizer(v5_saved).clean_up_tokenization_spaces is _hf_load(v5_saved).clean_up_tokenization_spaces \
        is False
    # save_pretrained writes the value, so transformers decodes the saved folder the same way.
    for value in (True, False):
        tok = WordPieceTokenizer.from_vocab_file(vocab_file, clean_up_tokenization_spaces=value)
        tok.save_pretrained(tmp_path / f"ours_{value}")
        hf = _hf_load(tmp_path / f"ours_{value}")
        again = load_tokenizer(tmp_path / f"ours_{value}")
        assert hf.clean_up_tokenization_spaces is again.clean_up_tokenization_spaces is value
        for t in CLEANUP_SENTENCES:
            assert tok.decode(tok.encode(t)) == again.decode(tok.encode(t)) == hf.decode(
                tok.encode(t), skip_special_tokens=True)


def test_sentencepiece_clean_up_option(tmp_path):
    tok = SentencePieceTokenizer.train(caption_corpus(300, 3), vocab_size=80, hard_vocab_limit=False)
    assert tok.clean_up_tokenization_spaces is False
    ids = tok.encode("a dog . running ?")
    assert tok.decode(ids) == "a dog . running ?"
    assert tok.decode(ids, clean_up_tokenization_spaces=True) == "a dog. running?"
    assert tok.batch_decode([ids], clean_up_tokenization_spaces=True) == ["a dog. running?"]
    tok.clean_up_tokenization_spaces = True
    tok.padding_side = "left"
    tok.save_pretrained(tmp_path / "spm")
    again = load_tokenizer(tmp_path / "spm")
    assert again.clean_up_tokenization_spaces is True and again.decode(ids) == "a dog. running?"
    assert again.padding_side == "left" and again(["a", "a dog"], padding=True)["input_ids"][0][0] == tok.pad_token_id


@pytest.mark.parametrize("options, text", [
    ({"do_lower_case": False}, "CAFÉ Dog"),
    ({"tokenize_chinese_chars": False}, "日本 cafe"),
    ({"strip_accents": False}, "café"),
    ({"do_lower_case": False, "strip_accents": True}, "Café résumé"),
])
def test_tokenizer_json_follows_config_normalizer_options(tmp_path, vocab_file, hf_bert, options, text):
    """With a tokenizer.json, tokenizer_config.json's options (and from_pretrained's keyword arguments)
    rebuild the BertNormalizer, as in transformers; save_pretrained then writes a consistent folder."""
    transformers = pytest.importorskip("transformers")
    saved = tmp_path / "saved"
    hf_bert.save_pretrained(str(saved))  # transformers' own layout: tokenizer.json + tokenizer_config.json
    texts = [text, *SENTENCES]

    def check(ours, hf):
        assert all(getattr(ours, key) == value for key, value in options.items())
        for t in texts:
            assert ours.encode(t) == hf.encode(t), t
            assert ours.tokenize(t) == hf.tokenize(t), t

    edited = tmp_path / "edited"
    import shutil

    shutil.copytree(saved, edited)
    _edit_config(edited, **options)
    ours = load_tokenizer(edited)
    check(ours, _hf_load(edited))
    assert ours.encode(text) != load_tokenizer(saved).encode(text)  # the option matters for this text
    # from_pretrained keyword arguments win the same way.
    check(WordPieceTokenizer.from_pretrained(saved, **options), _hf_load(saved, **options))
    # save/reload round trip: transformers and we read the same tokenizer back.
    ours.save_pretrained(tmp_path / "resaved")
    with open(tmp_path / "resaved" / "tokenizer.json") as f:
        normalizer = json.load(f)["normalizer"]
    assert normalizer["lowercase"] == ours.do_lower_case and normalizer["strip_accents"] == ours.strip_accents
    assert normalizer["handle_chinese_chars"] == ours.tokenize_chinese_chars
    again = load_tokenizer(tmp_path / "resaved")
    check(again, _hf_load(tmp_path / "resaved"))
    check(again, transformers.BertTokenizer.from_pretrained(str(tmp_path / "resaved")))


def test_padding_and_truncation_side_match_transformers(tmp_path, vocab_file, wp, hf_bert):
    folder = _hf_folder(tmp_path / "left", vocab_file, padding_side="left", truncation_side="left")
    ours, hf = load_tokenizer(folder), _hf_load(folder)
    assert (ours.padding_side, ours.truncation_side) == (hf.padding_side, hf.truncation_side) == ("left", "left")
    assert (wp.padding_side, wp.truncation_side) == ("right", "right")
    settings = [
        {"padding": True},
        {"truncation": True, "max_length": 5},
        {"padding": "longest", "truncation": True, "max_length": 9},
        {"padding": "max_length", "truncation": True, "max_length": 16},
        {"padding": "max_length", "max_length": 64},
        {"add_special_tokens": False, "truncation": True, "max_length": 4, "padding": "max_length"},
        {"padding": True, "padding_side": "right"},
        {"padding": "max_length", "truncation": True, "max_length": 12, "padding_side": "left"},
    ]
    for kw in settings:
        for tok, ref in ((ours, hf), (wp, hf_bert)):
            a, b = tok(SENTENCES, **kw), ref(SENTENCES, return_token_type_ids=False, **kw)
            assert a["input_ids"] == b["input_ids"] and a["attention_mask"] == b["attention_mask"], kw
            assert tok(SENTENCES[2], **kw)["input_ids"] == ref(SENTENCES[2], **kw)["input_ids"], kw
    a = ours(SENTENCES, padding=True, return_tensors="np")
    np.testing.assert_array_equal(a["input_ids"], hf(SENTENCES, padding=True, return_tensors="np")["input_ids"])
    assert a["input_ids"][:, -1].tolist() == [ours.sep_token_id] * len(SENTENCES)  # padded on the left
    # The processor passes padding_side on.
    proc = BlipProcessor(BlipImageProcessor(), wp)
    np.testing.assert_array_equal(proc(text=SENTENCES[:3], padding=True, padding_side="left")["input_ids"],
                                  np.asarray(hf_bert(SENTENCES[:3], padding=True, padding_side="left")["input_ids"]))
    # save_pretrained writes both sides; transformers and we read them back.
    ours.save_pretrained(tmp_path / "resaved")
    for tok in (load_tokenizer(tmp_path / "resaved"), _hf_load(tmp_path / "resaved")):
        assert (tok.padding_side, tok.truncation_side) == ("left", "left")
    # Bad values fail, as in transformers.
    with pytest.raises(ValueError, match="padding_side"):
        wp("a dog", padding=True, padding_side="middle")
    with pytest.raises(ValueError, match="truncation_side"):
        load_tokenizer(_hf_folder(tmp_path / "bad", vocab_file, truncation_side="up"))


def test_vocab_lines_trailing_whitespace_stripped_like_transformers(tmp_path, vocab_file):
    with open(vocab_file, encoding="utf-8") as f:
        text = f.read()
    assert "\ncat\n" in text and "\ndog\n" in text
    variants = {"trailing": text.replace("\ncat\n", "\ncat \n").replace("\ndog\n", "\ndog\t\n"),
                "crlf": text.replace("\n", "\r\n"), "no_final_newline": text.rstrip("\n")}
    for name, content in variants.items():
        folder = tmp_path / name
        os.makedirs(folder)
        with open(folder / "vocab.txt", "w", encoding="utf-8", newline="") as f:
            f.write(content)
        with open(folder / "tokenizer_config.json", "w") as f:
            json.dump({"tokenizer_class": "BertTokenizer", "bos_token": "[DEC]",
                       "extra_special_tokens": ["[ENC]"]}, f)
        ours, hf = load_tokenizer(folder), _hf_load(folder)
        assert ours.tokenize("a cat and a dog") == hf.tokenize("a cat and a dog") == ["a", "cat", "and", "a", "dog"]
        assert len(ours) == len(hf), name
        for t in SENTENCES:
            assert ours.encode(t) == hf.encode(t), (name, t)
        assert WordPieceTokenizer.from_vocab_file(folder / "vocab.txt").encode("a cat") == ours.encode("a cat")


# ------------------------------------------------------------------------------------ SentencePiece
def caption_corpus(n: int, seed: int) -> list[str]:
    """Generated captions from a small grammar (deterministic)."""
    rng = random.Random(seed)
    nouns = """man woman boy girl child dog cat horse giraffe elephant zebra bird player skier surfer chef
    cow sheep bear teddy person couple family tourist farmer student""".split()
    adjectives = """young old small large little big black white brown red blue green yellow orange purple
    happy hungry sleepy wet muddy fluffy striped spotted tall short""".split()
    verbs = """sitting standing riding walking playing looking eating holding jumping lying running
    carrying throwing catching cutting drinking reading watching waiting skiing surfing""".split()
    preps = "on near next to under behind beside along across in front of with over".split()
    objects = """bench beach bike frisbee plate field table street tree boat laptop pizza station mountain
    umbrella kitchen window fence road sidewalk river lake bridge building clock bus train truck car
    sandwich cake banana apple bowl cup chair couch bed desk computer phone kite skateboard surfboard
    snowboard racket ball bat glove hat shirt jacket""".split()
    tails = ["", " at night", " in the rain", " on a sunny day", " near the ocean", " in a park",
             " during winter", " in the city"]

    def phrase() -> str:
        words = [rng.choice(["a", "the", "two", "three", "some"])]
        if rng.random() < 0.6:
            words.append(rng.choice(adjectives))
        words.append(rng.choice(nouns) if rng.random() < 0.5 else rng.choice(objects))
        return " ".join(words)

    return [
        f"{phrase()} {rng.choice(verbs)} {rng.choice(preps)} {phrase()}{rng.choice(tails)}"
        + rng.choice([".", "", "!", "?"])
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    texts = caption_corpus(2000, 0)
    return [t.capitalize() if i % 3 == 0 else t for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def spm_tok(corpus) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train(corpus, vocab_size=200)


def test_sentencepiece_train_and_specials(corpus, tmp_path):
    start = time.perf_counter()
    tok = SentencePieceTokenizer.train(corpus, vocab_size=200, out_dir=tmp_path / "spm")
    assert time.perf_counter() - start < 10
    assert isinstance(tok, BlipTokenizer) and tok.vocab_size == 200
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id,
            tok.bos_token_id, tok.enc_token_id) == (0, 1, 2, 3, 4, 5, 6)
    names = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]
    assert tok.convert_ids_to_tokens(list(range(7))) == names
    assert os.path.isfile(tmp_path / "spm" / "spm.model")


def test_sentencepiece_roundtrip_and_layout(spm_tok):
    for text in caption_corpus(50, 1):
        ids = spm_tok.encode(text)
        assert ids[0] == 2 and ids[-1] == 3 and all(i > 6 for i in ids[1:-1])
        assert spm_tok.decode(ids) == text.lower()
    text = "A Young WOMAN riding a red bike near the ocean."
    assert spm_tok.encode(text) == spm_tok.encode(text.lower())  # uncased like BLIP's BERT
    ids = spm_tok.encode(text)
    assert spm_tok.decode(ids, skip_special_tokens=False) == "[CLS] " + text.lower() + " [SEP]"
    assert spm_tok.decode([5, *ids[1:], 0, 0]) == text.lower()
    # Characters never seen in training map to [UNK] and are dropped by decode.
    unk = spm_tok.encode("a dog 日本", add_special_tokens=False)
    assert spm_tok.unk_token_id in unk and spm_tok.decode(unk) == "a dog"
    # A literal "[DEC]" in text is not the [DEC] control symbol.
    assert spm_tok.bos_token_id not in spm_tok.encode("[DEC] a dog")


def test_sentencepiece_padding_truncation(spm_tok):
    texts = ["a man riding a red bike", "two dogs", ""]
    out = spm_tok(texts, padding="max_length", truncation=True, max_length=6, return_tensors="np")
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == (3, 6) and ids.dtype == np.int32
    lengths = [len(spm_tok.encode(t)) for t in texts]
    assert mask.sum(1).tolist() == [min(n, 6) for n in lengths]
    assert ids[0, -1] == 3 and ids[0, 0] == 2  # truncated, [SEP] kept
    assert ids[2].tolist() == [2, 3, 0, 0, 0, 0]
    longest = spm_tok(texts, padding=True)
    assert [len(x) for x in longest["input_ids"]] == [max(lengths)] * 3
    assert longest["input_ids"][1][lengths[1]:] == [0] * (max(lengths) - lengths[1])
    assert spm_tok.batch_decode(ids) == spm_tok.batch_decode([spm_tok.encode(t)[:5] + [3] for t in texts])


def test_sentencepiece_deterministic_and_bpe(corpus, spm_tok):
    again = SentencePieceTokenizer.train(corpus, vocab_size=200)
    assert again.serialized_model_proto() == spm_tok.serialized_model_proto()
    bpe = SentencePieceTokenizer.train(corpus, vocab_size=200, model_type="bpe")
    assert bpe.serialized_model_proto() == SentencePieceTokenizer.train(
        corpus, vocab_size=200, model_type="bpe").serialized_model_proto()
    assert bpe.bos_token_id == 5 and bpe.vocab_size == 200
    for text in caption_corpus(20, 2):
        assert bpe.decode(bpe.encode(text)) == text.lower()
    cased = SentencePieceTokenizer.train(corpus, vocab_size=200, do_lower_case=False)
    assert cased.decode(cased.encode("A man riding a red bike.")) == "A man riding a red bike."


def test_sentencepiece_save_load(tmp_path, spm_tok, corpus):
    spm_tok.save_pretrained(tmp_path / "tok")
    for loaded in (SentencePieceTokenizer.from_pretrained(tmp_path / "tok"), load_tokenizer(tmp_path / "tok"),
                   SentencePieceTokenizer.from_file(tmp_path / "tok" / "spm.model")):
        assert isinstance(loaded, SentencePieceTokenizer)
        assert loaded(corpus[:20], padding=True) == spm_tok(corpus[:20], padding=True)
    prefixed = SentencePieceTokenizer.train(corpus, vocab_size=200, model_prefix=tmp_path / "p" / "caps")
    assert os.path.isfile(tmp_path / "p" / "caps.model") and os.path.isfile(tmp_path / "p" / "caps.vocab")
    assert load_tokenizer(tmp_path / "p" / "caps.model").encode("a dog") == prefixed.encode("a dog")
    (tmp_path / "bad.model").write_bytes(b"this is not a protobuf")
    with pytest.raises(ValueError, match="bad.model"):
        SentencePieceTokenizer.from_file(tmp_path / "bad.model")
    with pytest.raises(FileNotFoundError, match="absent.model"):
        SentencePieceTokenizer.from_file(tmp_path / "absent.model")


def test_sentencepiece_model_without_reserved_pieces(tmp_path, corpus):
    import io

    import sentencepiece as spm

    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=writer, vocab_size=100,
                                   minloglevel=2, num_threads=1)
    (tmp_path / "plain.model").write_bytes(writer.getvalue())
    with pytest.raises(ValueError, match=r"plain.model.*\[PAD\]"):
        SentencePieceTokenizer.from_file(tmp_path / "plain.model")


# ------------------------------------------------------------------------------------ BlipProcessor
@pytest.fixture(scope="module")
def hf_blip_processor(hf_bert, hf_image_processor_cls):
    transformers = pytest.importorskip("transformers")
    return transformers.BlipProcessor(image_processor=hf_image_processor_cls(), tokenizer=hf_bert)


def test_processor_matches_transformers(wp, hf_blip_processor):
    ours = BlipProcessor(BlipImageProcessor(), wp)
    images = [IMAGE_CASES["RGB 640x480"], IMAGE_CASES["RGBA 333x517 partial alpha"], IMAGE_CASES["L 31x1000"]]
    texts = SENTENCES[:3]
    for kw in [{"padding": True}, {"padding": "max_length", "truncation": True, "max_length": 10}]:
        a = ours(images=images, text=texts, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            b = hf_blip_processor(images=images, text=texts, return_tensors="np", **kw)
        assert set(a) == {"pixel_values", "input_ids", "attention_mask"} <= set(b)
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
        np.testing.assert_array_equal(a["attention_mask"], b["attention_mask"])
        assert a["input_ids"].dtype == np.int32 and a["pixel_values"].dtype == np.float32
        assert float(np.abs(a["pixel_values"] - b["pixel_values"].transpose(0, 2, 3, 1)).max()) <= TOL
    text_only = ours(text="a dog on the beach", return_tensors=None)
    assert set(text_only) == {"input_ids", "attention_mask"}
    assert text_only["input_ids"] == hf_blip_processor(text="a dog on the beach")["input_ids"]
    image_only = ours(images=images[0], size=64)
    assert set(image_only) == {"pixel_values"} and image_only["pixel_values"].shape == (1, 64, 64, 3)
    ids = a["input_ids"]
    for clean in (True, False):
        assert ours.batch_decode(ids, clean_up_tokenization_spaces=clean) == hf_blip_processor.batch_decode(
            ids.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=clean)
        assert ours.decode(ids[0], clean_up_tokenization_spaces=clean) == hf_blip_processor.decode(
            ids[0].tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=clean)
    assert ours.batch_decode(ids) == ours.batch_decode(ids, clean_up_tokenization_spaces=True)
    with pytest.raises(ValueError, match="images, text"):
        ours()


def test_processor_save_load_with_transformers(tmp_path, wp, hf_blip_processor):
    transformers = pytest.importorskip("transformers")
    ours = BlipProcessor(BlipImageProcessor(size=96), wp)
    ours.save_pretrained(tmp_path / "ours")
    image, texts = IMAGE_CASES["CMYK"], SENTENCES[:4]
    reloaded = BlipProcessor.from_pretrained(tmp_path / "ours")
    expected = ours(images=image, text=texts, padding=True)
    got = reloaded(images=image, text=texts, padding=True)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.BlipProcessor.from_pretrained(str(tmp_path / "ours"))
        b = theirs(images=image, text=texts, padding=True, return_tensors="np")
    np.testing.assert_array_equal(b["input_ids"], expected["input_ids"])
    assert float(np.abs(b["pixel_values"].transpose(0, 2, 3, 1) - expected["pixel_values"]).max()) <= TOL
    # transformers 5 nests the image config in processor_config.json; 4.x writes preprocessor_config.json.
    hf_blip_processor.save_pretrained(str(tmp_path / "theirs"))
    from_hf = BlipProcessor.from_pretrained(tmp_path / "theirs")
    assert from_hf.image_processor == BlipImageProcessor()
    assert from_hf(text=texts, padding=True)["input_ids"].tolist() == expected["input_ids"].tolist()
    # A processor can also carry a sentencepiece tokenizer.
    spm_tok = SentencePieceTokenizer.train(caption_corpus(300, 5), vocab_size=80, hard_vocab_limit=False)
    BlipProcessor(BlipImageProcessor(size=32), spm_tok).save_pretrained(tmp_path / "spm")
    assert isinstance(BlipProcessor.from_pretrained(tmp_path / "spm").tokenizer, SentencePieceTokenizer)


def test_tokenizers_and_processor_pickle(wp, spm_tok):
    """Data-loader worker processes receive these by pickling."""
    import pickle

    for tok in (wp, spm_tok):
        clone = pickle.loads(pickle.dumps(tok))
        assert clone(SENTENCES, padding=True) == tok(SENTENCES, padding=True)
    proc = pickle.loads(pickle.dumps(BlipProcessor(BlipImageProcessor(size=16), wp)))
    out = proc(images=IMAGE_CASES["RGB 640x480"], text="a dog")
    assert out.pixel_values.shape == (1, 16, 16, 3) and out.input_ids.tolist() == [wp.encode("a dog")]
    assert pickle.loads(pickle.dumps(out))["input_ids"].tolist() == out["input_ids"].tolist()


# ------------------------------------------------------------------------------------ hub ids


def _fake_hub(monkeypatch, repos: dict) -> list[dict]:
    """huggingface_hub.snapshot_download served from local folders: {repo_id: folder}; returns the
    calls' keyword arguments. An unknown repo raises as the real one does offline."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, **kw):
        calls.append({"repo_id": repo_id, **kw})
        if repo_id not in repos:
            raise huggingface_hub.errors.LocalEntryNotFoundError(f"{repo_id} is not in the cache")
        return str(repos[repo_id])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_processor_and_tokenizer_from_hub_id(tmp_path, monkeypatch, wp):
    from blip_jax.checkpoints.io import CheckpointError

    folder = tmp_path / "snapshot"
    BlipProcessor(BlipImageProcessor(size={"height": 48, "width": 48}), wp).save_pretrained(folder)
    calls = _fake_hub(monkeypatch, {"someorg/blip-captioner": folder})
    proc = BlipProcessor.from_pretrained("someorg/blip-captioner")
    local = BlipProcessor.from_pretrained(folder)
    img = Image.new("RGB", (60, 40), "red")
    out, ref = proc(images=img, text="a red dog"), local(images=img, text="a red dog")
    assert np.array_equal(out["pixel_values"], ref["pixel_values"]) and out["pixel_values"].shape == (1, 48, 48, 3)
    assert np.array_equal(out["input_ids"], ref["input_ids"])
    assert load_tokenizer("someorg/blip-captioner").encode("a red dog") == wp.encode("a red dog")
    assert BlipImageProcessor.from_pretrained("someorg/blip-captioner").size == {"height": 48, "width": 48}
    # Only the processor's files are fetched: never the weights.
    patterns = {p for call in calls for p in call["allow_patterns"]}
    assert calls and all(c["repo_id"] == "someorg/blip-captioner" for c in calls)
    assert not any(p.endswith((".safetensors", ".bin")) for p in patterns) and "*.json" in patterns
    with pytest.raises(CheckpointError, match="someorg/absent.*hub id failed.*not in the cache"):
        BlipProcessor.from_pretrained("someorg/absent")
    # Paths that cannot be hub ids keep their own errors and never reach the hub.
    n = len(calls)
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        load_tokenizer(tmp_path / "missing_dir")
    assert len(calls) == n
