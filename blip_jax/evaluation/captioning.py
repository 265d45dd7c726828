"""Caption evaluation: beam-search captions -> results JSON -> pycocoevalcap scores.

BLIP's protocol (COCO Karpathy val/test): prompt "a picture of ", beam search with 3 beams,
max_length 20, min_length 5 (whole sequence, prompt included, as HF ``generate``); the decoded text
has the prompt's characters cut off (``caption[len(prompt):]``). Results are written as
``[{"image_id": int, "caption": str}]`` and scored with pycocoevalcap against a COCO-format ground
truth (``{"images": [{"id"}], "annotations": [{"image_id", "id", "caption"}]}``): PTB tokenizer,
BLEU-1..4, METEOR, ROUGE_L, CIDEr and optionally SPICE, over every image of the ground truth (as BLIP's
``coco_caption_eval``: COCOEvalCap's default ``params['image_id'] = coco.getImgIds()``, which fails
when an image has no result). A ground-truth image without a result is an error, except the images
the eval pipeline skipped (unreadable files): those are left out of the scores, logged, and counted
in the metrics as ``num_images_skipped``.

Java: the PTB tokenizer, METEOR and SPICE run Java programs; without ``java`` on PATH scoring raises
(install ``default-jre-headless``). SPICE additionally needs the Stanford CoreNLP 3.6.0 jars, which
pycocoevalcap downloads on first use from nlp.stanford.edu; offline that fails, so SPICE is off
unless asked for (``spice=True``), and asking for it without the jars raises with instructions.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence

import numpy as np

from blip_jax.files import write_json_atomic

log = logging.getLogger(__name__)

PROMPT = "a picture of "
METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")


class CaptionEvalError(RuntimeError):
    """A scorer cannot run (no Java, no SPICE models); the message says what to install."""


# ---------------------------------------------------------------------------------------------
# Ground truth


def coco_image_id(record: dict) -> int:
    """The id results are reported under: the COCO numeric id (``image_key``) or the record index."""
    key = str(record.get("image_key", ""))
    return int(key) if key.lstrip("-").isdigit() and int(key) >= 0 else int(record["index"])


def coco_ground_truth(records: Sequence[dict]) -> dict:
    """coco_karpathy val/test records -> COCO-format caption annotations (what BLIP's
    coco_karpathy_{val,test}_gt.json hold)."""
    images, anns = [], []
    for rec in records:
        iid = coco_image_id(rec)
        images.append({"id": iid})
        for c in rec["captions"]:
            if isinstance(c, str):
                anns.append({"image_id": iid, "id": len(anns), "caption": c})
    return {"images": images, "annotations": anns, "type": "captions", "info": {}, "licenses": []}


def _load(obj_or_path):
    if isinstance(obj_or_path, (str, os.PathLike)):
        with open(obj_or_path, encoding="utf-8") as f:
            return json.load(f)
    return obj_or_path


# ---------------------------------------------------------------------------------------------
# Scoring


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise CaptionEvalError(
            "caption metrics need Java (pycocoevalcap's PTB tokenizer, METEOR and SPICE are Java programs): "
            "install a Java runtime, e.g. `apt-get install -y default-jre-headless`, and make sure `java` is on PATH")
    return java


def spice_available() -> bool:
    from pycocoevalcap.spice import get_stanford_models as g

    return os.path.exists(os.path.join(g.SPICEDIR, g.SPICELIB, f"{g.JAR}.jar"))


def score_captions(results, ground_truth, *, spice: bool = False, skipped: Iterable[int] = ()) -> dict[str, float]:
    """pycocoevalcap scores of `results` ([{"image_id", "caption"}] or a path) against a COCO-format
    ground truth (dict or path), over every ground-truth image (its ``images`` ids, in order; without
    ``images``, the annotations' image ids) except the ``skipped`` ids. -> {"Bleu_1".."Bleu_4",
    "METEOR", "ROUGE_L", "CIDEr"[, "SPICE"]} as fractions (BLIP reports them x100).

    Raises ValueError when a ground-truth image that is not skipped has no result (how many, and
    some ids), when a result's image is not in the ground truth, or an image has two results."""
    require_java()
    if spice and not spice_available():
        raise CaptionEvalError(
            "SPICE needs the Stanford CoreNLP 3.6.0 jars, which pycocoevalcap downloads from nlp.stanford.edu "
            "on first use; run `python -c 'from pycocoevalcap.spice.get_stanford_models import "
            "get_stanford_models as g; g()'` once with network access (or copy stanford-corenlp-3.6.0.jar and "
            "-models.jar into pycocoevalcap/spice/lib), or evaluate without SPICE (spice=False)")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    results, gt = _load(results), _load(ground_truth)
    img_ids = caption_image_ids(gt, results, skipped)
    gts_by_img: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        gts_by_img.setdefault(int(a["image_id"]), []).append(a)
    res_by_img = {int(r["image_id"]): [{"image_id": r["image_id"], "caption": r["caption"]}] for r in results}
    tok = PTBTokenizer()
    gts = tok.tokenize({i: gts_by_img[i] for i in img_ids})
    res = tok.tokenize({i: res_by_img[i] for i in img_ids})
    scorers = [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (Meteor(), ["METEOR"]), (Rouge(), ["ROUGE_L"]),
               (Cider(), ["CIDEr"])]
    if spice:
        from pycocoevalcap.spice.spice import Spice

        scorers.append((Spice(), ["SPICE"]))
    out: dict[str, float] = {}
    for scorer, names in scorers:
        score, _ = scorer.compute_score(gts, res)
        for name, value in zip(names, score if isinstance(score, list) else [score]):
            out[name] = float(value)
        if hasattr(scorer, "close"):
            scorer.close()
    return out


