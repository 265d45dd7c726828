"""One process of a 2-process BLIP train-step check (or the single-process reference).

Each process feeds its half of a fixed global batch through make_global_batch, runs 3 sharded
train steps over a mesh spanning both processes' CPU devices, and process 0 prints the losses and
a parameter checksum as JSON. Usage: python -m tests.multiprocess_step_check [--single]
(the coordinator / process id come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
import optax

from blip_jax.data.distributed import make_global_batch
from blip_jax.models.pretrain import BlipPretrain
from blip_jax.train import mesh as mesh_lib
from blip_jax.train.distributed import maybe_initialize_distributed
from blip_jax.train.state import create_train_state, split_model
from blip_jax.train.step import ObjectiveConfig, make_train_step
from tests.sharded_step_check import tiny_config


def main() -> None:
    maybe_initialize_distributed(platform="cpu")
    mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    gd, params, rest, mgd, ema = split_model(BlipPretrain(tiny_config()))
    tx = optax.adamw(1e-3, weight_decay=0.05)
    ocfg = ObjectiveConfig(bos_token_id=94, enc_token_id=95)

    def init():
        return create_train_state(params, rest, ema, tx, jax.random.key(0), 40, 16)

    shardings = mesh_lib.train_state_shardings(jax.eval_shape(init), tx, mesh)
    state = jax.jit(init, out_shardings=shardings)()
    step = jax.jit(make_train_step(gd, mgd, tx, lambda s: 1e-3, ocfg),
                   in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                   out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)
    rng = np.random.default_rng(0)
    n, per = jax.process_count(), 8 // jax.process_count()
    losses = []
    for _ in range(3):
        ids = rng.integers(3, 90, (8, 12)).astype(np.int32)
        ids[:, 0] = 1
        full = {"pixel_values": rng.normal(size=(8, 16, 16, 3)).astype(np.float32), "input_ids": ids,
                "attention_mask": (np.arange(12)[None] < rng.integers(4, 13, (8, 1))).astype(np.int32)}
        local = {k: v[jax.process_index() * per:(jax.process_index() + 1) * per] for k, v in full.items()}
        state, metrics = step(state, make_global_batch(local, mesh))
        losses.append({k: float(metrics[k]) for k in ("loss_ita", "loss_itm", "loss_lm")})
    from jax.experimental import multihost_utils

    leaves = [np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in jax.tree.leaves(state.params)]
    checksum = float(sum(np.abs(x).sum() for x in leaves))
    if jax.process_index() == 0:
        print(json.dumps({"processes": n, "devices": jax.device_count(), "losses": losses, "checksum": checksum}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
