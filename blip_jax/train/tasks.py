"""What differs between training jobs, in one place: model class, input pipeline, objective,
evaluation models and exports for `pretrain`, `retrieval`, `caption` and `vqa` (config.task).

pretrain / retrieval train BlipPretrain with the ITC/ITM(/LM) step (retrieval: image-id-aware
positives and negatives, no LM); caption trains BlipForConditionalGeneration and vqa
BlipForQuestionAnswering with the supervised step. The loop itself is the same for all four.
"""

from __future__ import annotations

import logging
import os

import jax.numpy as jnp
from flax import nnx

from blip_jax.configuration import BlipConfig
from blip_jax.models.losses import shifted_lm_loss
from blip_jax.models.pretrain import BlipPretrain
from blip_jax.train import objectives as obj

log = logging.getLogger("blip_jax.checkpoints")  # training_init reports checkpoint loading, with init_from

TASKS = ("pretrain", "retrieval", "caption", "vqa")
MOMENTUM_TASKS = ("pretrain", "retrieval")


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"config.task must be one of {TASKS}, got {task!r}")
    return task


def model_class(task: str):
    from blip_jax.models.blip import BlipForConditionalGeneration, BlipForQuestionAnswering

    return {"pretrain": BlipPretrain, "retrieval": BlipPretrain, "caption": BlipForConditionalGeneration,
            "vqa": BlipForQuestionAnswering}[check_task(task)]


def build_model(cfg, config: BlipConfig, seed: int):
    """The task's model, randomly initialised, then filled from cfg.model.init:
    blip_checkpoint (a folder/file or a list, applied in order: HF folder of any BLIP class, or a
    Salesforce .pth), or vision_hf / text_hf unimodal HF checkpoints (pretraining).

    Returns (model, `TrainingInit` or None): the momentum encoders and feature queues that a
    Salesforce checkpoint gives a BlipPretrain, for `training_init`."""
    from blip_jax.checkpoints import hf
    from blip_jax.checkpoints.init_from import initialise_pretrain_model
    from blip_jax.checkpoints.loading import _report, apply_state_dict, read_blip_checkpoint

    model = model_class(cfg.task)(config, rngs=nnx.Rngs(seed))
    init = cfg.model.init
    sources = init.blip_checkpoint
    sources = [sources] if isinstance(sources, str) else list(sources or [])
    sources = [s for s in sources if s]
    if isinstance(model, BlipPretrain):
        extra = None
        for src in sources:
            loaded = initialise_pretrain_model(model, blip_checkpoint=src)
            extra = loaded if extra is None else extra.merged(loaded)
        if init.vision_hf or init.text_hf:
            initialise_pretrain_model(model, vision_hf=init.vision_hf, text_hf=init.text_hf)
        return model, extra
    for src in sources:
        state, source = read_blip_checkpoint(src, config)
        _report(type(model), apply_state_dict(model, state, source, hf.rules_for(model)))
    return model, None


def training_init(extra, model, momentum_graphdef, ema, queue_size: int, embed_dim: int, config: BlipConfig):
    """(EMA state, initial queues or None) for the train state of ``model`` (a BlipPretrain): the EMA as
    `split_model` made it (a copy of the online weights) with a checkpoint's momentum encoders
    loaded over it, and the checkpoint's feature queues where their shape is this run's
    (queue_size, embed_dim); as the original's load_checkpoint, tensors of another shape are
    skipped (logged) and start fresh."""
    from blip_jax.checkpoints.init_from import load_momentum
    from blip_jax.train.state import merge_momentum

    if extra is None:
        return ema, None
    if extra.momentum is not None:
        view = merge_momentum(momentum_graphdef, ema, model)
        load_momentum(view, extra.momentum, extra.source, config)
        ema = nnx.state(view, nnx.Param)
    queues = None
    if extra.queues is not None:
        shapes = {k: tuple(v.shape) for k, v in extra.queues.items()}
        if queue_size and all(s == (queue_size, embed_dim) for s in shapes.values()):
            queues = {k: jnp.asarray(v, jnp.float32) for k, v in extra.queues.items()}
            log.info("loaded the feature queues from %s", extra.source)
        else:
            log.warning(
                "%s: feature queues of shape %s do not fit this run's (%d, %d) (objective.queue_size, "
                "image_text_hidden_size): they start fresh", extra.source, shapes, queue_size, embed_dim)
    return ema, queues


def fine_tune_config(cfg, base: BlipConfig) -> BlipConfig:
    """For caption / vqa fine-tuning from an HF-format folder, the architecture comes from its
    config.json (cfg.model only sets compute dtype, remat and dropout)."""
    sources = cfg.model.init.blip_checkpoint
    first = sources if isinstance(sources, str) else (list(sources) or [""])[0]
    if not first or not os.path.exists(os.path.join(first, "config.json")):
        return base
    loaded = BlipConfig.from_pretrained(first)
    for sub in (loaded.text_config, loaded.vision_config):
        sub.dtype, sub.param_dtype, sub.remat = cfg.model.dtype, cfg.model.param_dtype, cfg.model.remat
        sub.__post_init__()
    for key in ("use_enc_token_for_itm", "label_smoothing", "hidden_dropout_prob", "attention_probs_dropout_prob"):
        if key in cfg.model.text:
            setattr(loaded.text_config, key, cfg.model.text[key])
    if "drop_path_rate" in cfg.model.vision:
        loaded.vision_config.drop_path_rate = cfg.model.vision["drop_path_rate"]
    loaded.vision_config.image_size = int(cfg.data.image_size)
    return loaded


