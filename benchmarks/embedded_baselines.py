"""Trivial baselines on the embedded dataset's test splits, to put the tiny models' numbers in
context: retrieval at chance, a constant caption (the most frequent training caption) scored by
the same COCO caption metrics and against the scenes, and the majority training answer for VQA.
And what the scenes say about pretraining's ITM labels: in random batches of the pretraining mix,
how many positive pairs are false (web noise) and how many captions are true of another image in
their batch (a negative that ITM's hard-negative mining may pick, labelled "no match" but true).

    python benchmarks/embedded_baselines.py --data workdir/tiny/data
"""

from __future__ import annotations

import argparse
import collections
import json
import os

from blip_jax.data import annotations as ann
from blip_jax.data.synthetic import caption_is_true, load_scenes, parse_caption, scene_truth_metrics
from blip_jax.data.text import pre_caption
from blip_jax.evaluation.captioning import coco_ground_truth, coco_image_id, score_captions
from blip_jax.evaluation.vqa import normalize_answer, raw_answers, vqa_score


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True, help="embedded dataset folder (blip-jax data generate --out ...)")
    p.add_argument("--batch-size", type=int, default=32, help="pretraining batch size (configs/pretrain_tiny.py)")
    p.add_argument("--batches", type=int, default=500, help="random batches for the ITM label counts")
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
    scenes = load_scenes(os.path.join(args.data, "scenes.json"))
    test_scenes = [scenes[os.path.relpath(r["image_path"], images)] for r in test]
    out.update({f"constant_caption_{k}": v for k, v in scene_truth_metrics((constant, s) for s in test_scenes).items()})
    out.update(itm_labels_in_batches(a, scenes, args.batch_size, args.batches))

    with open(os.path.join(a, "vqa_train.json")) as f:
        votes = collections.Counter(normalize_answer(x) for e in json.load(f)
                                    for x in (e["answer"] if isinstance(e["answer"], list) else [e["answer"]]))
    majority = votes.most_common(1)[0][0]
    gt = raw_answers(os.path.join(a, "vqa_test.json"))
    out["vqa_majority_answer"] = majority
    out["vqa_majority_accuracy"] = vqa_score([{"question_id": q, "answer": majority} for q in gt], gt)["accuracy"]
    print(json.dumps(out, indent=1))


def itm_labels_in_batches(annotations: str, scenes: dict, batch_size: int, batches: int, seed: int = 0) -> dict:
    """Random batches of the tiny pretraining mix (web list + COCO-style list, one of an image's
    captions per draw, as the loader does) checked against the scenes."""
    import numpy as np

    pool = []
    for name in ("pretrain_web.json", "pretrain_coco.json"):
        with open(os.path.join(annotations, name)) as f:
            for e in json.load(f):
                caps = e["caption"] if isinstance(e["caption"], list) else [e["caption"]]
                pool.append((scenes[e["image"]], [parse_caption(c) for c in caps]))
    rng = np.random.default_rng(seed)
    false_pos = t2i = i2t = rows = 0
    for _ in range(batches):
        batch = [pool[i] for i in rng.choice(len(pool), batch_size, replace=False)]
        caps = [c[int(rng.integers(len(c)))] for _, c in batch]
        true = np.array([[caption_is_true(c, s) for s, _ in batch] for c in caps])  # (caption, image)
        off = true & ~np.eye(batch_size, dtype=bool)
        false_pos += int((~np.diag(true)).sum())
        t2i += int(off.any(axis=1).sum())  # caption true of another image in the batch
        i2t += int(off.any(axis=0).sum())  # image described truly by another caption in the batch
        rows += batch_size
    f, q1, q2 = false_pos / rows, t2i / rows, i2t / rows
    return {"itm_batch_size": batch_size, "itm_positive_pairs_false": f,
            "itm_captions_true_of_another_image": q1, "itm_images_with_another_true_caption": q2,
            # ITM's cross-entropy (per pair, 1 positive + 2 negatives a row) for a model that knows
            # exactly whether a caption is true of the image and nothing else: random negatives, or
            # negatives mined so well that a true alternative is picked whenever the batch has one
            "itm_loss_truth_only_random_negatives": _truth_only_loss(f, 0.0, 0.0),
            "itm_loss_truth_only_mined_negatives": _truth_only_loss(f, q1, q2)}


def _truth_only_loss(false_pos: float, true_neg_t2i: float, true_neg_i2t: float) -> float:
    """Mean binary cross-entropy over a row's 3 ITM pairs when the prediction is the label's
    frequency among pairs of the same truth (true / untrue), per row: untrue pairs are the false
    positive (rate false_pos) and the untrue negatives, true ones the rest."""
    import math

    def entropy(p):
        return 0.0 if p in (0.0, 1.0) else -(p * math.log(p) + (1 - p) * math.log(1 - p))

    untrue = false_pos + (1 - true_neg_t2i) + (1 - true_neg_i2t)
    true = (1 - false_pos) + true_neg_t2i + true_neg_i2t
    return (untrue * entropy(false_pos / untrue) + true * entropy((1 - false_pos) / true)) / 3


if __name__ == "__main__":
    main()
