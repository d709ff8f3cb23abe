"""Perceptual hashes of images as 64-bit unsigned integers, comparable with imagehash's.

Four kinds, each the 8x8 = 64-bit version of imagehash's function of the same name, computed
the same way from the same gray pixels (Pillow's ``convert("L")``, then a LANCZOS resize):

- ``phash``: the DCT of a 32x32 picture, the top-left 8x8 coefficients against their median.
- ``dhash``: a 9x8 picture, each pixel brighter than its left neighbour.
- ``ahash``: an 8x8 picture, each pixel brighter than the mean.
- ``whash``: Haar wavelets (imagehash's defaults; needs PyWavelets, as imagehash does).

A hash's bits are imagehash's ``hash.flatten()`` with the first bit as the most significant,
so ``to_hex(h) == str(imagehash.phash(image))``, and the integer is ``int(str(...), 16)``.

Exact mode (the default) decodes every pixel.  For an 8-bit image without EXIF rotation or
transparency the four hashes are bit-for-bit imagehash's on ``Image.open(path)``: the DCT is
scipy's own (``scipy.fftpack.dct``, as imagehash; its pocketfft call made directly, without
importing scipy.fft: 0.4 s saved in every worker): a DCT by matrix products agrees on natural
pictures, but on blank or mirror-symmetric pictures, whose coefficients tie at the median
(exact zeros), it gave other bits for 200 of 206 such test pictures.  Where imagehash hashes
the wrong pixels, the pixels are corrected first, exactly as `datamill.media.image` decodes
them for every job: EXIF orientation applied, transparency composited on white, 16-bit gray
scaled to 8 bits (not clipped), CMYK and palette images converted, the first frame of an
animation.

Fast mode (``fast=True``) lets JPEGs decode at 1/2, 1/4 or 1/8 scale (DCT scaling in
libjpeg) to no less than `FAST_DRAFT_SIDE` pixels a side, and in gray (libjpeg's own luma,
with no colour conversion), then hashes the same way.  Other formats decode as in exact mode.

How fast each mode is, and how often fast and exact mode agree, is measured by
bench/dedup.py (BENCHMARKS.md, Dedup).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import io
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import image as _image
from . import resample
from .image import DEFAULT_MAX_PIXELS, ImageError

__all__ = ["HASH_KINDS", "FAST_DRAFT_SIDE", "ImageHashes", "hash_image", "hash_images", "phash_batch",
           "popcount", "hamming", "to_hex", "from_hex", "ImageError"]

HASH_KINDS = ("phash", "dhash", "ahash", "whash")
# Fast mode: the smallest side a JPEG is decoded to (see the measurements above).
FAST_DRAFT_SIDE = 32
# How many decoded images `hash_images` gathers before hashing them together.
BATCH_SIZE = 256

_LANCZOS = Image.Resampling.LANCZOS
# The size each kind's gray picture is resized to (width, height), as imagehash does.
_SMALL_SIZE = {"phash": (32, 32), "dhash": (9, 8), "ahash": (8, 8)}

Source = str | os.PathLike | bytes | bytearray | memoryview | Image.Image


@dataclass(frozen=True)
class ImageHashes:
    """The hashes of one image and what is known about it.

    hashes: kind -> 64-bit hash as a Python int (``to_hex`` gives imagehash's string).
    width, height: the original picture's size, upright (after the EXIF orientation), also
    in fast mode.  sha256 (hex) and bytes: of the file or bytes given; None for a PIL image.
    """

    hashes: dict[str, int]
    width: int
    height: int
    sha256: str | None
    bytes: int | None


@dataclass
class _Decoded:
    """One image ready to hash: its small gray pictures (kind -> uint8 array) and metadata."""

    small: dict[str, np.ndarray]
    whash: int | None
    width: int
    height: int
    sha256: str | None
    nbytes: int | None


def hash_image(source: Source, kinds: Sequence[str] = ("phash",), *, fast: bool = False,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHashes:
    """Hash one image: a path, the bytes of a file, or a PIL image (used as it is: never
    drafted, and its sha256 and bytes are None).

    Raises `ImageError` (``not_image``, ``decode_error``, ``too_large``: more than
    `max_pixels`) for sources that are not usable images, OSError for a path that cannot be
    read, ValueError for an unknown kind.

    >>> h = hash_image("photo.jpg", ("phash", "dhash"))          # doctest: +SKIP
    >>> to_hex(h.hashes["phash"]) == str(imagehash.phash(Image.open("photo.jpg")))  # doctest: +SKIP
    True
    """
    kinds = _check_kinds(kinds)
    return _hash_decoded([_decode(source, kinds, fast, max_pixels)], kinds)[0]


def hash_images(sources: Iterable[Source], kinds: Sequence[str] = ("phash",), *, fast: bool = False,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> list[ImageHashes | Exception]:
    """Hash many images, `BATCH_SIZE` at a time; the same hashes as `hash_image`.

    One result per source, in order: its `ImageHashes`, or the exception that source raised
    (`ImageError`, OSError), so that one bad file does not lose the others.
    """
    kinds = _check_kinds(kinds)
    results: dict[int, ImageHashes | Exception] = {}
    pending: list[tuple[int, _Decoded]] = []

    def flush() -> None:
        results.update(zip([index for index, _ in pending], _hash_decoded([d for _, d in pending], kinds)))
        pending.clear()

    for index, source in enumerate(sources):
        try:
            pending.append((index, _decode(source, kinds, fast, max_pixels)))
        except MemoryError:
            raise
        except Exception as exc:  # recorded per source, as the engine records failures
            results[index] = exc
        if len(pending) >= BATCH_SIZE:
            flush()
    flush()
    return [results[index] for index in range(len(results))]


def phash_batch(gray: np.ndarray) -> np.ndarray:
    """The phash of each of N 32x32 gray pictures (N x 32 x 32, values 0..255): uint64[N].

    The pictures are what imagehash hashes: ``image.convert("L").resize((32, 32), LANCZOS)``.
    One DCT call per axis for the whole stack (scipy's, so the bits are imagehash's even
    where coefficients tie).
    """
    dct = _dct()
    gray = np.asarray(gray, dtype=np.float64)
    if gray.ndim != 3 or gray.shape[1:] != (32, 32):
        raise ValueError(f"expected N x 32 x 32 pictures, not {gray.shape}")
    # Only the first 8 rows of the first pass feed the 8x8 corner: the rest is never computed.
    rows = dct(gray, axis=1)[:, :8, :]
    low = dct(rows, axis=2)[:, :, :8].reshape(len(gray), 64)
    return _pack_bits(low > _median64(low))


def popcount(x: np.ndarray | int) -> np.ndarray:
    """The number of set bits of each uint64 (uint8 array, or uint8 scalar for a scalar)."""
    x = np.asarray(x, dtype=np.uint64)
    if _HAS_BITWISE_COUNT:
        return np.bitwise_count(x)
    return _popcount_table(x)


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Hamming distances between uint64 hashes, elementwise with broadcasting (uint8)."""
    return popcount(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))


