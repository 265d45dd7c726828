"""The train step: a pure function (state, batch) -> (state, metrics) over `nnx.split` state.

`make_train_step` closes over the static parts (graph definitions, optimiser, objective
settings) and returns a function that `blip_jax.train.loop` jit-compiles with explicit
in/out shardings and a donated state. Batch (global, leading dim sharded over data axes):
    pixel_values (B, H, W, 3) float, input_ids (B, L) int32, attention_mask (B, L) int32,
    image_id (B,) int32 (retrieval fine-tuning: ITC positives / ITM exclusions by image id).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from blip_jax.models.blip import l2_normalize
from blip_jax.models.pretrain import enqueue
from blip_jax.train import objectives as obj
from blip_jax.train.state import TrainState, ema_update, merge_momentum, momentum_view


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Static settings of the BLIP objectives (from the config's ``objective`` block)."""

    itc_weight: float = 1.0
    itm_weight: float = 1.0
    lm_weight: float = 1.0
    momentum: float = 0.995
    alpha: float = 0.4
    alpha_ramp_steps: int = 0
    label_smoothing: float = 0.1
    temp_min: float = 0.001
    temp_max: float = 0.5
    use_image_ids: bool = False  # retrieval fine-tuning: same-image pairs are positives
    # Retrieval fine-tuning's ITM negatives: "online" samples as blip_retrieval.py (online image x
    # online text features, softmax without + 1e-4); "itc" as pretraining (ITC's similarities against
    # the momentum features, + 1e-4), blip-jax's earlier choice (an ablation).
    # Both zero every same-image pair.
    retrieval_itm_negatives: str = "online"
    enc_token_id: int | None = 30523  # None keeps [CLS] for ITM (HF flavour)
    bos_token_id: int = 30522

    def __post_init__(self):
        if self.retrieval_itm_negatives not in ("online", "itc"):
            raise ValueError("objective.retrieval_itm_negatives must be 'online' or 'itc', got "
                             f"{self.retrieval_itm_negatives!r}")

    @classmethod
    def from_config(cls, cfg, text_config) -> ObjectiveConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in dict(cfg).items() if k in names}
        kw.setdefault("bos_token_id", text_config.bos_token_id)
        if "enc_token_id" not in kw:
            kw["enc_token_id"] = text_config.enc_token_id if text_config.use_enc_token_for_itm else None
        return cls(**kw)


