"""Run one BLIP pretraining step on several meshes of simulated CPU devices and print how far
losses and updated parameters are from the single-device step (JSON on stdout).

Run as a subprocess: XLA_FLAGS must set the device count before jax is imported.
"""

from __future__ import annotations

import json
import os
import sys

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig  # noqa: E402
from blip_jax.models.pretrain import BlipPretrain  # noqa: E402
from blip_jax.train import mesh as mesh_lib  # noqa: E402
from blip_jax.train.state import create_train_state, split_model  # noqa: E402
from blip_jax.train.step import ObjectiveConfig, make_train_step  # noqa: E402


def tiny_config() -> BlipConfig:
    tc = BlipTextConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, bos_token_id=94, enc_token_id=95,
                        use_enc_token_for_itm=True)
    vc = BlipVisionConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64)
    return BlipConfig.from_text_vision_configs(tc, vc, image_text_hidden_size=16)


def run(mesh_shape, steps: int = 2):
    mesh = mesh_lib.make_mesh(mesh_shape, devices=jax.devices()[: int(np.prod(mesh_shape))])
    gd, params, rest, mgd, ema = split_model(BlipPretrain(tiny_config()))
    tx = optax.adamw(1e-3, weight_decay=0.05)
    ocfg = ObjectiveConfig(bos_token_id=94, enc_token_id=95, alpha_ramp_steps=4)
    abstract = jax.eval_shape(lambda: create_train_state(params, rest, ema, tx, jax.random.key(0), 40, 16))
    shardings = mesh_lib.train_state_shardings(abstract, tx, mesh)
    state = jax.jit(lambda: create_train_state(params, rest, ema, tx, jax.random.key(0), 40, 16),
                    out_shardings=shardings)()
    step = jax.jit(make_train_step(gd, mgd, tx, lambda s: 1e-3, ocfg),
                   in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                   out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        batch = {"pixel_values": rng.normal(size=(8, 16, 16, 3)).astype(np.float32),
                 "input_ids": rng.integers(3, 90, (8, 12)).astype(np.int32),
                 "attention_mask": (np.arange(12)[None] < rng.integers(4, 13, (8, 1))).astype(np.int32)}
        batch["input_ids"][:, 0] = 1
        batch = jax.device_put(batch, mesh_lib.batch_sharding(mesh))
        state, metrics = step(state, batch)
        losses.append({k: float(metrics[k]) for k in ("loss_ita", "loss_itm", "loss_lm")})
    leaves = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    return losses, leaves, state


if __name__ == "__main__":
    # Only when run as a script: importing this module (for tiny_config) must not change the
    # device count of the importing process or of the subprocesses it starts.
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    shapes = [tuple(int(x) for x in s.split("x")) for s in sys.argv[1:]] or [(8, 1, 1), (2, 4, 1), (2, 2, 2)]
    ref_losses, ref_leaves, _ = run((1, 1, 1))
    report = {"reference": ref_losses}
    for shape in shapes:
        losses, leaves, state = run(shape)
        shard_specs = sorted({str(x.sharding.spec) for x in jax.tree.leaves(state.params)})
        report["x".join(map(str, shape))] = {
            "max_loss_diff": max(abs(a[k] - b[k]) for a, b in zip(ref_losses, losses) for k in a),
            "max_param_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(ref_leaves, leaves)),
            "specs": shard_specs,
        }
    print(json.dumps(report))