def to_hex(h: int | np.integer) -> str:
    """A hash as 16 hex digits, as ``str(imagehash_hash)`` for 8x8 hashes."""
    return f"{int(h):016x}"


def from_hex(text: str) -> int:
    """The hash written by `to_hex` (or by imagehash for an 8x8 hash)."""
    if len(text) != 16:
        raise ValueError(f"a 64-bit hash is 16 hex digits, not {text!r}")
    return int(text, 16)


@functools.cache
def _dct() -> Callable[..., np.ndarray]:
    """`scipy.fftpack.dct(x, axis=a)` (type 2, no normalisation): the very pocketfft call it
    makes, ``pypocketfft.dct(x, 2, (a,), 0, None, 1, None)``, so the very bits; but without
    importing scipy.fft, which imports scipy.special and more: 0.4 s in every fresh worker.
    The extension is registered under its own name, so a later `import scipy.fft` uses it."""
    name = "scipy.fft._pocketfft.pypocketfft"
    pfft = sys.modules.get(name)
    if pfft is None:
        try:
            spec = importlib.util.find_spec("scipy")  # finds the package, does not run it
            folder = Path(spec.submodule_search_locations[0]) / "fft" / "_pocketfft"
            path = next(folder / f"pypocketfft{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES
                        if (folder / f"pypocketfft{suffix}").exists())
            spec = importlib.util.spec_from_file_location(name, path)
            pfft = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(pfft)
            sys.modules[name] = pfft
        except Exception:  # another layout of scipy: its own import, slower
            import scipy.fftpack
            return scipy.fftpack.dct

    def dct(x: np.ndarray, axis: int) -> np.ndarray:
        return pfft.dct(x, 2, (axis,), 0, None, 1, None)
    return dct


# ---------------------------------------------------------------------------------------
# Decoding


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = (kinds,)
    unknown = [k for k in kinds if k not in HASH_KINDS]
    if unknown or not kinds:
        raise ValueError(f"hash kinds must be among {', '.join(HASH_KINDS)}, not {list(kinds)}")
    return tuple(dict.fromkeys(kinds))


