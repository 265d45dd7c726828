"""Tiny BLIP pretraining on the embedded synthetic dataset: the newcomer's first run.

    blip-jax train --config configs/pretrain_tiny.py --workdir workdir/tiny
    blip-jax train --config configs/pretrain_tiny.py:bootstrapped=workdir/tiny_capfilt --workdir workdir/tiny_boot
    blip-jax train --config configs/pretrain_tiny.py:shards --workdir workdir/tiny_shards

Runs on 2 CPU cores in a few minutes: generates the embedded dataset (noisy web split + clean
COCO-style captions) into <workdir>/data, trains a small ViT + text transformer with ITC, ITM
and LM, and prints the loss table. With ``bootstrapped=<dir>`` the noisy web split is replaced by
what a CapFilt run (configs/capfilt_tiny.py) kept, the paper's last step. With ``shards`` the web
split is streamed from its img2dataset-layout tar shards (as web data at scale is) instead of read
from the BLIP JSON list; ``smoke`` shrinks everything for tests.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from common import base_config  # noqa: E402


def get_config(arg: str = ""):
    opts = [a for a in arg.split(",") if a]
    bootstrapped = next((a.removeprefix("bootstrapped=") for a in opts if a.startswith("bootstrapped=")), "")
    for a in opts:
        if a not in ("smoke", "shards") and not a.startswith("bootstrapped="):
            raise ValueError(f"configs/pretrain_tiny.py: unknown argument {a!r}; '' (the default), 'smoke', 'shards' "
                             "and/or 'bootstrapped=<capfilt workdir>'")
    shards = "shards" in opts
    arg = "smoke" if "smoke" in opts else ""
    c = base_config()
    c.model.vision = dict(image_size=64, patch_size=8, hidden_size=128, num_hidden_layers=3,
                          num_attention_heads=4, intermediate_size=256, layer_norm_eps=1e-6,
                          initializer_range=0.08)
    c.model.text = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256,
                        max_position_embeddings=64, use_enc_token_for_itm=True, label_smoothing=0.1,
                        initializer_range=0.08)
    c.model.image_text_hidden_size = 64
    c.tokenizer.path = ""  # the embedded dataset's vocab.txt
    c.data.embedded = True
    c.data.embedded_sizes = dict(num_web=2000, num_coco_train=400, num_coco_val=50, num_coco_test=50,
                                 image_size=96)
    c.data.datasets = ["web_shards" if shards else "web", "coco"]  # embedded splits: noisy web + clean 5-caption set
    if bootstrapped:  # CapFilt's step 5: the web split replaced by what `blip-jax capfilt` kept
        c.data.datasets = [dict(name="capfilt", format="blip_json",
                                paths=[os.path.join(bootstrapped, "bootstrapped.json")]), "coco"]
    c.data.image_size = 64
    c.data.min_scale = 0.6  # smaller crops cut whole objects out of 96-px scenes
    c.data.max_len = 24
    c.data.batch_size = 32
    c.data.randaugment = False  # a few minutes of training: keep the signal easy
    c.data.hflip = False  # captions say "left" and "right": a flip would make them wrong
    c.data.num_threads = 4
    c.objective.queue_size = 256
    # From scratch the momentum encoders must follow quickly: BLIP's 0.995 assumes pretrained
    # DeiT/BERT features; with random ones the keys stay collapsed for hundreds of steps.
    c.objective.momentum = 0.99
    c.objective.alpha_ramp_epochs = 1.0
    c.optimizer.lr = 5e-4
    c.optimizer.weight_decay = 0.05
    c.optimizer.schedule.type = "warmup_cosine"
    c.optimizer.schedule.warmup_steps = 50
    c.optimizer.schedule.min_lr = 5e-5
    c.optimizer.optim.grad_clip = 1.0
    c.num_epochs = 0
    c.total_steps = 1200  # ITM against ITC-mined hard negatives starts to pay off after ~700 steps (README)
    c.checkpoint.every_steps = 400
    c.log_every_steps = 25
    if arg == "smoke":  # seconds, for tests
        c.data.embedded_sizes = dict(num_web=96, num_coco_train=32, num_coco_val=8, num_coco_test=8, image_size=32,
                                     vg_questions=16)
        c.model.vision.update(image_size=32, num_hidden_layers=1, hidden_size=32, intermediate_size=64)
        c.model.text.update(num_hidden_layers=1, hidden_size=32, intermediate_size=64)
        c.model.image_text_hidden_size = 16
        c.data.image_size = 32
        c.data.batch_size = 8
        c.data.max_len = 16
        c.objective.queue_size = 32
        c.optimizer.schedule.warmup_steps = 2
        c.total_steps = 8
        c.checkpoint.every_steps = 2
        c.checkpoint.async_save = False
        c.log_every_steps = 1
    return c
