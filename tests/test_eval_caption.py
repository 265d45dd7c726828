"""Caption metrics: our pycocoevalcap driver equals COCOEvalCap's own run on the same files, over every
ground-truth image (a missing result is an error; images the pipeline skipped are counted); clear
errors without Java / SPICE models; prompt stripping as BLIP."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from blip_jax.evaluation import captioning as cap

GT_CAPTIONS = {
    391: ["a red circle on the left of a blue square", "A red ball left of a blue box.",
          "two shapes: a red circle and a blue square"],
    72: ["three green triangles at the top", "Green triangles, three of them, near the top!",
         "some green triangles on a white background"],
    5: ["a small yellow star in the center", "a yellow star", "the yellow star is in the middle of the picture"],
}
RESULTS = [{"image_id": 391, "caption": "a red circle next to a blue square"},
           {"image_id": 72, "caption": "three green triangles on the top"},
           {"image_id": 5, "caption": "a yellow star in the middle"}]

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap needs Java")


def write_files(tmp_path):
    anns, images = [], []
    for iid, caps in GT_CAPTIONS.items():
        images.append({"id": iid})
        anns += [{"image_id": iid, "id": len(anns) + 100, "caption": c} for c in caps]
    gt = {"images": images, "annotations": anns, "type": "captions", "info": {}, "licenses": []}
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(gt))
    res_path.write_text(json.dumps(RESULTS))
    return str(gt_path), str(res_path)


@needs_java
def test_scores_equal_cocoevalcap(tmp_path, monkeypatch):
    from pycocoevalcap import eval as coco_eval
    from pycocotools.coco import COCO

    gt_path, res_path = write_files(tmp_path)
    ours = cap.score_captions(res_path, gt_path)
    assert set(ours) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}

    class NoSpice:  # COCOEvalCap always runs SPICE, which downloads CoreNLP: stub it out
        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "SPICE"

    monkeypatch.setattr(coco_eval, "Spice", NoSpice)
    coco = COCO(gt_path)
    coco_res = coco.loadRes(res_path)
    ev = coco_eval.COCOEvalCap(coco, coco_res)  # BLIP's coco_caption_eval: every ground-truth image
    ev.evaluate()
    for k, v in ours.items():
        assert v == pytest.approx(ev.eval[k], abs=1e-12), k
    # real numbers, not degenerate: close captions score high, but not perfectly
    assert 0.5 < ours["Bleu_1"] < 1.0 and 0.0 < ours["Bleu_4"] < ours["Bleu_1"]
    assert 0.1 < ours["METEOR"] < 1.0 and 0.3 < ours["ROUGE_L"] < 1.0 and ours["CIDEr"] > 0.3


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cap.shutil, "which", lambda name: None)
    with pytest.raises(cap.CaptionEvalError, match="default-jre-headless"):
        cap.score_captions(RESULTS, {"annotations": []})


@needs_java
def test_spice_without_models_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cap, "spice_available", lambda: False)
    with pytest.raises(cap.CaptionEvalError, match="Stanford CoreNLP"):
        cap.score_captions(RESULTS, {"annotations": []}, spice=True)


def test_ground_truth_and_prompt():
    recs = [{"index": 0, "image_key": "391", "captions": ["a b", "c d"]},
            {"index": 1, "image_key": "-1", "captions": ["e", 3]}]
    gt = cap.coco_ground_truth(recs)
    assert [i["id"] for i in gt["images"]] == [391, 1]
    assert [(a["image_id"], a["caption"]) for a in gt["annotations"]] == [(391, "a b"), (391, "c d"), (1, "e")]
    assert cap.strip_prompt("a picture of a dog on a couch") == "a dog on a couch"
    assert cap.strip_prompt("a dog", prompt="") == "a dog"


SUBSET_GT = {"images": [{"id": i} for i in (1, 2, 3)], "type": "captions", "info": {}, "licenses": [],
             "annotations": [{"image_id": i, "id": 10 * i + j, "caption": c} for i, caps in
                             ((1, ["a dog runs on the grass", "a brown dog running"]),
                              (2, ["a cat sleeps on a sofa", "a cat lying on a couch"]),
                              (3, ["two people ride bikes", "people riding bicycles on a road"]))
                             for j, c in enumerate(caps)]}
SUBSET_RES = [{"image_id": 1, "caption": "a dog running on grass"}, {"image_id": 2, "caption": "a cat on a couch"}]


@needs_java
def test_scores_cover_every_ground_truth_image(tmp_path, monkeypatch):
    """BLIP's coco_caption_eval scores every ground-truth image (COCOEvalCap's default image ids) and
    fails when one has no result: so do we, naming how many and which; images the pipeline skipped
    are left out only when named as such."""
    from pycocoevalcap import eval as coco_eval
    from pycocotools.coco import COCO

    with pytest.raises(ValueError, match=r"1 of the 3 ground-truth images have no result \(e\.g\. image ids \[3\]\)"):
        cap.score_captions(SUBSET_RES, SUBSET_GT)
    with pytest.raises(ValueError, match="no ground truth"):
        cap.score_captions(SUBSET_RES + [{"image_id": 9, "caption": "x"}], SUBSET_GT, skipped=[3])
    ours = cap.score_captions(SUBSET_RES, SUBSET_GT, skipped=[3])

    class NoSpice:
        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "SPICE"

    monkeypatch.setattr(coco_eval, "Spice", NoSpice)
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(SUBSET_GT))
    res_path.write_text(json.dumps(SUBSET_RES))
    coco = COCO(str(gt_path))
    ev = coco_eval.COCOEvalCap(coco, coco.loadRes(str(res_path)))
    assert ev.params["image_id"] == [1, 2, 3]  # the default BLIP relies on: all ground-truth images
    with pytest.raises(AssertionError):
        ev.evaluate()  # image 3 has no result
    ev = coco_eval.COCOEvalCap(coco, coco.loadRes(str(res_path)))
    ev.params["image_id"] = [1, 2]  # the two images that are not skipped
    ev.evaluate()
    for k, v in ours.items():
        assert v == pytest.approx(ev.eval[k], abs=1e-12), k
    assert 0.3 < ours["Bleu_1"] < 1.0 and ours["CIDEr"] > 0.1


class _FakeCaptioner:
    """generate -> one fixed caption per image, chosen by the image's first pixel."""

    captions = {1: [5, 6, 7], 2: [8, 9], 3: [5, 9]}

    def generate(self, pixel_values, input_ids=None, max_length=20, **kw):
        out = np.zeros((pixel_values.shape[0], max_length), np.int32)
        for row, px in enumerate(pixel_values):
            toks = self.captions.get(int(px[0, 0, 0]), [5])
            out[row, : len(toks)] = toks
        return out


