"""Trivial baselines on the embedded dataset's test splits, to put the tiny models' numbers in
context: retrieval at chance, a constant caption (the most frequent training caption) scored by
the same COCO caption metrics, and the majority training answer for VQA.

    python benchmarks/embedded_baselines.py --data workdir/tiny/data
"""

from __future__ import annotations

import argparse
import collections
import json
import os

from blip_jax.data import annotations as ann
from blip_jax.data.text import pre_caption
from blip_jax.evaluation.captioning import coco_ground_truth, coco_image_id, score_captions
from blip_jax.evaluation.vqa import normalize_answer, raw_answers, vqa_score


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True, help="embedded dataset folder (blip-jax data generate --out ...)")
    args = p.parse_args()
    a = os.path.join(args.data, "annotations")
    images = os.path.join(args.data, "images")
    test = ann.load_coco_karpathy(os.path.join(a, "coco_karpathy_test.json"), images, "test")
    train = ann.load_coco_karpathy(os.path.join(a, "coco_karpathy_train.json"), images, "train")
    out = {"retrieval_chance_r1": 100.0 / len(test), "retrieval_chance_r5": 500.0 / len(test)}

    counts = collections.Counter(pre_caption(c) for r in train for c in r["captions"] if isinstance(c, str))
    constant = counts.most_common(1)[0][0]
    results = [{"image_id": coco_image_id(r), "caption": constant} for r in test]
    scores = score_captions(results, coco_ground_truth(test))
    out.update({f"constant_caption_{k}": v for k, v in scores.items()})
    out["constant_caption"] = constant

    with open(os.path.join(a, "vqa_train.json")) as f:
        votes = collections.Counter(normalize_answer(x) for e in json.load(f)
                                    for x in (e["answer"] if isinstance(e["answer"], list) else [e["answer"]]))
    majority = votes.most_common(1)[0][0]
    gt = raw_answers(os.path.join(a, "vqa_test.json"))
    out["vqa_majority_answer"] = majority
    out["vqa_majority_accuracy"] = vqa_score([{"question_id": q, "answer": majority} for q in gt], gt)["accuracy"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
