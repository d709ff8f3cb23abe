"""media.image: process_image and load_image_rgb on generated images of every kind."""
from __future__ import annotations

import hashlib
import io
import resource
import time

import numpy as np
import pytest
from PIL import Image

from datamill.errors import Filtered
from datamill.media.image import ImageError, ImageOptions, load_image_rgb, process_image
from datamill.testing.images import draw_image, make_bomb_png, make_image


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def rgb(data: bytes) -> np.ndarray:
    return np.asarray(decode(data).convert("RGB"), dtype=np.float64)


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


def error_class(data: bytes, opts: ImageOptions = ImageOptions()) -> str:
    with pytest.raises(ImageError) as info:
        process_image(data, opts)
    return info.value.error_class


# --- modes -----------------------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb_with_the_right_colours():
    data = make_image(None, (160, 120), mode="CMYK")
    assert decode(data).mode == "CMYK"
    result = process_image(data, ImageOptions())
    assert result.mode == "CMYK" and result.reencoded and result.ext == "jpg"
    out = decode(result.data)
    assert out.mode == "RGB"
    assert diff(out, draw_image(160, 120)) < 12  # inverted CMYK would be ~100 off


def test_palette_png_with_transparency_composited_on_white_or_kept():
    data = make_image(None, (160, 120), mode="P", fmt="PNG")
    assert decode(data).mode == "P" and "transparency" in decode(data).info
    as_jpg = process_image(data, ImageOptions(encode="jpg"))
    block = rgb(as_jpg.data)[5:25, 5:35]  # the transparent top-left block (magenta in the palette)
    assert block.min() > 240
    as_png = process_image(data, ImageOptions(encode="png", resize=80))
    out = decode(as_png.data)
    assert out.mode == "RGBA" and out.size == (107, 80)
    alpha = np.asarray(out.getchannel("A"))
    assert alpha[2:15, 2:20].max() == 0 and alpha[-20:, -20:].min() == 255


def test_rgba_png_alpha_composited_on_white_for_jpg_and_kept_for_webp():
    data = make_image(None, (160, 120), mode="RGBA", fmt="PNG")
    picture = draw_image(160, 120).astype(np.float64)
    out = rgb(process_image(data, ImageOptions(encode="jpg")).data)
    assert out[5:25, 5:35].min() > 240  # alpha 0: white
    half = out[35:55, 60:100]  # alpha 128: halfway between the picture and white
    assert diff(half, (picture[35:55, 60:100] + 255) / 2) < 8
    assert diff(out[70:, :], picture[70:, :]) < 6  # opaque: the picture
    webp = process_image(data, ImageOptions(encode="webp"))
    assert webp.data[:4] == b"RIFF" and webp.data[8:12] == b"WEBP"
    assert decode(webp.data).mode == "RGBA"


def test_16bit_gray_is_scaled_to_8bit_not_clipped():
    data = make_image(None, (200, 150), mode="I;16", fmt="PNG")
    source = np.asarray(decode(data)).astype(np.float64)
    assert source.max() > 60000 and source.min() < 1000  # a real 16-bit range
    result = process_image(data, ImageOptions(encode="png"))
    assert result.mode.startswith("I") and result.reencoded
    out = np.asarray(decode(result.data), dtype=np.float64)
    assert out.ndim == 2 and out.min() <= 2 and out.max() >= 253  # clipping would leave ~all 255
    assert np.abs(out - source / 257).max() <= 1
    assert np.abs(np.asarray(load_image_rgb(data))[..., 0] - source / 257).max() <= 1


def test_bilevel_and_grayscale_images():
    gray = make_image(None, (160, 120), mode="L")
    result = process_image(gray, ImageOptions(resize=60))
    assert decode(result.data).mode == "L" and (result.width, result.height) == (80, 60)
    bilevel = make_image(None, (160, 120), mode="1", fmt="PNG")
    out = decode(process_image(bilevel, ImageOptions(encode="jpg")).data)
    assert out.mode == "L" and np.asarray(out).max() > 200 and np.asarray(out).min() < 50


