"""Captioning speed of blip_jax.generation against transformers' generate, in one process.

Base-size BLIP (ViT-B/16 at 384 px, BERT-base decoder: hidden 768, 12 layers, 12 heads, vocab 30524)
with random weights, shared by both implementations (transformers' random init copied into ours),
batch 8, exactly ``--new-tokens`` new tokens (min_length = max_length), greedy, beam search and
(``--modes sample``) CapFilt's nucleus sampling.
Reports captions/s of each and their ratio (ours / HF), our compile time (tracing + XLA compile of
the first call, from jax.monitoring; excluded from the timed runs, both sides are warmed up first),
whether the token ids agree, and the vision encoder's achieved FLOP/s (analytic FLOPs) as a fraction
of a dense matmul in the same dtype measured in the same run (on GPUs XLA's default float32 matmul
precision may use TF32 for both).

    python benchmarks/generate_vs_hf.py                       # CPU or the default JAX device
    python benchmarks/generate_vs_hf.py --device-kind gpu --dtype bfloat16
    python benchmarks/generate_vs_hf.py --skip-hf --batch 32  # ours only

Timed runs of the two implementations are interleaved, so load from other processes hits both
alike; each number is the best (minimum) of ``--repeats`` runs, the usual estimate on a shared
machine (all times are kept in the --json output).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device-kind", choices=["auto", "cpu", "gpu", "tpu"], default="auto",
                   help="JAX platform (auto: JAX's default); HF runs on CUDA when JAX runs on a GPU")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="compute dtype of both implementations (parameters stay float32 in ours)")
    p.add_argument("--skip-hf", action="store_true", help="time only blip_jax")
    p.add_argument("--new-tokens", type=int, default=20)
    p.add_argument("--num-beams", type=int, default=3)
    p.add_argument("--modes", default="greedy,beam", help="comma list of greedy, beam, sample (top_p 0.9, "
                   "top_k 50, repetition penalty 1.1: CapFilt's captioner; ids differ, the RNGs do)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--vision-layers", type=int, default=12, help="fewer layers for a quick run on a slow CPU")
    p.add_argument("--text-layers", type=int, default=12)
    p.add_argument("--matmul-size", type=int, default=0, help="peak-matmul size (0: 2048 on CPU, 8192 otherwise)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--command-buffer-update", default="default", choices=["default", "stable"],
                   help="the generation program's XLA command-buffer update mode (blip_jax.compiler_options)")
    p.add_argument("--profile", default="", help="trace one call of ours per mode into this folder and print "
                   "where the device time goes (benchmarks/profile_summary.py)")
    return p.parse_args(argv)


def _times(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main(argv=None):
    args = parse_args(argv)
    if args.device_kind != "auto":
        os.environ["JAX_PLATFORMS"] = {"gpu": "cuda"}.get(args.device_kind, args.device_kind)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from blip_jax import compiler_options
    from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig
    from blip_jax.models.blip import BlipForConditionalGeneration
    from blip_jax.train.flops import vision_forward_flops
    from blip_jax.train.metrics import measure_matmul_flops

    compiler_options.DECODE_COMMAND_BUFFER_UPDATE = args.command_buffer_update  # before the first compile

    backend = jax.default_backend()
    compile_seconds = [0.0]  # tracing + lowering + XLA compilation, summed from jax's own events

    def on_duration(event, duration, **_):
        if event.startswith("/jax/core/compile/"):
            compile_seconds[0] += duration

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    text = dict(vocab_size=30524, hidden_size=768, num_hidden_layers=args.text_layers, num_attention_heads=12,
                intermediate_size=3072)
    vision = dict(image_size=args.image_size, patch_size=16, hidden_size=768, num_hidden_layers=args.vision_layers,
                  num_attention_heads=12, intermediate_size=3072)
    config = BlipConfig.from_text_vision_configs(BlipTextConfig(**text), BlipVisionConfig(**vision))
    if args.dtype != "float32":
        config = config.with_dtype(args.dtype)
    ours = BlipForConditionalGeneration(config, rngs=nnx.Rngs(0))

    hf = torch = None
    torch_device = "cpu"
    if not args.skip_hf:
        import torch
        import transformers

        from blip_jax.checkpoints.loading import apply_state_dict

        torch.manual_seed(0)
        hf_cfg = transformers.BlipConfig(
            text_config=transformers.BlipTextConfig(**text).to_dict(),
            vision_config=transformers.BlipVisionConfig(**vision).to_dict(),
        )
        hf = transformers.BlipForConditionalGeneration(hf_cfg).eval()
        with torch.no_grad():  # BLIP's vision init (std 1e-10) would make every image look the same
            for p in hf.vision_model.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, 0.02)
        apply_state_dict(ours, {k: v.detach().numpy() for k, v in hf.state_dict().items()})
        if backend == "gpu" and torch.cuda.is_available():
            torch_device = "cuda"
        hf = hf.to(torch_device, dtype=torch.bfloat16 if args.dtype == "bfloat16" else torch.float32)

    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
    pixels_jax = jnp.asarray(pixels, jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
    total = 1 + args.new_tokens
    results = dict(device=str(jax.devices()[0]), backend=backend, torch_device=torch_device, batch=args.batch,
                   dtype=args.dtype, new_tokens=args.new_tokens, vision_layers=args.vision_layers,
                   text_layers=args.text_layers, image_size=args.image_size, modes={})
    print(f"device: {results['device']} (torch: {torch_device}), batch {args.batch}, dtype {args.dtype}, "
          f"{args.new_tokens} new tokens, vision layers {args.vision_layers}, text layers {args.text_layers}")

    if hf is not None:
        hf_pixels = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))).to(
            torch_device, dtype=next(hf.parameters()).dtype)

    def sync():
        if torch is not None and torch_device == "cuda":
            torch.cuda.synchronize()

    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        beams = args.num_beams if mode == "beam" else 1
        kw = dict(max_length=total, min_length=total, num_beams=beams)
        ours_kw = {}
        if mode == "sample":  # CapFilt's nucleus sampling; HF's default top_k=50 applies to both
            kw.update(do_sample=True, top_p=0.9, top_k=50, repetition_penalty=1.1)
            ours_kw = dict(rng=jax.random.key(0))

        def run_ours(kw=kw, ours_kw=ours_kw):
            return np.asarray(ours.generate(pixels_jax, **kw, **ours_kw))

        compile_seconds[0] = 0.0
        t = time.perf_counter()
        out_ours = run_ours()
        first = time.perf_counter() - t
        r = dict(first_call_s=first, compile_s=compile_seconds[0])
        run_ours()  # warm
        if hf is not None:
            def run_hf(kw=kw):
                with torch.inference_mode():
                    out = hf.generate(hf_pixels, **kw)
                sync()
                return out.cpu().numpy()

            out_hf = run_hf()  # warm-up
            hf_times, our_times = [], []
            for _ in range(args.repeats):  # interleaved, so background load hits both alike
                hf_times += _times(run_hf, 1)
                our_times += _times(run_ours, 1)
            t_hf, t_ours = min(hf_times), min(our_times)
            r.update(hf_times_s=hf_times, ours_times_s=our_times)
            same = out_hf.shape == out_ours.shape and bool((out_hf == out_ours).all())
            rows_same = float((out_hf == out_ours).all(axis=1).mean()) if out_hf.shape == out_ours.shape else 0.0
            r.update(hf_s=t_hf, hf_captions_per_s=args.batch / t_hf, identical_ids=same, identical_rows=rows_same)
        else:
            our_times = _times(run_ours, args.repeats)
            t_ours = min(our_times)
            r.update(ours_times_s=our_times)
        r.update(ours_s=t_ours, ours_captions_per_s=args.batch / t_ours)
        line = (f"{mode:6s} ours {r['ours_captions_per_s']:8.2f} captions/s ({t_ours:.3f} s/batch; first call "
                f"{first:.1f} s of which compile {r['compile_s']:.1f} s)")
        if hf is not None:
            r["ratio"] = t_hf / t_ours
            line += (f" | HF {r['hf_captions_per_s']:8.2f} captions/s ({t_hf:.3f} s/batch) | ratio ours/HF "
                     f"{r['ratio']:.2f}x | identical ids: {same} (rows {rows_same:.0%})")
        print(line, flush=True)
        results["modes"][mode] = r
        if args.profile:
            from profile_summary import summarize

            trace_dir = os.path.join(args.profile, mode)
            with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
                run_ours()
            print(summarize(trace_dir, top=15), flush=True)

    # Vision encoder throughput vs a dense matmul peak, both measured now on this device.
    graphdef, state = nnx.split(ours.vision_model)
    vision_fn = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x).last_hidden_state)
    jax.block_until_ready(vision_fn(state, pixels_jax))
    t_vis = min(_times(lambda: jax.block_until_ready(vision_fn(state, pixels_jax)), max(args.repeats, 3)))
    flops = args.batch * vision_forward_flops(config.vision_config, args.image_size)
    n = args.matmul_size or (2048 if backend == "cpu" else 8192)
    peak = measure_matmul_flops(args.dtype, size=n, repeats=5)
    achieved = flops / t_vis
    results["vision"] = dict(seconds=t_vis, flops=flops, achieved_flops_per_s=achieved, matmul_n=n,
                             matmul_peak_flops_per_s=peak, fraction_of_peak=achieved / peak)
    line = (f"vision encoder: {flops / 1e9:.1f} GFLOP in {t_vis:.3f} s = {achieved / 1e12:.3f} TFLOP/s; "
            f"dense {n}x{n} {args.dtype} matmul peak {peak / 1e12:.3f} TFLOP/s -> {achieved / peak:.1%} of peak")
    if hf is not None:
        def hf_vision():
            with torch.inference_mode():
                hf.vision_model(hf_pixels)
            sync()

        hf_vision()
        t_hf_vis = min(_times(hf_vision, max(args.repeats, 3)))
        results["vision"]["hf_seconds"] = t_hf_vis
        line += f" (HF vision {t_hf_vis:.3f} s)"
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
