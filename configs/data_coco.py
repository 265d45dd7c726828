"""Data section for COCO (Karpathy split, BLIP's JSON files); preparation: data/coco.md.

    c.data.update(data_coco.get_config("/data/coco"))      # task: retrieval or caption
"""

import ml_collections


def get_config(root: str = "/data/coco", task: str = "retrieval") -> ml_collections.ConfigDict:
    ann = f"{root}/annotations"
    split = lambda s: dict(name="coco", format="coco_karpathy", split=s, image_root=f"{root}/images",
                           paths=[f"{ann}/coco_karpathy_{s}.json"])
    return ml_collections.ConfigDict(dict(
        datasets=[split("train")], eval_datasets=dict(val=split("val"), test=split("test")),
        image_size=384, min_scale=0.5, max_words=30, max_len=35 if task == "retrieval" else 40,
        prompt="a picture of " if task == "caption" else "", randaugment=True, hflip=True,
        batch_size=32, num_workers=8, num_threads=2,
    ))