def _momentum_features(momentum_graphdef, ema, batch, model):
    """ITC's momentum features of the batch. Deterministic: no dropout in the momentum text encoder
    (nor drop path in a ViT-L momentum encoder), where the original's momentum encoders run in train
    mode, with the online encoders' dropout 0.1 (and ViT-L's drop path 0.1). Our distillation
    targets and queue entries are thus the momentum model's clean features, not dropout-noised ones."""
    model_m = merge_momentum(momentum_graphdef, ema, model)
    states = model_m.vision_model(batch["pixel_values"]).last_hidden_state
    image_feat = l2_normalize(model_m.vision_proj(states[:, 0]))
    text = model_m.text_encoder(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    text_feat = l2_normalize(model_m.text_proj(text[:, 0]))
    return jax.lax.stop_gradient(image_feat), jax.lax.stop_gradient(text_feat)


def blip_losses(model, batch, image_feat_m, text_feat_m, queues, rng, alpha, ocfg: ObjectiveConfig):
    """ITC + ITM + LM on one global batch. Returns (total loss, metrics dict)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    image_ids = batch.get("image_id") if ocfg.use_image_ids else None
    image_states, image_feat = model.encode_image(batch["pixel_values"], deterministic=False)
    text_feat = model.encode_text(ids, mask, deterministic=False)
    temp = model.temp[...]
    metrics = {}
    total = jnp.zeros((), jnp.float32)

    # Cross-attention keys/values of the images, shared by ITM and LM (BlipPretrain.image_kv).
    image_kv = model.image_kv(image_states) if (ocfg.itm_weight or ocfg.lm_weight) else None

    loss_ita, sim_i2t, sim_t2i = obj.itc_loss(
        image_feat, text_feat, image_feat_m, text_feat_m, queues, temp, alpha, image_ids
    )
    metrics["loss_ita"] = loss_ita
    total += ocfg.itc_weight * loss_ita

    if ocfg.itm_weight:
        sg = jax.lax.stop_gradient
        if image_ids is not None and ocfg.retrieval_itm_negatives == "online":
            # retrieval fine-tuning: online x online features, as blip_retrieval.py
            negs = obj.retrieval_negative_batch(rng, sg(image_feat), sg(text_feat), sg(temp), image_ids)
        else:  # pretraining: ITC's similarities (online x momentum features), as blip_pretrain.py
            negs = obj.hard_negative_batch(rng, sg(sim_i2t), sg(sim_t2i), image_ids)
        enc_ids = ids if ocfg.enc_token_id is None else ids.at[:, 0].set(ocfg.enc_token_id)
        b = ids.shape[0]
        # (text_i, image_i) positives, (text_i, hard image) and (hard text, image_i) negatives, in one
        # pass over image keys/values projected once per image (gathered, not recomputed).
        itm_ids = jnp.concatenate([enc_ids, enc_ids, enc_ids[negs["text_for_image"]]])
        itm_mask = jnp.concatenate([mask, mask, mask[negs["text_for_image"]]])
        neg_image = negs["image_for_text"]
        itm_kv = [tuple(jnp.concatenate([a, a[neg_image], a]) for a in layer_kv) for layer_kv in image_kv]
        logits = model.itm_logits(itm_ids, itm_mask, image_kv=itm_kv, deterministic=False)
        labels = jnp.concatenate([jnp.ones(b, jnp.int32), jnp.zeros(2 * b, jnp.int32)])
        weights = jnp.concatenate([jnp.ones(b), negs["valid_image_for_text"], negs["valid_text_for_image"]])
        loss_itm = obj.itm_loss(logits, labels, weights.astype(jnp.float32))
        metrics["loss_itm"] = loss_itm
        pred = logits.argmax(-1)
        correct = (pred == labels) * weights
        metrics["itm_acc"] = jnp.sum(correct) / jnp.sum(weights)
        # ITM stuck at its prior (every pair called unmatched, loss ~0.637) shows as itm_pos_acc 0
        metrics["itm_pos_acc"] = jnp.mean((pred[:b] == 1).astype(jnp.float32))
        metrics["itm_neg_acc"] = jnp.sum(correct[b:]) / jnp.maximum(jnp.sum(weights[b:]), 1.0)
        total += ocfg.itm_weight * loss_itm

    if ocfg.lm_weight:
        dec_ids, labels = obj.lm_targets(ids, mask, ocfg.bos_token_id, batch.get("prompt_length", 0))
        logits = model.lm_logits(dec_ids, mask, image_kv=image_kv, deterministic=False)
        loss_lm = obj.lm_loss(logits, labels, ocfg.label_smoothing)
        metrics["loss_lm"] = loss_lm
        total += ocfg.lm_weight * loss_lm

    metrics["loss"] = total
    return total, (metrics, image_feat_m, text_feat_m)


def make_train_step(graphdef, momentum_graphdef, tx: optax.GradientTransformation, schedule, ocfg: ObjectiveConfig,
                    accum_steps: int = 1):
    """The pretraining / retrieval step. Static arguments are closed over; jit it with
    ``donate_argnums=0``.

    accum_steps: micro-steps per optimiser update (``tx`` an optax.MultiSteps). The parameters
    change once per update, so the momentum encoders do too: their EMA runs on the first
    micro-step of each update, as one update per step without accumulation. The feature queues
    still take every micro-batch's momentum features.
    """

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng, itm_rng = jax.random.split(state.rng)
        # Clamp the temperature before the step, as the original does in place.
        model = nnx.merge(graphdef, state.params, state.rest)
        model.temp[...] = jnp.clip(model.temp[...], ocfg.temp_min, ocfg.temp_max)
        params = nnx.state(model, nnx.Param)
        online = nnx.state(momentum_view(model), nnx.Param)
        if accum_steps > 1:  # only the first micro-step of an update pays for the EMA pass
            ema = jax.lax.cond(state.step % accum_steps == 0,
                               lambda: ema_update(state.ema, online, ocfg.momentum), lambda: state.ema)
        else:
            ema = ema_update(state.ema, online, ocfg.momentum)
        image_feat_m, text_feat_m = _momentum_features(momentum_graphdef, ema, batch, model)
        alpha = obj.alpha_schedule(state.step, ocfg.alpha, ocfg.alpha_ramp_steps)

        def loss_fn(p):
            # copy=True: fresh variables in this trace, so dropout / drop path may advance their RNG
            # counts here (the state's own belong to the jit trace: TraceContextError otherwise)
            m = nnx.merge(graphdef, p, state.rest, copy=True)
            loss, aux = blip_losses(m, batch, image_feat_m, text_feat_m, state.queues, itm_rng, alpha, ocfg)
            return loss, (aux, nnx.state(m, nnx.Not(nnx.Param)))

        grads, ((metrics, feat_i, feat_t), rest) = jax.grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        ids = batch.get("image_id") if ocfg.use_image_ids else None
        queues = enqueue(state.queues, feat_i, feat_t, ids)
        metrics = {
            **metrics,
            "grad_norm": optax.global_norm(grads),
            "lr": schedule(state.step),
            "temp": model.temp[...],
            "alpha": alpha,
        }
        new_state = TrainState(
            step=state.step + 1, params=params, rest=rest, ema=ema, queues=queues, opt_state=opt_state, rng=rng
        )
        return new_state, metrics

    return train_step



def caption_loss(model, batch, label_smoothing: float, bos_token_id: int):
    """Captioning fine-tune loss on BlipForConditionalGeneration: [DEC] first, pads and prompt tokens
    (batch["prompt_length"], e.g. "a picture of ") ignored, label smoothing as in BLIP."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    dec_ids, labels = obj.lm_targets(ids, mask, bos_token_id, batch.get("prompt_length", 0))
    image_states = model.vision_model(batch["pixel_values"], deterministic=False).last_hidden_state
    logits = model.text_decoder(dec_ids, mask, encoder_hidden_states=image_states, deterministic=False).logits
    loss = obj.lm_loss(logits, labels, label_smoothing)
    return loss, {"loss": loss, "loss_lm": loss}


def make_supervised_step(graphdef, tx: optax.GradientTransformation, schedule, loss_fn):
    """A plain step for single-model objectives (captioning, VQA): ``loss_fn(model, batch) ->
    (loss, metrics)``. The state's ``ema`` and ``queues`` are unused (None)."""

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        def loss_of(p):
            m = nnx.merge(graphdef, p, state.rest, copy=True)  # as in make_train_step: dropout RNG counts
            loss, metrics = loss_fn(m, batch)
            return loss, (metrics, nnx.state(m, nnx.Not(nnx.Param)))

        grads, (metrics, rest) = jax.grad(loss_of, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step)}
        return dataclasses.replace(state, step=state.step + 1, params=params, rest=rest, opt_state=opt_state), metrics

    return train_step


