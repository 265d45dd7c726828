"""BLIP image preprocessing: convert to RGB -> resize (PIL, bicubic) -> rescale -> normalise.

Numerically this follows transformers' PIL-backend ``BlipImageProcessor`` step by step (same PIL
calls, same float64/float32 casts), so outputs agree to float32 rounding with the reference. The one
deliberate difference is the layout: ``pixel_values`` come out channels-last, (B, H, W, 3), which is
what the Flax vision model consumes (see DESIGN.md); pass ``data_format="channels_first"`` to get
transformers' (B, 3, H, W).

Quirks kept on purpose because the reference has them:
  * Float arrays in [0, 1] are quantised to uint8 (truncating, not rounding) for the PIL resize and
    then rescaled by ``rescale_factor`` *again* unless ``do_rescale=False`` is passed; a warning says so.
  * PIL images with an alpha band (RGBA, LA, PA) or a palette transparency are composited onto white;
    every other mode (L, P, CMYK, I;16, I, F, 1, YCbCr, ...) goes through ``Image.convert("RGB")``,
    which saturates 16-bit and float images at 255 just as the reference does.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

IMAGE_PROCESSOR_NAME = "preprocessor_config.json"
# transformers >= 5 nests the image-processor config inside the processor config instead.
PROCESSOR_NAME = "processor_config.json"

# Keys transformers writes that carry no preprocessing semantics here.
_METADATA_KEYS = {"image_processor_type", "processor_class", "feature_extractor_type", "_processor_class"}
# Keys transformers understands that BLIP's processor leaves off; accepted only at their neutral value.
_NEUTRAL_KEYS = {"do_center_crop": False, "do_pad": False}

_RESAMPLE_NAMES = {r.name.lower(): int(r) for r in PIL.Image.Resampling}


class BatchFeature(dict):
    """A dict with attribute access (``out.pixel_values``), like transformers' BatchFeature."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _normalize_size(size: Any) -> dict[str, int]:
    """Return ``{"height": h, "width": w}`` from an int (square), an (h, w) pair or a dict."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return {"height": int(size), "width": int(size)}
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return {"height": int(size[0]), "width": int(size[1])}
    if isinstance(size, dict):
        if set(size) >= {"height", "width"}:
            return {"height": int(size["height"]), "width": int(size["width"])}
    # Aspect-preserving sizes (shortest_edge, ...) are rejected: BLIP checkpoints all use a fixed square.
    raise ValueError(f"size must be an int, an (height, width) pair or {{'height', 'width'}}, got {size!r}")


def _normalize_resample(resample: Any) -> int:
    if isinstance(resample, str):
        key = resample.lower()
        if key not in _RESAMPLE_NAMES:
            raise ValueError(
                f"Unknown resample filter {resample!r}; expected one of {sorted(_RESAMPLE_NAMES)}"
            )
        return _RESAMPLE_NAMES[key]
    value = int(resample)
    if value not in _RESAMPLE_NAMES.values():
        raise ValueError(f"Unknown PIL resample filter id {resample!r}")
    return value


def _flatten_images(images: Any) -> list[Any]:
    """Flatten a single image / list / nested list / 4-D batch array into a flat list of images."""
    if isinstance(images, PIL.Image.Image):
        return [images]
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("Got an empty list of images")
        flat: list[Any] = []
        for item in images:
            flat.extend(_flatten_images(item) if isinstance(item, (list, tuple)) else [item])
        return flat
    if isinstance(images, np.ndarray) or hasattr(images, "__array__"):
        arr = np.asarray(images)
        # A 4-D array is a batch of 3-D images, as in transformers.
        return list(arr) if arr.ndim == 4 else [arr]
    raise TypeError(
        f"Unsupported image type {type(images).__module__}.{type(images).__qualname__}: expected a "
        "PIL.Image.Image, a numpy array ((H, W), (H, W, C) or (C, H, W)), an object with __array__ "
        "(jax/torch arrays) or a list of these. Open files with PIL.Image.open first."
    )


def _infer_channels_last(arr: np.ndarray, input_data_format: str | None) -> bool:
    """Whether a 3-D array is (H, W, C). Ambiguous shapes go channels-first, as in transformers."""
    if input_data_format is not None:
        if input_data_format not in ("channels_first", "channels_last"):
            raise ValueError(
                f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}"
            )
        return input_data_format == "channels_last"
    if arr.shape[0] in (1, 3, 4):
        return False
    if arr.shape[-1] in (1, 3, 4):
        return True
    raise ValueError(
        f"Cannot tell the channel axis of an image of shape {arr.shape}: neither the first nor the last axis "
        "has 1, 3 or 4 entries. Pass input_data_format='channels_first' or 'channels_last'."
    )


def _pil_to_rgb(image: PIL.Image.Image) -> np.ndarray:
    """PIL image (any mode) -> (H, W, 3) uint8, compositing transparency onto white."""
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(PIL.Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(image.convert("RGB"))


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    """(H, W, C) array -> (H, W, 3) for C in {1, 4}; other channel counts pass through unchanged."""
    channels = arr.shape[-1]
    if channels == 1:
        return np.repeat(arr, 3, axis=-1)
    if channels == 4:
        if np.issubdtype(arr.dtype, np.floating) and (arr.min() < 0.0 or arr.max() > 1.0):
            raise ValueError(
                f"An RGBA float image must have values in [0, 1] to be composited onto white, "
                f"got [{arr.min()}, {arr.max()}]"
            )
        white = 255 if np.issubdtype(arr.dtype, np.integer) else 1.0
        alpha = arr[..., 3:4] / white
        blended = alpha * arr[..., :3] + (1 - alpha) * white
        return np.round(blended).astype(arr.dtype) if white == 255 else blended.astype(arr.dtype)
    return arr


def _to_hwc(image: Any, do_convert_rgb: bool, input_data_format: str | None) -> np.ndarray:
    """One input image -> a channels-last (H, W, C) array (C = 3 after RGB conversion)."""
    if isinstance(image, PIL.Image.Image):
        if do_convert_rgb:
            return _pil_to_rgb(image)
        arr = np.array(image)
        return arr[..., None] if arr.ndim == 2 else arr
    if not (isinstance(image, np.ndarray) or hasattr(image, "__array__")) or isinstance(image, (str, bytes)):
        raise TypeError(
            f"Unsupported image type {type(image).__module__}.{type(image).__qualname__}: expected a "
            "PIL.Image.Image or an array ((H, W), (H, W, C) or (C, H, W))."
        )
    arr = np.asarray(image)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.ndim != 3:
        raise ValueError(f"An image array must have 2 or 3 dimensions, got shape {arr.shape}")
    elif not _infer_channels_last(arr, input_data_format):
        arr = np.moveaxis(arr, 0, -1)
    return _array_to_rgb(arr) if do_convert_rgb else arr


def _needs_pil_rescale(arr: np.ndarray) -> bool:
    """Whether a float array in [0, 1] must be scaled by 255 before it can become a uint8 PIL image."""
    if arr.dtype == np.uint8:
        return False
    if np.allclose(arr, arr.astype(int)):
        if np.all(arr >= 0) and np.all(arr <= 255):
            return False
        raise ValueError(
            "Cannot resize an integer-valued image with values outside [0, 255] "
            f"(got [{arr.min()}, {arr.max()}])"
        )
    if np.all(arr >= 0) and np.all(arr <= 1):
        return True
    raise ValueError(
        f"Cannot resize a float image with values outside [0, 1] (got [{arr.min()}, {arr.max()}]); "
        "pass uint8 data, floats in [0, 1], or do_resize=False"
    )


def _resize(arr: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    """(H, W, C) -> (height, width, C) through a uint8 PIL image, like transformers' PIL backend."""
    scaled = _needs_pil_rescale(arr)
    data = arr[..., 0] if arr.shape[-1] == 1 else arr
    if scaled:
        # float64 multiply, float32 cast, then a truncating uint8 cast: the reference's exact rounding.
        data = (data.astype(np.float64) * 255).astype(np.float32)
    pil = PIL.Image.fromarray(data.astype(np.uint8))
    out = np.array(pil.resize((width, height), resample=resample))
    if out.ndim == 2:
        out = out[..., None]
    if scaled:
        out = (out.astype(np.float64) * (1 / 255)).astype(np.float32)
    return out


