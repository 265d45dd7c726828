"""The embedded dataset: determinism, noise bookkeeping, formats readable by every loader, CLI."""

import hashlib
import json
import os

import numpy as np
import pytest

from blip_jax.data import annotations as ann
from blip_jax.data.cli import main as data_cli
from blip_jax.data.sources import WebDatasetIterDataset
from blip_jax.data.synthetic import COLORS, SHAPES, build_vocab, generate_embedded_dataset

SMALL = dict(image_size=32, num_web=40, num_coco_train=10, num_coco_val=5, num_coco_test=5, vg_questions=6,
             shard_size=16)


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if f == "manifest.json":
                continue
            h.update(f.encode())
            h.update(open(os.path.join(dirpath, f), "rb").read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    a = str(tmp_path_factory.mktemp("a"))
    manifest = generate_embedded_dataset(a, seed=7, num_corrupt=4, **SMALL)
    return a, manifest


def test_deterministic_by_seed(gen, tmp_path):
    a, _ = gen
    b, c = str(tmp_path / "b"), str(tmp_path / "c")
    generate_embedded_dataset(b, seed=7, num_corrupt=4, **SMALL)
    generate_embedded_dataset(c, seed=8, num_corrupt=4, **SMALL)
    assert _digest(a) == _digest(b) != _digest(c)


def test_noise_side_file_is_ground_truth(gen):
    root, manifest = gen
    noise = json.load(open(f"{root}/annotations/web_noise.json"))
    web = json.load(open(f"{root}/annotations/pretrain_web.json"))
    assert len(noise) == 40 and sum(n["is_noise"] for n in noise) == 16 == manifest["counts"]["web_noisy_captions"]
    for n, w in zip(noise, web):
        assert n["caption"] == w["caption"] and n["image"] == w["image"]
        assert (n["caption"] != n["clean_caption"]) or not n["is_noise"] or n["noise_type"] == "other_image"
    assert {n["noise_type"] for n in noise} <= {"clean", "other_image", "wrong_attribute", "junk"}
    clean = [n for n in noise if not n["is_noise"]]
    assert all(n["caption"] == n["clean_caption"] for n in clean)
    # clean captions name only colours and shapes that are in the scene
    scenes = json.load(open(f"{root}/scenes.json"))
    for n in clean:
        objs = scenes[n["image"]]["objects"]
        for color in COLORS:
            if f" {color} " in f" {n['caption']} ":
                assert color in {o["color"] for o in objs}


def test_every_format_loads(gen):
    root, m = gen
    img = f"{root}/images"
    assert len(ann.load_pretrain(f"{root}/annotations/pretrain_web.json", img)) == 44  # + 4 corrupt entries
    train = ann.load_coco_karpathy(f"{root}/annotations/coco_karpathy_train.json", img, "train")
    assert len(train) == 50 and len({r["image_id"] for r in train}) == 10
    val = ann.load_coco_karpathy(f"{root}/annotations/coco_karpathy_val.json", img, "val")
    assert len(val) == 5 and all(len(r["captions"]) == 5 for r in val) and all(int(r["image_key"]) > 0 for r in val)
    assert all(os.path.exists(r["image_path"]) for r in train + val)
    vqa = ann.load_vqa([f"{root}/annotations/vqa_train.json", f"{root}/annotations/vg_qa.json"], img, f"{img}/web")
    assert len(vqa) == 30 + 6 and all(os.path.exists(r["image_path"]) for r in vqa)
    answers = set(ann.load_answer_list(f"{root}/annotations/answer_list.json"))
    assert {a for r in vqa for a in r["answers"]} <= answers and set(COLORS) | set(SHAPES) <= answers
    web = list(WebDatasetIterDataset(f"{root}/shards/*.tar", shuffle_shards=False))
    assert len(web) == 40 and len(m["shards"]) == 3
    listed = json.load(open(f"{root}/annotations/pretrain_web.json"))[:40]
    assert [r["captions"][0] for r in web] == [e["caption"] for e in listed]


def test_vocab_covers_corpus_without_unk(gen):
    root, _ = gen
    vocab = open(f"{root}/vocab.txt").read().split("\n")[:-1]
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(set(vocab)) == len(vocab)
    corpus = open(f"{root}/corpus.txt").read().split("\n")[:-1]
    assert vocab == build_vocab(corpus)
    words = set(vocab)
    for tok in " ".join(corpus).replace("?", " ? ").replace(",", " , ").split():
        assert tok in words or all(ch in words for ch in tok), tok
    assert "red" in words and "circle" in words and "how" in words


def test_cli_generate_and_stats_count_corrupt(tmp_path, capsys):
    out = str(tmp_path / "d")
    assert data_cli(["generate", "--out", out, "--num_web", "8", "--num_coco_train", "2", "--num_coco_val", "2",
                     "--num_coco_test", "1", "--image_size", "24", "--num_corrupt", "4", "--vg_questions", "2"]) == 0
    capsys.readouterr()
    assert data_cli(["stats", "--format", "blip_json", f"{out}/annotations/pretrain_web.json",
                     "--image_root", f"{out}/images"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 12 and report["usable"] == 8
    assert report["skipped"] == {"empty_image": 1, "truncated_image": 1, "decode_error": 1, "missing_image": 1}
    assert report["image_width"]["max"] == 24
    assert data_cli(["convert", "--format", "webdataset", f"{out}/shards/web-00000.tar", "--out",
                     f"{out}/ar", "--name", "web"]) == 0
    assert json.load(open(f"{out}/ar/web.meta.json"))["num_records"] == 8
    capsys.readouterr()
    shard = f"{out}/ar/web-00000-of-00001.array_record"
    assert data_cli(["inspect", "--format", "array_record", shard, "-n", "1"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["image"].endswith("bytes>") and rec["source"] == "web"  # the original source is kept


def test_default_size_generates_quickly(tmp_path):
    m = generate_embedded_dataset(str(tmp_path), seed=0, num_web=300, num_coco_train=80, num_coco_val=10,
                                  num_coco_test=10)
    # a tenth of the default: the default (~4000 images) takes ~10x this (well under a minute)
    assert m["seconds"] < 6.0


def test_real_wordpiece_tokenizer_on_embedded_vocab(gen):
    tok_mod = pytest.importorskip("blip_jax.processing.tokenization")
    root, _ = gen
    tok = tok_mod.WordPieceTokenizer.from_vocab_file(f"{root}/vocab.txt")
    vocab = open(f"{root}/vocab.txt").read().split("\n")[:-1]
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id) == (0, 2, 3)
    assert tok.vocab_size >= len(vocab)
    corpus = open(f"{root}/corpus.txt").read().split("\n")[:-1]
    out = tok(corpus[:50], padding="max_length", truncation=True, max_length=40, return_tensors="np")
    assert out["input_ids"].shape == (50, 40) and not (out["input_ids"] == 1).any()  # no [UNK]
    squash = lambda t: t.replace(" ", "")  # decode's spacing around punctuation is the tokenizer's choice
    assert all(squash(tok.decode(ids)) == squash(line) for ids, line in zip(out["input_ids"], corpus[:50]))


def test_rendered_objects_are_visible_where_the_scene_says():
    """Each object's colour is present at its grid cell (the image is not just background)."""
    from blip_jax.data.synthetic import COLORS, COLS, ROWS, render_scene

    scene = {"background": (230, 230, 230),
             "objects": [{"shape": "square", "color": "red", "size": "large", "row": "top", "col": "left"},
                         {"shape": "circle", "color": "blue", "size": "large", "row": "bottom", "col": "right"}]}
    img = np.asarray(render_scene(scene, 96, np.random.default_rng(0)), np.int32)
    assert img.shape == (96, 96, 3)
    for o in scene["objects"]:
        y = int((ROWS.index(o["row"]) + 0.5) * 32)
        x = int((COLS.index(o["col"]) + 0.5) * 32)
        assert np.abs(img[y, x] - np.asarray(COLORS[o["color"]])).max() <= 20, (o, img[y, x])
    assert np.abs(img[48, 48] - 230).max() <= 25  # the empty centre cell is background


# ---------------------------------------------------------------------------------------------
# Ground truth: parse_caption / caption_is_true / caption_checks


def test_every_generated_caption_is_true_of_its_scene_and_corrupted_ones_are_not():
    from blip_jax.data.synthetic import caption_is_true, corrupt_scene, describe, junk_caption, sample_scene

    for i in range(300):
        rng = np.random.default_rng([3, i])
        scene = sample_scene(rng)
        captions = [describe(scene, rng) for _ in range(6)]
        assert all(caption_is_true(c, scene) for c in captions), (scene, captions)
        # one object's colour or shape changed: the caption names another set of groups
        assert not caption_is_true(describe(corrupt_scene(scene, rng), rng), scene)
        assert not caption_is_true(junk_caption(rng), scene)


def test_caption_checks_by_hand():
    from blip_jax.data.synthetic import caption_checks, parse_caption, scene_truth_metrics

    one = {"objects": [{"shape": "circle", "color": "red", "size": "small", "row": "top", "col": "left"}]}
    two = {"objects": [{"shape": "circle", "color": "red", "size": "large", "row": "top", "col": "left"},
                       {"shape": "circle", "color": "red", "size": "small", "row": "middle", "col": "center"},
                       {"shape": "square", "color": "blue", "size": "small", "row": "bottom", "col": "center"}]}
    checks = ("in_grammar", "colors", "shapes", "objects", "true")

    def passed(caption, scene):
        return {k for k, v in caption_checks(caption, scene).items() if v}

    assert passed("a red disc", one) == set(checks)
    assert passed("a picture of a small red circle in the top left corner", one) == set(checks)
    assert passed("A small red circle at the top left.", one) == set(checks)  # as pre_caption reads it
    assert passed("a large red circle", one) == set(checks) - {"true"}  # wrong size
    assert passed("a red circle in the center", one) == set(checks) - {"true"}  # wrong place
    assert passed("a blue circle", one) == {"in_grammar", "shapes"}
    assert passed("a red square", one) == {"in_grammar", "colors"}
    assert passed("an image with two shapes: a red circle", one) == set(checks) - {"true"}  # wrong count
    assert passed("two red discs and a blue box at the bottom", two) == set(checks)
    assert passed("there are two red round shapes and a small blue square near the bottom", two) == set(checks)
    assert passed("a red circle and a blue square", two) == {"in_grammar", "colors", "shapes"}  # one red circle too few
    assert passed("two red circles", two) == {"in_grammar"}  # the blue square is missing
    assert passed("a simple drawing of two red circles and a blue square in the", two) == set()  # cut off
    assert passed("click here to buy", one) == set()
    assert parse_caption("an image with three shapes: two red circles and a blue box.") == {
        "objects": 3, "groups": [{"color": "red", "shape": "circle", "count": 2, "size": None, "cell": None},
                                 {"color": "blue", "shape": "square", "count": 1, "size": None, "cell": None}]}
    m = scene_truth_metrics([("a red disc", one), ("a blue circle", one), ("image", one), ("two red circles", two)])
    assert m == {"in_grammar": 0.75, "colors": 0.25, "shapes": 0.5, "objects": 0.25, "true_of_scene": 0.25,
                 "scene_checked": 4.0}
    assert scene_truth_metrics([]) == {"scene_checked": 0.0}


def test_load_scenes_keys_web_images_by_path_and_shard_key(gen):
    from blip_jax.data.synthetic import caption_is_true, load_scenes

    root, _ = gen
    scenes = load_scenes(f"{root}/scenes.json")
    raw = json.load(open(f"{root}/scenes.json"))
    assert scenes["000000003"] == raw["web/web_000000003.jpg"] and len(scenes) == len(raw) + 40
    noise = json.load(open(f"{root}/annotations/web_noise.json"))
    # the noise labels and the scenes agree: clean captions are true, corrupted and junk ones false
    assert all(caption_is_true(n["caption"], scenes[n["key"]]) for n in noise if n["noise_type"] == "clean")
    assert not any(caption_is_true(n["caption"], scenes[n["image"]]) for n in noise
                   if n["noise_type"] in ("wrong_attribute", "junk"))


def test_attribute_swaps_give_false_captions_of_one_changed_attribute():
    """swap_attribute (benchmarks/embedded_probes.py) changes exactly one attribute of one object; a
    caption stating sizes and positions is then true of the changed scene and false of the original."""
    from blip_jax.data.synthetic import ATTRIBUTES, caption_is_true, describe, sample_scene, swap_attribute

    fields = {"color": {"color"}, "shape": {"shape"}, "size": {"size"}, "position": {"row", "col"}}
    swaps = 0
    for i in range(200):
        rng = np.random.default_rng([5, i])
        scene = sample_scene(rng)
        for attribute in ATTRIBUTES:
            bad = swap_attribute(scene, attribute, rng)
            if bad is None:  # size and position are only stated for objects alone in their group
                assert attribute in ("size", "position")
                assert all(sum((p["color"], p["shape"]) == (o["color"], o["shape"]) for p in scene["objects"]) > 1
                           for o in scene["objects"])
                continue
            changed = [(a, b) for a, b in zip(scene["objects"], bad["objects"]) if a != b]
            assert len(changed) == 1
            assert {k for k in changed[0][0] if changed[0][0][k] != changed[0][1][k]} <= fields[attribute]
            true, false = (describe(s, np.random.default_rng([9, i]), with_size=True, with_pos=True)
                           for s in (scene, bad))
            assert caption_is_true(true, scene) and caption_is_true(false, bad) and not caption_is_true(false, scene)
            swaps += 1
    assert swaps > 600
    with pytest.raises(ValueError, match="attribute"):
        swap_attribute(scene, "texture", rng)