def test_exif_rotated_jpeg_is_upright_with_sides_swapped():
    data = make_image(None, (320, 240), exif_orientation=6)
    assert decode(data).size == (320, 240)  # stored sideways
    upright = draw_image(240, 320)
    result = process_image(data, ImageOptions())
    assert (result.width, result.height, result.original_width, result.original_height) == (240, 320, 240, 320)
    assert result.reencoded
    out = rgb(result.data)
    assert diff(out, upright) < 6
    assert diff(out, np.rot90(np.rot90(upright))) > 30  # would match if turned the wrong way
    resized = process_image(data, ImageOptions(resize=120))  # draft size swapped for the stored sides
    assert (resized.width, resized.height) == (120, 160)
    assert diff(rgb(resized.data), np.asarray(Image.fromarray(upright).resize((120, 160)))) < 6


def test_animated_gif_gives_its_first_frame():
    data = make_image(None, (160, 120), fmt="GIF", frames=3)
    assert decode(data).n_frames == 3
    out = rgb(process_image(data, ImageOptions()).data)
    first, second = draw_image(160, 120, seed=0), draw_image(160, 120, seed=1)
    assert diff(out, first) < 10 < diff(out, second)
    assert diff(load_image_rgb(data), first) < 10


# --- failures and filters --------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>gone</body></html>",
    b"just some text\n" * 20,
    b"",
])
def test_a_body_that_is_not_an_image(body):
    assert error_class(body) == "not_image"


@pytest.mark.parametrize("fmt, opts", [
    ("JPEG", ImageOptions()),                  # unchanged: still checked in full
    ("JPEG", ImageOptions(resize=64)),         # drafted decode
    ("PNG", ImageOptions(encode="png")),
    ("PNG", ImageOptions(encode="jpg")),
])
def test_truncated_image_is_a_decode_error(fmt, opts):
    data = make_image(None, (320, 240), fmt=fmt)
    assert process_image(data, opts).width > 0
    assert error_class(data[: len(data) * 2 // 3], opts) == "decode_error"
    assert error_class(data[:40], opts) == "decode_error"  # starts like an image, header cut


def test_bomb_rejected_from_its_header_fast_and_without_memory():
    bomb = make_bomb_png(100_000, 100_000)
    assert len(bomb) < 10_000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    assert error_class(bomb) == "too_large"
    with pytest.raises(ImageError) as info:
        load_image_rgb(bomb)
    assert info.value.error_class == "too_large"
    assert time.perf_counter() - start < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 50_000  # kB
    # Above our cap but below Pillow's own: our per-image check decides.
    assert error_class(make_bomb_png(10_000, 10_000)) == "too_large"
    normal = make_image(None, (100, 100))
    assert error_class(normal, ImageOptions(max_pixels=9_999)) == "too_large"
    assert process_image(normal, ImageOptions(max_pixels=10_000)).width == 100


def test_tiny_image_filtered_as_too_small():
    tiny = make_image(None, (8, 8), fmt="PNG")
    with pytest.raises(Filtered) as info:
        process_image(tiny, ImageOptions(min_size=100))
    assert info.value.reason == "too_small"
    # The short side decides, in original pixels (before any resize).
    assert process_image(make_image(None, (300, 100)), ImageOptions(min_size=100, resize=50)).height == 50
    with pytest.raises(Filtered):
        process_image(make_image(None, (300, 99)), ImageOptions(min_size=100))


def test_aspect_ratio_filter():
    opts = ImageOptions(max_aspect=3.0)
    assert process_image(make_image(None, (300, 100)), opts).width == 300
    for size in [(301, 100), (100, 400)]:
        with pytest.raises(Filtered) as info:
            process_image(make_image(None, size), opts)
        assert info.value.reason == "too_large_aspect"


# --- resize ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode, size, expected", [
    ("keep_ratio", (640, 480), (341, 256)),
    ("keep_ratio", (480, 641), (256, 342)),    # rounded, not truncated
    ("keep_ratio", (2000, 1500), (341, 256)),   # JPEG drafted at 1/2 scale: still exact
    ("keep_ratio", (641, 480), (342, 256)),
    ("center_crop", (640, 480), (256, 256)),
    ("center_crop", (480, 640), (256, 256)),
    ("center_crop", (256, 300), (256, 256)),    # short side already right: a plain crop
    ("border", (640, 480), (256, 256)),
    ("border", (300, 900), (256, 256)),
    ("no", (640, 480), (640, 480)),
])
def test_every_resize_mode_gives_the_exact_size(mode, size, expected):
    result = process_image(make_image(None, size), ImageOptions(resize=256, resize_mode=mode))
    assert (result.width, result.height) == expected
    assert decode(result.data).size == expected
    assert (result.original_width, result.original_height) == size


