"""`blip-jax convert`: checkpoint conversion to an HF-format folder (safetensors + config.json).

    blip-jax convert --from model_base_capfilt_large.pth --class BlipForConditionalGeneration --out blip-cap/
    blip-jax convert --from Salesforce/blip-itm-base-coco --class BlipForImageTextRetrieval --out itm/ --dtype bfloat16

Sources: HF folders or hub ids (safetensors or pytorch_model.bin), original Salesforce .pth files.
The output loads in transformers and in blip-jax with identical outputs.
"""

from __future__ import annotations

import argparse
import logging
import sys

CLASSES = ("BlipModel", "BlipForConditionalGeneration", "BlipForImageTextRetrieval", "BlipForQuestionAnswering",
           "BlipVisionModel", "BlipTextModel")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blip-jax convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, help="HF folder / hub id / Salesforce .pth")
    parser.add_argument("--class", dest="cls", required=True, choices=CLASSES)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", default="", help="config.json for a .pth whose architecture is not inferred")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import blip_jax

    cls = getattr(blip_jax, args.cls)
    kwargs = {"config": cls.config_class.from_json_file(args.config)} if args.config else {}
    model, info = cls.from_pretrained(args.source, output_loading_info=True, **kwargs)
    model.save_pretrained(args.out)
    print(f"wrote {args.out} ({args.cls}); {len(info.missing_keys)} weights were not in the source "
          f"(randomly initialised), {len(info.unexpected_keys)} unused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
