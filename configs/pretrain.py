"""BLIP pretraining at paper scale (REFERENCE.md section 3; hyperparameters of salesforce/BLIP's
configs/pretrain.yaml), on web data prepared as in data/web.md.

    blip-jax train --config configs/pretrain.py:vit_b_14m,/data/pretrain --workdir /runs/blip_b14m

Arguments: <variant>[,<data root>] with variant vit_b_14m (COCO+VG+CC3M+CC12M+SBU), vit_b_129m
(+ LAION-115M) or vit_l_129m, and the data root data/web.md prepares (default /data/pretrain);
checkpoint folders for the initial weights default to /checkpoints/... (override model.init.*).
The original starts the ViT from DeiT-B (ViT-L from the ImageNet-21k ViT) and the text stacks
from bert-base-uncased: convert those to HF folders and set model.init.vision_hf / text_hf.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from common import base_config, bert_base, vit  # noqa: E402
from data_web import get_config as web_data  # noqa: E402


def get_config(arg: str = "vit_b_14m"):
    arg, _, root = arg.partition(",")
    root = root or "/data/pretrain"
    if arg not in ("vit_b_14m", "vit_b_129m", "vit_l_129m"):
        raise ValueError(f"configs/pretrain.py: unknown variant {arg!r}")
    c = base_config()
    large = arg.startswith("vit_l")
    # Stochastic depth as the original's create_vit: 0.1 for ViT-L, none for ViT-B (models/blip.py).
    c.model.vision = vit("large" if large else "base", 224, drop_path_rate=0.1 if large else 0.0)
    c.model.text = bert_base()  # dropout 0.1, as configs/bert_config.json
    c.model.image_text_hidden_size = 256
    c.model.dtype = "bfloat16"  # compute; params and optimiser state stay float32
    c.model.remat = large  # the original uses ViT gradient checkpointing for ViT-L
    c.model.init.vision_hf = "/checkpoints/" + ("vit-large-patch16-224-in21k" if large else "deit-base-patch16-224")
    c.model.init.text_hf = "/checkpoints/bert-base-uncased"
    c.tokenizer.path = "/checkpoints/bert-base-uncased"
    c.data = web_data(root, laion=arg != "vit_b_14m")
    c.data.embedded = False
    c.data.embedded_dir = ""
    c.data.embedded_sizes = {}
    # Global batch. The paper: 2880 (ViT-B) / 2400 (ViT-L); REFERENCE.md records only ViT-B's. ViT-L
    # uses 2304 = 9 x 256 on purpose: the loop needs the global batch to divide by the data-parallel
    # size, and 2304 splits over any power-of-two mesh up to 256 chips where 2400 = 75 x 32 stops at
    # 32; it still divides the 57600 queue (25 batches). On <= 32 devices set data.batch_size=2400.
    c.data.batch_size = 2880 if not large else 2304
    c.objective.queue_size = 57600
    c.objective.momentum = 0.995
    c.objective.alpha = 0.4
    c.objective.alpha_ramp_epochs = 2.0
    c.optimizer.lr = 3e-4 if not large else 2e-4
    c.optimizer.weight_decay = 0.05
    c.optimizer.schedule.type = "blip_step"
    c.optimizer.schedule.warmup_steps = 3000
    c.optimizer.schedule.warmup_lr = 1e-6
    c.optimizer.schedule.min_lr = 1e-6
    c.optimizer.schedule.decay_rate = 0.9
    c.num_epochs = 20
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.checkpoint.every_steps = 2000
    c.log_every_steps = 50
    return c
