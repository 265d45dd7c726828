"""Input-pipeline speed: images/s per CPU core for the BLIP train transform on JPEGs.

Measures, in one run and on the same JPEG bytes and crop/flip/op draws,
  fast : blip_jax.data.transforms.TrainImageTransform (header read without PIL, DCT-scaled JPEG
         decode, OpenCV resize of the crop view, whole-array OpenCV RandAugment, fused
         normalisation), and
  naive: the same pipeline written directly with PIL + numpy (full decode, crop then resize,
         PIL ImageOps/ImageEnhance/transform ops, float normalisation),
then prints the ratio and how many cores feed one accelerator at a given training step rate, and
how far the fast crops are from the reference ones (full-size PIL decode and PIL bicubic of the
same boxes, i.e. torchvision's RandomResizedCrop) in mean absolute grey levels.

Images are synthetic (no download): photo-like multi-scale colour fields, shapes and noise, q90, at
COCO size (640x480) and at a typical large web size (1280x960).

    python benchmarks/input_pipeline.py [--image_size 224] [--min_scale 0.2] [--seconds 3]
        [--step_images_per_s 1500]
"""

from __future__ import annotations

import argparse
import io
import math
import time

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from blip_jax.data import transforms as T

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def make_jpegs(n: int, width: int, height: int, seed: int = 0, exif: bool = False) -> list[bytes]:
    """Photo-like JPEGs: 1/f-style multi-scale colour fields, a few hard-edged shapes and mild
    sensor noise, quality 90 (~0.37 bytes/pixel; COCO averages ~0.5). With `exif`, each carries
    a camera-style EXIF block (orientation 1), which the fast path parses for the orientation."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        acc = np.zeros((height, width, 3), np.float32)
        for cell, amp in ((256, 90.0), (64, 45.0), (16, 25.0), (4, 18.0), (2, 10.0)):
            small = rng.normal(0, 1, (height // cell + 2, width // cell + 2, 3)).astype(np.float32)
            up = [np.asarray(Image.fromarray(small[..., c], "F").resize((width, height), Image.Resampling.BICUBIC))
                  for c in range(3)]
            acc += amp * np.stack(up, -1)
        acc += 128 + rng.normal(0, 8, acc.shape).astype(np.float32)
        img = Image.fromarray(np.clip(acc, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
            x1, y1 = x0 + int(rng.integers(20, width // 3)), y0 + int(rng.integers(20, height // 3))
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=color)
        buf = io.BytesIO()
        tags = Image.Exif()
        if exif:
            tags[0x0112], tags[0x010F], tags[0x0110] = 1, "Camera maker", "Camera model"
        img.save(buf, "JPEG", quality=90, exif=tags)
        out.append(buf.getvalue())
    return out


def naive_transform(data: bytes, rng: np.random.Generator, size: int, scale, ratio=(3 / 4, 4 / 3)):
    """What one writes first with PIL + numpy (same semantics as the fast path)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    left, top, cw, ch = T.random_resized_crop_params(rng, w, h, scale, ratio)
    img = img.crop((left, top, left + cw, top + ch)).resize((size, size), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    ops = T.BLIP_RANDAUG_OPS
    for k in rng.integers(0, len(ops), size=2):
        if rng.random() > 0.5:
            continue
        name = ops[int(k)]
        fill = (128, 128, 128)
        if name == "AutoContrast":
            img = ImageOps.autocontrast(img)
        elif name == "Equalize":
            img = ImageOps.equalize(img)
        elif name == "Brightness":
            img = ImageEnhance.Brightness(img).enhance(1.0)
        elif name == "Sharpness":
            img = ImageEnhance.Sharpness(img).enhance(1.0)
        elif name in ("ShearX", "ShearY"):
            v = -0.15 if rng.random() > 0.5 else 0.15
            coeffs = (1, -v, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, -v, 1, 0)
            img = img.transform(img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR,
                                fillcolor=fill)
        elif name in ("TranslateX", "TranslateY"):
            v = -5.0 if rng.random() > 0.5 else 5.0
            coeffs = (1, 0, v, 0, 1, 0) if name == "TranslateX" else (1, 0, 0, 0, 1, v)
            img = img.transform(img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR,
                                fillcolor=fill)
        elif name == "Rotate":
            v = -15.0 if rng.random() > 0.5 else 15.0
            img = img.rotate(v, Image.Resampling.BILINEAR, fillcolor=fill)
    x = np.asarray(img, dtype=np.float32) / 255.0
    return (x - MEAN) / STD


def crop_fidelity(datas: list[bytes], size: int, min_scale: float) -> float:
    """Mean |fast - reference| (uint8 grey levels) of the crop + resize alone, same crop boxes."""
    kw = dict(min_scale=min_scale, hflip=False, randaugment=None, normalize=False)
    fast = T.TrainImageTransform(size, fast_decode=True, **kw)
    reference = T.TrainImageTransform(size, fast_decode=False, **kw)
    diffs = []
    for i, d in enumerate(datas):
        ours = fast(d, np.random.default_rng(i)).astype(np.float32)
        diffs.append(np.abs(ours - reference(d, np.random.default_rng(i))).mean())
    return float(np.mean(diffs))


def rate(fn, datas, seconds: float, seed: int) -> float:
    """Images/s on one core (single thread), after one warm-up pass."""
    rng = np.random.default_rng(seed)
    for d in datas[:4]:
        fn(d, rng)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for d in datas:
            fn(d, rng)
        n += len(datas)
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--min_scale", type=float, default=0.2, help="0.2 pretraining, 0.5 fine-tuning")
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement; alternated 3 times")
    p.add_argument("--num_images", type=int, default=24)
    p.add_argument("--step_images_per_s", type=float, default=1500.0,
                   help="accelerator training-step throughput to feed (images/s); ViT-B/16 BLIP "
                        "pretraining at 224 on one H100 is of this order")
    args = p.parse_args(argv)
    s = args.image_size
    fast = T.TrainImageTransform(s, min_scale=args.min_scale)
    fast_fn = lambda d, rng: fast(d, rng)
    naive_fn = lambda d, rng: naive_transform(d, rng, s, (args.min_scale, 1.0))
    print(f"train transform at {s}px, RandomResizedCrop scale=({args.min_scale}, 1), flip, "
          f"RandAugment(2, 5), normalise; single thread = one core")
    print(f"{'JPEG size':>15} {'naive img/s':>12} {'fast img/s':>11} {'ratio':>6}")
    results = []
    for w, h, exif in ((640, 480, False), (640, 480, True), (1280, 960, False)):
        datas = make_jpegs(args.num_images, w, h, exif=exif)
        naive_rates, fast_rates = [], []
        for rep in range(3):  # alternate to share machine noise between the two
            naive_rates.append(rate(naive_fn, datas, args.seconds, rep))
            fast_rates.append(rate(fast_fn, datas, args.seconds, rep))
        nr, fr = float(np.median(naive_rates)), float(np.median(fast_rates))
        name = f"{w}x{h}" + (" EXIF" if exif else "")
        results.append((name, nr, fr))
        print(f"{name:>15} {nr:>12.1f} {fr:>11.1f} {fr / nr:>5.2f}x   fast vs reference crops: "
              f"{crop_fidelity(datas, s, args.min_scale):.2f} grey levels (mean |diff|)")
    for name, nr, fr in results:
        print(f"cores to feed {args.step_images_per_s:.0f} img/s ({name} JPEGs): "
              f"fast {math.ceil(args.step_images_per_s / fr)}, naive {math.ceil(args.step_images_per_s / nr)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
