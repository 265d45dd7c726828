"""BLIP's three objectives as pure functions over a global batch.

ITC: contrastive loss against [momentum features of the batch ; queue] with momentum
distillation targets. ITM: matched pairs plus one hard negative image per text and one hard
negative text per image. LM: the image-grounded decoder's next-token loss with label smoothing.
Everything is written for the whole global batch: under jit with sharded inputs XLA inserts the
cross-device gathers, so the original's "gather before enqueue" comes for free.

ITM negatives follow the original per stage, with one difference: ours are drawn from the GLOBAL
batch everywhere.
- Pretraining (blip_pretrain.py, `hard_negative_batch`): softmax over the in-batch block of ITC's
  similarities (online features against the momentum ones) + 1e-4, the positive zeroed. The
  original samples within each GPU's batch; over the global batch is our choice (more and harder
  candidates), so a run on N devices does not reproduce the original's per-device sampling.
- Retrieval fine-tuning (blip_retrieval.py, `retrieval_negative_batch`): softmax of ONLINE image
  features against ONLINE text features / temp, no + 1e-4, every same-image pair zeroed. There the
  original samples over all GPUs (negative_all_rank, COCO) or per GPU (Flickr30k).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from blip_jax.models.losses import IGNORE_INDEX, shifted_lm_loss, token_cross_entropy


def itc_targets(sim_m: jax.Array, positives: jax.Array, alpha: jax.Array | float) -> jax.Array:
    """alpha * softmax(momentum similarities) + (1 - alpha) * positives / #positives, per row."""
    pos = positives.astype(jnp.float32)
    pos = pos / jnp.maximum(pos.sum(axis=1, keepdims=True), 1.0)
    return alpha * jax.nn.softmax(sim_m, axis=1) + (1.0 - alpha) * pos


