"""media.hashes: perceptual hashes bit-for-bit imagehash's, the pixel corrections, batches."""
from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import time

import imagehash
import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from datamill.media import hashes
from datamill.media.hashes import (HASH_KINDS, ImageError, from_hex, hamming, hash_image, hash_images,
                                   phash_batch, popcount, to_hex)
from datamill.testing.images import draw_image, make_bomb_png, make_image

IMAGEHASH = {"phash": imagehash.phash, "dhash": imagehash.dhash, "ahash": imagehash.average_hash,
             "whash": imagehash.whash}


def reference(img: Image.Image, kind: str = "phash") -> int:
    """imagehash's hash of a PIL image, as our integer."""
    return int(str(IMAGEHASH[kind](img)), 16)


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A synthetic picture with photo-like texture (noise at two scales)."""
    rng = np.random.default_rng(seed)
    coarse = np.kron(rng.normal(0, 12, (height // 8 + 1, width // 8 + 1)), np.ones((8, 8)))[:height, :width]
    texture = coarse + rng.normal(0, 6, (height, width))
    return Image.fromarray(np.clip(draw_image(width, height, seed) + texture[..., None], 0, 255).astype(np.uint8))


def degenerate_images() -> list[Image.Image]:
    """Pictures whose DCT coefficients tie at the median (exact zeros by symmetry): a DCT
    by matrix products instead of scipy's gets other bits on nearly all of them."""
    images = [Image.new("L", (100, 80), level) for level in (0, 1, 128, 255)]
    images.append(Image.new("RGB", (64, 48), (200, 30, 90)))
    for seed in range(12):
        half = np.random.default_rng(seed).integers(0, 256, (40, 20), dtype=np.uint8)
        mirrored = np.concatenate([half, half[:, ::-1]], axis=1)  # left-right symmetric
        images.append(Image.fromarray(mirrored))
        images.append(Image.fromarray(np.ascontiguousarray(mirrored.T)))  # top-bottom symmetric
        quarter = np.concatenate([mirrored[:20], mirrored[:20][::-1]], axis=0)  # both
        images.append(Image.fromarray(quarter))
        board = (np.indices((64, 64)).sum(axis=0) + seed) % 2 * 255
        images.append(Image.fromarray(board.astype(np.uint8)))
    return images


def varied_images() -> list[bytes]:
    """About 200 files: random sizes, RGB, gray, bilevel and palette pictures, lossy and
    lossless formats, smooth and textured, plus the degenerate pictures."""
    rng = np.random.default_rng(5)
    files = []
    for n in range(150):
        width, height = (int(v) for v in rng.integers(8, 420, 2))
        mode = ("RGB", "L", "P", "1")[n % 4]
        fmt = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")[n // 4 % 6]
        if mode in ("P", "1") and fmt in ("JPEG", "WEBP"):
            fmt = "PNG"
        picture = photo(width, height, n) if n % 3 else Image.fromarray(draw_image(width, height, n))
        if mode == "P":
            picture = picture.quantize(int(rng.integers(8, 200)), method=Image.Quantize.FASTOCTREE)
        elif mode != "RGB":
            picture = picture.convert(mode)
        options = {"quality": int(rng.integers(30, 98))} if fmt in ("JPEG", "WEBP") else {}
        files.append(encode(picture, fmt, **options))
    files += [make_image(None, (int(w), int(h)), fmt="JPEG", seed=s, quality=85)
              for s, (w, h) in enumerate(rng.integers(16, 300, (20, 2)))]
    files += [encode(img, "PNG") for img in degenerate_images()]
    files += [encode(Image.fromarray(draw_image(w, h, 1)), "PNG") for w, h in ((1, 1), (3, 2), (8, 8), (9, 5))]
    return files


@pytest.fixture(scope="module")
def files() -> list[bytes]:
    return varied_images()


# --- bit-for-bit imagehash ----------------------------------------------------------------


def test_every_kind_is_imagehash_bit_for_bit(files):
    assert len(files) >= 200
    results = hash_images(files, HASH_KINDS)
    mismatches = []
    for n, (data, result) in enumerate(zip(files, results)):
        assert not isinstance(result, Exception), (n, result)
        img = Image.open(io.BytesIO(data))
        for kind in HASH_KINDS:
            if result.hashes[kind] != reference(img, kind):
                mismatches.append((n, img.format, img.mode, img.size, kind))
    assert mismatches == []


