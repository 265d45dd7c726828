"""Losses shared by the model heads and the training objectives."""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100


def token_cross_entropy(
    logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0, ignore_index: int = IGNORE_INDEX
) -> tuple[jax.Array, jax.Array]:
    """Per-token cross-entropy as torch.nn.CrossEntropyLoss(label_smoothing=eps, reduction='none').

    logits (..., V), labels (...) int -> (loss (...) float32 with 0 at ignored tokens,
    valid (...) bool). Smoothing mixes the one-hot target with the uniform distribution.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(axis=-1)
    return jnp.where(valid, nll, 0.0), valid


def shifted_lm_loss(
    logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0, reduction: str = "mean"
) -> jax.Array:
    """Next-token loss: logits[:, :-1] predict labels[:, 1:]; -100 labels are ignored.

    reduction 'mean' -> scalar over valid tokens; 'none' -> (B,) per-sequence sums (as HF).
    """
    loss, valid = token_cross_entropy(logits[:, :-1], labels[:, 1:], label_smoothing)
    if reduction == "none":
        return loss.sum(axis=-1)
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return loss.sum() / jnp.maximum(valid.sum(), 1)


def contrastive_loss(logits_per_text: jax.Array) -> jax.Array:
    """CLIP-style symmetric cross-entropy over a (B, B) similarity matrix with matches on the diagonal."""
    labels = jnp.arange(logits_per_text.shape[0])
    text_loss, _ = token_cross_entropy(logits_per_text, labels)
    image_loss, _ = token_cross_entropy(logits_per_text.T, labels)
    return (text_loss.mean() + image_loss.mean()) / 2.0
