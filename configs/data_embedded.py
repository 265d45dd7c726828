"""Data section for the embedded synthetic dataset (see blip_jax/data/synthetic.py).

    blip-jax data generate --out data/embedded        # ~10 s on 2 cores, no download
    # then in a task config:  c.data.update(data_embedded.get_config("data/embedded"))

hflip is off: the captions say "on the left"/"on the right", which a flip would falsify.
"""

import ml_collections

from blip_jax.data.synthetic import embedded_spec


def datasets(root: str, split: str = "pretrain") -> list[dict]:
    """Task split -> DatasetSpec dicts (the table itself is blip_jax.data.synthetic.embedded_spec)."""
    names = {"pretrain": ["web_shards", "coco"], "retrieval": ["coco_karpathy_train"],
             "caption": ["coco_karpathy_train"], "val": ["val"], "test": ["test"], "vqa": ["vqa_train"],
             "vqa_test": ["vqa_test"]}
    if split not in names:
        raise ValueError(f"unknown split {split!r}; one of {sorted(names)}")
    specs = [embedded_spec(n, root) for n in names[split]]
    if split == "pretrain":  # sample the larger noisy web split three times as often
        specs[0]["weight"], specs[1]["weight"] = 3.0, 1.0
    return specs


def get_config(root: str = "data/embedded") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        datasets=datasets(root, "pretrain"), embedded=True, embedded_dir=root, image_size=64, min_scale=0.5,
        max_words=30, max_len=32, randaugment=True, hflip=False, batch_size=32, num_workers=0, num_threads=2,
        vocab_file=f"{root}/vocab.txt", noise_file=f"{root}/annotations/web_noise.json",
        answer_list=f"{root}/annotations/answer_list.json",
    ))
