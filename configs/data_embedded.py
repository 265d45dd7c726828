"""Data section for the embedded synthetic dataset (see blip_jax/data/synthetic.py).

    blip-jax data generate --out data/embedded        # ~10 s on 2 cores, no download
    # then in a task config:  c.data.update(data_embedded.get_config("data/embedded"))

hflip is off: the captions say "on the left"/"on the right", which a flip would falsify.
"""

import ml_collections


def datasets(root: str, split: str = "pretrain") -> list[dict]:
    img = f"{root}/images"
    if split == "pretrain":
        return [dict(name="web", format="webdataset", paths=[f"{root}/shards/web-*.tar"], weight=3.0),
                dict(name="coco", format="blip_json", paths=[f"{root}/annotations/pretrain_coco.json"],
                     image_root=img, weight=1.0)]
    if split in ("retrieval", "caption"):
        return [dict(name="coco", format="coco_karpathy", split="train", image_root=img,
                     paths=[f"{root}/annotations/coco_karpathy_train.json"])]
    if split in ("val", "test"):
        return [dict(name="coco", format="coco_karpathy", split=split, image_root=img,
                     paths=[f"{root}/annotations/coco_karpathy_{split}.json"])]
    if split == "vqa":
        return [dict(name="vqa", format="vqa", image_root=img, vg_image_root=f"{img}/web",
                     paths=[f"{root}/annotations/vqa_train.json", f"{root}/annotations/vg_qa.json"])]
    if split == "vqa_test":
        return [dict(name="vqa", format="vqa", split="test", image_root=img,
                     paths=[f"{root}/annotations/vqa_test.json"])]
    raise ValueError(split)


def get_config(root: str = "data/embedded") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        datasets=datasets(root, "pretrain"), embedded=True, embedded_dir=root, image_size=64, min_scale=0.5,
        max_words=30, max_len=32, randaugment=True, hflip=False, batch_size=32, num_workers=0, num_threads=2,
        vocab_file=f"{root}/vocab.txt", noise_file=f"{root}/annotations/web_noise.json",
        answer_list=f"{root}/annotations/answer_list.json",
    ))