def caption_image_ids(gt: dict, results: Sequence[dict], skipped: Iterable[int] = ()) -> list[int]:
    """The image ids to score: every ground-truth image (pycocotools ``getImgIds`` order) but the
    ``skipped`` ones; checks that each has captions and exactly one result, and that every result's
    image is in the ground truth."""
    gt_ids = list(dict.fromkeys(int(i["id"]) for i in gt["images"])) if "images" in gt else \
        list(dict.fromkeys(int(a["image_id"]) for a in gt["annotations"]))
    known, skipped = set(gt_ids), {int(i) for i in skipped}
    with_caps = {int(a["image_id"]) for a in gt["annotations"]}
    counts: dict[int, int] = {}
    for r in results:
        counts[int(r["image_id"])] = counts.get(int(r["image_id"]), 0) + 1
    unknown = [i for i in counts if i not in known]
    if unknown:
        raise ValueError(f"{len(unknown)} result image ids have no ground truth, e.g. {unknown[:5]}")
    twice = [i for i, n in counts.items() if n > 1]
    if twice:
        raise ValueError(f"{len(twice)} images have more than one result, e.g. {twice[:5]}")
    ids = [i for i in gt_ids if i not in skipped]
    missing = [i for i in ids if i not in counts]
    if missing:
        raise ValueError(
            f"{len(missing)} of the {len(gt_ids)} ground-truth images have no result (e.g. image ids "
            f"{missing[:5]}): caption metrics are over every ground-truth image (BLIP's coco_caption_eval); "
            "caption them all, or pass the ones the pipeline skipped as `skipped`")
    no_caps = [i for i in ids if i not in with_caps]
    if no_caps:
        raise ValueError(f"{len(no_caps)} ground-truth images have no caption annotations, e.g. {no_caps[:5]}")
    if not ids:
        raise ValueError("no ground-truth image to score")
    return ids


# ---------------------------------------------------------------------------------------------
# Generation


def prompt_ids(tokenizer, prompt: str = PROMPT) -> np.ndarray:
    """(1, T) int32: the tokenised prompt ([CLS] ... [SEP]); `generate` turns [CLS] into bos and
    drops [SEP]."""
    ids = tokenizer([prompt], return_tensors="np")["input_ids"]
    return np.asarray(ids, np.int32)


def strip_prompt(text: str, prompt: str = PROMPT) -> str:
    """BLIP: ``caption[len(prompt):]`` of the decoded text (the decode ends the prompt with its word,
    then a space, so the slice cuts exactly the prompt)."""
    return text[len(prompt):] if prompt else text


