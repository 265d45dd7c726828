"""Image transforms: RandomResizedCrop + flip + RandAugment + CLIP normalisation, and eval resize.

Speed matters here (the host has to feed the accelerator), so the train path
- reads JPEG headers (size, EXIF orientation) without PIL's parser;
- decodes JPEGs with libjpeg-turbo (simplejpeg) at a reduced DCT scale 1/2^k chosen so that the
  crop window still has at least `image_size` pixels per side (no added upsampling); PIL's
  draft mode is the fallback;
- resizes the crop view with OpenCV's area filter (`_resize_crop_fast`: as close to the
  full-size PIL bicubic reference as PIL bicubic on the DCT-scaled image, at a fraction of
  the cost), flips, and runs RandAugment as whole-image OpenCV ops (histograms, lookup tables,
  affine warps: the original BLIP ops are written with cv2), integer translations as slicing;
- normalises with astype + two in-place float ops against row-tiled constants.
`benchmarks/input_pipeline.py` measures it against a naive PIL + numpy version. With
`fast_decode=False` the train path is the reference itself (full-size PIL decode, PIL bicubic
of the exact box). Evaluation always resizes with PIL bicubic (transformers' processor), after a
DCT-scaled decode of large JPEGs unless `fast_decode=False` (see EvalImageTransform).

Semantics follow BLIP (torchvision RandomResizedCrop, bicubic; BLIP's RandomAugment with ops
Identity, AutoContrast, Brightness, Sharpness, Equalize, ShearX/Y, TranslateX/Y, Rotate, each of
the N sampled ops applied with p=0.5, fill 128). Note a property of the original that we keep:
at M=5 the Brightness and Sharpness factors are (5/10)*1.8+0.1 = 1.0, i.e. identities, and
translations are 0.5 * 10 = 5 pixels (the original's translate_const is in pixels).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import cv2
import numpy as np
from PIL import Image

try:  # libjpeg-turbo with DCT-domain scaling; PIL's draft mode is the fallback
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is an install requirement
    simplejpeg = None

from blip_jax.data.image import (
    DEFAULT_MAX_PIXELS,
    TRANSPOSE_FOR_ORIENTATION,
    check_image_size,
    exif_block_orientation,
    open_image,
    orientation_to_apply,
    to_rgb,
)
from blip_jax.data.records import BadRecord

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
_NORM_SCALE = (1.0 / (255.0 * CLIP_STD)).astype(np.float32)
_NORM_SHIFT = (CLIP_MEAN / CLIP_STD).astype(np.float32)

BLIP_RANDAUG_OPS = ("Identity", "AutoContrast", "Brightness", "Sharpness", "Equalize",
                    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_MAX_LEVEL = 10.0
_TRANSLATE_CONST = 10.0  # pixels, as in the original
_FILL = (128, 128, 128)
_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that transpose width and height

# The pipeline parallelises over images (one grain worker per core); OpenCV's own thread pool
# would oversubscribe the cores and, on 224 px images, costs more to wake than it saves.
cv2.setNumThreads(1)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) in [0, 255] -> float32 (..., 3), (x / 255 - CLIP_MEAN) / CLIP_STD."""
    # astype, then in-place float ops against per-row tiled constants: numpy's mixed
    # uint8*float32 loop and a length-3 broadcast inner loop are each ~5x slower.
    images = np.asarray(images)
    if images.ndim < 2:
        raise ValueError(f"expected (..., W, 3), got {images.shape}")
    out = images.astype(np.float32)
    width = images.shape[-2]
    scale, shift = _tiled_norm(width)
    flat = out.reshape(-1, width * 3)
    flat *= scale
    flat -= shift
    return out