def _decode(source: Source, kinds: tuple[str, ...], fast: bool, max_pixels: int) -> _Decoded:
    """Decode one source to the gray pictures its hashes need.

    The pixels are `datamill.media.image`'s (its decoding steps are called one by one,
    rather than `load_image_rgb`, to know the original size of a drafted JPEG and to keep
    gray images gray).
    """
    sha256 = nbytes = None
    if isinstance(source, Image.Image):
        img = source
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        else:
            with open(source, "rb") as f:
                data = f.read()
        sha256, nbytes = hashlib.sha256(data).hexdigest(), len(data)
        img = _image._open(io.BytesIO(data), max_pixels)
    # The upright size of the original, before a draft makes the picture smaller.
    swaps = _image._orientation(img) in _image._SWAPS_SIDES
    width, height = img.size[::-1] if swaps else img.size
    if fast and img is not source and img.format in _image._DRAFTABLE:
        # Gray straight from libjpeg (no chroma, no colour conversion), at a reduced scale.
        img.draft("L", (FAST_DRAFT_SIDE, FAST_DRAFT_SIDE))
    pixels, _ = _image._decode(img, keep_alpha=False, draft_size=None)
    gray = pixels if pixels.mode == "L" else pixels.convert("L")
    if gray.width * gray.height >= resample.MIN_PIXELS:  # Pillow's LANCZOS bits, faster
        array = np.asarray(gray)
        small = {k: resample.resize_gray(array, _SMALL_SIZE[k]) for k in kinds if k in _SMALL_SIZE}
    else:
        small = {k: np.asarray(gray.resize(_SMALL_SIZE[k], _LANCZOS)) for k in kinds if k in _SMALL_SIZE}
    return _Decoded(small, _whash(gray) if "whash" in kinds else None, width, height, sha256, nbytes)


def _hash_decoded(decoded: list[_Decoded], kinds: tuple[str, ...]) -> list[ImageHashes]:
    if not decoded:
        return []
    columns: dict[str, np.ndarray] = {}
    for kind in kinds:
        if kind == "whash":
            columns[kind] = np.array([d.whash for d in decoded], dtype=np.uint64)
        else:
            stack = np.stack([d.small[kind] for d in decoded])
            columns[kind] = _BATCH_HASH[kind](stack)
    return [ImageHashes({k: int(columns[k][n]) for k in kinds}, d.width, d.height, d.sha256, d.nbytes)
            for n, d in enumerate(decoded)]


# ---------------------------------------------------------------------------------------
# Hashes of small gray pictures, N at a time


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """N x 64 booleans -> uint64[N], the first bit the most significant (imagehash's hex)."""
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def _median64(values: np.ndarray) -> np.ndarray:
    """np.median of each row of N x 64 values, as an N x 1 column (the same floats: the mean
    of the 32nd and 33rd values), without np.median's overhead per call."""
    ordered = np.sort(values, axis=1)
    return (ordered[:, 31:32] + ordered[:, 32:33]) / 2


def _dhash_batch(gray: np.ndarray) -> np.ndarray:
    """N x 8 x 9 pictures: each pixel brighter than its left neighbour."""
    return _pack_bits((gray[:, :, 1:] > gray[:, :, :-1]).reshape(len(gray), 64))


def _ahash_batch(gray: np.ndarray) -> np.ndarray:
    """N x 8 x 8 pictures: each pixel brighter than the picture's mean."""
    flat = gray.reshape(len(gray), 64)
    return _pack_bits(flat > flat.mean(axis=1, dtype=np.float64)[:, None])


_BATCH_HASH = {"phash": phash_batch, "dhash": _dhash_batch, "ahash": _ahash_batch}


def _whash(gray: Image.Image) -> int:
    """imagehash.whash with its defaults (Haar, 8x8, the image's own scale, the lowest
    frequency removed), on an L picture.

    PyWavelets is required: the same operations done by NumPy (block means) differ from it
    where values tie at the median, in 7 of 506 test pictures, mostly symmetric ones.
    """
    try:
        import pywt
    except ImportError:
        raise ImportError("whash needs PyWavelets (pip install PyWavelets)") from None
    scale = max(2 ** int(np.log2(min(gray.size))), 8)
    levels = int(np.log2(scale))
    pixels = np.asarray(gray.resize((scale, scale), _LANCZOS)) / 255.0
    coeffs = pywt.wavedec2(pixels, "haar", level=levels)
    coeffs[0] *= 0
    pixels = pywt.waverec2(coeffs, "haar")
    low = pywt.wavedec2(pixels, "haar", level=levels - 3)[0]
    return int(_pack_bits((low > np.median(low)).reshape(1, 64))[0])


# ---------------------------------------------------------------------------------------
# Bit counting

_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")  # NumPy >= 2.0
_BYTE_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)


def _popcount_table(x: np.ndarray) -> np.ndarray:
    """popcount for NumPy < 2.0: a 256-entry table over the 8 bytes of each value."""
    x = np.ascontiguousarray(x, dtype=np.uint64)
    counts = _BYTE_POPCOUNT[x.reshape(-1, 1).view(np.uint8)].sum(axis=1, dtype=np.uint8)
    return counts.reshape(x.shape)
