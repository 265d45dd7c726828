"""Pieces shared by the config files (imported by path-loaded configs via sys.path of this folder)."""

from __future__ import annotations

import ml_collections

from blip_jax.train.optimizer import default_config as default_optimizer


def vit(size: str, image_size: int, **overrides) -> dict:
    """BLIP's ViT-B/16 and ViT-L/16 (original: LayerNorm eps 1e-6)."""
    base = {
        "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
        "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    }[size]
    return {**base, "image_size": image_size, "patch_size": 16, "layer_norm_eps": 1e-6, **overrides}


def bert_base(**overrides) -> dict:
    """BLIP's text transformer (salesforce/BLIP configs/bert_config.json for pretraining,
    med_config.json for fine-tuning): BERT-base with dropout 0.1 on hidden states and attention
    probabilities. Fine-tuning from an HF folder keeps these dropouts over the ones in the folder's
    config.json (`blip_jax.train.tasks.fine_tune_config`; HF's BlipTextConfig defaults them to 0.0)."""
    return {**dict(vocab_size=30524, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, max_position_embeddings=512, use_enc_token_for_itm=True,
                   label_smoothing=0.1, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1),
            **overrides}


def base_config() -> ml_collections.ConfigDict:
    """Fields every training config has; task configs fill in model, data and schedule."""
    c = ml_collections.ConfigDict()
    c.task = "pretrain"
    c.seed = 42
    c.model = ml_collections.ConfigDict(dict(
        vision={}, text={}, image_text_hidden_size=256, dtype="float32", param_dtype="float32", remat=False,
        init=ml_collections.ConfigDict(dict(vision_hf="", text_hf="", blip_checkpoint="")),
    ))
    c.tokenizer = ml_collections.ConfigDict(dict(path="bert-base-uncased"))
    c.data = ml_collections.ConfigDict(dict(
        datasets=[], embedded=False, embedded_dir="", embedded_sizes={}, image_size=224, min_scale=0.2,
        max_words=30, max_len=30, randaugment=True, hflip=True, batch_size=32, num_workers=0, num_threads=8,
        # True: torchvision's RandomResizedCrop exactly (full-size PIL decode + bicubic); False:
        # DCT-scaled decode + OpenCV area resize, 1.8x the images/s per input core
        exact_crops=False,
        # each input worker shuffles its stream of webdataset records in windows of this many
        # (~50 MB of encoded images), so batches change company every epoch; map-style sources
        # (COCO, VG) are shuffled globally. 0: shard order
        shuffle_window=1000,
    ))
    c.objective = ml_collections.ConfigDict(dict(
        itc_weight=1.0, itm_weight=1.0, lm_weight=1.0, momentum=0.995, alpha=0.4, alpha_ramp_epochs=2.0,
        label_smoothing=0.1, queue_size=57600, use_image_ids=False, prompt="a picture of ",
        temp_min=0.001, temp_max=0.5,  # the learnable ITC temperature's clamp (BLIP: [0.001, 0.5])
        # retrieval fine-tuning's ITM negatives: "online" as blip_retrieval.py, "itc" as pretraining
        # (see blip_jax.train.step.ObjectiveConfig)
        retrieval_itm_negatives="online",
    ))
    # Periodic evaluation (big_vision style): evals.<name> = {type, data, every_n_steps, ...}, see
    # blip_jax/evaluation/cli.py; best_metric (e.g. "retrieval/r_mean") keeps the best checkpoint.
    c.evals = ml_collections.ConfigDict()
    c.best_metric = ""
    c.best_mode = "max"
    c.optimizer = default_optimizer()
    c.num_epochs = 20
    c.total_steps = 0  # 0 = num_epochs * steps_per_epoch
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding_rules = (("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"))
    # XLA GPU command buffers (CUDA graphs) of the train step, see blip_jax/compiler_options.py:
    # mode default / loops / off; update default / stable (fixed buffer addresses, no re-recording)
    c.xla = ml_collections.ConfigDict(dict(command_buffers="default", command_buffer_update="default"))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
    c.log_every_steps = 50
    # Multi-host: hosts agree on a SIGTERM / SIGINT stop (an all-gather, a device sync) every this
    # many steps; a signal stops the run at the next multiple (single-process runs stop at once).
    c.preemption_sync_every = 10
    c.export_hf = True
    return c


def capfilt_base(captioner: str, filter_: str, data: dict) -> ml_collections.ConfigDict:
    """The fields of a `blip-jax capfilt` config; sampling and filtering default to the paper's
    settings, taken from the dataclasses that read them (blip_jax.capfilt)."""
    import dataclasses

    from blip_jax.capfilt.bootstrap import FilterConfig
    from blip_jax.capfilt.captioner import SamplingConfig

    c = ml_collections.ConfigDict()
    c.captioner, c.filter = captioner, filter_
    # The filter's ITM reads [ENC] + text, as the original trained and ran it (blip_retrieval.py);
    # HF configs of the released filters say False. None keeps the checkpoint's setting.
    c.filter_use_enc_token_for_itm = True
    c.tokenizer = ml_collections.ConfigDict(dict(path=""))  # "": the embedded vocabulary, else the captioner's files
    # noise_labels / scenes: ground truth for the report ("embedded": the embedded dataset's files)
    c.data = ml_collections.ConfigDict(dict(dict(embedded=False, image_root="", noise_labels="", scenes=""), **data))
    c.dtype = ""  # "bfloat16" on accelerators
    c.image_size = 0  # 0: the captioner's
    c.batch_size = 64
    c.chunk_batches = 8  # resume granularity: batch_size * chunk_batches records
    c.num_threads = 4
    c.log_every_chunks = 1
    c.seed = 0
    c.sampling = ml_collections.ConfigDict(dataclasses.asdict(SamplingConfig()))
    c.filtering = ml_collections.ConfigDict(dataclasses.asdict(FilterConfig()))
    # auto: blip_json for sources with image files, else captions (caption records pointing at the
    # source's images, no image copy); array_record: a standalone copy with the images
    c.output_format = "auto"
    return c
