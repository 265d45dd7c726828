"""CapFilt on web data with BLIP's released COCO-fine-tuned captioner and filter.

    blip-jax capfilt --config configs/capfilt.py:/data/pretrain/cc12m --workdir /runs/capfilt_cc12m
    blip-jax capfilt --config configs/capfilt.py:/data/pretrain/cc12m,large --workdir ...  # ViT-L models

The argument is a folder of img2dataset webdataset shards (``*.tar``, read in place: CapFilt
scans each shard's headers once, cached in <workdir>/tar_index, then reads records by index) or of
ArrayRecord shards (``*.array_record``, from `blip-jax data convert`); ``webdataset:<folder>`` or
``array_record:<folder>`` say which when a folder holds both. It may be followed by ``,large``. The
output is the kept captions, as records that point at the source's images (format
capfilt_captions; ``--config.output_format=array_record`` for a copy with the images). The captioner
is Salesforce/blip-image-captioning-{base,large} (fine-tuned on COCO, as the paper's captioner),
the filter Salesforce/blip-itm-{base,large}-coco (ITC + ITM fine-tuned on COCO retrieval); both
are hub ids fetched into huggingface_hub's cache, or give local folders or Salesforce .pth files
with --config.captioner / --config.filter. Sampling is the paper's (REFERENCE section 4). The
bootstrapped set goes into a pretraining mixture through <workdir>/bootstrapped.spec.json.
"""

import glob
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from common import capfilt_base  # noqa: E402


def get_config(arg: str = "/data/pretrain/web"):
    root, _, size = arg.partition(",")
    if size not in ("", "base", "large"):
        raise ValueError(f"configs/capfilt.py: unknown argument {size!r} after the data folder; base or large")
    size = size or "base"
    fmt, _, folder = root.partition(":")
    if fmt not in ("webdataset", "array_record"):  # a bare folder: shards if it has any
        folder = root
        fmt = "webdataset" if glob.glob(os.path.join(folder, "*.tar")) else "array_record"
    pattern = os.path.join(folder, "*.tar" if fmt == "webdataset" else "*.array_record")
    c = capfilt_base(f"Salesforce/blip-image-captioning-{size}", f"Salesforce/blip-itm-{size}-coco",
                     dict(source=f"{fmt}:{pattern}"))
    c.image_size = 384
    c.chunk_batches = 64  # 4096 records
    c.num_threads = 8
    return c
