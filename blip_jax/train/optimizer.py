"""Optimiser and learning-rate schedules for BLIP training.

Two facts shape this module:

* BLIP's schedules are *per epoch* (salesforce/BLIP ``utils.py``): pretraining warms up linearly
  for the first ``warmup_steps`` iterations of epoch 0 only, then sets
  ``lr = max(min_lr, lr * decay_rate ** epoch)`` at the start of every epoch; fine-tuning sets
  ``lr = min_lr + (lr - min_lr) * (1 + cos(pi * epoch / max_epoch)) / 2`` at the start of every
  epoch. Here they are written as functions of the optimiser-update count so that optax can
  evaluate them inside ``jit``; the epoch is ``count // steps_per_epoch``.
* Every schedule is indexed by *optimiser updates*, but epochs are *data* epochs. With gradient
  accumulation (``optim.accum_steps = k > 1``) ``optax.MultiSteps`` calls the inner AdamW, and so
  the schedule, once per ``k`` micro-batches. :func:`make_optimizer` and :func:`make_schedule`
  take ``steps_per_epoch`` and ``total_steps`` in *training steps* (batches fed to the train step:
  micro-batches under accumulation) and the per-epoch schedules place update ``u`` in data epoch
  ``(u * k) // steps_per_epoch`` (the epoch of its first micro-batch), with
  ``ceil(total_steps / steps_per_epoch)`` epochs: exactly the data's epochs, also when
  ``steps_per_epoch`` is not a multiple of ``k``. ``warmup_steps`` stays a count of updates.

Gradient accumulation (``k > 1``) is the usual ``loss / k`` practice, not an exact big batch: each
micro-batch's loss is its own mean (LM over its valid tokens, ITM over its valid pairs, ...) and
``optax.MultiSteps`` averages the ``k`` micro-batch gradients with equal weights. That equals the
gradient of the big batch only when every micro-batch holds the same number of loss terms (e.g. a
plain per-example mean over equal micro-batches); micro-batches of short and long captions weigh
their tokens differently. The train step's logged ``grad_norm`` is the norm of each micro-batch's
gradient (averaged over the logging window), not the norm of the averaged gradient that
``grad_clip`` sees and the update uses.

Parameter paths: masks (weight decay, frozen) are computed from the paths of the parameter
pytree (an ``nnx.State``, a dict, any pytree) with :func:`jax.tree_util.tree_map_with_path`.
A path is rendered as ``"vision_model/layers/0/attention/query/kernel"``: dict keys, sequence
indices and attribute names joined by ``/``; the ``.value`` attribute that ``nnx.Variable``
leaves add is dropped so that an ``nnx.State`` and its ``nnx.to_pure_dict`` give the same names.

Config fields read (see :func:`default_config` for a complete block with BLIP-pretrain values)::

    lr                      peak / initial learning rate
    weight_decay            AdamW decoupled weight decay (BLIP: 0.05)
    schedule.type           "blip_step" | "cosine" | "constant" | "warmup_cosine"
    schedule.warmup_steps   linear-warmup length in updates (blip_step, warmup_cosine)
    schedule.warmup_lr      warmup start value (BLIP: 1e-6)
    schedule.min_lr         floor (blip_step), end value (cosine, warmup_cosine)
    schedule.decay_rate     per-epoch factor (blip_step; BLIP code 0.9, paper 0.85)
    optim.b1, optim.b2, optim.eps   AdamW moments (torch defaults 0.9, 0.999, 1e-8)
    optim.wd_mask           "all" (BLIP: every parameter) | "no_bias_norm"
    optim.grad_clip         clip by global norm; 0 or None disables (BLIP has none)
    optim.accum_steps       micro-batches per update (optax.MultiSteps); 1 disables. Equal-weight
                            mean of micro-batch gradients, each of its own mean loss (see above:
                            not the big batch's gradient when token counts differ); the logged
                            grad_norm is the micro-batch gradient's
    optim.frozen            regexes (re.search on the path); matching leaves get zero updates
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Leaf names that hold biases / normalisation parameters in flax (nnx.Linear, nnx.LayerNorm,
# nnx.Conv, and our LM head's separate `bias`).
_NO_DECAY_LEAF_NAMES = frozenset({"bias", "scale"})
# Path components of learned position tables and the ViT class token. timm (which BLIP's ViT
# follows) exempts exactly pos_embed and cls_token from weight decay; these are our names for them.
_NO_DECAY_COMPONENTS = frozenset(
    {"position_embedding", "position_embeddings", "pos_embed", "class_embedding", "cls_token"}
)

SCHEDULE_TYPES = ("blip_step", "cosine", "constant", "warmup_cosine")
WD_MASKS = ("all", "no_bias_norm")


def default_config() -> ml_collections.ConfigDict:
    """The fields :func:`make_optimizer` reads, with BLIP ViT-B pretraining values (REFERENCE.md s.3)."""
    return ml_collections.ConfigDict(
        {
            "lr": 3e-4,
            "weight_decay": 0.05,
            "schedule": {
                "type": "blip_step",
                "warmup_steps": 3000,
                "warmup_lr": 1e-6,
                "min_lr": 1e-6,
                "decay_rate": 0.9,
            },
            "optim": {
                "b1": 0.9,
                "b2": 0.999,
                "eps": 1e-8,
                "wd_mask": "all",
                "grad_clip": 0.0,
                "accum_steps": 1,
                "frozen": (),
            },
        }
    )


def _get(cfg: Any, name: str, default: Any) -> Any:
    """cfg.name, or ``default`` when the field is missing or None (lets partial configs work)."""
    if cfg is None:
        return default
    value = cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
    return default if value is None else value


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


def blip_step_schedule(
    lr: float,
    steps_per_epoch: int,
    *,
    warmup_steps: int,
    warmup_lr: float,
    min_lr: float,
    decay_rate: float,
    accum_steps: int = 1,
) -> optax.Schedule:
    """BLIP pretraining: ``warmup_lr_schedule`` in epoch 0, ``step_lr_schedule`` from epoch 1.

    For update ``u`` (0-based), ``t = u * accum_steps`` (its first training step),
    ``e = t // steps_per_epoch`` and ``i = t % steps_per_epoch``:
    ``e == 0``: ``min(lr, warmup_lr + (lr - warmup_lr) * i / (warmup_steps * accum_steps))``;
    ``e >= 1``: ``max(min_lr, lr * decay_rate ** e)``.
    As in the original, warmup only runs inside epoch 0: if ``warmup_steps > steps_per_epoch``
    the warmup is cut short and epoch 1 jumps to ``lr * decay_rate``.

    Args:
        steps_per_epoch: training steps (micro-batches when ``accum_steps > 1``) per data epoch.
        warmup_steps: warmup length in updates.
        accum_steps: micro-batches per update.

    Returns:
        ``count (int scalar) -> lr (float32 scalar)``.
    """
    if steps_per_epoch <= 0 or accum_steps <= 0:
        raise ValueError(f"need steps_per_epoch > 0 and accum_steps > 0, got {steps_per_epoch}, {accum_steps}")

    def schedule(count):
        count = jnp.asarray(count, jnp.int32) * accum_steps
        epoch = count // steps_per_epoch
        i = (count - epoch * steps_per_epoch).astype(jnp.float32)
        if warmup_steps > 0:
            warm = jnp.minimum(lr, warmup_lr + (lr - warmup_lr) * i / (warmup_steps * accum_steps))
        else:
            warm = jnp.float32(lr)
        decayed = jnp.maximum(min_lr, lr * jnp.power(jnp.float32(decay_rate), epoch.astype(jnp.float32)))
        return jnp.where(epoch == 0, warm, decayed).astype(jnp.float32)

    return schedule


def blip_cosine_schedule(lr: float, steps_per_epoch: int, num_epochs: int, *, min_lr: float,
                         accum_steps: int = 1) -> optax.Schedule:
    """BLIP fine-tuning ``cosine_lr_schedule``: constant within an epoch, cosine across epochs.

    ``lr_e = min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * e / num_epochs))`` with
    ``e = (count * accum_steps) // steps_per_epoch`` (``steps_per_epoch`` in training steps:
    micro-batches under accumulation); epoch 0 runs at ``lr`` and the last epoch never reaches
    ``min_lr`` (exactly as the original, which calls it at the start of each epoch).

    Returns:
        ``count (int scalar) -> lr (float32 scalar)``.
    """
    if steps_per_epoch <= 0 or num_epochs <= 0 or accum_steps <= 0:
        raise ValueError(f"need steps_per_epoch, num_epochs and accum_steps > 0, got {steps_per_epoch}, "
                         f"{num_epochs}, {accum_steps}")

    def schedule(count):
        epoch = (jnp.asarray(count, jnp.int32) * accum_steps // steps_per_epoch).astype(jnp.float32)
        return (min_lr + (lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / num_epochs))).astype(jnp.float32)

    return schedule


def make_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int,
                  accum_steps: int = 1) -> optax.Schedule:
    """Learning-rate schedule named by ``cfg.schedule.type``.

    Args:
        cfg: config with ``lr`` and a ``schedule`` block (module docstring).
        steps_per_epoch: training steps per data epoch (micro-batches when ``accum_steps > 1``).
        total_steps: training steps in the whole run (micro-batches likewise); ``cosine`` uses
            ``ceil(total_steps / steps_per_epoch)`` epochs, ``warmup_cosine`` decays over
            ``total_steps // accum_steps`` updates.
        accum_steps: micro-batches per optimiser update.

    Returns:
        ``optax.Schedule``: ``update_count (int scalar) -> lr (float32 scalar)``, jit-safe.
    """
    sched = _get(cfg, "schedule", None)
    kind = _get(sched, "type", "constant")
    lr = float(cfg.lr)
    warmup_steps = int(_get(sched, "warmup_steps", 0))
    warmup_lr = float(_get(sched, "warmup_lr", 0.0))
    min_lr = float(_get(sched, "min_lr", 0.0))
    if kind == "blip_step":
        return blip_step_schedule(
            lr,
            steps_per_epoch,
            warmup_steps=warmup_steps,
            warmup_lr=warmup_lr,
            min_lr=min_lr,
            decay_rate=float(_get(sched, "decay_rate", 0.9)),
            accum_steps=accum_steps,
        )
    if kind == "cosine":
        num_epochs = max(1, math.ceil(total_steps / max(1, steps_per_epoch)))
        return blip_cosine_schedule(lr, steps_per_epoch, num_epochs, min_lr=min_lr, accum_steps=accum_steps)
    if kind == "constant":
        return optax.constant_schedule(lr)
    if kind == "warmup_cosine":
        # Per-update cosine (not BLIP's per-epoch one): for runs measured in steps, not epochs.
        return optax.warmup_cosine_decay_schedule(
            init_value=warmup_lr,
            peak_value=lr,
            warmup_steps=warmup_steps,
            decay_steps=max(total_steps // accum_steps, warmup_steps + 1),
            end_value=min_lr,
        )
    raise ValueError(f"unknown schedule.type {kind!r}; expected one of {SCHEDULE_TYPES}")


# --------------------------------------------------------------------------------------------
# Parameter-path masks
# --------------------------------------------------------------------------------------------


def _key_str(key: Any) -> str | None:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        # nnx.Variable flattens to its `.value`; dropping it keeps names identical to pure dicts.
        return None if key.name in ("value", "raw_value") else key.name
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_str(path: Sequence[Any]) -> str:
    """A jax key path -> ``"vision_model/layers/0/mlp/fc1/kernel"`` (``.value`` of nnx Variables dropped)."""
    parts = [_key_str(k) for k in path]
    return "/".join(p for p in parts if p is not None)


def param_paths(params: Any) -> list[str]:
    """Every leaf's path string, in flattening order (for logging what a regex will match)."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _decays(path: str, leaf: Any) -> bool:
    """True where ``no_bias_norm`` applies weight decay: matrices / kernels, embedding tables."""
    parts = path.split("/")
    if parts and parts[-1] in _NO_DECAY_LEAF_NAMES:
        return False
    if any(p in _NO_DECAY_COMPONENTS for p in parts):
        return False
    # Vectors and scalars (biases under other names, norm gains, the ITC temperature,
    # logit_scale) are not weights that grow with width; decaying them only hurts.
    return jnp.ndim(leaf) >= 2


