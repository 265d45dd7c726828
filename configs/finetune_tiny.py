"""Fine-tune the tiny pretrained model on the embedded dataset: retrieval, captioning or VQA.

    blip-jax train --config configs/pretrain_tiny.py --workdir workdir/tiny
    blip-jax train --config configs/finetune_tiny.py:caption,workdir/tiny --workdir workdir/tiny_caption

Argument: <task>[,<pretraining workdir>] with task retrieval | caption | vqa. The pretraining
run's export/ folder gives the initial weights and its data/ folder the dataset and vocabulary.
Evaluations run at the end (every_n_steps = total_steps) on the embedded test split.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from common import base_config  # noqa: E402
from pretrain_tiny import get_config as tiny_pretrain  # noqa: E402


def get_config(arg: str = "caption"):
    task, _, pretrain_dir = arg.partition(",")
    smoke = task.endswith("-smoke")
    task = task.removesuffix("-smoke")
    if task not in ("retrieval", "caption", "vqa"):
        raise ValueError(f"configs/finetune_tiny.py: task must be retrieval, caption or vqa, got {task!r}")
    pre = tiny_pretrain("smoke" if smoke else "")
    pretrain_dir = pretrain_dir or "workdir/tiny"
    c = base_config()
    c.task = task
    c.model = pre.model
    c.model.init.blip_checkpoint = os.path.join(pretrain_dir, "export", {"retrieval": "retrieval",
                                                                          "caption": "captioning", "vqa": "vqa"}[task])
    c.tokenizer.path = ""
    c.data = pre.data
    c.data.embedded_dir = os.path.join(pretrain_dir, "data")
    c.data.datasets = {"retrieval": ["coco_karpathy_train"], "caption": ["coco_karpathy_train"],
                       "vqa": ["vqa_train"]}[task]
    c.data.min_scale = 0.8
    c.objective = pre.objective
    c.objective.alpha_ramp_epochs = 1.0
    c.optimizer = pre.optimizer
    c.optimizer.lr = 2e-4 if task != "vqa" else 5e-4
    c.optimizer.schedule.type = "warmup_cosine"
    c.optimizer.schedule.warmup_steps = 20
    c.optimizer.schedule.min_lr = 1e-5
    c.total_steps = {"retrieval": 200, "caption": 200, "vqa": 300}[task]
    c.checkpoint.every_steps = 100
    c.log_every_steps = 25
    ev = dict(image_size=c.data.image_size, batch_size=16, every_n_steps=c.total_steps)
    if task == "retrieval":
        c.evals.retrieval = dict(type="retrieval", data="embedded:test", k_test=16, max_len=35, rerank_batch_size=8,
                                 text_batch_size=64, **ev)
        c.best_metric = "retrieval/r_mean"
    elif task == "caption":
        # max_length 30, not BLIP's COCO 20: with the prompt, 30% of this world's reference captions
        # are longer than 20 tokens, and a caption cut short is not true of its scene
        c.evals.caption = dict(type="caption", data="embedded:test", prompt="a picture of ", num_beams=3,
                               max_length=30, min_length=5, spice=False, **ev)
        c.best_metric = "caption/CIDEr"
    else:
        c.data.max_len = 35
        c.evals.vqa = dict(type="vqa", data="embedded:vqa_test", answer_list="embedded", method="rank", k_test=8,
                           **ev)
        c.best_metric = "vqa/accuracy"
    if smoke:
        c.total_steps = 4
        c.checkpoint.every_steps = 2
        c.log_every_steps = 1
        for e in c.evals.values():
            e.every_n_steps, e.batch_size = 4, 4
    return c