class _FakeTokenizer:
    words = {5: "a", 6: "dog", 7: "running", 8: "cat", 9: "couch"}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(self.words[i] for i in ids if i in self.words)


@needs_java
def test_evaluate_captioning_counts_skipped_images(tmp_path):
    """A record the pipeline skipped (its index never comes back) is reported and counted, not
    silently dropped; the scores are those of the captioned images."""
    records = [{"index": i, "image_key": str(iid), "captions": [a["caption"] for a in SUBSET_GT["annotations"]
                                                                if a["image_id"] == iid]}
               for i, iid in enumerate((1, 2, 3))]
    px = np.zeros((2, 2, 2, 3), np.float32)
    px[0, 0, 0, 0], px[1, 0, 0, 0] = 1, 2
    batches = [{"pixel_values": px, "mask": np.array([1, 1]), "index": np.array([0, 1])}]  # record 2 skipped
    metrics = cap.evaluate_captioning(_FakeCaptioner(), batches, records, _FakeTokenizer(), str(tmp_path), prompt="")
    assert metrics["num_images"] == 2.0 and metrics["num_images_skipped"] == 1.0
    want = cap.score_captions([{"image_id": 1, "caption": "a dog running"}, {"image_id": 2, "caption": "cat couch"}],
                              SUBSET_GT, skipped=[3])
    assert {k: metrics[k] for k in want} == want
    assert json.loads((tmp_path / "caption_metrics.json").read_text())["num_images_skipped"] == 1.0