def weight_decay_mask(params: Any, mode: str = "all") -> Any:
    """Boolean pytree (same structure as ``params``): True where AdamW applies weight decay.

    Args:
        params: parameter pytree (``nnx.State``, dict, ...); leaves are arrays or
            ``jax.ShapeDtypeStruct`` (only ``ndim`` is read).
        mode: ``"all"``: every leaf (original BLIP: ``torch.optim.AdamW(model.parameters())``);
            ``"no_bias_norm"``: skip leaves named ``bias`` / ``scale``, position tables and the
            class token, and every leaf with fewer than 2 dimensions.
    """
    if mode == "all":
        return jax.tree_util.tree_map(lambda _: True, params)
    if mode == "no_bias_norm":
        return jax.tree_util.tree_map_with_path(lambda p, x: bool(_decays(path_str(p), x)), params)
    raise ValueError(f"unknown optim.wd_mask {mode!r}; expected one of {WD_MASKS}")


def frozen_labels(params: Any, patterns: Sequence[str]) -> Any:
    """Pytree of ``"frozen"`` / ``"trainable"`` labels: a leaf is frozen if any regex ``re.search``-es its path."""
    compiled = [re.compile(p) for p in patterns]

    def label(path, _):
        s = path_str(path)
        return "frozen" if any(c.search(s) for c in compiled) else "trainable"

    return jax.tree_util.tree_map_with_path(label, params)