class BlipImageProcessor:
    """Turns images into normalised ``pixel_values`` for the BLIP vision model.

    Arguments and defaults are those of transformers' ``BlipImageProcessor``; every one can also be
    overridden per call. ``resample`` takes a PIL filter id (3 = bicubic), a ``PIL.Image.Resampling``
    or its name.
    """

    def __init__(
        self,
        do_resize: bool = True,
        size: int | Sequence[int] | dict[str, int] | None = None,
        resample: int | str = PIL.Image.Resampling.BICUBIC,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_convert_rgb: bool = True,
        **kwargs: Any,
    ):
        for key, value in kwargs.items():
            if key in _METADATA_KEYS:
                continue
            if key in _NEUTRAL_KEYS and value in (_NEUTRAL_KEYS[key], None):
                continue
            raise TypeError(f"BlipImageProcessor got an unsupported argument {key}={value!r}")
        self.do_resize = bool(do_resize)
        self.size = _normalize_size(size if size is not None else {"height": 384, "width": 384})
        self.resample = _normalize_resample(resample)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = _as_stats(image_mean if image_mean is not None else OPENAI_CLIP_MEAN)
        self.image_std = _as_stats(image_std if image_std is not None else OPENAI_CLIP_STD)
        self.do_convert_rgb = bool(do_convert_rgb)

    # ------------------------------------------------------------------ processing
    def __call__(
        self,
        images: Any,
        return_tensors: str | None = "np",
        *,
        do_resize: bool | None = None,
        size: int | Sequence[int] | dict[str, int] | None = None,
        resample: int | str | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_convert_rgb: bool | None = None,
        data_format: str = "channels_last",
        input_data_format: str | None = None,
    ) -> BatchFeature:
        """Preprocess one image or a batch.

        Args:
          images: a PIL image, an array ((H, W), (H, W, C) or (C, H, W); uint8, integer-valued or floats
            in [0, 1]), a 4-D (B, ...) array, or a (nested) list of these.
          return_tensors: "np" -> one float32 array (B, H, W, 3); "jax" -> a jax.Array; None -> a list
            of float32 (H, W, 3) arrays (needed when do_resize=False and sizes differ).
          data_format: "channels_last" (default, (B, H, W, 3)) or "channels_first" ((B, 3, H, W)).
          input_data_format: channel layout of array inputs when the shape is ambiguous.

        Returns:
          BatchFeature with "pixel_values".
        """
        do_resize = self.do_resize if do_resize is None else do_resize
        size_hw = self.size if size is None else _normalize_size(size)
        resample = self.resample if resample is None else _normalize_resample(resample)
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        rescale_factor = self.rescale_factor if rescale_factor is None else float(rescale_factor)
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        mean = self.image_mean if image_mean is None else _as_stats(image_mean)
        std = self.image_std if image_std is None else _as_stats(image_std)
        do_convert_rgb = self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
        if return_tensors not in (None, "np", "jax"):
            raise ValueError(f"return_tensors must be None, 'np' or 'jax', got {return_tensors!r}")

        processed = []
        warned = False
        for image in _flatten_images(images):
            arr = _to_hwc(image, do_convert_rgb, input_data_format)
            if (
                do_rescale
                and not warned
                and np.issubdtype(arr.dtype, np.floating)
                and arr.size
                and 0 <= arr.min()
                and arr.max() <= 1
            ):
                warnings.warn(
                    "Rescaling a float image that already lies in [0, 1]; pass do_rescale=False if it is "
                    "already scaled (transformers rescales it again too, so outputs still agree).",
                    stacklevel=2,
                )
                warned = True
            if do_resize:
                arr = _resize(arr, size_hw["height"], size_hw["width"], resample)
            if do_rescale:
                arr = (arr.astype(np.float64) * rescale_factor).astype(np.float32)
            if do_normalize:
                if not np.issubdtype(arr.dtype, np.floating):
                    arr = arr.astype(np.float32)
                channels = arr.shape[-1]
                m = np.asarray(mean if len(mean) > 1 else mean * channels, dtype=arr.dtype)
                s = np.asarray(std if len(std) > 1 else std * channels, dtype=arr.dtype)
                if m.shape[0] != channels or s.shape[0] != channels:
                    raise ValueError(
                        f"image_mean/image_std have {m.shape[0]}/{s.shape[0]} entries but the image has "
                        f"{channels} channels"
                    )
                arr = (arr - m) / s
            arr = arr.astype(np.float32)
            if data_format == "channels_first":
                arr = np.ascontiguousarray(np.moveaxis(arr, -1, 0))
            processed.append(arr)

        if return_tensors is None:
            return BatchFeature(pixel_values=processed)
        shapes = {a.shape for a in processed}
        if len(shapes) > 1:
            raise ValueError(
                f"Cannot stack images of different shapes {sorted(shapes)} into one array; "
                "use do_resize=True or return_tensors=None"
            )
        pixel_values = np.stack(processed)
        if return_tensors == "jax":
            import jax.numpy as jnp

            pixel_values = jnp.asarray(pixel_values)
        return BatchFeature(pixel_values=pixel_values)

    preprocess = __call__

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The transformers ``preprocessor_config.json`` fields."""
        return {
            "do_convert_rgb": self.do_convert_rgb,
            "do_normalize": self.do_normalize,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "image_mean": list(self.image_mean),
            "image_processor_type": "BlipImageProcessor",
            "image_std": list(self.image_std),
            "processor_class": "BlipProcessor",
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "size": dict(self.size),
        }

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> BlipImageProcessor:
        return cls(**copy.deepcopy(config))

    def save_pretrained(self, folder: str | os.PathLike) -> str:
        """Write ``preprocessor_config.json`` into ``folder``; returns the file path."""
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, IMAGE_PROCESSOR_NAME)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())
        return path

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **overrides: Any) -> BlipImageProcessor:
        """Read a local folder's ``preprocessor_config.json`` (or the ``image_processor`` entry of a
        transformers-5 ``processor_config.json``), a path to such a JSON file, or a hub id's."""
        from blip_jax.checkpoints.io import processor_path

        folder = processor_path(folder)
        if os.path.isfile(folder):
            candidates = [folder]
        else:
            candidates = [os.path.join(folder, IMAGE_PROCESSOR_NAME), os.path.join(folder, PROCESSOR_NAME)]
        for path in candidates:
            if not os.path.isfile(path):
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    config = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path} is not valid JSON: {e}") from e
            if not isinstance(config, dict):
                raise ValueError(f"{path} must hold a JSON object, got {type(config).__name__}")
            if "image_processor" in config and isinstance(config["image_processor"], dict):
                config = config["image_processor"]
            elif os.path.basename(path) == PROCESSOR_NAME and os.path.isdir(folder):
                continue
            config.update(overrides)
            return cls.from_dict(config)
        raise FileNotFoundError(
            f"No image processor config in {folder!r}: expected {IMAGE_PROCESSOR_NAME} or a {PROCESSOR_NAME} "
            "with an 'image_processor' entry"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlipImageProcessor) and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable config object


def _as_stats(value: float | Sequence[float]) -> tuple[float, ...]:
    if isinstance(value, (int, float, np.floating)):
        return (float(value),)
    return tuple(float(v) for v in value)
