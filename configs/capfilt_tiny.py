"""CapFilt on the embedded dataset's noisy web split, with the tiny runs' models.

    blip-jax train   --config configs/pretrain_tiny.py --workdir workdir/tiny
    blip-jax train   --config configs/finetune_tiny.py:caption,workdir/tiny   --workdir workdir/tiny_caption
    blip-jax train   --config configs/finetune_tiny.py:retrieval,workdir/tiny --workdir workdir/tiny_retrieval
    blip-jax capfilt --config configs/capfilt_tiny.py --workdir workdir/tiny_capfilt

As in the paper, the captioner and the filter are the pretrained model fine-tuned on (embedded)
COCO: the argument is the pretraining workdir W (default workdir/tiny), the captioner is
W_caption/export/captioning, the filter W_retrieval/export/retrieval, and W/data is the embedded
dataset (vocabulary included). ``--config.captioner`` / ``--config.filter`` take any other model
(W/export/captioning and W/export/retrieval are the un-fine-tuned ones). The embedded web captions
carry ground-truth noise labels, so the report also says how many noisy captions the filter
removed and how many clean ones it kept, at this threshold and at others. ``smoke`` (``:smoke``
or ``:smoke,<W>``) shrinks the dataset for tests.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from common import capfilt_base  # noqa: E402


def get_config(arg: str = ""):
    first, _, rest = arg.partition(",")
    smoke = first == "smoke"
    pretrain_dir = (rest if smoke else arg) or "workdir/tiny"
    c = capfilt_base(
        os.path.join(pretrain_dir.rstrip("/") + "_caption", "export", "captioning"),
        os.path.join(pretrain_dir.rstrip("/") + "_retrieval", "export", "retrieval"),
        dict(embedded=True, embedded_dir=os.path.join(pretrain_dir, "data"), source="embedded:web",
             noise_labels="embedded", scenes="embedded",
             embedded_sizes=dict(num_web=2000, num_coco_train=400, num_coco_val=50, num_coco_test=50, image_size=96)))
    c.sampling.min_length = 5  # BLIP's 10 is longer than the embedded captions ("a red circle at the top left")
    if smoke:
        c.data.embedded_sizes = dict(num_web=24, num_coco_train=4, num_coco_val=4, num_coco_test=4, image_size=32,
                                     vg_questions=2, questions_per_image=2)
        c.batch_size = 4
        c.chunk_batches = 2
        c.num_threads = 2
        c.sampling.max_length = 12
        c.sampling.min_length = 3
    return c
