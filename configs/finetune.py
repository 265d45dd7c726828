"""BLIP fine-tuning at paper scale (salesforce/BLIP configs retrieval_coco / retrieval_flickr /
caption_coco / vqa; REFERENCE.md section 3), on data prepared as in data/coco.md and data/vqa.md.

    blip-jax train --config configs/finetune.py:retrieval_coco,/data/coco,/ckpt/model_base.pth --workdir runs/ret

Argument: <variant>[,<data root>[,<initial checkpoint>]]: variant retrieval_coco, retrieval_flickr,
caption_coco or vqa; the checkpoint is an original Salesforce .pth (model_base.pth,
model_base_capfilt_large.pth, ...) or a blip-jax pretraining export folder (export/retrieval,
export/captioning, export/vqa). Evaluation on the val split runs every epoch and the best
checkpoint (r_mean / CIDEr / accuracy) is kept.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from common import base_config, bert_base, vit  # noqa: E402
from data_coco import get_config as coco_data  # noqa: E402
from data_vqa import get_config as vqa_data  # noqa: E402

VARIANTS = {
    # task, image size, global batch, lr, epochs
    "retrieval_coco": ("retrieval", 384, 256, 1e-5, 6),
    "retrieval_flickr": ("retrieval", 384, 256, 1e-5, 6),
    "caption_coco": ("caption", 384, 256, 1e-5, 5),
    "vqa": ("vqa", 480, 256, 2e-5, 10),
}


def get_config(arg: str = "retrieval_coco"):
    variant, root, init = (arg.split(",") + ["", ""])[:3]
    if variant not in VARIANTS:
        raise ValueError(f"configs/finetune.py: unknown variant {variant!r}; one of {sorted(VARIANTS)}")
    task, size, batch, lr, epochs = VARIANTS[variant]
    c = base_config()
    c.task = task
    c.model.vision = vit("base", size, drop_path_rate=0.1 if task == "vqa" else 0.0)
    c.model.text = bert_base()  # dropout 0.1, as the original's configs/med_config.json
    c.model.dtype = "bfloat16"
    c.model.remat = True  # BLIP fine-tunes with ViT gradient checkpointing
    c.model.init.blip_checkpoint = init or "/checkpoints/model_base.pth"
    c.tokenizer.path = "/checkpoints/bert-base-uncased"
    if task == "vqa":
        d = vqa_data(root or "/data/vqa")
        c.data.update(dict(datasets=list(d.datasets), image_size=size, min_scale=0.5, max_len=35,
                           randaugment=True, hflip=True, num_workers=8))
        c.data.answer_max_len, c.data.max_answers = 10, 10
        test = dict(d.eval_datasets.test)
        c.evals.vqa = dict(type="vqa", data=test, answer_list=d.answer_list, method="rank", k_test=128,
                           image_size=size, batch_size=32, every_n_steps=0)  # once, at the end, as train_vqa.py
        c.best_metric = ""  # test-dev has no local answers: results go to the evaluation server
    else:
        flickr = variant == "retrieval_flickr"
        d = coco_data(root or ("/data/flickr30k" if flickr else "/data/coco"), task,
                      dataset="flickr30k" if flickr else "coco")
        c.data.update(dict(datasets=list(d.datasets), image_size=size, min_scale=0.5, max_len=d.max_len,
                           randaugment=True, hflip=True, num_workers=8))
        val = dict(d.eval_datasets.val)
        if task == "retrieval":
            c.evals.retrieval = dict(type="retrieval", data=val, k_test=256 if variant == "retrieval_coco" else 128,
                                     max_len=35, image_size=size, batch_size=64, every_n_steps=-1)
            c.best_metric = "retrieval/r_mean"
        else:
            c.evals.caption = dict(type="caption", data=val, prompt="a picture of ", num_beams=3, max_length=20,
                                   min_length=5, image_size=size, batch_size=64, every_n_steps=-1)
            c.best_metric = "caption/CIDEr+caption/Bleu_4"  # BLIP's train_caption.py keeps the best sum
    c.data.batch_size = batch
    c.data.embedded = False
    c.objective.alpha_ramp_epochs = 1.0  # retrieval: alpha ramped over the first epoch
    c.objective.queue_size = 57600
    c.optimizer.lr = lr
    c.optimizer.weight_decay = 0.05
    c.optimizer.schedule.type = "cosine"
    c.optimizer.schedule.min_lr = 0.0
    c.num_epochs = epochs
    c.checkpoint.every_steps = 1000
    return c