def test_lanczos_by_matrices_is_pillow_bit_for_bit():
    """resample.resize_gray takes over from Pillow from the second picture of a size on:
    every picture, first or later, any shape, gives Pillow's exact bits."""
    from datamill.media import resample
    rng = np.random.default_rng(9)
    sizes = [(640, 480), (480, 640), (1024, 768), (333, 97), (97, 333), (1200, 90), (120, 120)]
    sizes += [tuple(int(v) for v in rng.integers(60, 900, 2)) for _ in range(25)]
    for n, (w, h) in enumerate(sizes):
        for k in range(3):
            kind = (n + k) % 3
            gray = (np.asarray(photo(w, h, n * 3 + k).convert("L")) if kind == 0 else
                    draw_image(w, h, n * 3 + k)[..., 0] if kind == 1 else
                    rng.integers(0, 256, (h, w), dtype=np.uint8))
            for size in ((32, 32), (9, 8), (8, 8)):
                want = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.LANCZOS))
                assert np.array_equal(resample.resize_gray(gray, size), want), (w, h, size, k)
    learnt = [resample._plan(w, h, 32, 32) for w, h in sizes]
    assert learnt.count(None) <= 2, learnt  # the faster path really ran


def test_phash_of_repeated_sizes_is_imagehash_bit_for_bit():
    files = [encode(photo(w, h, s), "JPEG", quality=80) for s, (w, h) in
             enumerate([(640, 480)] * 4 + [(300, 500)] * 4 + [(1000, 750)] * 3)]
    for data, result in zip(files, hash_images(files, ("phash", "dhash", "ahash"))):
        img = Image.open(io.BytesIO(data))
        assert {k: result.hashes[k] for k in ("phash", "dhash", "ahash")} == \
            {k: reference(img, k) for k in ("phash", "dhash", "ahash")}


def test_phash_of_tied_coefficients_is_imagehash_bit_for_bit():
    images = degenerate_images()
    ours = [hash_image(img).hashes["phash"] for img in images]
    assert ours == [reference(img) for img in images]
    assert ours[2] == 0x8000000000000000  # mid gray: only the DC coefficient above the median


def test_phash_from_a_path_and_a_pil_image(tmp_path):
    data = make_image(tmp_path / "a.jpg", (200, 150), seed=3)
    expected = reference(Image.open(tmp_path / "a.jpg"))
    assert hash_image(tmp_path / "a.jpg").hashes["phash"] == expected
    assert hash_image(str(tmp_path / "a.jpg")).hashes["phash"] == expected
    assert hash_image(Image.open(io.BytesIO(data))).hashes["phash"] == expected


def test_phash_batch_is_imagehash_on_32x32_pictures():
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 256, (300, 32, 32), dtype=np.uint8)
    stack[:20] = stack[:20, :, :16].repeat(2, axis=2)  # columns in pairs: more ties
    expected = [reference(Image.fromarray(picture)) for picture in stack]
    assert phash_batch(stack).tolist() == expected
    assert phash_batch(stack.astype(np.float32)).dtype == np.uint64
    with pytest.raises(ValueError):
        phash_batch(stack[:, :16])


# --- the pixels imagehash gets wrong ------------------------------------------------------


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_applied_before_hashing(orientation):
    stored = make_image(None, (90, 60), fmt="PNG", seed=4, exif_orientation=orientation)
    swapped = orientation >= 5
    upright = make_image(None, (60, 90) if swapped else (90, 60), fmt="PNG", seed=4)
    ours = hash_image(stored, HASH_KINDS)
    assert ours.hashes == hash_image(upright, HASH_KINDS).hashes
    assert (ours.width, ours.height) == ((60, 90) if swapped else (90, 60))
    assert ours.hashes["phash"] != reference(Image.open(io.BytesIO(stored)))  # imagehash: sideways


@pytest.mark.parametrize("fast", [False, True])
def test_exif_rotated_jpeg_hashes_near_its_upright_original(fast):
    stored = make_image(None, (320, 240), seed=6, exif_orientation=6, quality=95)
    upright = make_image(None, (240, 320), seed=6, quality=95)
    ours = hash_image(stored, fast=fast)
    assert (ours.width, ours.height) == (240, 320)
    assert hamming(ours.hashes["phash"], hash_image(upright, fast=fast).hashes["phash"]) <= 4
    assert hamming(ours.hashes["phash"], reference(Image.open(io.BytesIO(stored)))) > 10


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_composited_on_white(mode):
    rng = np.random.default_rng(1)
    picture = draw_image(120, 90, 2)
    alpha = np.where(rng.random((90, 120)) < 0.3, 0, 255).astype(np.uint8)
    garbage = rng.integers(0, 256, picture.shape, dtype=np.uint8)  # the colour under alpha 0
    stored = np.where(alpha[..., None] == 0, garbage, picture)
    img = Image.fromarray(stored).convert(mode[:-1])
    img.putalpha(Image.fromarray(alpha))
    on_white = Image.fromarray(np.where(alpha[..., None] == 0, 255, picture).astype(np.uint8)).convert(mode[:-1])
    ours = hash_image(encode(img, "PNG"), HASH_KINDS).hashes
    assert ours == {kind: reference(on_white, kind) for kind in HASH_KINDS}
    assert ours["phash"] != reference(img)


