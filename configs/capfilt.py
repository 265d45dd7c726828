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

import ml_collections


def get_config(arg: str = "/data/ar/web"):
    root, _, size = arg.partition(",")
    if size not in ("", "base", "large"):
        raise ValueError(f"configs/capfilt.py: unknown argument {size!r} after the data folder; base or large")
    size = size or "base"
    c = ml_collections.ConfigDict()
    c.captioner = f"Salesforce/blip-image-captioning-{size}"
    c.filter = f"Salesforce/blip-itm-{size}-coco"
    c.tokenizer = ml_collections.ConfigDict(dict(path=""))  # "" = the captioner's tokenizer files
    c.data = ml_collections.ConfigDict(dict(embedded=False, source=f"array_record:{root}/*.array_record",
                                            image_root="", noise_labels=""))
    c.dtype = ""  # "bfloat16" on accelerators
    c.image_size = 384
    c.batch_size = 64
    c.chunk_batches = 64  # resume granularity: 4096 records
    c.num_threads = 8
    c.log_every_chunks = 1
    c.seed = 0
    c.sampling = ml_collections.ConfigDict(dict(prompt="a picture of ", num_captions=1, top_p=0.9, top_k=50,
                                                temperature=1.0, repetition_penalty=1.1, max_length=30, min_length=10))
    c.filtering = ml_collections.ConfigDict(dict(threshold=0.5, max_words=30, max_len=35, filter_web=True,
                                                 filter_synthetic=True))
    c.output_format = "auto"
    return c