def test_resized_content_matches_the_picture():
    picture = Image.fromarray(draw_image(1600, 1200))
    data = make_image(None, (1600, 1200), quality=95)
    keep = rgb(process_image(data, ImageOptions(resize=150)).data)  # drafted at 1/4
    assert diff(keep, np.asarray(picture.resize((200, 150), Image.Resampling.BICUBIC))) < 3
    crop = rgb(process_image(data, ImageOptions(resize=150, resize_mode="center_crop")).data)
    assert diff(crop, keep[:, 25:175]) < 3
    border = rgb(process_image(data, ImageOptions(resize=200, resize_mode="border")).data)
    assert border[:20].min() > 245 and border[-20:].min() > 245  # white bands top and bottom
    assert diff(border[25:175], np.asarray(picture.resize((200, 150), Image.Resampling.BICUBIC))) < 3
    red = ImageOptions(resize=200, resize_mode="border", border_color=(255, 0, 0))
    top = rgb(process_image(data, red).data)[:20]
    assert top[..., 0].min() > 240 and top[..., 1:].max() < 15


def test_drafted_decode_keeps_the_quality_of_a_full_decode():
    # Noise is the worst case for a JPEG decoded at a reduced scale: 1600x1200 decoded at 1/8
    # (block means: the area average itself) stays within ~1.3 of the full decode's area
    # resize; a decode that skipped the low-pass (every 8th pixel) would be ~100 off.
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG", quality=95)
    result = process_image(buffer.getvalue(), ImageOptions(resize=150, encode="png"))
    full = decode(buffer.getvalue()).resize((200, 150), Image.Resampling.BOX)
    assert diff(decode(result.data), full) < 2.8


