"""Evaluate a tiny model on the embedded synthetic dataset: retrieval, captioning and VQA.

    blip-jax train --config configs/pretrain_tiny.py --workdir workdir/tiny
    blip-jax eval --config configs/eval_tiny.py --checkpoint workdir/tiny/export --workdir workdir/tiny/eval

The embedded dataset is generated into <workdir>/data (same sizes as pretrain_tiny; use
``--config.data.embedded_dir=workdir/tiny/data`` to reuse the training run's copy, whose vocabulary
the checkpoint was trained with). ``:smoke`` shrinks everything for tests.
"""

import ml_collections


def get_config(arg: str = ""):
    if arg not in ("", "smoke"):
        raise ValueError(f"configs/eval_tiny.py: unknown argument {arg!r}; '' (the default) or 'smoke'")
    c = ml_collections.ConfigDict()
    c.tokenizer = ml_collections.ConfigDict(dict(path=""))  # "" = the embedded dataset's vocab.txt
    c.data = ml_collections.ConfigDict(dict(
        embedded=True, embedded_dir="",
        embedded_sizes=dict(num_web=2000, num_coco_train=400, num_coco_val=50, num_coco_test=50, image_size=96)))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.dtype = ""
    common = dict(image_size=64, batch_size=16, every_n_steps=0)
    c.evals = ml_collections.ConfigDict(dict(
        retrieval=dict(type="retrieval", data="embedded:test", k_test=16, max_len=35, rerank_batch_size=8,
                       text_batch_size=64, **common),
        # max_length 30, not BLIP's COCO 20: with the prompt, 30% of this world's reference captions
        # are longer than 20 tokens, and a caption cut short is not true of its scene
        caption=dict(type="caption", data="embedded:test", prompt="a picture of ", num_beams=3, max_length=30,
                     min_length=5, spice=False, **common),
        vqa=dict(type="vqa", data="embedded:vqa_test", answer_list="embedded", method="rank", k_test=8, **common),
    ))
    if arg == "smoke":
        c.data.embedded_sizes = dict(num_web=8, num_coco_train=4, num_coco_val=4, num_coco_test=6, image_size=32,
                                     vg_questions=2, questions_per_image=2)
        for ev in c.evals.values():
            ev.image_size, ev.batch_size = 32, 4
    return c
