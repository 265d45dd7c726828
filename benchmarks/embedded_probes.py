"""Attribute-swap probes of an image-text matching model on the embedded world: does its ITM head
see colour, shape, size and position, or only some of them?

    python benchmarks/embedded_probes.py --data W/pretrain/data --model W/retrieval/export/retrieval

For every test image, captions that state every size and position are written from its scene
(`describe`), and beside each the same caption (same rng stream, so the same phrasing) of the scene
with one object's colour, shape, size or position changed. The probe is the fraction of pairs in
which the model's p(match) is higher for the true caption (ties count half); 0.5 is chance. Like
the caption checks against the scenes (`caption/true_of_scene`, `caption/shapes`), it tells what
n-gram metrics and recalls cannot: which attributes the model binds to the image.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from blip_jax import BlipForImageTextRetrieval
from blip_jax.capfilt.filter import Filter
from blip_jax.data import pipelines as pl
from blip_jax.data.synthetic import ATTRIBUTES, describe, embedded_spec, load_scenes, swap_attribute
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the embedded dataset the model was trained on")
    p.add_argument("--model", required=True, help="a BlipForImageTextRetrieval folder (an `export/retrieval`)")
    p.add_argument("--split", default="test")
    p.add_argument("--per-attribute", type=int, default=4, help="swapped captions per image and attribute")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="write the results as JSON here too")
    args = p.parse_args()

    model = BlipForImageTextRetrieval.from_pretrained(args.model)
    match = Filter(model, WordPieceTokenizer.from_vocab_file(os.path.join(args.data, "vocab.txt")))
    scenes, images = load_scenes(os.path.join(args.data, "scenes.json")), os.path.join(args.data, "images")
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
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