@pytest.mark.parametrize("size, kind, mode, target", [
    ((1280, 960), {}, "keep_ratio", 256),
    ((1279, 961), {"mode": "L"}, "center_crop", 256),                 # sides not multiples of 8
    ((961, 1279), {"exif_orientation": 6}, "keep_ratio", 256),        # the draft size swapped
    ((1030, 690), {"mode": "CMYK"}, "border", 350),
])
def test_jpeg_decoded_at_three_eighths_matches_the_half_scale_decode(monkeypatch, size, kind, mode,
                                                                     target):
    # A JPEG whose 1/2 decode is the smallest power of two that covers the target is decoded
    # at 3/8 (libjpeg-turbo's DCT scaling) when that covers it too: less to resize, and
    # the output is the one of the 1/2 decode up to JPEG noise.
    import datamill.media.image as image_module
    assert image_module._scales_by_three_eighths()  # this Pillow's libjpeg-turbo does it
    data = make_image(None, size, **kind)
    decoded = []
    real_resize = image_module._resize
    monkeypatch.setattr(image_module, "_resize", lambda px, *a: decoded.append(px.size) or real_resize(px, *a))
    opts = ImageOptions(resize=target, resize_mode=mode, encode="png")
    finer = process_image(data, opts)
    monkeypatch.setattr(image_module, "_draft_three_eighths", lambda *a: False)
    half = process_image(data, opts)
    upright = size[::-1] if kind.get("exif_orientation") == 6 else size
    assert decoded == [tuple(-(-side * 3 // 8) for side in upright), tuple(-(-side // 2) for side in upright)]
    assert (finer.width, finer.height) == (half.width, half.height)
    assert diff(rgb(finer.data), rgb(half.data)) < 1.5


def test_three_eighths_only_where_it_covers_the_target_and_never_for_dedup():
    # 640x480 -> 341x256: 3/8 (240x180) is too small, so a full decode; load_image_rgb
    # (dedup's pixels) keeps Pillow's own draft scales.
    import datamill.media.image as image_module
    assert process_image(make_image(None, (640, 480)), ImageOptions(resize=256)).width == 341
    assert load_image_rgb(make_image(None, (1280, 960)), draft_size=(341, 256)).size == (640, 480)
    assert image_module.load_thumbnail(make_image(None, (1280, 960)), 400).size == (400, 300)


@pytest.mark.parametrize("mode, size, upscaled", [
    ("keep_ratio", (200, 150), (341, 256)),
    ("center_crop", (200, 150), (256, 256)),
    ("border", (200, 150), (256, 256)),
    ("keep_ratio", (400, 200), (512, 256)),  # long side larger, short side smaller
])
def test_small_images_are_not_upscaled_unless_asked(mode, size, upscaled):
    data = make_image(None, size)
    kept = process_image(data, ImageOptions(resize=256, resize_mode=mode))
    assert (kept.width, kept.height) == size
    assert kept.data == data and not kept.reencoded
    grown = process_image(data, ImageOptions(resize=256, resize_mode=mode, upscale=True))
    assert (grown.width, grown.height) == upscaled and grown.reencoded


# --- re-encoding, hashes, formats ---------------------------------------------------------


@pytest.mark.parametrize("kind, opts", [
    (dict(fmt="JPEG"), ImageOptions()),
    (dict(fmt="JPEG", mode="L"), ImageOptions(resize=240)),
    (dict(fmt="PNG", mode="P"), ImageOptions(encode="png")),
    (dict(fmt="PNG", mode="RGBA"), ImageOptions(encode=None)),
    (dict(fmt="WEBP"), ImageOptions(encode="webp", resize=1000)),
    (dict(fmt="JPEG", exif_orientation=1), ImageOptions(min_size=10, max_aspect=2)),
])
def test_no_reencode_when_nothing_changes(kind, opts):
    data = make_image(None, (320, 240), **kind)
    result = process_image(data, opts)
    assert result.data is data or result.data == data
    assert not result.reencoded and (result.width, result.height) == (320, 240)


@pytest.mark.parametrize("kind, opts", [
    (dict(fmt="PNG"), ImageOptions(encode="jpg")),            # another format
    (dict(fmt="JPEG"), ImageOptions(resize=200)),             # a resize
    (dict(fmt="JPEG", exif_orientation=3), ImageOptions()),   # an orientation
    (dict(fmt="JPEG", mode="CMYK"), ImageOptions()),          # a mode JPEG output does not keep
    (dict(fmt="PNG", mode="I;16"), ImageOptions(encode="png")),
    (dict(fmt="GIF"), ImageOptions(encode=None)),             # not a format we store
    (dict(fmt="PNG", frames=2), ImageOptions(encode="png")),  # an animation
])
def test_reencoded_when_something_changes(kind, opts):
    data = make_image(None, (320, 240), **kind)
    result = process_image(data, opts)
    assert result.reencoded and result.data != data
    assert decode(result.data).format == {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[result.ext]


def test_sha256_is_of_the_input_bytes():
    data = make_image(None, (320, 240), fmt="PNG")
    result = process_image(data, ImageOptions(resize=100))
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.sha256 != hashlib.sha256(result.data).hexdigest()
    assert process_image(data, ImageOptions(resize=50)).sha256 == result.sha256


@pytest.mark.parametrize("encode, magic, fmt", [("webp", b"RIFF", "WEBP"), ("png", b"\x89PNG", "PNG"),
                                                ("jpg", b"\xff\xd8\xff", "JPEG")])
def test_encode_formats(encode, magic, fmt):
    data = make_image(None, (320, 240))
    result = process_image(data, ImageOptions(resize=120, encode=encode, quality=80))
    assert result.ext == encode and result.data.startswith(magic)
    out = decode(result.data)
    assert out.format == fmt and out.size == (160, 120) and out.mode == "RGB"
    assert diff(out, Image.fromarray(draw_image(320, 240)).resize((160, 120))) < 6


def test_encode_none_keeps_the_source_format():
    png = make_image(None, (320, 240), fmt="PNG")
    assert process_image(png, ImageOptions(encode=None, resize=100)).ext == "png"
    gif = make_image(None, (320, 240), mode="P", fmt="GIF")
    assert process_image(gif, ImageOptions(encode=None)).ext == "png"  # transparent: png
    bmp = make_image(None, (320, 240), fmt="BMP")
    assert process_image(bmp, ImageOptions(encode=None)).ext == "jpg"


def test_output_format_limits_are_an_encode_error():
    wide = make_image(None, (16_400, 8), fmt="PNG")
    assert process_image(wide, ImageOptions(encode="jpg")).width == 16_400
    assert error_class(wide, ImageOptions(encode="webp")) == "encode_error"  # WebP: 16383 a side


def test_icc_profile_kept_only_on_pixels_of_its_colour_space():
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buffer = io.BytesIO()
    Image.fromarray(draw_image(320, 240)).save(buffer, "JPEG", icc_profile=srgb)
    assert decode(process_image(buffer.getvalue(), ImageOptions(resize=100)).data).info["icc_profile"] == srgb
    gray = srgb[:16] + b"GRAY" + srgb[20:]  # only the header's colour space is looked at
    buffer = io.BytesIO()
    Image.fromarray(draw_image(320, 240)).convert("L").save(buffer, "JPEG", icc_profile=gray)
    assert decode(process_image(buffer.getvalue(), ImageOptions(resize=100)).data).info["icc_profile"] == gray
    as_webp = decode(process_image(buffer.getvalue(), ImageOptions(resize=100, encode="webp")).data)
    assert as_webp.mode == "RGB" and "icc_profile" not in as_webp.info


def test_options_are_validated():
    ImageOptions(resize=256, resize_mode="border", encode="webp", min_size=10, max_aspect=2).validate()
    for bad in [dict(resize=0), dict(resize_mode="stretch"), dict(encode="gif"), dict(quality=101),
                dict(min_size=0), dict(max_aspect=0.5), dict(max_pixels=0), dict(border_color=(0, 0))]:
        with pytest.raises(ValueError):
            ImageOptions(**bad).validate()


# --- load_image_rgb --------------------------------------------------------------------


def test_load_image_rgb_from_path_and_bytes(tmp_path):
    path = tmp_path / "a.png"
    data = make_image(path, (160, 120), mode="RGBA", fmt="PNG")
    for source in (path, str(path), data):
        img = load_image_rgb(source)
        assert img.mode == "RGB" and img.size == (160, 120)
        assert np.asarray(img)[5:25, 5:35].min() > 250  # transparent: white
    with pytest.raises(FileNotFoundError):
        load_image_rgb(tmp_path / "missing.jpg")
    cmyk = load_image_rgb(make_image(None, (160, 120), mode="CMYK"))
    assert cmyk.mode == "RGB" and diff(cmyk, draw_image(160, 120)) < 12


def test_load_image_rgb_draft_is_never_smaller_than_asked():
    data = make_image(None, (1600, 1200), exif_orientation=6)  # upright 1200 x 1600
    full = load_image_rgb(data)
    assert full.size == (1200, 1600)
    for asked, expected in [((64, 64), (150, 200)), ((150, 400), (300, 400)), ((1200, 1600), (1200, 1600))]:
        img = load_image_rgb(data, draft_size=asked)
        assert img.size == expected and img.mode == "RGB"
        assert diff(img, full.resize(expected, Image.Resampling.BOX)) < 4
    assert load_image_rgb(make_image(None, (160, 120), fmt="PNG"), draft_size=(8, 8)).size == (160, 120)


def test_every_accepted_format_opens_with_only_its_own_plugins_imported(tmp_path):
    # A fresh process that only opens (the files are made here): _open imports the plugins of
    # IMAGE_FORMATS, not all of Pillow's (Image.init()), and every one of those formats
    # still opens; TGA (left out on purpose) is still refused as not an image.
    import subprocess
    import sys
    formats = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "ICO")
    for fmt in formats:
        (tmp_path / fmt).write_bytes(make_image(None, (64, 48), fmt=fmt))
    Image.new("RGB", (8, 8)).save(tmp_path / "TGA", "TGA")
    code = (
        "import io, sys\n"
        "from PIL import Image\n"
        "from datamill.media import image as m\n"
        f"root = {str(tmp_path)!r}\n"
        f"for fmt in {formats!r}:\n"
        "    img = m._open(open(f'{root}/{fmt}', 'rb'), 10**9)\n"
        "    assert img.format == fmt, (fmt, img.format)\n"
        "try:\n"
        "    m._open(open(f'{root}/TGA', 'rb'), 10**9)\n"
        "except m.ImageError as exc:\n"
        "    assert exc.error_class == 'not_image', exc.error_class\n"
        "else:\n"
        "    raise AssertionError('TGA opened')\n"
        "assert Image._initialized < 2, 'Image.init() ran'\n"
        "assert 'PIL.PsdImagePlugin' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_a_format_whose_plugin_this_pillow_lacks_is_left_out(monkeypatch):
    import importlib
    import datamill.media.image as image_module
    real = importlib.import_module

    def without_avif(name, *args):
        if name == "PIL.AvifImagePlugin":
            raise ImportError("no AVIF in this Pillow")
        return real(name, *args)
    monkeypatch.setattr(importlib, "import_module", without_avif)
    monkeypatch.delitem(Image.OPEN, "AVIF", raising=False)  # as if never registered
    image_module._formats.cache_clear()
    try:
        formats = image_module._formats()
    finally:
        image_module._formats.cache_clear()
    assert "AVIF" not in formats and "JPEG" in formats and "WEBP" in formats
