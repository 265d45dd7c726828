"""`blip-jax data <generate|convert|inspect|stats> ...`"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys

import numpy as np


def _cmd_generate(args) -> int:
    from blip_jax.data.synthetic import SyntheticConfig, generate_embedded_dataset

    fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    manifest = generate_embedded_dataset(args.out, SyntheticConfig(**overrides))
    print(json.dumps(manifest["counts"], indent=1))
    print(f"wrote {args.out} in {manifest['seconds']} s")
    return 0


def _load_records(fmt: str, paths: list[str], image_root, vg_image_root, split: str):
    from blip_jax.data import annotations as ann
    from blip_jax.data.convert import webdataset_records
    from blip_jax.data.sources import ArrayRecordRecords

    if fmt == "blip_json":
        return ann.load_pretrain(paths, image_root)
    if fmt == "coco_karpathy":
        return ann.load_coco_karpathy(paths[0], image_root, split)
    if fmt == "vqa":
        return ann.load_vqa(paths, image_root, vg_image_root, split)
    if fmt == "webdataset":
        return webdataset_records(paths)
    if fmt == "array_record":
        src = ArrayRecordRecords(paths)
        return (src[i] for i in range(len(src)))
    raise ValueError(fmt)


def _cmd_convert(args) -> int:
    from blip_jax.data.convert import write_array_record

    records = _load_records(args.format, args.inputs, args.image_root, args.vg_image_root, args.split)
    meta = write_array_record(records, args.out, args.name, args.records_per_shard)
    print(json.dumps({k: meta[k] for k in ("num_records", "skipped")}, indent=1))
    print("\n".join(meta["files"]))
    return 0


def _short(rec: dict) -> dict:
    out = {}
    for k, v in rec.items():
        if isinstance(v, (bytes, bytearray)):
            out[k] = f"<{len(v)} bytes>"
        elif isinstance(v, np.ndarray):
            out[k] = f"<array {v.shape} {v.dtype}>"
        else:
            out[k] = v
    return out


def _cmd_inspect(args) -> int:
    records = _load_records(args.format, args.inputs, args.image_root, args.vg_image_root, args.split)
    for i, rec in enumerate(records):
        if i >= args.n:
            break
        print(json.dumps(_short(rec), ensure_ascii=False, default=str))
    return 0


def _cmd_stats(args) -> int:
    """Decodes every image and validates every caption: counts per skip reason, sizes, lengths."""
    from blip_jax.data.image import decode_rgb, image_bytes_of
    from blip_jax.data.records import SKIP_KEY, BadRecord
    from blip_jax.data.text import caption_problem, pre_caption

    records = _load_records(args.format, args.inputs, args.image_root, args.vg_image_root, args.split)
    skipped: collections.Counter = collections.Counter(getattr(records, "skips", {}))
    n, ok, widths, heights, words, ncap = 0, 0, [], [], [], []
    for rec in records:
        if args.limit and n >= args.limit:
            break
        n += 1
        if SKIP_KEY in rec:
            skipped[rec[SKIP_KEY]] += 1
            continue
        good = [c for c in rec["captions"] if caption_problem(c) is None]
        if rec["captions"] and not good and not rec["question"]:
            skipped[caption_problem(rec["captions"][0])] += 1
            continue
        try:
            img = decode_rgb(image_bytes_of(rec)) if not args.no_decode else None
        except BadRecord as e:
            skipped[e.reason] += 1
            continue
        ok += 1
        if img is not None:
            heights.append(img.shape[0])
            widths.append(img.shape[1])
        ncap.append(len(good))
        words += [len(pre_caption(c, 10_000).split()) for c in good]

    def summary(xs):
        if not xs:
            return None
        a = np.asarray(xs)
        return {"min": int(a.min()), "median": float(np.median(a)), "mean": round(float(a.mean()), 2),
                "max": int(a.max())}

    report = {"records": n, "usable": ok, "skipped": dict(skipped), "image_width": summary(widths),
              "image_height": summary(heights), "captions_per_record": summary(ncap), "caption_words": summary(words)}
    print(json.dumps(report, indent=1))
    return 0


def _add_source_args(p):
    p.add_argument("--format", required=True,
                   choices=["blip_json", "coco_karpathy", "vqa", "webdataset", "array_record"])
    p.add_argument("inputs", nargs="+", help="annotation JSON files, tar shards or .array_record files")
    p.add_argument("--image_root", default=None, help="directory image paths are relative to")
    p.add_argument("--vg_image_root", default=None, help="vqa: root for 'dataset': 'vg' entries")
    p.add_argument("--split", default="train", help="coco_karpathy: train|val|test; vqa: train|test")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blip-jax data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write the embedded synthetic dataset (no download)")
    g.add_argument("--out", required=True)
    for name, typ in (("seed", int), ("image_size", int), ("num_web", int), ("num_coco_train", int),
                      ("num_coco_val", int), ("num_coco_test", int), ("noise_fraction", float),
                      ("questions_per_image", int), ("vg_questions", int), ("shard_size", int),
                      ("num_corrupt", int), ("jpeg_quality", int), ("captions_per_image", int)):
        g.add_argument(f"--{name}", type=typ, default=None)
    g.set_defaults(fn=_cmd_generate)

    c = sub.add_parser("convert", help="convert BLIP JSON / webdataset shards to ArrayRecord")
    _add_source_args(c)
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--name", default="data", help="shard file prefix")
    c.add_argument("--records_per_shard", type=int, default=10_000)
    c.set_defaults(fn=_cmd_convert)

    i = sub.add_parser("inspect", help="print the first records in the unified schema")
    _add_source_args(i)
    i.add_argument("-n", type=int, default=5)
    i.set_defaults(fn=_cmd_inspect)

    s = sub.add_parser("stats", help="decode everything; report skips per reason, sizes, caption lengths")
    _add_source_args(s)
    s.add_argument("--limit", type=int, default=0, help="stop after this many records (0 = all)")
    s.add_argument("--no_decode", action="store_true", help="check files and captions only")
    s.set_defaults(fn=_cmd_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