# --------------------------------------------------------------------------------------------
# Optimiser
# --------------------------------------------------------------------------------------------


def make_optimizer(
    cfg: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with BLIP's schedule, optional clipping, accumulation and frozen parameters.

    The chain, innermost first: ``clip_by_global_norm`` (if ``optim.grad_clip > 0``) ->
    ``adamw(schedule, b1, b2, eps, weight_decay, mask=wd_mask)``; frozen leaves are routed to
    ``optax.set_to_zero`` by ``optax.multi_transform`` (so they also carry no Adam moments and do
    not count towards the clipping norm); the whole thing is wrapped in ``optax.MultiSteps`` when
    ``optim.accum_steps > 1`` (it averages ``k`` micro-batch gradients with equal weights, then
    applies one update; the updates in between are zeros). Each micro-batch gradient is that of
    its own mean loss, so the average is the big batch's gradient only when the micro-batches
    hold equal numbers of loss terms (valid tokens, valid ITM pairs); clipping sees the averaged
    gradient, while the train step logs each micro-batch gradient's norm (module docstring).

    Note AdamW here, like torch's, decays by ``lr(t) * weight_decay * param``: the decay follows
    the schedule.

    Args:
        cfg: config (module docstring; :func:`default_config`).
        steps_per_epoch: training steps per data epoch: batches fed to the train step, i.e.
            micro-batches when ``optim.accum_steps > 1`` (the schedule maps updates to data
            epochs itself).
        total_steps: training steps (micro-batches likewise) in the run.

    Returns:
        ``(tx, schedule)``: ``tx.init(params)`` / ``tx.update(grads, opt_state, params)`` (params
        are required: AdamW's decay and the masks read them); ``schedule(update_count)`` for logging.
    """
    optim = _get(cfg, "optim", None)
    accum = max(1, int(_get(optim, "accum_steps", 1)))  # 0 or 1: no accumulation
    schedule = make_schedule(cfg, steps_per_epoch, total_steps, accum_steps=accum)
    wd_mode = _get(optim, "wd_mask", "all")
    if wd_mode not in WD_MASKS:
        raise ValueError(f"unknown optim.wd_mask {wd_mode!r}; expected one of {WD_MASKS}")

    parts = []
    clip = float(_get(optim, "grad_clip", 0.0))
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    parts.append(
        optax.adamw(
            learning_rate=schedule,
            b1=float(_get(optim, "b1", 0.9)),
            b2=float(_get(optim, "b2", 0.999)),
            eps=float(_get(optim, "eps", 1e-8)),
            weight_decay=float(_get(cfg, "weight_decay", 0.0)),
            # A callable: evaluated on the params the transform sees (inside multi_transform those
            # carry MaskedNode holes for frozen leaves, which tree_map_with_path passes through).
            mask=(lambda p: weight_decay_mask(p, wd_mode)) if wd_mode != "all" else None,
        )
    )
    tx = optax.chain(*parts) if len(parts) > 1 else parts[0]

    frozen = tuple(_get(optim, "frozen", ()))
    if frozen:
        tx = optax.multi_transform(
            {"trainable": tx, "frozen": optax.set_to_zero()},
            lambda params: frozen_labels(params, frozen),
        )

    if accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum).gradient_transformation()
    return tx, schedule


def count_masked(params: Any, cfg: ml_collections.ConfigDict) -> dict[str, int]:
    """Parameter counts by treatment, for a one-line log at startup.

    Returns:
        ``{"total", "trainable", "frozen", "decayed"}`` element counts (``decayed`` counts
        trainable elements that receive weight decay).
    """
    optim = _get(cfg, "optim", None)
    leaves = jax.tree_util.tree_leaves(params)
    sizes = [math.prod(jnp.shape(x)) for x in leaves]
    frozen_l = jax.tree_util.tree_leaves(frozen_labels(params, tuple(_get(optim, "frozen", ()))))
    decay_l = jax.tree_util.tree_leaves(weight_decay_mask(params, _get(optim, "wd_mask", "all")))
    weight_decay = float(_get(cfg, "weight_decay", 0.0))
    return {
        "total": sum(sizes),
        "trainable": sum(s for s, f in zip(sizes, frozen_l) if f == "trainable"),
        "frozen": sum(s for s, f in zip(sizes, frozen_l) if f == "frozen"),
        "decayed": sum(s for s, f, d in zip(sizes, frozen_l, decay_l) if f == "trainable" and d and weight_decay > 0),
    }


__all__ = [
    "SCHEDULE_TYPES",
    "WD_MASKS",
    "blip_cosine_schedule",
    "blip_step_schedule",
    "count_masked",
    "default_config",
    "frozen_labels",
    "make_optimizer",
    "make_schedule",
    "param_paths",
    "path_str",
    "weight_decay_mask",
]
