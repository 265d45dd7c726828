"""Data section for BLIP pretraining on 14M images (COCO + VG + CC3M + CC12M + SBU), optionally
LAION-115M; preparation: data/web.md. Weights are sampling proportions of the mixture."""

import ml_collections


def get_config(root: str = "/data/pretrain", laion: bool = False) -> ml_collections.ConfigDict:
    web = lambda name, w: dict(name=name, format="webdataset", paths=[f"{root}/{name}/*.tar"], weight=w)
    datasets = [
        dict(name="coco", format="blip_json", paths=[f"{root}/annotations/coco.json"], image_root=f"{root}/coco",
             weight=0.6),
        dict(name="vg", format="blip_json", paths=[f"{root}/annotations/vg.json"], image_root=f"{root}/vg",
             weight=0.8),
        web("cc3m", 3.0), web("cc12m", 10.0), web("sbu", 0.9),
    ]
    if laion:
        datasets.append(web("laion", 20.0))
    return ml_collections.ConfigDict(dict(
        datasets=datasets, image_size=224, min_scale=0.2, max_words=30, max_len=30, randaugment=True, hflip=True,
        batch_size=64, num_workers=12, num_threads=2,
        # each input worker shuffles its stream of web records in windows of this many (~50 MB of
        # encoded images), so batches change company every epoch; COCO/VG are shuffled globally
        shuffle_window=1000,
    ))
