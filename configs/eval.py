"""Evaluate released or fine-tuned BLIP checkpoints with the paper's protocols (REFERENCE.md
section 5) on data prepared as in data/coco.md and data/vqa.md.

    blip-jax eval --config configs/eval.py:retrieval_coco,/data/coco --checkpoint Salesforce/blip-itm-base-coco
    blip-jax eval --config configs/eval.py:retrieval_flickr,/data/flickr30k --checkpoint Salesforce/blip-itm-base-flickr
    blip-jax eval --config configs/eval.py:caption_coco,/data/coco --checkpoint Salesforce/blip-image-captioning-base
    blip-jax eval --config configs/eval.py:vqa,/data/vqa --checkpoint Salesforce/blip-vqa-base

Argument: <variant>[,<data root>[,<split>]]: variant retrieval_coco, retrieval_flickr, caption_coco
or vqa; split test (default) or val (not for vqa). The checkpoint is a hub id, an HF-format folder,
an original Salesforce .pth or a blip-jax training run's export/ folder; the tokenizer comes with
it (``--config.tokenizer.path`` for another). Published ViT-B numbers to compare with are in
REFERENCE.md section 6. Retrieval reranks the k_test best candidates with the ITM head (256 for
COCO, 128 for Flickr, as the original); captions are beam search 3, 5-20 tokens, after the prompt
"a picture of "; VQA ranks the k_test 128 most likely answers of the answer list. The VQA test
split has no public answers: the results file goes to the evaluation server.
``--config.dtype=bfloat16`` on accelerators.

As the original code, and whatever the checkpoint's config says (HF configs leave both off): the
image-grounded text encoder (retrieval's ITM rerank, VQA's question encoder) starts its text with
[ENC] instead of [CLS] (``use_enc_token_for_itm=True``; every released BLIP checkpoint was trained
so), and VQA ranks candidates by their label-smoothed (0.1) loss, as BLIP's rank_answer. For a
checkpoint fine-tuned without [ENC] (e.g. with HF transformers) pass
``--config.evals.<retrieval|vqa>.use_enc_token_for_itm=False``; ``--config.evals.vqa.label_smoothing=0.0``
ranks by the plain log-likelihood.
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(__file__))

from data_coco import get_config as coco_data  # noqa: E402
from data_vqa import get_config as vqa_data  # noqa: E402

VARIANTS = {  # type, image size, default root
    "retrieval_coco": ("retrieval", 384, "/data/coco"),
    "retrieval_flickr": ("retrieval", 384, "/data/flickr30k"),
    "caption_coco": ("caption", 384, "/data/coco"),
    "vqa": ("vqa", 480, "/data/vqa"),
}


def get_config(arg: str = "retrieval_coco"):
    variant, root, split = (arg.split(",") + ["", ""])[:3]
    if variant not in VARIANTS:
        raise ValueError(f"configs/eval.py: unknown variant {variant!r}; one of {sorted(VARIANTS)}")
    kind, size, default_root = VARIANTS[variant]
    root, split = root or default_root, split or "test"
    if split not in ("test", "val") or (kind == "vqa" and split != "test"):
        raise ValueError(f"configs/eval.py: unknown split {split!r} for {variant}; test or val (vqa: test)")
    c = ml_collections.ConfigDict()
    c.tokenizer = ml_collections.ConfigDict(dict(path=""))  # "": the checkpoint's tokenizer files
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.dtype = ""
    if kind == "vqa":
        d = vqa_data(root)
        # BLIP's VQA encodes the question after [ENC] and its rank_answer scores a candidate by
        # -loss of the answer decoder, whose loss has label smoothing 0.1
        ev = dict(type="vqa", data=dict(d.eval_datasets.test), answer_list=d.answer_list, method="rank",
                  k_test=128, batch_size=32, use_enc_token_for_itm=True, label_smoothing=0.1)
    else:
        d = coco_data(root, kind, dataset="flickr30k" if variant == "retrieval_flickr" else "coco")
        data = dict(d.eval_datasets[split])
        if kind == "retrieval":
            # BLIP's ITM rerank feeds the image-grounded encoder [ENC] + text (its [CLS] replaced)
            ev = dict(type="retrieval", data=data, k_test=256 if variant == "retrieval_coco" else 128, max_len=35,
                      batch_size=64, use_enc_token_for_itm=True)
        else:
            # ground_truth "": built from the split's annotations (the 5 captions of each image), or
            # BLIP's coco_karpathy_<split>_gt.json; SPICE needs the Stanford models pycocoevalcap
            # downloads on first use (--config.evals.caption.spice=True)
            ev = dict(type="caption", data=data, prompt="a picture of ", num_beams=3, max_length=20, min_length=5,
                      batch_size=64, ground_truth="", spice=False)
    c.evals = ml_collections.ConfigDict({kind: dict(ev, image_size=size, every_n_steps=0)})
    return c