def itc_loss(
    image_feat: jax.Array,
    text_feat: jax.Array,
    image_feat_m: jax.Array,
    text_feat_m: jax.Array,
    queues: dict,
    temp: jax.Array,
    alpha: jax.Array | float,
    image_ids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Image-text contrastive loss with momentum distillation.

    Features (B, E) are L2-normalised; queues["image"|"text"] (Q, E), queues["idx"] (Q,).
    Without ``image_ids`` the positives are the diagonal (pretraining); with them every key of
    the same image id, in the batch or the queue, is a positive (retrieval fine-tuning).
    Returns (loss, sim_i2t (B, B+Q), sim_t2i (B, B+Q)).
    """
    b = image_feat.shape[0]

    def sims(feat, keys_m, queue):
        # Against the batch's momentum keys, then the queue, concatenated as (B, B + Q) scores:
        # copying the (B + Q, E) keys into one array each step would move the whole queue twice.
        f = feat.astype(jnp.float32)
        return jnp.concatenate([f @ keys_m.astype(jnp.float32).T, f @ queue.astype(jnp.float32).T], 1) / temp

    if image_ids is None:
        positives = jnp.eye(b, b + queues["image"].shape[0], dtype=bool)
    else:
        ids_all = jnp.concatenate([image_ids.astype(jnp.int32), queues["idx"]])
        positives = image_ids[:, None] == ids_all[None, :]
    sim_i2t_m = sims(image_feat_m, text_feat_m, queues["text"])
    sim_t2i_m = sims(text_feat_m, image_feat_m, queues["image"])
    targets_i2t = jax.lax.stop_gradient(itc_targets(sim_i2t_m, positives, alpha))
    targets_t2i = jax.lax.stop_gradient(itc_targets(sim_t2i_m, positives, alpha))
    sim_i2t = sims(image_feat, text_feat_m, queues["text"])
    sim_t2i = sims(text_feat, image_feat_m, queues["image"])
    loss_i2t = -jnp.sum(jax.nn.log_softmax(sim_i2t, axis=1) * targets_i2t, axis=1).mean()
    loss_t2i = -jnp.sum(jax.nn.log_softmax(sim_t2i, axis=1) * targets_t2i, axis=1).mean()
    return (loss_i2t + loss_t2i) / 2.0, sim_i2t, sim_t2i


def negative_weights(sim: jax.Array, exclude: jax.Array, eps: float = 1e-4) -> jax.Array:
    """softmax(sim) + ``eps`` over candidates, zero where ``exclude`` (the positive, same image id).

    sim (B, B) float, exclude (B, B) bool -> (B, B) non-negative weights. eps: 1e-4 in pretraining,
    0 in retrieval fine-tuning, as the original. Rows may be all zero (batch of one, every candidate
    a positive, or every candidate's probability underflowing with eps 0): `sample_negatives`
    handles those.
    """
    w = jax.nn.softmax(sim.astype(jnp.float32), axis=1) + eps
    w = jnp.where(jnp.isfinite(w), w, 1.0)  # a NaN similarity must not poison the sampler
    return jnp.where(exclude, 0.0, w)


def sample_negatives(rng: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One index per row drawn with probability proportional to ``weights`` (B, B).

    Returns (indices (B,) int32, valid (B,) bool). A row with no positive weight has no valid
    negative: it gets index 0 and valid=False, and its ITM term is dropped by the caller, instead
    of torch.multinomial's "invalid multinomial distribution" crash.
    """
    valid = weights.sum(axis=1) > 0
    logits = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -jnp.inf)
    logits = jnp.where(valid[:, None], logits, 0.0)
    idx = jax.random.categorical(rng, logits, axis=1).astype(jnp.int32)
    return jnp.where(valid, idx, 0), valid


def itm_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted mean cross-entropy of (N, 2) ITM logits against labels (N,) (1 = match)."""
    loss, _ = token_cross_entropy(logits, labels)
    return jnp.sum(loss * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _negatives(rng: jax.Array, sim_i2t: jax.Array, sim_t2i: jax.Array, exclude: jax.Array,
               eps: float) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(rng)
    image_for_text, valid_t = sample_negatives(k1, negative_weights(sim_t2i, exclude, eps))
    text_for_image, valid_i = sample_negatives(k2, negative_weights(sim_i2t, exclude, eps))
    return {"image_for_text": image_for_text, "text_for_image": text_for_image,
            "valid_image_for_text": valid_t, "valid_text_for_image": valid_i}


def hard_negative_batch(
    rng: jax.Array,
    sim_i2t: jax.Array,
    sim_t2i: jax.Array,
    image_ids: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Pretraining ITM negatives: sampled from softmax + 1e-4 of the in-batch block of ITC's
    similarity matrices (B, B+Q) (online features against the batch's momentum features), the
    positive (and, given ``image_ids``, every same-image pair) excluded.

    Returns indices of a negative image per text ("image_for_text"), a negative text per image
    ("text_for_image") and their validity masks.
    """
    b = sim_i2t.shape[0]
    exclude = jnp.eye(b, dtype=bool)
    if image_ids is not None:
        exclude = exclude | (image_ids[:, None] == image_ids[None, :])
    return _negatives(rng, sim_i2t[:, :b], sim_t2i[:, :b], exclude, 1e-4)


def retrieval_similarities(image_feat: jax.Array, text_feat: jax.Array, temp: jax.Array | float
                           ) -> tuple[jax.Array, jax.Array]:
    """(sim_i2t, sim_t2i) (B, B) of ONLINE image and text features / temp, as blip_retrieval.py's
    ITM sampler computes them (not ITC's similarities against the momentum features)."""
    sim_i2t = image_feat.astype(jnp.float32) @ text_feat.astype(jnp.float32).T / temp
    return sim_i2t, sim_i2t.T


def retrieval_negative_batch(
    rng: jax.Array,
    image_feat: jax.Array,
    text_feat: jax.Array,
    temp: jax.Array | float,
    image_ids: jax.Array,
) -> dict[str, jax.Array]:
    """Retrieval fine-tuning ITM negatives (blip_retrieval.py): sampled from the plain softmax (no
    + 1e-4) of online image x online text similarities / temp, every pair of the same image id
    zeroed (the positive among them). Same outputs as `hard_negative_batch`."""
    sim_i2t, sim_t2i = retrieval_similarities(image_feat, text_feat, temp)
    same = image_ids[:, None] == image_ids[None, :]
    return _negatives(rng, sim_i2t, sim_t2i, same, 0.0)


def lm_targets(input_ids: jax.Array, attention_mask: jax.Array, bos_token_id: int,
               prompt_length: jax.Array | int = 0) -> tuple[jax.Array, jax.Array]:
    """Decoder inputs ([DEC] replaces token 0) and labels (pads and the first ``prompt_length``
    tokens, e.g. "a picture of ", set to -100)."""
    dec = input_ids.at[:, 0].set(bos_token_id)
    labels = jnp.where(attention_mask.astype(bool), dec, IGNORE_INDEX)
    if not isinstance(prompt_length, int) or prompt_length > 0:
        positions = jnp.arange(dec.shape[1])[None, :]
        labels = jnp.where(positions < jnp.reshape(prompt_length, (-1, 1)), IGNORE_INDEX, labels)
    return dec, labels


def lm_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
    """Mean next-token loss over non-ignored labels (original: CrossEntropyLoss(label_smoothing=0.1))."""
    return shifted_lm_loss(logits, labels, label_smoothing, "mean")


def alpha_schedule(step: jax.Array, alpha: float, ramp_steps: int) -> jax.Array:
    """Distillation weight ramped linearly from 0 to ``alpha`` over ``ramp_steps`` (BLIP: 2 epochs)."""
    if ramp_steps <= 0:
        return jnp.asarray(alpha, jnp.float32)
    return alpha * jnp.minimum(1.0, step.astype(jnp.float32) / ramp_steps)
