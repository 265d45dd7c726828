"""Image decoding to RGB uint8 with every bad-input case mapped to a skip reason.

Handles grayscale, bilevel, palette (with or without transparency), RGBA/LA (composited over
white, as a viewer would show them; plain `.convert("RGB")` turns transparent pixels into
arbitrary colours, often black), CMYK, 16/32-bit integer and float images (rescaled, not
clipped), multi-frame files (first frame) and the EXIF orientation tag.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image

from blip_jax.data.records import BadRecord

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb threshold (~0.25 GiB of RGB)
_EXIF_ORIENTATION = 0x0112


def read_image_bytes(path: str) -> bytes:
    """Reads a file; missing/unreadable -> BadRecord('missing_image'), zero bytes -> 'empty_image'."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError) as e:
        raise BadRecord("missing_image", f"{path}: {e.__class__.__name__}") from None
    if not data:
        raise BadRecord("empty_image", path)
    return data


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, where: str = "") -> Image.Image:
    """Opens (header only, lazily) encoded image bytes and checks the pixel budget.

    Raises BadRecord: empty_image, decode_error, image_too_large."""
    if data is None or len(data) == 0:
        raise BadRecord("empty_image", where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise BadRecord("image_too_large", where) from None
    except Image.UnidentifiedImageError as e:
        raise BadRecord("decode_error", f"{where} {e}") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError) as e:
        # a header cut short ("Truncated File Read") is truncation, not a foreign format
        reason = "truncated_image" if "truncat" in str(e).lower() else "decode_error"
        raise BadRecord(reason, f"{where} {e}") from None
    check_image_size(*img.size, max_pixels, where)
    return img


def check_image_size(width: int, height: int, max_pixels: int, where: str = "") -> None:
    """Raises BadRecord decode_error for an empty size, image_too_large beyond the pixel budget."""
    if width <= 0 or height <= 0:
        raise BadRecord("decode_error", f"{where} size {(width, height)}")
    if width * height > max_pixels:
        raise BadRecord("image_too_large", f"{where} {width}x{height} > {max_pixels} pixels")


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright) without decoding pixels."""
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # malformed EXIF blocks are common on the web; treat as upright
        return 1


TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # what ImageOps.exif_transpose does for each EXIF orientation


def orientation_to_apply(img: Image.Image, where: str = "") -> int:
    """The EXIF orientation still to apply to `img`'s decoded pixels. Pillow's TIFF plugin
    transposes TIFFs itself when it loads them (and drops the tag), so a TIFF is loaded here and
    reports what is left (1); other formats are not decoded (header only)."""
    if img.format == "TIFF":
        load_pixels(img, where)
    return exif_orientation(img)


def exif_block_orientation(block: bytes) -> int:
    """The EXIF orientation tag of a raw EXIF block (a JPEG's APP1 payload, as PIL stores it in
    `info["exif"]`), parsed by PIL; 1 for a malformed block, as in `exif_orientation`."""
    tags = Image.Exif()
    try:
        tags.load(block)
        return int(tags.get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:
        return 1


def load_pixels(img: Image.Image, where: str = "") -> Image.Image:
    """Decodes pixel data, mapping decoder failures to skip reasons."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except OSError as e:
        msg = str(e).lower()
        reason = "truncated_image" if ("truncat" in msg or "premature" in msg) else "decode_error"
        raise BadRecord(reason, f"{where} {e}") from None
    except (SyntaxError, ValueError, TypeError, EOFError, Image.DecompressionBombError) as e:
        raise BadRecord("decode_error", f"{where} {e}") from None
    return img


def _rescale_to_uint8(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64)
    hi = float(arr.max()) if arr.size else 0.0
    if hi > 255.0:
        # 16-bit data (0..65535) maps by 1/257 so that white stays white.
        arr = arr / (257.0 if hi <= 65535.0 else hi / 255.0)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image, where: str = "") -> Image.Image:
    """Any PIL mode -> decoded 'RGB' image (see the module docstring for the policy)."""
    load_pixels(img, where)
    mode = img.mode
    if mode == "RGB":
        return img
    try:
        if mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
            mode = "RGBA"
        if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        if mode.startswith("I") or mode == "F":
            gray = _rescale_to_uint8(np.asarray(img))
            if gray.ndim == 3:  # multi-channel 16-bit (rare; e.g. some TIFFs)
                gray = gray[..., :3] if gray.shape[-1] >= 3 else gray[..., :1].repeat(3, -1)
                return Image.fromarray(np.ascontiguousarray(gray), "RGB")
            return Image.fromarray(gray, "L").convert("RGB")
        return img.convert("RGB")
    except (OSError, ValueError) as e:
        raise BadRecord("decode_error", f"{where} convert from {mode}: {e}") from None


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, where: str = "") -> np.ndarray:
    """Encoded bytes -> upright RGB uint8 array (H, W, 3). Raises BadRecord on bad input."""
    img = open_image(data, max_pixels, where)
    # read before converting: RGBA/LA/P-with-transparency are composited into a new image without
    # the EXIF block, so ImageOps.exif_transpose on the converted image would see no orientation
    orientation = orientation_to_apply(img, where)
    img = to_rgb(img, where)
    if orientation in TRANSPOSE_FOR_ORIENTATION:
        img = img.transpose(TRANSPOSE_FOR_ORIENTATION[orientation])
    return np.asarray(img)


def image_bytes_of(record: dict, image_root: str | None = None) -> bytes | np.ndarray:
    """The record's image as encoded bytes (read lazily from `image_path`) or a uint8 array."""
    image = record.get("image")
    if image is not None:
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
                raise BadRecord("decode_error", f"array image of shape {image.shape} {image.dtype}")
            return image
        if len(image) == 0:
            raise BadRecord("empty_image", record.get("image_key", ""))
        return bytes(image)
    path = record.get("image_path")
    if not path:
        raise BadRecord("missing_image", f"record {record.get('image_key', '')} has no image")
    if image_root and not os.path.isabs(path):
        path = os.path.join(image_root, path)
    return read_image_bytes(path)