@functools.lru_cache(maxsize=16)
def _tiled_norm(width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.tile(_NORM_SCALE, width), np.tile(_NORM_SHIFT, width)


def denormalize(pixels: np.ndarray) -> np.ndarray:
    """Inverse of `normalize` (float32 -> uint8), for visualisation and tests."""
    x = (np.asarray(pixels, np.float32) * CLIP_STD + CLIP_MEAN) * 255.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# RandomResizedCrop parameters (torchvision semantics: 10 tries, then a ratio-clamped centre crop)


def random_resized_crop_params(rng: np.random.Generator, width: int, height: int,
                               scale: tuple[float, float] = (0.08, 1.0),
                               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """Returns (left, top, crop_width, crop_height) in pixels of a `width` x `height` image."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _open_oriented(image: bytes | np.ndarray, max_pixels: int, where: str, fast: bool):
    """-> (lazy PIL image, EXIF orientation, upright width, upright height).

    With `fast`, a JPEG whose header libjpeg-turbo reads as YCbCr or greyscale is not opened by
    PIL at all (PIL's parse costs 5% of the whole train transform): the image comes back as None
    and `_decode_upright` decodes it with simplejpeg, opening it with PIL only if that fails."""
    if isinstance(image, np.ndarray):
        img = Image.fromarray(image, "RGB")
        return img, 1, img.size[0], img.size[1]
    header = _jpeg_header(image) if fast else None
    if header is not None:
        img, (w, h, orientation) = None, header
        check_image_size(w, h, max_pixels, where)
    else:
        img = open_image(image, max_pixels, where)
        orientation = orientation_to_apply(img, where)  # a TIFF comes back loaded and upright
        w, h = img.size
    if orientation in _SWAPS_AXES:
        w, h = h, w
    return img, orientation, w, h


def _jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(stored width, stored height, EXIF orientation) of a YCbCr or greyscale JPEG; None when
    the file needs PIL (another format or colour space, or a header out of the ordinary)."""
    if simplejpeg is None or not isinstance(data, (bytes, bytearray)):
        return None
    exif = _jpeg_exif_block(data)
    if exif is None:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError):
        return None
    if colorspace not in ("YCbCr", "Gray"):
        return None
    return width, height, exif_block_orientation(exif) if exif else 1


def _jpeg_exif_block(data: bytes) -> bytes | None:
    """Walks the JPEG marker segments up to the scan: the first EXIF block (the APP1 payload
    PIL reads, b"" when there is none), or None when the walk finds anything unexpected."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, end, exif = 2, len(data), b""
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the header is over
            return exif
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length field
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xE1 and not exif and data[pos + 4:pos + 10] == b"Exif\x00\x00":
            exif = data[pos + 4:pos + 2 + length]
        pos += 2 + length
    return None


def _scaled_jpeg(data: bytes, min_w: int, min_h: int) -> np.ndarray | None:
    """libjpeg-turbo decode at the smallest DCT scale (M/8) keeping >= min_w x min_h; None
    when the file needs the general path (CMYK, progressive oddities, warnings, corruption:
    PIL then decides the skip reason)."""
    if simplejpeg is None:
        return None
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=min_w, min_height=min_h, strict=True)
    except (ValueError, RuntimeError):
        return None


# DCT scales (in eighths) tried before full size. The fractional ones (3/8, 5/8, 6/8) use slower,
# less exact IDCTs: with the OpenCV resize after them they neither speed up the train transform
# nor keep it as close to the full-size reference (mean 2.7 vs 1.3 grey levels on 640x480 JPEGs at
# 224; benchmarks/input_pipeline.py). 1/2^k also leaves 640x480 images at 384 untouched, so
# evaluation inputs stay those of the reference PIL pipeline on COCO-size images.
_DCT_EIGHTHS = (1, 2, 4)


def _dct_eighths(raw_w: int, raw_h: int, req_w: int, req_h: int) -> int:
    """The smallest M in _DCT_EIGHTHS whose M/8 decode (libjpeg size: ceil(raw * M / 8)) still
    has req_w x req_h pixels; 8 (full size) when none does."""
    for m in _DCT_EIGHTHS:
        if -(-raw_w * m // 8) >= req_w and -(-raw_h * m // 8) >= req_h:
            return m
    return 8


def _decode_upright(img: Image.Image | None, data: bytes | np.ndarray, orientation: int, width: int,
                    height: int, box: tuple[float, float, float, float], out_w: int, out_h: int, fast: bool,
                    where: str) -> np.ndarray | Image.Image:
    """Decodes the image (upright size width x height) to upright RGB pixels.

    `img` is the lazily opened PIL image, or None for a JPEG known from its header only (see
    `_open_oriented`). With `fast`, JPEGs decode at the smallest DCT scale M/8 (M in _DCT_EIGHTHS)
    that leaves the upright `box` at least out_w x out_h pixels, as a uint8 (H', W', 3) array
    (libjpeg-turbo via simplejpeg; PIL's draft mode where simplejpeg refuses the file). Anything
    else decodes at full size, as a PIL image."""
    decoded = None
    if fast and (img is None or img.format == "JPEG") and isinstance(data, (bytes, bytearray)):
        req_w = math.ceil(width * out_w / max(box[2] - box[0], 1e-6))
        req_h = math.ceil(height * out_h / max(box[3] - box[1], 1e-6))
        if orientation in _SWAPS_AXES:
            req_w, req_h = req_h, req_w
        if img is None or img.mode in ("RGB", "L"):
            if img is not None:
                raw_w, raw_h = img.size
            else:
                raw_w, raw_h = (height, width) if orientation in _SWAPS_AXES else (width, height)
            eighths = _dct_eighths(raw_w, raw_h, req_w, req_h)
            decoded = _scaled_jpeg(data, -(-raw_w * eighths // 8), -(-raw_h * eighths // 8))
        if decoded is None:
            if img is None:  # its header already passed the pixel budget
                img = open_image(data, width * height, where)
            try:
                img.draft("RGB", (req_w, req_h))
            except (OSError, ValueError) as e:
                raise BadRecord("decode_error", f"{where} draft: {e}") from None
    if decoded is None:
        decoded = to_rgb(img, where)
    if orientation in TRANSPOSE_FOR_ORIENTATION:
        if isinstance(decoded, np.ndarray):
            decoded = Image.fromarray(decoded, "RGB")
        decoded = decoded.transpose(TRANSPOSE_FOR_ORIENTATION[orientation])
    return decoded


def _resize_exact(pixels: np.ndarray | Image.Image, width: int, height: int,
                  box: tuple[float, float, float, float], out_w: int, out_h: int, where: str) -> np.ndarray:
    """The upright `box` (in width x height coordinates) of the decoded pixels, cropped and then
    PIL-bicubic resized to (out_h, out_w, 3): exactly torchvision's resized_crop (img.crop(box)
    .resize(size, BICUBIC)) and transformers' resize at full size. Cropping first matters:
    resize(box=...) would let the filter read pixels outside the box into the border rows."""
    img = Image.fromarray(pixels, "RGB") if isinstance(pixels, np.ndarray) else pixels
    sx, sy = img.size[0] / width, img.size[1] / height
    scaled = (round(box[0] * sx), round(box[1] * sy), min(round(box[2] * sx), img.size[0]),
              min(round(box[3] * sy), img.size[1]))
    try:
        if scaled != (0, 0, img.size[0], img.size[1]):
            img = img.crop(scaled)
        return np.asarray(img.resize((out_w, out_h), Image.Resampling.BICUBIC))
    except (OSError, ValueError) as e:  # lazily surfaced decoder errors
        raise BadRecord("decode_error", f"{where} resize: {e}") from None


def _resize_crop_fast(pixels: np.ndarray | Image.Image, width: int, height: int,
                      box: tuple[float, float, float, float], out_w: int, out_h: int) -> np.ndarray:
    """Training crop: the upright `box` of the decoded pixels, rounded to whole decoded pixels
    (a shift of under one decoded pixel, immaterial for a random crop), resized with OpenCV's
    area filter when it shrinks (cubic when it grows) to (out_h, out_w, 3).

    PIL's bicubic resize was 30% of the whole train transform. After a DCT-scaled decode, the
    area filter lands as close to the full-size PIL bicubic reference as PIL bicubic itself does
    (mean 1.3 grey levels on 640x480 JPEGs cropped to 224), at a fraction of the cost;
    evaluation keeps `_resize_exact`."""
    arr = np.asarray(pixels)
    h, w = arr.shape[:2]
    sx, sy = w / width, h / height
    x0 = min(int(round(box[0] * sx)), w - 1)
    y0 = min(int(round(box[1] * sy)), h - 1)
    x1 = max(min(int(round(box[2] * sx)), w), x0 + 1)
    y1 = max(min(int(round(box[3] * sy)), h), y0 + 1)
    shrinks = x1 - x0 >= out_w and y1 - y0 >= out_h
    return cv2.resize(arr[y0:y1, x0:x1], (out_w, out_h), interpolation=cv2.INTER_AREA if shrinks else cv2.INTER_CUBIC)


# ---------------------------------------------------------------------------------------------
# RandAugment ops on uint8 (H, W, 3) arrays.


def _lut(img: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """Applies per-channel lookup tables (3, 256) in one C pass."""
    lut = np.ascontiguousarray(np.asarray(tables, np.uint8).T).reshape(256, 1, 3)
    return cv2.LUT(np.ascontiguousarray(img), lut)


def _histogram(img: np.ndarray) -> np.ndarray:
    """(3, 256) int64 per-channel histograms."""
    img = np.ascontiguousarray(img)
    return np.stack([cv2.calcHist([img], [c], None, [256], [0, 256]).reshape(256) for c in range(3)]).astype(np.int64)


def autocontrast(img: np.ndarray) -> np.ndarray:
    """Same output as PIL.ImageOps.autocontrast(cutoff=0)."""
    # Deliberately unlike the original BLIP: its `offset = -low * scale` negates a uint8 scalar, which
    # wraps, so every channel whose minimum is above 0 comes out all white; we match PIL instead.
    hist = _histogram(img)
    present = hist > 0
    lo = np.argmax(present, axis=1).astype(np.float64)
    hi = (255 - np.argmax(present[:, ::-1], axis=1)).astype(np.float64)
    ramp = np.arange(256, dtype=np.float64)
    tables = np.empty((3, 256), np.uint8)
    for c in range(3):
        if hi[c] <= lo[c]:
            tables[c] = ramp
        else:
            scale = 255.0 / (hi[c] - lo[c])
            tables[c] = np.clip(ramp * scale - lo[c] * scale, 0, 255).astype(np.uint8)
    return _lut(img, tables)


def equalize(img: np.ndarray) -> np.ndarray:
    """Same output as PIL.ImageOps.equalize."""
    hist = _histogram(img)
    tables = np.empty((3, 256), np.uint8)
    for c in range(3):
        h = hist[c]
        nonzero = h[h != 0]
        step = (int(nonzero.sum()) - int(nonzero[-1])) // 255 if nonzero.size > 1 else 0
        if step == 0:
            tables[c] = np.arange(256)
        else:
            n = np.concatenate([[step // 2], h[:-1]]).cumsum()
            tables[c] = np.clip(n // step, 0, 255)
    return _lut(img, tables)


def brightness(img: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return img
    table = np.clip(np.arange(256, dtype=np.float32) * factor, 0, 255).astype(np.uint8)
    return _lut(img, np.broadcast_to(table, (3, 256)))


def sharpness(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with a 3x3 smoothed copy (kernel [[1,1,1],[1,5,1],[1,1,1]]/13), borders kept."""
    if factor == 1.0:
        return img
    x = img.astype(np.int32)
    h, w = x.shape[:2]
    acc = 4 * x[1:-1, 1:-1]
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            acc += x[dy:dy + h - 2, dx:dx + w - 2]
    smooth = np.floor(acc / 13.0 + 0.5)
    out = img.copy()
    inner = smooth + factor * (x[1:-1, 1:-1] - smooth)
    out[1:-1, 1:-1] = np.clip(inner, 0, 255).astype(np.uint8)
    if factor == 0.0:
        out[1:-1, 1:-1] = smooth.astype(np.uint8)
    return out


def affine_cv2(img: np.ndarray, matrix, fill=_FILL) -> np.ndarray:
    """cv2.warpAffine(img, matrix, bilinear, constant border `fill`), as the original BLIP ops.

    `matrix` (2, 3) maps source to destination pixel coordinates (OpenCV's integer-pixel-centre
    convention)."""
    img = np.ascontiguousarray(img)
    h, w = img.shape[:2]
    return cv2.warpAffine(img, np.asarray(matrix, np.float64), (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(float(v) for v in fill))


def _shift(img: np.ndarray, offset: float, axis: int, fill) -> np.ndarray | None:
    """Exact integer translation by slicing (bilinear at integer offsets is a copy); None when
    `offset` is fractional. out[..., x, ...] = src[..., x + offset, ...], `fill` outside."""
    k = int(offset)
    if k != offset:
        return None
    fill = np.asarray(fill, np.uint8)
    n = img.shape[axis]
    if abs(k) >= n:
        return np.broadcast_to(fill, img.shape).copy()
    out = np.empty_like(img)
    dst = [slice(None)] * 3
    src = [slice(None)] * 3
    dst[axis] = slice(max(0, -k), n - max(0, k))
    src[axis] = slice(max(0, k), n - max(0, -k))
    out[tuple(dst)] = img[tuple(src)]
    # only the uncovered strip gets the fill (a whole-image length-3 broadcast costs 50x the copy)
    dst[axis] = slice(n - k, n) if k > 0 else slice(0, -k)
    out[tuple(dst)] = fill
    return out


def shear_x(img, factor, fill=_FILL):
    """cv2 matrix [[1, factor, 0], [0, 1, 0]]: row y moves right by factor * y."""
    return affine_cv2(img, [[1, factor, 0], [0, 1, 0]], fill)


def shear_y(img, factor, fill=_FILL):
    return affine_cv2(img, [[1, 0, 0], [factor, 1, 0]], fill)


def translate_x(img, offset, fill=_FILL):
    """cv2 matrix [[1, 0, -offset], [0, 1, 0]]: content moves left by `offset` pixels."""
    out = _shift(img, offset, 1, fill)
    return affine_cv2(img, [[1, 0, -offset], [0, 1, 0]], fill) if out is None else out


def translate_y(img, offset, fill=_FILL):
    out = _shift(img, offset, 0, fill)
    return affine_cv2(img, [[1, 0, 0], [0, 1, -offset]], fill) if out is None else out


def rotate(img, degrees, fill=_FILL):
    """Counter-clockwise by `degrees` about (W/2, H/2), like cv2.getRotationMatrix2D."""
    h, w = img.shape[:2]
    cx, cy = w / 2.0, h / 2.0
    al, be = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    m = [[al, be, (1 - al) * cx - be * cy], [-be, al, be * cx + (1 - al) * cy]]
    return affine_cv2(img, m, fill)


@dataclasses.dataclass(frozen=True)
class RandAugment:
    """BLIP's RandomAugment(N, M): N ops drawn with replacement, each applied with prob `p`."""

    num_ops: int = 2
    magnitude: float = 5
    ops: tuple[str, ...] = BLIP_RANDAUG_OPS
    p: float = 0.5
    fill: tuple[int, int, int] = _FILL

    def __post_init__(self):
        unknown = set(self.ops) - set(BLIP_RANDAUG_OPS)
        if unknown:
            raise ValueError(f"unknown RandAugment ops {sorted(unknown)}")

    def _signed(self, rng: np.random.Generator, value: float) -> float:
        # The original flips the sign when random() > 0.5 (rotate: < 0.5); either is a fair coin.
        return -value if rng.random() > 0.5 else value

    def apply_op(self, name: str, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        level = self.magnitude / _MAX_LEVEL
        if name == "Identity":
            return img
        if name == "AutoContrast":
            return autocontrast(img)
        if name == "Equalize":
            return equalize(img)
        if name == "Brightness":
            return brightness(img, level * 1.8 + 0.1)
        if name == "Sharpness":
            return sharpness(img, level * 1.8 + 0.1)
        if name == "ShearX":
            return shear_x(img, self._signed(rng, level * 0.3), self.fill)
        if name == "ShearY":
            return shear_y(img, self._signed(rng, level * 0.3), self.fill)
        if name == "TranslateX":
            return translate_x(img, self._signed(rng, level * _TRANSLATE_CONST), self.fill)
        if name == "TranslateY":
            return translate_y(img, self._signed(rng, level * _TRANSLATE_CONST), self.fill)
        if name == "Rotate":
            return rotate(img, self._signed(rng, level * 30.0), self.fill)
        raise ValueError(name)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 (H, W, 3) -> uint8 (H, W, 3)."""
        chosen = rng.integers(0, len(self.ops), size=self.num_ops)
        for k in chosen:
            if rng.random() > self.p:
                continue
            img = self.apply_op(self.ops[int(k)], img, rng)
        return img


# ---------------------------------------------------------------------------------------------
# Composed transforms used by the pipelines.


@dataclasses.dataclass(frozen=True)
class TrainImageTransform:
    """Encoded bytes or uint8 (H, W, 3) -> (S, S, 3): float32 CLIP-normalised, or uint8 when
    `normalize=False`. Randomness only from the `rng` argument (deterministic per element)."""

    image_size: int = 224
    min_scale: float = 0.5
    max_scale: float = 1.0
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    randaugment: RandAugment | None = dataclasses.field(default_factory=RandAugment)
    normalize: bool = True
    fast_decode: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __call__(self, image: bytes | np.ndarray, rng: np.random.Generator, where: str = "") -> np.ndarray:
        img, orientation, w, h = _open_oriented(image, self.max_pixels, where, self.fast_decode)
        left, top, cw, ch = random_resized_crop_params(rng, w, h, (self.min_scale, self.max_scale),
                                                       self.ratio)
        s = self.image_size
        box = (left, top, left + cw, top + ch)
        pixels = _decode_upright(img, image, orientation, w, h, box, s, s, self.fast_decode, where)
        if self.fast_decode:
            arr = _resize_crop_fast(pixels, w, h, box, s, s)
        else:  # the reference: torchvision's RandomResizedCrop on a full-size PIL image
            arr = _resize_exact(pixels, w, h, box, s, s, where)
        if self.hflip and rng.random() < 0.5:
            arr = cv2.flip(np.ascontiguousarray(arr), 1)
        if self.randaugment is not None:
            arr = self.randaugment(arr, rng)
        return normalize(arr) if self.normalize else np.ascontiguousarray(arr)


@dataclasses.dataclass(frozen=True)
class EvalImageTransform:
    """Encoded bytes or uint8 (H, W, 3) -> (S, S, 3): resize to (S, S) bicubic (aspect not
    kept, as BLIP's eval transform), then CLIP-normalised float32 (or uint8).

    `fast_decode=False` is the original BLIP exactly: full-size PIL decode, PIL bicubic resize.
    With `fast_decode=True` a YCbCr/greyscale JPEG decodes at the smallest DCT scale 1/2 or 1/4
    that keeps both sides >= S; when there is none, i.e. when the stored width or height is under
    2 x S (COCO's 640x480 at S = 384 or 480; Flickr30k's 500 px images at 224 or 384), it decodes
    at full size and the output equals the exact path bit for bit. Otherwise (COCO at 224, larger
    photos) it differs by a mean 1.3-1.5 and up to ~15 grey levels. Other formats always decode at
    full size."""

    image_size: int = 384
    normalize: bool = True
    fast_decode: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __call__(self, image: bytes | np.ndarray, rng: np.random.Generator | None = None,
                 where: str = "") -> np.ndarray:
        del rng
        img, orientation, w, h = _open_oriented(image, self.max_pixels, where, self.fast_decode)
        s = self.image_size
        pixels = _decode_upright(img, image, orientation, w, h, (0, 0, w, h), s, s, self.fast_decode, where)
        out = _resize_exact(pixels, w, h, (0, 0, w, h), s, s, where)
        return normalize(out) if self.normalize else np.ascontiguousarray(out)
