"""Data layer: record schema, sources (BLIP JSON, webdataset, ArrayRecord, tfds), transforms,
grain pipelines, global batches and the embedded synthetic dataset.

Names are imported lazily so `import blip_jax.data` stays cheap (no grain/jax import). No
`from __future__ import annotations` here: it would shadow the `annotations` submodule."""


import importlib

_EXPORTS = {
    # schema
    "make_record": "blip_jax.data.records",
    "SKIP_REASONS": "blip_jax.data.records",
    "BadRecord": "blip_jax.data.records",
    "AnnotationError": "blip_jax.data.records",
    "serialize_record": "blip_jax.data.records",
    "deserialize_record": "blip_jax.data.records",
    # text
    "pre_caption": "blip_jax.data.text",
    "pre_question": "blip_jax.data.text",
    # annotations
    "load_pretrain": "blip_jax.data.annotations",
    "load_coco_karpathy": "blip_jax.data.annotations",
    "load_vqa": "blip_jax.data.annotations",
    "load_answer_list": "blip_jax.data.annotations",
    # sources
    "WebDatasetIterDataset": "blip_jax.data.sources",
    "ArrayRecordRecords": "blip_jax.data.sources",
    "TfdsRecords": "blip_jax.data.sources",
    # transforms
    "TrainImageTransform": "blip_jax.data.transforms",
    "EvalImageTransform": "blip_jax.data.transforms",
    "RandAugment": "blip_jax.data.transforms",
    "normalize": "blip_jax.data.transforms",
    "CLIP_MEAN": "blip_jax.data.transforms",
    "CLIP_STD": "blip_jax.data.transforms",
    # pipelines
    "DatasetSpec": "blip_jax.data.pipelines",
    "LoaderOptions": "blip_jax.data.pipelines",
    "DataPipeline": "blip_jax.data.pipelines",
    "pretrain_pipeline": "blip_jax.data.pipelines",
    "retrieval_train_pipeline": "blip_jax.data.pipelines",
    "caption_train_pipeline": "blip_jax.data.pipelines",
    "vqa_train_pipeline": "blip_jax.data.pipelines",
    "train_pipeline": "blip_jax.data.pipelines",
    "eval_pipeline": "blip_jax.data.pipelines",
    "retrieval_eval_texts": "blip_jax.data.pipelines",
    "data_metrics": "blip_jax.data.pipelines",
    "checkpoint_args": "blip_jax.data.pipelines",
    # distributed
    "make_global_batch": "blip_jax.data.distributed",
    "data_sharding": "blip_jax.data.distributed",
    # embedded dataset
    "generate_embedded_dataset": "blip_jax.data.synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'blip_jax.data' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
