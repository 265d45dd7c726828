"""Cost of BLIP retrieval evaluation: N images x 5N texts, ITC top-k + ITM rerank (k_test).

    python benchmarks/retrieval_eval.py --sizes 250,500,1000 --k-test 16

Random weights and random pixels/tokens (cost does not depend on the values). Prints, per N, the
seconds spent embedding images, embedding texts, in similarity + top-k, and in the two ITM reranks,
then how each part scales with N. Embedding is O(N), similarity O(N^2) (tiny constant), the rerank
O(N * k_test) ITM forward passes in each direction: (N + 5N) * k_test image-text pairs. Times include
each jit compilation on first use; --warmup runs a small N first so compile time is reported apart.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def build_model(args):
    from flax import nnx

    from blip_jax import BlipForImageTextRetrieval
    from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig

    tc = BlipTextConfig(vocab_size=1000, hidden_size=args.width, num_hidden_layers=args.layers, num_attention_heads=4,
                        intermediate_size=args.width * 2, max_position_embeddings=64, bos_token_id=998,
                        enc_token_id=999, use_enc_token_for_itm=True)
    vc = BlipVisionConfig(image_size=args.image_size, patch_size=args.patch, hidden_size=args.width,
                          num_hidden_layers=args.layers, num_attention_heads=4, intermediate_size=args.width * 2,
                          initializer_range=0.05)
    return BlipForImageTextRetrieval(BlipConfig.from_text_vision_configs(tc, vc, image_text_hidden_size=64),
                                     rngs=nnx.Rngs(0))


def run(model, mesh, n: int, args) -> dict:
    from blip_jax.evaluation.retrieval import evaluate_retrieval

    rng = np.random.default_rng(n)
    per, bs = 5, args.batch_size
    n_txt = n * per
    ids = rng.integers(5, 990, (n_txt, args.max_len)).astype(np.int32)
    lengths = rng.integers(8, args.max_len, n_txt)
    mask = (np.arange(args.max_len)[None] < lengths[:, None]).astype(np.int32)
    ids[:, 0], ids[mask == 0] = 2, 0

    def batches():
        for s in range(0, n, bs):
            sel = np.arange(s, min(n, s + bs))
            b = {"pixel_values": np.zeros((bs, args.image_size, args.image_size, 3), np.float32),
                 "mask": np.zeros(bs, np.int32), "index": np.zeros(bs, np.int32)}
            b["pixel_values"][: len(sel)] = rng.normal(size=(len(sel), args.image_size, args.image_size, 3))
            b["mask"][: len(sel)], b["index"][: len(sel)] = 1, sel
            yield b

    img2txt = [list(range(i * per, (i + 1) * per)) for i in range(n)]
    t0 = time.perf_counter()
    out = evaluate_retrieval(model, batches(), (ids, mask), np.repeat(np.arange(n), per), img2txt, mesh,
                             k_test=args.k_test, text_batch_size=args.text_batch_size,
                             rerank_batch_size=args.rerank_batch_size)
    t = dict(out.timings)
    t["total"] = time.perf_counter() - t0
    return t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="250,500,1000", help="comma-separated N (images; texts = 5N)")
    p.add_argument("--k-test", type=int, default=16)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--max-len", type=int, default=35)
    p.add_argument("--batch-size", type=int, default=64, help="images per embedding batch")
    p.add_argument("--text-batch-size", type=int, default=256)
    p.add_argument("--rerank-batch-size", type=int, default=16, help="queries per ITM rerank call")
    p.add_argument("--warmup", type=int, default=64, help="N of a first run that pays compilation (0: none)")
    args = p.parse_args()

    import jax

    from blip_jax.train.mesh import make_mesh

    mesh = make_mesh()
    model = build_model(args)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; model width {args.width}, "
          f"{args.layers} layers per tower, image {args.image_size}px/patch {args.patch}, k_test {args.k_test}")
    if args.warmup:
        t = run(model, mesh, args.warmup, args)
        print(f"warm-up N={args.warmup} (includes compilation): {t['total']:.2f}s")
    cols = ["embed_images", "embed_texts", "similarity_topk", "rerank_i2t", "rerank_t2i", "metrics", "total"]
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        rows.append((n, run(model, mesh, n, args)))
    print()
    print(f"{'N img':>6} {'N txt':>6} " + " ".join(f"{c:>15}" for c in cols) + f" {'pairs/s (ITM)':>14}")
    for n, t in rows:
        pairs = (n + 5 * n) * min(args.k_test, n)
        print(f"{n:>6} {5 * n:>6} " + " ".join(f"{t[c]:>15.3f}" for c in cols) +
              f" {pairs / (t['rerank_i2t'] + t['rerank_t2i']):>14.0f}")
    if len(rows) > 1:
        (n0, t0), (n1, t1) = rows[0], rows[-1]
        print(f"\nscaling {n0} -> {n1} (x{n1 / n0:.0f}): " + ", ".join(
            f"{c} x{t1[c] / max(t0[c], 1e-9):.2f}" for c in cols))
        rr = sum(t1[c] for c in ("rerank_i2t", "rerank_t2i"))
        print(f"share of N={n1} total: embedding {(t1['embed_images'] + t1['embed_texts']) / t1['total']:.0%}, "
              f"similarity+top-k {t1['similarity_topk'] / t1['total']:.0%}, rerank {rr / t1['total']:.0%}")


if __name__ == "__main__":
    main()
