"""GPU checks in one run: bf16 vs f32 forward numerics of a base-size captioner, and cuDNN flash
attention vs XLA attention (outputs and ViT-B forward speed).

    python benchmarks/gpu_numerics.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig
from blip_jax.models.blip import BlipForConditionalGeneration
from blip_jax.models.layers import Attention
from blip_jax.models.vision import BlipVisionModel


def base_config(dtype: str) -> BlipConfig:
    v = BlipVisionConfig(image_size=384, dtype=dtype, initializer_range=0.02)
    t = BlipTextConfig(num_attention_heads=12, dtype=dtype)
    return BlipConfig.from_text_vision_configs(t, v)


def set_attention(model, impl: str):
    for _, node in nnx.iter_graph(model):
        if isinstance(node, Attention):
            node.implementation = impl


def timed(f, *args, repeats=10):
    out = f(*args)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = f(*args)
    jax.block_until_ready(out)
    return out, (time.perf_counter() - t0) / repeats


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--json", default="")
    args = p.parse_args()
    res = {"device": jax.devices()[0].device_kind}
    rng = np.random.default_rng(0)
    px = jnp.asarray(rng.normal(size=(args.batch, 384, 384, 3)).astype(np.float32))
    ids = jnp.asarray(rng.integers(1000, 30000, (args.batch, 20)).astype(np.int32))

    # bf16 compute vs f32 on the same (float32-stored) weights.
    f32 = BlipForConditionalGeneration(base_config("float32"), rngs=nnx.Rngs(0))
    gd, state = nnx.split(f32)
    bf16 = nnx.merge(nnx.graphdef(BlipForConditionalGeneration(base_config("bfloat16"), rngs=nnx.Rngs(0))), state)
    set_attention(f32, "xla")
    fwd = nnx.jit(lambda m, x, i: m(x, i).logits)
    a = np.asarray(fwd(f32, px[:8], ids[:8]), np.float32)
    b = np.asarray(fwd(bf16, px[:8], ids[:8]), np.float32)
    res["bf16_logits_max_abs_err"] = float(np.abs(a - b).max())
    res["bf16_logits_rel_err"] = float(np.abs(a - b).max() / (a.max() - a.min()))
    res["bf16_argmax_agreement"] = float((a.argmax(-1) == b.argmax(-1)).mean())
    print("bf16 vs f32 logits:", {k: res[k] for k in res if k.startswith("bf16")}, flush=True)

    # cuDNN flash attention vs XLA in the ViT-B forward (bf16).
    vit = BlipVisionModel(base_config("bfloat16").vision_config, rngs=nnx.Rngs(0))
    vfwd = nnx.jit(lambda m, x: m(x).last_hidden_state)
    for impl in ("xla", "cudnn"):
        set_attention(vit, impl)
        try:
            out, dt = timed(vfwd, vit, px)
            res[f"vit_b_384_{impl}_ms"] = dt * 1e3
            res[f"vit_b_384_{impl}_out"] = np.asarray(out[:2], np.float32)
            print(f"ViT-B/16@384 bf16 batch {args.batch} with {impl}: {dt * 1e3:.1f} ms", flush=True)
        except Exception as e:  # report, don't hide: cuDNN may refuse a shape
            res[f"vit_b_384_{impl}_error"] = repr(e)[:500]
            print(f"{impl} failed: {e!r}"[:500], flush=True)
    if "vit_b_384_cudnn_out" in res and "vit_b_384_xla_out" in res:
        d = np.abs(res.pop("vit_b_384_cudnn_out") - res.pop("vit_b_384_xla_out")).max()
        res["cudnn_vs_xla_max_abs_diff"] = float(d)
        res["cudnn_speedup"] = res["vit_b_384_xla_ms"] / res["vit_b_384_cudnn_ms"]
        print(f"cuDNN vs XLA: max |diff| {d:.4f}, speedup {res['cudnn_speedup']:.2f}x", flush=True)
    res = {k: v for k, v in res.items() if not isinstance(v, np.ndarray)}
    # Masked (text) attention through cuDNN, which 'auto' does not use: does it run and agree?
    q = jnp.asarray(rng.normal(size=(8, 32, 12, 64)), jnp.bfloat16)
    mask = jnp.asarray(np.arange(32)[None, None, None, :] < rng.integers(8, 33, (8, 1, 1, 1)))
    ref = jax.nn.dot_product_attention(q, q, q, mask=mask, implementation="xla")
    try:
        got = jax.nn.dot_product_attention(q, q, q, mask=mask, implementation="cudnn")
        res["cudnn_masked_max_abs_diff"] = float(jnp.abs(got.astype(jnp.float32) - ref.astype(jnp.float32)).max())
    except Exception as e:
        res["cudnn_masked_error"] = repr(e)[:300]
    print({k: v for k, v in res.items() if "masked" in k}, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
