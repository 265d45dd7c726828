"""Caption metrics: our pycocoevalcap driver equals COCOEvalCap's own run on the same files; clear
errors without Java / SPICE models; prompt stripping as BLIP."""

from __future__ import annotations

import json
import shutil

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
    ev = coco_eval.COCOEvalCap(coco, coco_res)
    ev.params["image_id"] = coco_res.getImgIds()  # as BLIP's coco_caption_eval
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
