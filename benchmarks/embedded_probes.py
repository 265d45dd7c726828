"""Probes of what an image-text model sees in the embedded world: colour, shape, size, position?

    python benchmarks/embedded_probes.py --data W/pretrain/data --model W/retrieval/export/retrieval

Attribute swaps (ITM): for every test image, captions that state every size and position are
written from its scene (`describe`), and beside each the same caption (same rng stream, so the
same phrasing) of the scene with one object's colour, shape, size or position changed. The probe is
the fraction of pairs in which the model's p(match) is higher for the true caption (ties count
half); 0.5 is chance.

Linear probes (image encoder): on the web images with a single object, a softmax regression
trained on 70% of them reads the object's shape, colour and size from frozen features of the ViT
([CLS], mean and max over the patch tokens) or, as a reference, from the raw pixels; accuracy on
the other 30%. It tells whether an attribute the captions miss is in the image features at all.

Like the caption checks against the scenes (`caption/true_of_scene`, `caption/shapes`), both tell
what n-gram metrics and recalls cannot.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from blip_jax import BlipForImageTextRetrieval
from blip_jax.capfilt.filter import Filter
from blip_jax.data import pipelines as pl
from blip_jax.data.synthetic import ATTRIBUTES, COLORS, SHAPES, describe, embedded_spec, load_scenes, swap_attribute
from blip_jax.processing.tokenization import WordPieceTokenizer


def probe_pairs(scene: dict, rng: np.random.Generator, per_attribute: int) -> list[tuple[str, str, str]]:
    """(attribute, true caption, swapped caption) triples for one scene."""
    out = []
    for attribute in ATTRIBUTES:
        for _ in range(per_attribute):
            bad = swap_attribute(scene, attribute, rng)
            if bad is None:
                break
            seed = int(rng.integers(1 << 31))
            true, false = (describe(s, np.random.default_rng(seed), with_size=True, with_pos=True)
                           for s in (scene, bad))
            out.append((attribute, true, false))
    return out


def swap_probes(model, args, scenes: dict, images: str) -> dict:
    """The attribute-swap probes over the test split."""
    match = Filter(model, WordPieceTokenizer.from_vocab_file(os.path.join(args.data, "vocab.txt")))
    records, _ = pl.open_source(pl.DatasetSpec(**embedded_spec(args.split, args.data)))
    rng = np.random.default_rng(args.seed)
    wins = {a: [] for a in ATTRIBUTES}
    opts = pl.LoaderOptions(batch_size=args.batch_size, num_threads=2)
    size = model.config.vision_config.image_size
    for batch in pl.eval_pipeline(list(records), opts, image_size=size):
        keep = np.asarray(batch["mask"]).astype(bool)
        triples = [probe_pairs(scenes[os.path.relpath(records[int(i)]["image_path"], images)], rng,
                               args.per_attribute) if k else [] for i, k in zip(np.asarray(batch["index"]), keep)]
        probs = match.match_probabilities(np.asarray(batch["pixel_values"]),
                                          [[t for _, a, b in row for t in (a, b)] for row in triples])
        for row, p_row in zip(triples, probs):
            for j, (attribute, _, _) in enumerate(row):
                a, b = p_row[2 * j], p_row[2 * j + 1]
                wins[attribute].append(1.0 if a > b else 0.5 if a == b else 0.0)
    out = {f"itm_prefers_true_over_{a}_swap": round(float(np.mean(v)), 4) for a, v in wins.items() if v}
    out.update({f"pairs_{a}": len(v) for a, v in wins.items()})
    return out


def single_object_images(args, scenes: dict, size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The web images with one object, preprocessed as for evaluation -> (pixels (N, S, S, 3),
    {attribute: (N,) class index})."""
    records, _ = pl.open_source(pl.DatasetSpec(**embedded_spec("web", args.data)))
    keep = [r for r in records if len(scenes[r["image_key"]]["objects"]) == 1]
    pixels, objects = [], []
    opts = pl.LoaderOptions(batch_size=64, num_threads=2)
    for batch in pl.eval_pipeline(keep, opts, image_size=size):
        mask = np.asarray(batch["mask"]).astype(bool)
        pixels.append(np.asarray(batch["pixel_values"])[mask])
        objects += [scenes[records[int(i)]["image_key"]]["objects"][0] for i in np.asarray(batch["index"])[mask]]
    labels = {"shape": [SHAPES.index(o["shape"]) for o in objects],
              "color": [list(COLORS).index(o["color"]) for o in objects],
              "size": [int(o["size"] == "large") for o in objects]}
    return np.concatenate(pixels), {k: np.asarray(v) for k, v in labels.items()}


def linear_probe_accuracy(features: np.ndarray, labels: np.ndarray, seed: int = 0, steps: int = 500) -> float:
    """Softmax regression (Adam, L2 1e-3, standardised features) on a random 70% -> accuracy on the rest."""
    order = np.random.default_rng(seed).permutation(len(features))
    cut = int(0.7 * len(features))
    train, test = order[:cut], order[cut:]
    mean, std = features[train].mean(0), features[train].std(0) + 1e-6
    x = jnp.asarray((features - mean) / std)
    classes = int(labels.max()) + 1
    params = (jnp.zeros((x.shape[1], classes)), jnp.zeros(classes))
    opt = optax.adam(1e-2)

    def loss(p):
        logits = x[train] @ p[0] + p[1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels[train]).mean() + 1e-3 * jnp.sum(p[0] ** 2)

    @jax.jit
    def step(p, state):
        grads = jax.grad(loss)(p)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(p, updates), state

    state = opt.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return float(np.mean(np.asarray((x[test] @ params[0] + params[1]).argmax(-1)) == labels[test]))


def feature_probes(model, args, scenes: dict) -> dict:
    """Linear probes of single-object web images: from the ViT's frozen features and from pixels."""
    pixels, labels = single_object_images(args, scenes, model.config.vision_config.image_size)
    feats = []
    for i in range(0, len(pixels), 64):
        h = model.vision_model(pixel_values=jnp.asarray(pixels[i:i + 64])).last_hidden_state  # (B, 1 + P, D)
        feats.append(np.concatenate([h[:, 0], h[:, 1:].mean(1), h[:, 1:].max(1)], axis=-1))
    out = {"linear_probe_images": len(pixels)}
    for source, f in (("vit", np.concatenate(feats)), ("pixels", pixels.reshape(len(pixels), -1))):
        out.update({f"linear_probe_{source}_{k}": round(linear_probe_accuracy(f, y, args.seed), 4)
                    for k, y in labels.items()})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the embedded dataset the model was trained on")
    p.add_argument("--model", required=True, help="a BlipForImageTextRetrieval folder (an `export/retrieval`)")
    p.add_argument("--split", default="test")
    p.add_argument("--per-attribute", type=int, default=4, help="swapped captions per image and attribute")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-linear", action="store_true", help="only the attribute-swap probes")
    p.add_argument("--out", default="", help="write the results as JSON here too")
    args = p.parse_args()

    model = BlipForImageTextRetrieval.from_pretrained(args.model)
    scenes, images = load_scenes(os.path.join(args.data, "scenes.json")), os.path.join(args.data, "images")
    out = swap_probes(model, args, scenes, images)
    if not args.skip_linear:
        out.update(feature_probes(model, args, scenes))
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
