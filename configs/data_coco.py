"""Data section for COCO or Flickr30k (Karpathy splits, BLIP's JSON files); preparation: data/coco.md.

    c.data.update(data_coco.get_config("/data/coco"))                           # task: retrieval or caption
    c.data.update(data_coco.get_config("/data/flickr30k", dataset="flickr30k"))  # retrieval

Annotations are <root>/annotations/coco_karpathy_{train,val,test}.json (COCO) or
flickr30k_{train,val,test}.json (Flickr30k; the same layout), images under <root>/images.
"""

import ml_collections

ANNOTATION_PREFIX = {"coco": "coco_karpathy", "flickr30k": "flickr30k"}


def get_config(root: str = "/data/coco", task: str = "retrieval", dataset: str = "coco") -> ml_collections.ConfigDict:
    if dataset not in ANNOTATION_PREFIX:
        raise ValueError(f"configs/data_coco.py: dataset must be one of {sorted(ANNOTATION_PREFIX)}, got {dataset!r}")
    ann = f"{root}/annotations"
    split = lambda s: dict(name=dataset, format="coco_karpathy", split=s, image_root=f"{root}/images",
                           paths=[f"{ann}/{ANNOTATION_PREFIX[dataset]}_{s}.json"])
    return ml_collections.ConfigDict(dict(
        datasets=[split("train")], eval_datasets=dict(val=split("val"), test=split("test")),
        image_size=384, min_scale=0.5, max_words=30, max_len=35 if task == "retrieval" else 40,
        prompt="a picture of " if task == "caption" else "", randaugment=True, hflip=True,
        batch_size=32, num_workers=8, num_threads=2,
    ))
