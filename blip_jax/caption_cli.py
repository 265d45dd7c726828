"""`blip-jax caption`: caption image files with a captioning checkpoint.

    blip-jax caption --checkpoint workdir/tiny/export/captioning --tokenizer workdir/tiny/data/vocab.txt img1.jpg ...

Images go through BlipImageProcessor (the checkpoint's image size), then beam search with the
"a picture of " prompt as in BLIP's captioning evaluation; one line per image: path<TAB>caption.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="blip-jax caption", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+")
    p.add_argument("--checkpoint", required=True, help="HF-format BlipForConditionalGeneration folder / hub id / .pth")
    p.add_argument("--tokenizer", default="", help="vocab.txt / tokenizer folder (default: the checkpoint folder)")
    p.add_argument("--prompt", default="a picture of ")
    p.add_argument("--num-beams", type=int, default=3)
    p.add_argument("--max-length", type=int, default=20)
    p.add_argument("--min-length", type=int, default=5)
    args = p.parse_args(argv)

    import numpy as np
    from PIL import Image

    from blip_jax import BlipForConditionalGeneration
    from blip_jax.evaluation.captioning import strip_prompt
    from blip_jax.processing.image_processing import BlipImageProcessor
    from blip_jax.processing.tokenization import load_tokenizer

    model = BlipForConditionalGeneration.from_pretrained(args.checkpoint)
    tokenizer = load_tokenizer(args.tokenizer or args.checkpoint)
    size = model.config.vision_config.image_size
    processor = BlipImageProcessor(size={"height": size, "width": size})
    pixels = processor([Image.open(path) for path in args.images], return_tensors="np")["pixel_values"]
    prompt = tokenizer([args.prompt] * len(args.images), return_tensors="np")["input_ids"] if args.prompt else None
    ids = model.generate(pixels, input_ids=prompt, num_beams=args.num_beams, max_length=args.max_length,
                         min_length=args.min_length)
    for path, text in zip(args.images, tokenizer.batch_decode(np.asarray(ids), skip_special_tokens=True)):
        print(f"{path}\t{strip_prompt(text, args.prompt)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
