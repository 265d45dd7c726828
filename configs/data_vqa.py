"""Data section for VQA v2 + Visual Genome QA (BLIP's JSON files); preparation: data/vqa.md."""

import ml_collections


def get_config(root: str = "/data/vqa") -> ml_collections.ConfigDict:
    ann = f"{root}/annotations"
    return ml_collections.ConfigDict(dict(
        datasets=[dict(name="vqa", format="vqa", image_root=f"{root}/coco_images", vg_image_root=f"{root}/vg_images",
                       paths=[f"{ann}/vqa_train.json", f"{ann}/vqa_val.json", f"{ann}/vg_qa.json"])],
        eval_datasets=dict(test=dict(name="vqa", format="vqa", split="test", image_root=f"{root}/coco_images",
                                     paths=[f"{ann}/vqa_test.json"])),
        answer_list=f"{ann}/answer_list.json", image_size=480, min_scale=0.5, question_max_len=35,
        answer_max_len=10, max_answers=10, randaugment=True, hflip=True, batch_size=16, num_workers=8,
    ))
