"""CapFilt throughput with base-size models: how long bootstrapping a web dataset takes per device.

Base-size captioner and filter (ViT-B/16 + BERT-base, random weights, a 30522-word vocabulary of
dummy words), the paper's sampling (top_p 0.9, top_k 50, repetition penalty 1.1, max_length 30 and
min_length 10, so every caption runs the full decode) and one web + one synthetic text per image
for the filter. Prints seconds per batch for the captioner, the filter and the whole batch
(`blip_jax.capfilt.bootstrap.decide_batch`: both plus decoding and the decisions), images/s, and
the device hours for BLIP's 14M-image set. Timings are the best of --repeats batches after a
warm-up batch (compilation excluded).

    python benchmarks/capfilt_throughput.py                       # CPU: batch 8, float32
    python benchmarks/capfilt_throughput.py --batch 64 --dtype bfloat16   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--layers", type=int, default=12, help="layers per tower (fewer for a quick look)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=float, default=14e6, help="dataset size for the device-hours estimate")
    p.add_argument("--json", default="", help="also write the results here")
    return p.parse_args(argv)


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    args = parse_args(argv)
    import jax
    import numpy as np
    from flax import nnx

    from blip_jax import BlipForConditionalGeneration, BlipForImageTextRetrieval
    from blip_jax.capfilt.bootstrap import CapfiltRun, FilterConfig, decide_batch
    from blip_jax.capfilt.captioner import Captioner, SamplingConfig, local_mesh
    from blip_jax.capfilt.filter import Filter
    from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig
    from blip_jax.processing.tokenization import WordPieceTokenizer

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = ["a", "picture", "of"] + [f"w{i:05d}" for i in range(30522 - len(special) - 3)]
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "vocab.txt"), "w") as f:
            f.write("\n".join(special + words) + "\n")
        tok = WordPieceTokenizer.from_vocab_file(os.path.join(d, "vocab.txt"))
    tc = BlipTextConfig(vocab_size=tok.vocab_size, num_hidden_layers=args.layers, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id)
    vc = BlipVisionConfig(image_size=args.image_size, num_hidden_layers=args.layers)
    config = BlipConfig.from_text_vision_configs(tc, vc)
    if args.dtype != "float32":
        config = config.with_dtype(args.dtype)
    mesh = local_mesh()
    batch = -(-args.batch // mesh.devices.size) * mesh.devices.size
    sampling = SamplingConfig()
    captioner = Captioner(BlipForConditionalGeneration(config, rngs=nnx.Rngs(0)), tok, sampling, mesh=mesh)
    filt = Filter(BlipForImageTextRetrieval(config, rngs=nnx.Rngs(1)), tok, mesh=mesh)
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(batch, args.image_size, args.image_size, 3)).astype(np.float32)
    web = [f"a picture of w{i:05d} w{i + 1:05d} w{i + 2:05d}" for i in range(batch)]
    records = [{"index": i, "image_key": f"web/{i}.jpg", "image_path": None, "captions": [t]}
               for i, t in enumerate(web)]
    run = CapfiltRun(records=records, captioner=captioner, filter=filt, filtering=FilterConfig(),
                     image_size=args.image_size, batch_size=batch)
    eval_batch = {"pixel_values": pixels, "mask": np.ones(batch, np.int32), "index": np.arange(batch)}
    key = jax.random.key(0)
    synthetic = captioner(pixels, key)  # warm-up: compiles
    texts = [[w, s[0]] for w, s in zip(web, synthetic)]
    filt.match_probabilities(pixels, texts)
    decide_batch(run, eval_batch, key)
    t_cap = _best(lambda: captioner(pixels, key), args.repeats)
    t_filter = _best(lambda: filt.match_probabilities(pixels, texts), args.repeats)
    t_batch = _best(lambda: decide_batch(run, eval_batch, key), args.repeats)
    ips = batch / t_batch
    res = dict(device=str(jax.devices()[0]), devices=mesh.devices.size, batch=batch, dtype=args.dtype,
               image_size=args.image_size, layers=args.layers, captioner_s=t_cap, filter_s=t_filter,
               batch_s=t_batch, images_per_s=ips, device_hours=args.images / ips / 3600 * mesh.devices.size)
    print(f"{res['device']} x{res['devices']}, batch {batch}, {args.dtype}, {args.image_size} px, {args.layers} layers")
    print(f"captioner {t_cap:.3f} s/batch, filter {t_filter:.3f} s/batch, whole batch {t_batch:.3f} s "
          f"-> {ips:.2f} images/s; {args.images / 1e6:g}M images: {res['device_hours']:.0f} device hours")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