def generate_captions(model, image_batches: Iterable[dict], tokenizer, image_ids: Sequence[int], *,
                      prompt: str = PROMPT, num_beams: int = 3, max_length: int = 20, min_length: int = 5,
                      **generate_kwargs) -> list[dict]:
    """Caption every image of the eval batches (``pixel_values`` (B, H, W, 3), ``mask`` (B,),
    ``index`` (B,)); image_ids[index] is the id reported. Each process captions its own share; the
    token ids are gathered so that every process returns all results, sorted by index."""
    from blip_jax.evaluation.retrieval import to_host

    p_ids = prompt_ids(tokenizer, prompt) if prompt else None
    tokens_l, index_l = [], []
    for batch in image_batches:
        out = np.asarray(model.generate(batch["pixel_values"], input_ids=p_ids, num_beams=num_beams,
                                        max_length=max_length, min_length=min_length, **generate_kwargs))
        fixed = np.zeros((out.shape[0], max_length), np.int32)  # fixed width for the cross-process gather
        fixed[:, : out.shape[1]] = out[:, :max_length]
        keep = np.asarray(batch["mask"]).astype(bool)
        tokens_l.append(fixed)
        index_l.append(np.where(keep, np.asarray(batch["index"]), -1).astype(np.int32))
    tokens, index = _gather_processes(np.concatenate(tokens_l), np.concatenate(index_l), to_host)
    results = {}
    for row, i in zip(tokens, index):
        if i >= 0:
            text = tokenizer.decode(row.tolist(), skip_special_tokens=True)
            results[int(i)] = {"image_id": int(image_ids[int(i)]), "caption": strip_prompt(text, prompt)}
    return [results[i] for i in sorted(results)]


def _gather_processes(tokens: np.ndarray, index: np.ndarray, to_host):
    import jax

    if jax.process_count() == 1:
        return tokens, index
    from jax.experimental import multihost_utils

    return (np.asarray(multihost_utils.process_allgather(tokens, tiled=True)),
            np.asarray(multihost_utils.process_allgather(index, tiled=True)))


def evaluate_captioning(model, image_batches: Iterable[dict], records: Sequence[dict], tokenizer, workdir: str, *,
                        ground_truth=None, name: str = "caption", step: int | None = None, spice: bool = False,
                        scene_of=None, **generate_kwargs) -> dict[str, float]:
    """Generate, write ``<workdir>/<name>_results[_step<N>].json`` (+ the ground truth if built from
    `records`), score, write ``<name>_metrics[...].json``; returns the metrics.

    ``scene_of(record)`` -> the image's ground-truth scene (the embedded world's) or None: with it
    the metrics also say how many captions are true of their image, and name the right colours and
    shapes (blip_jax.data.synthetic.scene_truth_metrics), which n-gram overlap cannot tell."""
    import jax

    ids = [coco_image_id(r) for r in records]
    results = generate_captions(model, image_batches, tokenizer, ids, **generate_kwargs)
    gt = _load(ground_truth) if ground_truth is not None else coco_ground_truth(records)
    suffix = "" if step is None else f"_step{step}"
    # records the pipeline skipped (unreadable images; their index never comes back) have no caption:
    # they are left out of the scores, and said so
    captioned = {r["image_id"] for r in results}
    skipped = sorted({i for i in ids if i not in captioned})
    if skipped:
        log.warning("caption eval %s: %d of %d images were skipped by the pipeline (unreadable?) and are not "
                    "scored, e.g. image ids %s", name, len(skipped), len(ids), skipped[:5])
    metrics = score_captions(results, gt, spice=spice, skipped=skipped)
    metrics["num_images"] = float(len(results))
    metrics["num_images_skipped"] = float(len(skipped))
    if scene_of is not None:
        from blip_jax.data.synthetic import scene_truth_metrics

        scenes = {i: scene_of(r) for i, r in zip(ids, records)}
        metrics.update(scene_truth_metrics((r["caption"], scenes[r["image_id"]]) for r in results
                                           if scenes.get(r["image_id"]) is not None))
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        write_json_atomic(os.path.join(workdir, f"{name}_results{suffix}.json"), results, indent=1)
        if ground_truth is None:
            write_json_atomic(os.path.join(workdir, f"{name}_gt.json"), gt, indent=1)
        write_json_atomic(os.path.join(workdir, f"{name}_metrics{suffix}.json"), metrics, indent=1)
    return metrics