# Reported as of the step that ends a logging window; every other metric is summed over the window
# (divided by its length on the host, `window_means`), so that a logged loss is the mean of the
# window's batches, as BLIP's "Averaged stats", not the noise of its last batch.
INSTANT_METRICS = frozenset({"lr", "temp", "alpha"})
# The buffer entry that counts the steps its sums hold, so the host never re-derives the window
# rule (a run resumed mid-window holds fewer).
WINDOW_STEPS = "window_steps"


def with_metrics_buffer(step_fn, window: int = 1):
    """``step_fn(state, batch) -> (state, metrics)`` as ``step(state, batch, metrics_buffer)``;
    `jit_step` compiles it with the buffer donated.

    The buffer is the previous step's output plus int32 ``WINDOW_STEPS``. With ``window`` > 1 the
    metrics not in INSTANT_METRICS are running sums that restart at every step whose
    ``state.step`` is a multiple of ``window``: a loop that logs every ``window`` steps reads
    window sums, and `window_means` turns them into means."""

    def step(state, batch, metrics_buffer):
        new_state, metrics = step_fn(state, batch)
        metrics = {**metrics, WINDOW_STEPS: jnp.ones((), jnp.int32)}
        if window > 1:
            restart = state.step % window == 0
            metrics = {k: v if k in INSTANT_METRICS else jnp.where(restart, v, metrics_buffer[k] + v)
                       for k, v in metrics.items()}
        return new_state, metrics

    return step


def window_means(scalars: dict[str, float]) -> dict[str, float]:
    """Host side of `with_metrics_buffer`: its sums (as Python numbers) divided by the
    ``WINDOW_STEPS`` they hold; the count itself is dropped."""
    n = scalars.get(WINDOW_STEPS, 1)
    return {k: v if k in INSTANT_METRICS else v / n for k, v in scalars.items() if k != WINDOW_STEPS}


def jit_step(step_fn, *, donate_metrics: bool = True, metrics_window: int = 1, **jit_kwargs):
    """``jax.jit`` of ``step(state, batch, metrics_buffer) -> (state, metrics)`` with the state donated
    and, with `donate_metrics`, the buffer too (the previous step's metrics, or
    `initial_metrics_buffer` for the first step); ``metrics_window``: see `with_metrics_buffer`.

    With the buffer donated every output reuses an input buffer, so a step allocates no memory for
    its outputs and its buffers keep their addresses from step to step. XLA GPU re-records the
    CUDA-graph nodes whose buffers moved before each replay (56 ms a step of host time for the
    pretraining step on an H200, with the GPU idle); the metrics were the only outputs allocated
    anew every step. `donate_metrics=False` gives that old behaviour (benchmarks compare the two).
    """
    return jax.jit(with_metrics_buffer(step_fn, metrics_window), donate_argnums=(0, 2) if donate_metrics else 0,
                   keep_unused=donate_metrics, **jit_kwargs)


def initial_metrics_buffer(step_fn, state, batch, sharding=None) -> dict:
    """Zeros shaped like the metrics of ``step_fn`` wrapped by `with_metrics_buffer` (placed with
    `sharding`): the first step's buffer."""
    shapes = {**jax.eval_shape(step_fn, state, batch)[1], WINDOW_STEPS: jax.ShapeDtypeStruct((), jnp.int32)}
    return jax.jit(lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), out_shardings=sharding)()