def test_half_transparent_image_hashes_near_its_composite():
    data = make_image(None, (160, 120), mode="RGBA", fmt="PNG", seed=8)
    img = Image.open(io.BytesIO(data))
    rgba = np.asarray(img, dtype=np.float64)
    a = rgba[..., 3:] / 255
    flat = Image.fromarray(np.round(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8))
    assert hamming(hash_image(data).hashes["phash"], reference(flat)) <= 2


def test_palette_with_transparency_composited_on_white():
    data = make_image(None, (160, 120), mode="P", fmt="PNG", seed=9)
    img = Image.open(io.BytesIO(data))
    indices = np.asarray(img)
    colours = np.array(img.getpalette()[:3 * 256]).reshape(-1, 3)[indices]
    colours[indices == img.info["transparency"]] = 255
    expected = Image.fromarray(colours.astype(np.uint8))
    assert hash_image(data, HASH_KINDS).hashes == {kind: reference(expected, kind) for kind in HASH_KINDS}
    assert hash_image(data).hashes["phash"] != reference(img)  # imagehash sees the magenta block


def test_16bit_png_hashes_like_its_8bit_version():
    data = make_image(None, (150, 100), mode="I;16", fmt="PNG", seed=10)
    img = Image.open(io.BytesIO(data))
    assert img.mode.startswith("I")
    values = np.asarray(img).astype(np.int64)
    eight = Image.fromarray(((values + 128) // 257).astype(np.uint8))
    ours = hash_image(data, HASH_KINDS).hashes
    assert ours == hash_image(encode(eight, "PNG"), HASH_KINDS).hashes
    assert ours["phash"] == reference(eight)
    assert ours["phash"] != reference(img)  # imagehash clips 16-bit values to 255


def test_cmyk_jpeg_hashes_near_its_rgb_original():
    data = make_image(None, (200, 150), mode="CMYK", seed=11, quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    original = Image.fromarray(draw_image(200, 150, 11))
    ours = hash_image(data, HASH_KINDS)
    assert (ours.width, ours.height) == (200, 150)
    for kind in HASH_KINDS:
        assert hamming(ours.hashes[kind], reference(original, kind)) <= 4, kind


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animation_hashed_by_its_first_frame(fmt):
    data = make_image(None, (120, 90), fmt=fmt, seed=12, frames=3)
    img = Image.open(io.BytesIO(data))
    assert img.n_frames == 3
    first = img.convert("RGB")
    img.seek(1)
    second = img.convert("RGB")
    ours = hash_image(data).hashes["phash"]
    assert ours == reference(first)
    assert ours != reference(second)


# --- fast mode ----------------------------------------------------------------------------


def test_fast_mode_drafts_jpegs_and_stays_close(monkeypatch):
    drafts = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        drafts.append((mode, size))
        return original_draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    files = [encode(photo(640, 480, seed), "JPEG", quality=85) for seed in range(12)]
    exact = hash_images(files, HASH_KINDS)
    assert drafts == []
    fast = hash_images(files, HASH_KINDS, fast=True)
    assert drafts and drafts[0] == ("L", (hashes.FAST_DRAFT_SIDE, hashes.FAST_DRAFT_SIDE))
    for e, f in zip(exact, fast):
        assert (f.width, f.height, f.sha256) == (e.width, e.height, e.sha256) == (640, 480, e.sha256)
        for kind in HASH_KINDS:
            assert hamming(e.hashes[kind], f.hashes[kind]) <= 4
    distances = [hamming(e.hashes["phash"], f.hashes["phash"]) for e, f in zip(exact, fast)]
    assert np.mean(distances) < 1.5


def test_fast_mode_changes_nothing_for_lossless_formats():
    data = make_image(None, (300, 200), fmt="PNG", seed=13)
    assert hash_image(data, HASH_KINDS, fast=True) == hash_image(data, HASH_KINDS)


# --- batches ------------------------------------------------------------------------------


def test_batch_equals_single_with_failures_in_place(tmp_path, monkeypatch):
    monkeypatch.setattr(hashes, "BATCH_SIZE", 3)  # several batches and a partial last one
    make_image(tmp_path / "p.png", (70, 50), fmt="PNG", seed=14)
    sources = [make_image(None, (80 + n, 60), seed=n) for n in range(7)]
    sources[2] = b"not an image at all"
    sources[5] = tmp_path / "p.png"
    sources.insert(6, Image.fromarray(draw_image(50, 40, 15)))
    sources.append(tmp_path / "missing.jpg")
    for fast in (False, True):
        batch = hash_images(sources, ("phash", "dhash"), fast=fast)
        assert len(batch) == len(sources)
        assert isinstance(batch[2], ImageError) and batch[2].error_class == "not_image"
        assert isinstance(batch[-1], FileNotFoundError)
        for source, result in zip(sources, batch):
            if not isinstance(result, Exception):
                assert result == hash_image(source, ("phash", "dhash"), fast=fast)


def test_metadata_sha256_bytes_and_size(tmp_path):
    data = make_image(tmp_path / "a.jpg", (123, 45), seed=16)
    result = hash_image(tmp_path / "a.jpg", ("dhash", "phash", "dhash"))
    assert list(result.hashes) == ["dhash", "phash"]
    assert (result.width, result.height) == (123, 45)
    assert result.sha256 == hashlib.sha256(data).hexdigest() and result.bytes == len(data)
    from_pil = hash_image(Image.open(io.BytesIO(data)))
    assert from_pil.sha256 is None and from_pil.bytes is None


# --- bad input ----------------------------------------------------------------------------


def error_class(source) -> str:
    with pytest.raises(ImageError) as info:
        hash_image(source)
    return info.value.error_class


@pytest.mark.parametrize("fast", [False, True])
def test_truncated_jpeg_is_a_decode_error(fast):
    data = make_image(None, (200, 150), seed=17)
    with pytest.raises(ImageError) as info:
        hash_image(data[: len(data) // 2], fast=fast)
    assert info.value.error_class == "decode_error"


def test_zero_bytes_and_non_images(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "page.jpg").write_bytes(b"<html><body>404 not found</body></html>")
    assert error_class(tmp_path / "empty.jpg") in ("not_image", "decode_error")
    assert error_class(tmp_path / "page.jpg") == "not_image"
    assert error_class(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30) == "decode_error"


def test_bomb_is_too_large_from_its_header():
    start = time.perf_counter()
    assert error_class(make_bomb_png(100_000, 100_000)) == "too_large"
    assert time.perf_counter() - start < 1.0
    with pytest.raises(ImageError) as info:
        hash_image(make_image(None, (200, 150)), max_pixels=10_000)
    assert info.value.error_class == "too_large"


def test_unknown_kind_and_missing_file(tmp_path):
    with pytest.raises(ValueError):
        hash_image(make_image(None, (20, 20)), ("md5",))
    with pytest.raises(ValueError):
        hash_image(make_image(None, (20, 20)), ())
    with pytest.raises(FileNotFoundError):
        hash_image(tmp_path / "nope.jpg")


# --- bits ---------------------------------------------------------------------------------


def test_popcount_and_hamming():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True)
    b = rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True)
    a[:3] = [0, 2**64 - 1, 1 << 63]
    expected = [bin(int(x)).count("1") for x in a]
    assert popcount(a).tolist() == expected
    assert hashes._popcount_table(a).tolist() == expected  # the NumPy < 2.0 path
    assert hashes._popcount_table(a.reshape(50, 100)).shape == (50, 100)
    assert hamming(a, b).tolist() == [bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b)]
    assert hamming(a, a[0]).tolist() == expected  # broadcasting against a scalar
    assert int(hamming(0, 2**64 - 1)) == 64


def test_hex_round_trip_matches_imagehash():
    img = Image.fromarray(draw_image(100, 80, 18))
    h = hash_image(img).hashes["phash"]
    assert to_hex(h) == str(imagehash.phash(img))
    assert imagehash.hex_to_hash(to_hex(h)) == imagehash.phash(img)
    assert to_hex(np.uint64(1)) == "0000000000000001"
    for value in (0, 1, 2**63, 2**64 - 1, h):
        assert from_hex(to_hex(value)) == value
    with pytest.raises(ValueError):
        from_hex("abc")


def test_phash_batch_is_scipy_fftpack_bit_for_bit_without_importing_scipy_fft():
    code = ("import sys, numpy as np\n"
            "from datamill.media.hashes import phash_batch, _pack_bits, _median64\n"
            "rng = np.random.default_rng(0)\n"
            "g = rng.integers(0, 256, (300, 32, 32)).astype(np.float64)\n"
            "g[:100] = 7.0\n"  # blank pictures: coefficients tie at the median
            "g[100:200] += g[100:200, :, ::-1]\n"  # mirror-symmetric ones: exact zeros
            "ours = phash_batch(g)\n"
            "print('scipy.fft' in sys.modules, 'scipy.special' in sys.modules)\n"
            "import scipy.fftpack\n"  # afterwards, scipy's own import still works
            "low = scipy.fftpack.dct(scipy.fftpack.dct(g, axis=1)[:, :8, :], axis=2)[:, :, :8]\n"
            "print(bool((ours == _pack_bits(low.reshape(300, 64) > _median64(low.reshape(300, 64)))).all()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "True"]