def build_pipeline(cfg, tokenizer, specs: list[dict], per_process_batch: int, index_dir: str | None = None):
    """The training pipeline of `cfg.task`. `index_dir`: where the header scans that count streamed
    shards without img2dataset stats files are cached (the workdir's tar_index)."""
    from blip_jax.data import pipelines as pl

    d = cfg.data
    opts = pl.LoaderOptions(batch_size=per_process_batch, seed=cfg.seed, num_workers=d.num_workers,
                            num_threads=d.num_threads, index_dir=index_dir,
                            shuffle_window=d.get("shuffle_window", pl.LoaderOptions.shuffle_window))
    common = dict(image_size=d.image_size, min_scale=d.min_scale, hflip=d.hflip, randaugment=d.randaugment,
                  exact_crops=d.get("exact_crops", False))
    task = check_task(cfg.task)
    if task == "pretrain":
        return pl.pretrain_pipeline(specs, tokenizer, opts, max_words=d.max_words, max_len=d.max_len, **common)
    if task == "retrieval":
        return pl.retrieval_train_pipeline(specs[0], tokenizer, opts, max_words=d.max_words, max_len=d.max_len,
                                           **common)
    if task == "caption":
        return pl.caption_train_pipeline(specs[0], tokenizer, opts, max_words=d.max_words, max_len=d.max_len,
                                         prompt=cfg.objective.prompt, **common)
    return pl.vqa_train_pipeline(specs[0], tokenizer, opts, question_max_len=d.max_len,
                                 answer_max_len=d.get("answer_max_len", 10),
                                 max_answers=d.get("max_answers", 10), **common)


def prompt_length(tokenizer, prompt: str) -> int:
    """[CLS] + the prompt's tokens: the decoder positions excluded from the caption loss (BLIP:
    len(tokenizer(prompt).input_ids) - 1)."""
    return len(tokenizer.encode(prompt, add_special_tokens=False)) + 1 if prompt else 0


def vqa_loss(model, batch, label_smoothing: float, bos_token_id: int, enc_token_id: int | None):
    """BLIP_VQA's training loss: the question is encoded with image cross-attention; each of its
    K answers is decoded over the question states (the K answer rows share one question's keys,
    see layers.Attention) and its summed token loss is weighted by the answer's weight; the total
    is divided by the batch size.

    Batch: pixel_values (B, H, W, 3), question_input_ids / question_attention_mask (B, Lq),
    answer_input_ids / answer_attention_mask (B, K, La), answer_weights (B, K) (0 = padding).
    """
    q_ids, q_mask = batch["question_input_ids"], batch["question_attention_mask"]
    if enc_token_id is not None:
        q_ids = q_ids.at[:, 0].set(enc_token_id)
    image_states = model.vision_model(batch["pixel_values"], deterministic=False).last_hidden_state
    q_states = model.text_encoder(
        q_ids, q_mask, encoder_hidden_states=image_states,
        encoder_attention_mask=jnp.ones(image_states.shape[:2], jnp.int32), deterministic=False,
    ).last_hidden_state
    b, k, la = batch["answer_input_ids"].shape
    a_ids = batch["answer_input_ids"].reshape(b * k, la)
    a_mask = batch["answer_attention_mask"].reshape(b * k, la)
    dec_ids, labels = obj.lm_targets(a_ids, a_mask, bos_token_id)
    logits = model.text_decoder(dec_ids, a_mask, encoder_hidden_states=q_states, encoder_attention_mask=q_mask,
                                deterministic=False).logits
    per_answer = shifted_lm_loss(logits, labels, label_smoothing, reduction="none")  # (B*K,)
    weights = batch["answer_weights"].reshape(b * k).astype(jnp.float32)
    loss = jnp.sum(per_answer * weights) / b
    return loss, {"loss": loss, "loss_vqa": loss}


def eval_models(task: str, model, config: BlipConfig) -> dict:
    """{"retrieval" | "caption" | "vqa": model} for run_evals; BlipPretrain lends its submodules
    to HF-class views (no copies)."""
    from blip_jax.models.blip import BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipForQuestionAnswering

    if isinstance(model, BlipForConditionalGeneration):
        return {"caption": model}
    if isinstance(model, BlipForQuestionAnswering):
        return {"vqa": model}
    retrieval = _view(BlipForImageTextRetrieval, config, model,
                      ("vision_model", "text_encoder", "vision_proj", "text_proj", "itm_head"))
    captioner = _view(BlipForConditionalGeneration, config, model, ("vision_model", "text_decoder"))
    vqa = _view(BlipForQuestionAnswering, config, model, ("vision_model", "text_encoder", "text_decoder"))
    return {"retrieval": retrieval, "caption": captioner, "vqa": vqa}


def _view(cls, config, model, names):
    out = cls(config, rngs=nnx.Rngs(0))  # small random heads are replaced right away
    for name in names:
        setattr(out, name, getattr(model, name))
    return out


def export(task: str, model, config: BlipConfig, out_dir: str) -> list[str]:
    """HF-format folders of the trained weights (transformers and from_pretrained load them)."""
    written = []
    for kind, m in eval_models(task, model, config).items():
        folder = os.path.join(out_dir, {"retrieval": "retrieval", "caption": "captioning", "vqa": "vqa"}[kind])
        m.save_pretrained(folder)
        written.append(folder)
    return written
