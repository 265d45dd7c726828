"""Attention kernels on a GPU for the shapes BLIP trains with: ours (XLA, head-major) against cuDNN
flash attention through jax.nn.dot_product_attention, forward and forward + backward.

    python benchmarks/gpu_attention.py --batch 96 --json out.json

Shapes (bf16, 12 heads of 64): ViT-B/16@224 self-attention (197 tokens: cuDNN directly, and
padded to a multiple of 64 with key_value_seq_lengths), text self-attention with right padding
(30 tokens, padding mask as sequence lengths), causal + padding (the decoder), and text-to-image
cross-attention (30 queries, 197 keys). Each row: milliseconds per call (median of 20) and the
max abs error of the output against a float32 XLA reference.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from blip_jax.models.layers import cudnn_attention, xla_attention


def _median_ms(f, *args, repeats=20):
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def ours(q, k, v, lengths, causal):
    """Head-major XLA attention with a boolean mask built from lengths (token-major in and out)."""
    t, s = q.shape[1], k.shape[1]
    mask = (jnp.arange(s)[None, :] < lengths[:, None])[:, None, None, :]
    if causal:
        mask = mask & (jnp.arange(s)[None, :] <= jnp.arange(t)[:, None])[None, None]
    hm = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731
    return hm(xla_attention(hm(q), hm(k), hm(v), mask))


def cudnn(q, k, v, lengths, causal, pad_to=0):
    """cuDNN flash attention; pad_to > 0 pads T and S up to a multiple of it (lengths mask the pad)."""
    t = q.shape[1]
    if pad_to:
        def pad(a):
            return jnp.pad(a, ((0, 0), (0, -a.shape[1] % pad_to), (0, 0), (0, 0)))
        q, k, v = pad(q), pad(k), pad(v)
    full = lengths is None
    out = jax.nn.dot_product_attention(
        q, k, v, is_causal=bool(causal), implementation="cudnn",
        query_seq_lengths=None if full else jnp.full((q.shape[0],), t, jnp.int32),
        key_value_seq_lengths=None if full else lengths)
    return out[:, :t]


def _time_variant(fn, q, k, v, ref, rng) -> dict:
    r = {}
    try:
        fwd = jax.jit(fn)
        out = fwd(q, k, v)
        r["max_abs_err"] = float(jnp.abs(out.astype(jnp.float32) - ref).max())
        r["fwd_ms"] = _median_ms(fwd, q, k, v)
        cot = jnp.asarray(rng.normal(size=out.shape), jnp.bfloat16)
        grad = jax.jit(jax.grad(lambda q, k, v, c: (fn(q, k, v).astype(jnp.float32) * c).sum(), argnums=(0, 1, 2)))
        r["fwd_bwd_ms"] = _median_ms(grad, q, k, v, cot)
    except Exception as e:  # noqa: BLE001 - a refused shape is a result here
        r["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--json", default="")
    args = p.parse_args()
    b, n, h = args.batch, 12, 64
    rng = np.random.default_rng(0)
    cases = {  # name: (T, S, lengths of S or None, causal)
        "vit self 197": (197, 197, None, False),
        "text self 30, padded": (30, 30, rng.integers(8, 31, b), False),
        "decoder causal 30, padded": (30, 30, rng.integers(8, 31, b), True),
        "cross 30 -> 197": (30, 197, None, False),
    }
    rows, results = [], {}
    for name, (t, s, lengths, causal) in cases.items():
        q, k, v = (jnp.asarray(rng.normal(size=(b, L, n, h)), jnp.bfloat16) for L in (t, s, s))
        lens = jnp.asarray(lengths if lengths is not None else np.full(b, s), jnp.int32)
        ref = ours(*(a.astype(jnp.float32) for a in (q, k, v)), lens, causal)
        variants = {"xla (ours)": functools.partial(ours, lengths=lens, causal=causal),
                    "cudnn": functools.partial(cudnn, lengths=None if lengths is None else lens, causal=causal)}
        if s % 64:
            variants["cudnn pad64"] = functools.partial(cudnn, lengths=lens, causal=causal, pad_to=64)
        if lengths is None and not causal:
            variants["cudnn_attention"] = cudnn_attention  # the library's padded path (blip_jax.models.layers)
        results[name] = {}
        for vname, fn in variants.items():
            r = results[name][vname] = _time_variant(fn, q, k, v, ref, rng)
            rows.append((name, vname, r))
    print(f"\n{'case':28s} {'impl':12s} {'fwd ms':>8s} {'f+b ms':>8s} {'err':>8s}")
    for name, vname, r in rows:
        if "error" in r:
            print(f"{name:28s} {vname:12s} {r['error']}")
        else:
            print(f"{name:28s} {vname:12s} {r['fwd_ms']:8.3f} {r['fwd_bwd_ms']:8.3f} {r['max_abs_err']:8.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
