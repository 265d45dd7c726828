"""Probes of what an image-text model sees in the embedded world: colour, shape, size, position?

    python benchmarks/embedded_probes.py --data W/pretrain/data --model W/retrieval/export/retrieval \
        [--captioner W/pretrain/export/captioning]

Attribute swaps (ITM): for every test image, captions that state every size and position are
written from its scene (`describe`), and beside each the same caption (same rng stream, so the
same phrasing) of the scene with one object's colour, shape, size or position changed. The probe is
the fraction of pairs in which the model's p(match) is higher for the true caption (ties count
half); 0.5 is chance.

Linear probes (image encoder): a softmax regression trained on 70% of the examples reads an
object's shape, colour and size from frozen ViT features; accuracy on the other 30%. Pooled
features ([CLS], mean and max over the patch tokens: what ITC and ITM see) are probed on the web
images with a single object; local features (the patch tokens of the object's scene cell: what the
decoder's cross-attention can read) on every object of every web image. The same probes on the raw
pixels (the whole image, the object's cell) are the reference. They tell whether an attribute the
captions miss is in the image features at all.

Decoder probes (``--captioner``): fed the true caption of a single-object image, does the
captioner score the right colour highest among the colour words, and the right shape among the
shape nouns? They tell whether the text side reads what the image features hold.

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

from blip_jax import BlipForConditionalGeneration, BlipForImageTextRetrieval
from blip_jax.capfilt.filter import Filter
from blip_jax.data import pipelines as pl
from blip_jax.data.synthetic import (
    ATTRIBUTES,
    COLORS,
    COLS,
    ROWS,
    SHAPES,
    SYNONYMS,
    describe,
    embedded_spec,
    load_scenes,
    swap_attribute,
)
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


def web_images(args, scenes: dict, size: int) -> tuple[np.ndarray, list[list[dict]]]:
    """The web images, preprocessed as for evaluation -> (pixels (N, S, S, 3), each image's objects)."""
    records, _ = pl.open_source(pl.DatasetSpec(**embedded_spec("web", args.data)))
    pixels, objects = [], []
    opts = pl.LoaderOptions(batch_size=64, num_threads=2)
    for batch in pl.eval_pipeline(list(records), opts, image_size=size):
        mask = np.asarray(batch["mask"]).astype(bool)
        pixels.append(np.asarray(batch["pixel_values"])[mask])
        objects += [scenes[records[int(i)]["image_key"]]["objects"] for i in np.asarray(batch["index"])[mask]]
    return np.concatenate(pixels), objects


def attribute_labels(objects: list[dict]) -> dict[str, np.ndarray]:
    """{attribute: (N,) class index} for shape, colour and size."""
    return {"shape": np.asarray([SHAPES.index(o["shape"]) for o in objects]),
            "color": np.asarray([list(COLORS).index(o["color"]) for o in objects]),
            "size": np.asarray([int(o["size"] == "large") for o in objects])}


def object_window(o: dict, grid: int) -> tuple[slice, slice]:
    """The rows and columns of a grid x grid map (patch tokens or pixels) in a square window that
    covers the object's scene cell (the 3x3 layout's cells do not fall on patch boundaries),
    centred on the cell and the same size for every cell."""
    size = -(-grid // 3) + 1

    def start(i: int) -> int:
        return min(max(round((i + 0.5) * grid / 3 - size / 2), 0), grid - size)

    r, c = start(ROWS.index(o["row"])), start(COLS.index(o["col"]))
    return slice(r, r + size), slice(c, c + size)


def cell_features(maps: np.ndarray, objects: list[dict]) -> np.ndarray:
    """(N, G, G, C) maps and one object per map -> (N, F): the window over the object's cell, flattened."""
    return np.stack([m[object_window(o, m.shape[0])].reshape(-1) for m, o in zip(maps, objects)])


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
    """Linear probes of the ViT's frozen features and, as references, of the pixels.

    Pooled ([CLS], mean and max over the patch tokens: what ITC and ITM see) on the single-object
    web images; local (the patch tokens of an object's scene cell: what the decoder's
    cross-attention can read) on every object of every web image. Shape is also probed on large
    and small objects apart."""
    vision = model.config.vision_config
    pixels, objects = web_images(args, scenes, vision.image_size)
    grid = vision.image_size // vision.patch_size
    pooled, tokens = [], []
    for i in range(0, len(pixels), 64):
        h = np.asarray(model.vision_model(pixel_values=jnp.asarray(pixels[i:i + 64])).last_hidden_state)  # (B, 1+P, D)
        pooled.append(np.concatenate([h[:, 0], h[:, 1:].mean(1), h[:, 1:].max(1)], axis=-1))
        tokens.append(h[:, 1:].reshape(len(h), grid, grid, -1))
    pooled, tokens = np.concatenate(pooled), np.concatenate(tokens)
    single = np.asarray([len(o) == 1 for o in objects])
    each = [(n, o) for n, objs in enumerate(objects) for o in objs]
    rows = np.asarray([n for n, _ in each])
    probes = {  # name -> (features, labels)
        "vit": (pooled[single], attribute_labels([o[0] for o, s in zip(objects, single) if s])),
        "pixels": (pixels[single].reshape(int(single.sum()), -1),
                   attribute_labels([o[0] for o, s in zip(objects, single) if s])),
        "vit_cell": (cell_features(tokens[rows], [o for _, o in each]), attribute_labels([o for _, o in each])),
        "pixels_cell": (cell_features(pixels[rows], [o for _, o in each]), attribute_labels([o for _, o in each])),
    }
    out = {"linear_probe_single_object_images": int(single.sum()), "linear_probe_cell_objects": len(each)}
    for source, (f, labels) in probes.items():
        out.update({f"linear_probe_{source}_{k}": round(linear_probe_accuracy(f, y, args.seed), 4)
                    for k, y in labels.items()})
        large = labels["size"] == 1
        for name, keep in (("large", large), ("small", ~large)):
            out[f"linear_probe_{source}_shape_{name}"] = round(
                linear_probe_accuracy(f[keep], labels["shape"][keep], args.seed), 4)
    return out


def decoder_probes(captioner, args, scenes: dict, prompt: str = "a picture of ") -> dict:
    """Teacher-forced probes of a captioner on the single-object web images: fed the true caption
    "<prompt>a <size> <colour> <shape>", is its next-token score highest for the right colour among
    the colour words, and for the right shape among the shape nouns' first tokens (all synonyms)?
    Chance: 1/6 for colour, 1/4 for shape."""
    tok = WordPieceTokenizer.from_vocab_file(os.path.join(args.data, "vocab.txt"))
    first = {}  # first token id -> the class it names
    for shape, nouns in SYNONYMS.items():
        first.update({tok(n, add_special_tokens=False)["input_ids"][0]: ("shape", shape) for n in nouns})
    first.update({tok(c, add_special_tokens=False)["input_ids"][0]: ("color", c) for c in COLORS})
    candidates = {kind: np.asarray([t for t, (k, _) in first.items() if k == kind]) for kind in ("shape", "color")}
    pixels, objects = web_images(args, scenes, captioner.config.vision_config.image_size)
    single = [n for n, o in enumerate(objects) if len(o) == 1]
    pixels, objects = pixels[single], [objects[n][0] for n in single]
    bos = captioner.config.text_config.bos_token_id
    hits = {"color": [], "shape": []}
    for i in range(0, len(pixels), 64):
        objs = objects[i:i + 64]
        texts = [f"{prompt}a {o['size']} {o['color']} {SYNONYMS[o['shape']][0]}" for o in objs]
        enc = tok(texts, padding="longest", return_tensors="np")
        ids = np.asarray(enc["input_ids"]).copy()
        ids[:, 0] = bos  # the decoder starts from [DEC], as in caption training
        logits = np.asarray(captioner(pixel_values=jnp.asarray(pixels[i:i + 64]), input_ids=jnp.asarray(ids),
                                      attention_mask=jnp.asarray(enc["attention_mask"])).logits)
        for row in range(len(objs)):
            for t in range(1, ids.shape[1]):
                kind, value = first.get(int(ids[row, t]), (None, None))
                if kind is not None:
                    ids_k = candidates[kind]
                    hits[kind].append(first[int(ids_k[np.argmax(logits[row, t - 1, ids_k])])][1] == value)
    return {f"decoder_picks_right_{k}": round(float(np.mean(v)), 4) for k, v in hits.items()} | {
        "decoder_probe_images": len(pixels)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the embedded dataset the model was trained on")
    p.add_argument("--model", required=True, help="a BlipForImageTextRetrieval folder (an `export/retrieval`)")
    p.add_argument("--split", default="test")
    p.add_argument("--per-attribute", type=int, default=4, help="swapped captions per image and attribute")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-linear", action="store_true", help="only the attribute-swap probes")
    p.add_argument("--captioner", default="",
                   help="a BlipForConditionalGeneration folder (an `export/captioning`): adds the decoder probes")
    p.add_argument("--out", default="", help="write the results as JSON here too")
    args = p.parse_args()

    model = BlipForImageTextRetrieval.from_pretrained(args.model)
    scenes, images = load_scenes(os.path.join(args.data, "scenes.json")), os.path.join(args.data, "images")
    out = swap_probes(model, args, scenes, images)
    if not args.skip_linear:
        out.update(feature_probes(model, args, scenes))
    if args.captioner:
        out.update(decoder_probes(BlipForConditionalGeneration.from_pretrained(args.captioner), args, scenes))
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
