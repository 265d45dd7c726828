"""EXIF orientation in every image format and path; exact eval decode; the exact train crop."""

import io

import numpy as np
import pytest
from PIL import Image

from blip_jax.data import transforms as T
from blip_jax.data.image import decode_rgb


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _exif6() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    return exif.tobytes()


def _stored() -> Image.Image:
    """64 wide x 32 tall as stored: red left half, blue right half -> upright: red on top."""
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, :32] = (255, 0, 0)
    arr[:, 32:] = (0, 0, 255)
    return Image.fromarray(arr)


_CASES = {
    "tiff": lambda im: _encode(im, "TIFF", exif=_exif6()),
    "png_rgba": lambda im: _encode(im.convert("RGBA"), "PNG", exif=_exif6()),
    "png_la": lambda im: _encode(im.convert("LA"), "PNG", exif=_exif6()),
    "png_p_transparency": lambda im: _encode(im.convert("P"), "PNG", transparency=0, exif=_exif6()),
    "webp_rgba": lambda im: _encode(im.convert("RGBA"), "WEBP", lossless=True, exif=_exif6()),
    "jpeg": lambda im: _encode(im, "JPEG", quality=95, exif=_exif6()),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_exif_orientation_applied_once_in_every_format_and_path(case):
    data = _CASES[case](_stored())
    up = decode_rgb(data).astype(int)
    assert up.shape == (64, 32, 3)
    top, bottom = up[:16].reshape(-1, 3).mean(0), up[-16:].reshape(-1, 3).mean(0)
    # red on top (grey 76 over 29 for LA): before, RGBA/LA/P came back unrotated (32 tall, 64 wide)
    assert top[0] - bottom[0] > (40 if case == "png_la" else 200), (top, bottom)
    paths = {
        "eval_fast": lambda d: T.EvalImageTransform(16, normalize=False)(d),
        "eval_exact": lambda d: T.EvalImageTransform(16, normalize=False, fast_decode=False)(d),
        "train_fast": lambda d: T.TrainImageTransform(16, min_scale=1.0, ratio=(0.5, 0.5), hflip=False,
                                                      randaugment=None, normalize=False)(d, np.random.default_rng(0)),
        "train_exact": lambda d: T.TrainImageTransform(16, min_scale=1.0, ratio=(0.5, 0.5), hflip=False,
                                                       randaugment=None, normalize=False,
                                                       fast_decode=False)(d, np.random.default_rng(0)),
    }
    for name, fn in paths.items():
        out = fn(data).astype(int)
        # the whole upright image, squeezed to 16x16: the same picture as decode_rgb's
        ref = np.asarray(Image.fromarray(up.astype(np.uint8)).resize((16, 16), Image.Resampling.BICUBIC)).astype(int)
        assert np.abs(out - ref).mean() < 3, (case, name)  # a TIFF rotated twice differs by ~100


def _jpeg_photo(w, h, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8))
    return _encode(small.resize((w, h), Image.Resampling.BICUBIC), "JPEG", quality=90)


def _reference_eval(data: bytes, s: int) -> np.ndarray:
    """The original BLIP's eval transform: full PIL decode, Resize((s, s), BICUBIC)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((s, s), Image.Resampling.BICUBIC))


def test_eval_pipeline_exact_decode_option(tmp_path):
    from blip_jax.data import pipelines as P
    from blip_jax.data.records import make_record

    big = _jpeg_photo(512, 384)  # both sides >= 2 x 96: the fast path decodes at 1/2 scale
    small = _jpeg_photo(160, 120, seed=1)  # a side < 2 x 96: full-size decode either way
    ref_big, ref_small = _reference_eval(big, 96), _reference_eval(small, 96)
    fast = T.EvalImageTransform(96, normalize=False)
    assert np.abs(fast(big).astype(int) - ref_big).max() > 0  # the documented difference
    np.testing.assert_array_equal(fast(small), ref_small)  # ... and when there is none
    records = [make_record(image=d, image_id=i, index=i, captions=["x"]) for i, d in enumerate((big, small))]
    for opts_exact, arg, want_exact in ((False, None, False), (True, None, True), (False, True, True),
                                        (True, False, False)):
        opts = P.LoaderOptions(batch_size=2, shard_index=0, shard_count=1, num_threads=1, host_prefetch=0,
                               prefetch_buffer_size=1, exact_eval_decode=opts_exact)
        batch = next(iter(P.eval_pipeline(records, opts, image_size=96, exact_decode=arg)))
        got = T.denormalize(batch["pixel_values"][0]).astype(int)
        diff = np.abs(got - ref_big).max()
        assert (diff <= 1) if want_exact else (diff > 1), (opts_exact, arg, diff)  # float32 round trip: <= 1
        assert np.abs(T.denormalize(batch["pixel_values"][1]).astype(int) - ref_small).max() <= 1


def test_exact_train_crop_is_crop_then_resize():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (120, 160, 3)).astype(np.uint8)
    data = _encode(Image.fromarray(arr), "PNG")
    tr = T.TrainImageTransform(48, min_scale=0.5, hflip=False, randaugment=None, normalize=False, fast_decode=False)
    for seed in range(3):
        out = tr(data, np.random.default_rng(seed))
        left, top, w, h = T.random_resized_crop_params(np.random.default_rng(seed), 160, 120, (0.5, 1.0))
        ref = Image.fromarray(arr).crop((left, top, left + w, top + h)).resize((48, 48), Image.Resampling.BICUBIC)
        # torchvision's resized_crop on a PIL image; resize(box=...) differed by up to ~20 at the borders
        np.testing.assert_array_equal(out, np.asarray(ref))
