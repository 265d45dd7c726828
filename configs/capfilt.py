"""CapFilt on web data with BLIP's released COCO-fine-tuned captioner and filter.

    blip-jax data convert --format webdataset /data/pretrain/cc12m/*.tar --out /data/ar/cc12m --name cc12m
    blip-jax capfilt --config configs/capfilt.py:/data/ar/cc12m --workdir /runs/capfilt_cc12m
    blip-jax capfilt --config configs/capfilt.py:/data/ar/cc12m,large --workdir ...     # ViT-L models

The argument is a folder of ArrayRecord shards (CapFilt reads records by index, so webdataset
tars are converted first; the output then holds the image bytes too), optionally followed by
``,large``. The captioner is Salesforce/blip-image-captioning-{base,large} (fine-tuned on COCO, as
the paper's captioner), the filter Salesforce/blip-itm-{base,large}-coco (ITC + ITM fine-tuned on
COCO retrieval); both are hub ids fetched into huggingface_hub's cache, or give local folders or
Salesforce .pth files with --config.captioner / --config.filter. Sampling is the paper's
(REFERENCE section 4). The bootstrapped set goes into a pretraining mixture through
<workdir>/bootstrapped.spec.json.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from common import capfilt_base  # noqa: E402


def get_config(arg: str = "/data/ar/web"):
    root, _, size = arg.partition(",")
    if size not in ("", "base", "large"):
        raise ValueError(f"configs/capfilt.py: unknown argument {size!r} after the data folder; base or large")
    size = size or "base"
    c = capfilt_base(f"Salesforce/blip-image-captioning-{size}", f"Salesforce/blip-itm-{size}-coco",
                     dict(source=f"array_record:{root}/*.array_record"))
    c.image_size = 384
    c.chunk_batches = 64  # 4096 records
    c.num_threads = 8
    return c
