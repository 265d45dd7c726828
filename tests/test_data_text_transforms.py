"""Cleaning rules, image decoding, transforms and RandAugment ops."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from blip_jax.data import transforms as T
from blip_jax.data.image import decode_rgb
from blip_jax.data.records import BadRecord
from blip_jax.data.text import caption_problem, pre_caption, pre_question


# ------------------------------------------------------------------------------------------ text
def test_pre_caption_rules():
    assert pre_caption("A  Dog (running)!  on the BEACH.") == "a dog running on the beach"
    assert pre_caption('he said "hi"; ok: #1 *star* ~wave~') == "he said hi ok 1 star wave"
    # ',' '?' and apostrophes survive, as in the original
    assert pre_caption("A man's hat, red?") == "a man's hat, red?"
    assert pre_caption("one two three four", max_words=2) == "one two"
    assert pre_caption("\n  trailing   spaces \n") == "trailing spaces"


def test_pre_question_rules():
    assert pre_question("What Color is the Ball?") == "what color is the ball?"
    assert pre_question("is it (really) red.") == "is it really red"  # deleted, not replaced
    assert pre_question("a b c d", max_ques_words=3) == "a b c"
    assert pre_question("double  space ") == "double  space"  # inner whitespace kept like the original


def test_caption_problem():
    assert caption_problem("a dog") is None
    assert caption_problem(None) == "bad_caption"
    assert caption_problem(3) == "bad_caption"
    assert caption_problem(["a"]) == "bad_caption"
    assert caption_problem(" ...!! ") == "empty_caption"


# ------------------------------------------------------------------------------------------ images
def _encode(img: Image.Image, fmt="JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(w=160, h=120, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def test_decode_modes_to_rgb():
    gray = Image.fromarray(np.full((8, 10), 77, np.uint8), "L")
    assert decode_rgb(_encode(gray, "PNG")).tolist() == np.full((8, 10, 3), 77).tolist()
    # RGBA composited over white: fully transparent -> white, opaque -> colour
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2] = (255, 0, 0, 255)
    out = decode_rgb(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out[0, 0].tolist() == [255, 0, 0] and out[3, 3].tolist() == [255, 255, 255]
    # palette with transparency
    pal = Image.fromarray(rgba, "RGBA").convert("P")
    pal.info["transparency"] = pal.getpixel((3, 3))
    out = decode_rgb(_encode(pal, "PNG", transparency=pal.getpixel((3, 3))))
    assert out[3, 3].tolist() == [255, 255, 255]
    # 16-bit grayscale: rescaled (65535 -> 255, 32896 -> 128), not clipped to white
    arr16 = np.array([[0, 32896], [65535, 257]], np.uint16)
    out = decode_rgb(_encode(Image.fromarray(arr16), "PNG"))
    assert out[..., 0].tolist() == [[0, 128], [255, 1]]
    # CMYK JPEG
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    out = decode_rgb(_encode(cmyk))
    assert out.shape == (16, 16, 3) and out[8, 8, 0] > 200 and out[8, 8, 1] < 60


def test_exif_orientation_applied_in_every_path():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewer rotates 90 cw -> upright is 20 wide, 40 tall
    data = _encode(img, exif=exif, quality=95)
    up = decode_rgb(data)
    assert up.shape == (40, 20, 3)
    assert up[2, 10, 0] > 200 and up[38, 10, 2] > 200  # red on top after rotation
    ev = T.EvalImageTransform(20, normalize=False)(data)
    assert ev[1, 10, 0] > 200 and ev[18, 10, 2] > 200
    tr = T.TrainImageTransform(20, min_scale=1.0, ratio=(0.5, 0.5), hflip=False, randaugment=None,
                               normalize=False)(data, np.random.default_rng(0))
    assert tr[1, 10, 0] > 200 and tr[18, 10, 2] > 200


@pytest.mark.parametrize("data,reason", [
    (b"", "empty_image"),
    (b"definitely not an image" * 10, "decode_error"),
])
def test_decode_bad_bytes(data, reason):
    with pytest.raises(BadRecord) as e:
        decode_rgb(data)
    assert e.value.reason == reason


def test_decode_truncated_and_too_large():
    data = _encode(_photo(320, 240), quality=95)
    with pytest.raises(BadRecord) as e:
        decode_rgb(data[: len(data) // 2])
    assert e.value.reason == "truncated_image"
    with pytest.raises(BadRecord) as e:
        decode_rgb(data, max_pixels=320 * 240 - 1)
    assert e.value.reason == "image_too_large"
    # the train path (scaled libjpeg decode) reports the same reasons
    with pytest.raises(BadRecord) as e:
        T.TrainImageTransform(32)(data[: len(data) // 2], np.random.default_rng(0))
    assert e.value.reason == "truncated_image"


# ------------------------------------------------------------------------------------------ transforms
def test_random_resized_crop_params_bounds_and_scale():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(500):
        left, top, w, h = T.random_resized_crop_params(rng, 640, 480, (0.2, 1.0))
        assert 0 <= left and left + w <= 640 and 0 <= top and top + h <= 480
        areas.append(w * h / (640 * 480))
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02 or (w, h) in ((640, 480),)
    assert 0.19 <= min(areas) and max(areas) <= 1.0
    # uniform in [0.2, 1], but large areas with extreme aspect are rejected more often
    assert 0.43 < np.mean(areas) < 0.53
    # fallback: impossible ratio -> clamped centre crop
    assert T.random_resized_crop_params(rng, 1000, 10, (0.9, 1.0)) == (493, 0, 13, 10)


def test_train_transform_shape_range_determinism():
    data = _encode(_photo(), quality=92)
    tr = T.TrainImageTransform(32, min_scale=0.5)
    a = tr(data, np.random.default_rng(5))
    b = tr(data, np.random.default_rng(5))
    c = tr(data, np.random.default_rng(6))
    assert a.shape == (32, 32, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    lo = (0 - T.CLIP_MEAN) / T.CLIP_STD
    hi = (1 - T.CLIP_MEAN) / T.CLIP_STD
    assert np.all(a >= lo - 1e-5) and np.all(a <= hi + 1e-5)
    u8 = T.TrainImageTransform(32, min_scale=0.5, normalize=False)(data, np.random.default_rng(5))
    np.testing.assert_allclose(T.normalize(u8), a, atol=1e-6)


def test_normalize_matches_formula_and_roundtrips():
    x = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    ref = (x.astype(np.float32) / 255.0 - T.CLIP_MEAN) / T.CLIP_STD
    np.testing.assert_allclose(T.normalize(x), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(T.denormalize(T.normalize(x)), x)


def test_fast_decode_close_to_full_resolution_path():
    data = _encode(_photo(512, 384, seed=3), quality=95)
    fast = T.EvalImageTransform(96, normalize=False, fast_decode=True)(data).astype(np.float32)
    full = T.EvalImageTransform(96, normalize=False, fast_decode=False)(data).astype(np.float32)
    # DCT-domain downscale by 2 then bicubic vs bicubic from full size: same picture
    assert np.abs(fast - full).mean() < 3.0
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((96, 96), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(full, ref)


def test_eval_transform_on_arrays():
    arr = np.asarray(_photo(50, 30))
    out = T.EvalImageTransform(24)(arr)
    assert out.shape == (24, 24, 3) and out.dtype == np.float32


# ------------------------------------------------------------------------------------------ RandAugment
@pytest.fixture(scope="module")
def img():
    return np.asarray(_photo(48, 40, seed=1))


def test_autocontrast_equalize_match_pil(img):
    low = (img // 3 + 40).astype(np.uint8)
    np.testing.assert_array_equal(T.autocontrast(low), np.asarray(ImageOps.autocontrast(Image.fromarray(low))))
    np.testing.assert_array_equal(T.equalize(low), np.asarray(ImageOps.equalize(Image.fromarray(low))))
    out = T.autocontrast(low)
    assert out.min() == 0 and out.max() == 255


def test_brightness_sharpness_are_identities_at_m5(img):
    ra = T.RandAugment()
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(ra.apply_op("Brightness", img, rng), img)
    np.testing.assert_array_equal(ra.apply_op("Sharpness", img, rng), img)
    # other magnitudes do change the image
    assert T.brightness(img, 0.5).mean() < img.mean() * 0.6
    sharp = T.sharpness(img, 1.9)
    assert np.array_equal(sharp[0], img[0]) and not np.array_equal(sharp, img)


def test_translate_is_exact_shift_with_fill(img):
    out = T.translate_x(img, 5.0)
    np.testing.assert_array_equal(out[:, :-5], img[:, 5:])
    assert (out[:, -5:] == 128).all()
    out = T.translate_y(img, -5.0)
    np.testing.assert_array_equal(out[5:], img[:-5])
    assert (out[:5] == 128).all()
    # fractional offsets go through the general warp and agree with the integer path's neighbours
    frac = T.translate_x(img, 0.5).astype(int)
    mid = (img[:, :-1].astype(int) + img[:, 1:].astype(int)) / 2
    assert np.abs(frac[:, :-1] - mid).max() <= 1


def test_shear_and_rotate_geometry():
    a = np.zeros((21, 21, 3), np.uint8)
    a[10, 10] = 255
    # cv2 convention: ShearX [[1, s, 0], [0, 1, 0]] moves (x, y) to (x + s y, y)
    out = T.shear_x(a, 0.2, fill=(0, 0, 0))
    assert np.unravel_index(out[..., 0].argmax(), (21, 21)) == (10, 12)
    out = T.shear_y(a, -0.2, fill=(0, 0, 0))
    assert np.unravel_index(out[..., 0].argmax(), (21, 21)) == (8, 10)
    # rotation about (W/2, H/2) in integer-pixel coordinates: counter-clockwise
    b = np.zeros((20, 20, 3), np.uint8)
    b[10, 16] = 255  # 6 px right of the centre (10, 10)
    out = T.rotate(b, 90.0, fill=(0, 0, 0))
    assert np.unravel_index(out[..., 0].argmax(), (20, 20)) == (4, 10)  # now 6 px above
    assert (T.rotate(b, 15.0)[0, 0] == 128).all()  # corners filled


def test_randaugment_sampling_statistics(img):
    ra = T.RandAugment()
    rng = np.random.default_rng(0)
    changed = sum(not np.array_equal(ra(img, rng), img) for _ in range(400))
    # P(no visible change) = P(each of 2 ops skipped or an identity op) = (0.5 + 0.5 * 0.3) ** 2
    assert abs(changed / 400 - (1 - 0.65 ** 2)) < 0.07
    with pytest.raises(ValueError):
        T.RandAugment(ops=("Solarize",))


@pytest.mark.parametrize("crop_scale, reduced", [(0.2, False), (0.9, True)])
def test_train_fast_path_close_to_reference(monkeypatch, crop_scale, reduced):
    # A smooth 512x384 JPEG at 96 px: a 20% crop (~230x170 px) needs the full-size decode, a 90% crop
    # (~490x360) fits a 1/2- or 1/4-scale one. The fast path (DCT scale + OpenCV resize of the box
    # rounded to decoded pixels) must stay within 2.5 grey levels (mean) of the reference (full-size
    # PIL decode, PIL bicubic of the exact box).
    rng = np.random.default_rng(4)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    smooth = coarse.resize((512, 384), Image.Resampling.BICUBIC)
    data = _encode(smooth, quality=95)
    widths = []
    original = T._scaled_jpeg

    def spy(d, w, h):
        out = original(d, w, h)
        widths.append(None if out is None else out.shape[1])
        return out

    monkeypatch.setattr(T, "_scaled_jpeg", spy)
    kw = dict(min_scale=crop_scale, max_scale=crop_scale, hflip=False, randaugment=None, normalize=False)
    diffs = []
    for seed in range(4):
        fast = T.TrainImageTransform(96, fast_decode=True, **kw)(data, np.random.default_rng(seed))
        full = T.TrainImageTransform(96, fast_decode=False, **kw)(data, np.random.default_rng(seed))
        assert fast.shape == full.shape == (96, 96, 3) and fast.dtype == np.uint8
        diffs.append(np.abs(fast.astype(np.float32) - full).mean())
    assert len(widths) == 4 and all((w < 512) == reduced for w in widths)
    assert np.mean(diffs) < 2.5


@pytest.mark.parametrize("factor", [1.1, 1.5, 1.9])
def test_train_resize_kernel_close_to_pil_bicubic(factor):
    # Same pixels, same box: OpenCV's area filter against PIL's antialiased bicubic on a textured image.
    arr = np.asarray(_photo(320, 320, seed=6))
    box = (10, 20, 10 + int(96 * factor), 20 + int(96 * factor))
    fast = T._resize_crop_fast(arr, 320, 320, box, 96, 96).astype(np.float32)
    ref = np.asarray(Image.fromarray(arr).resize((96, 96), Image.Resampling.BICUBIC, box=box))
    assert np.abs(fast - ref).mean() < 1.5


def test_train_fast_path_upsamples_small_crops():
    data = _encode(_photo(160, 120, seed=5), quality=95)
    kw = dict(min_scale=0.1, max_scale=0.1, hflip=False, randaugment=None, normalize=False)
    fast = T.TrainImageTransform(96, **kw)(data, np.random.default_rng(0)).astype(np.float32)
    full = T.TrainImageTransform(96, fast_decode=False, **kw)(data, np.random.default_rng(0))
    assert np.abs(fast - full).mean() < 3.0  # ~44x44 px crop grown to 96: cubic either way


def test_jpeg_header_path_skips_pil_and_equals_pil_path(monkeypatch):
    plain = _encode(_photo(200, 150, seed=7), quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # upright is 150 wide, 200 tall
    exif[0x010F] = "maker"
    tagged = _encode(_photo(200, 150, seed=7), quality=90, exif=exif)
    cmyk = _encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)))
    assert T._jpeg_header(plain) == (200, 150, 1)
    assert T._jpeg_header(tagged) == (200, 150, 6)
    assert T._jpeg_header(cmyk) is None
    assert T._jpeg_header(_encode(_photo(), "PNG")) is None
    assert T._jpeg_header(plain[:2] + b"\x00" * 20) is None  # not a marker after SOI
    assert T._jpeg_exif_block(tagged)[:6] == b"Exif\x00\x00"
    # a COM segment and a fill byte before the EXIF block, a TEM marker (no length) after it
    comment = b"\xff\xfe\x00\x07hello"
    odd = tagged[:2] + comment + b"\xff" + tagged[2:4] + tagged[4:]
    assert T._jpeg_header(odd) == (200, 150, 6)
    sos = plain.index(b"\xff\xda")
    assert T._jpeg_header(plain[:sos] + b"\xff\x01" + plain[sos:]) == (200, 150, 1)
    assert T._jpeg_header(plain[:sos]) is None  # header cut before the scan

    opened = []
    real_open = T.open_image
    monkeypatch.setattr(T, "open_image", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    tr = T.TrainImageTransform(64, min_scale=0.3, max_scale=0.6, ratio=(0.6, 0.6))
    ev = T.EvalImageTransform(48, normalize=False)
    via_header = [tr(d, np.random.default_rng(3)) for d in (plain, tagged)] + [ev(tagged)]
    assert opened == []  # PIL never parsed the files
    monkeypatch.setattr(T, "_jpeg_header", lambda data: None)
    via_pil = [tr(d, np.random.default_rng(3)) for d in (plain, tagged)] + [ev(tagged)]
    assert len(opened) == 3
    for a, b in zip(via_header, via_pil):
        np.testing.assert_array_equal(a, b)


def test_plain_jpeg_header_path_reports_bad_input():
    data = _encode(_photo(320, 240), quality=95)
    with pytest.raises(BadRecord) as e:
        T.TrainImageTransform(32, max_pixels=320 * 240 - 1)(data, np.random.default_rng(0))
    assert e.value.reason == "image_too_large"
    # a valid header over a corrupt scan: libjpeg-turbo refuses it, PIL names the reason
    broken = data[:len(data) // 2] + b"\x00" * 64
    with pytest.raises(BadRecord) as e:
        T.EvalImageTransform(32)(broken)
    assert e.value.reason == "truncated_image"
