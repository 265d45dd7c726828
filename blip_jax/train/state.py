"""The train state: everything a step reads and writes, as one pytree that orbax can save.

    step       () int32
    params     nnx.State of the trained parameters (nnx.Param), sharded by logical rules
    rest       nnx.State of other module variables (dropout RNG counters); may be empty
    ema        nnx.State of the momentum encoders (EMA of vision/text encoders and projections),
               or None when the objective has no momentum distillation
    queues     {"image" (Q, E), "text" (Q, E), "idx" (Q,), "ptr" ()} or None
    opt_state  optax state
    rng        PRNG key for ITM negative sampling (dropout keys live in ``rest``)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from blip_jax.models.pretrain import MOMENTUM_MODULES, init_queues


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: Any
    params: Any
    rest: Any
    ema: Any
    queues: Any
    opt_state: Any
    rng: Any


class MomentumEncoders(nnx.Module):
    """A view of the online model's momentum-tracked modules (original: model_pairs); its state
    layout is that of the EMA copy, so online and EMA trees line up leaf for leaf."""

    def __init__(self, model):
        for name in MOMENTUM_MODULES:
            setattr(self, name, getattr(model, name))


def momentum_view(model) -> MomentumEncoders:
    return MomentumEncoders(model)


def ema_update(ema, online, momentum: float):
    """ema <- m * ema + (1 - m) * online, leaf by leaf, in the EMA's dtype."""
    return jax.tree.map(lambda e, o: (momentum * e + (1.0 - momentum) * o.astype(e.dtype)).astype(e.dtype),
                        ema, online)


def split_model(model):
    """(graphdef, params, rest, momentum_graphdef, ema) for a BlipPretrain-like model; the EMA starts
    as a copy of the online weights (original: copy_params)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # The view's other variables are the online modules' dropout / drop-path RNG streams (present
    # when the config has dropout): not momentum state; `merge_momentum` borrows them.
    momentum_graphdef, ema, _ = nnx.split(momentum_view(model), nnx.Param, ...)
    ema = jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, ema)
    return graphdef, params, rest, momentum_graphdef, ema


def merge_momentum(momentum_graphdef, ema, model):
    """The momentum encoders as modules: the EMA parameters in the momentum graph, with its
    non-parameter variables (the dropout / drop-path RNG streams, which the deterministic momentum
    forward never draws from) taken from the online ``model``."""
    return nnx.merge(momentum_graphdef, ema, nnx.state(momentum_view(model), nnx.Not(nnx.Param)))


def create_train_state(params, rest, ema, tx, rng: jax.Array, queue_size: int = 0, embed_dim: int = 0,
                       queues: dict | None = None) -> TrainState:
    """A fresh state at step 0 (jit this with out_shardings to build it directly on the mesh).
    ``queue_size`` 0 means no feature queues (objectives without ITC). ``queues``: initial
    {"image", "text"} (queue_size, embed_dim) features (a checkpoint's) replacing the random ones;
    the id queue and the pointer start fresh all the same."""
    rng, queue_rng = jax.random.split(rng)
    fresh = init_queues(queue_rng, queue_size, embed_dim) if queue_size else None
    if fresh is not None and queues:
        fresh = {**fresh, **{k: jnp.asarray(v, fresh[k].dtype) for k, v in queues.items() if k in ("image", "text")}}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        rest=rest,
        ema=ema,
        queues=fresh,
        opt_state=tx.init(params),
        rng=rng,
    )
