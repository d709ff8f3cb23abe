"""Images: check, orient, normalise, filter, resize and encode one image with Pillow.

Two entry points share one decoding path, so an image means the same pixels to every job:

- `process_image` (the ``download`` job, once per downloaded body): bytes in, the bytes to
  store out, plus sizes and the sha256 of the input.  Returns the input bytes untouched
  when nothing would change.
- `load_image_rgb` (the ``dedup`` job, before hashing): a file or bytes in, an upright 8-bit
  RGB picture out.

The shared path (`_open`, then `_decode`):

1. Open the header only, among web and camera formats (`IMAGE_FORMATS`).  A body that
   no format recognises is ``not_image`` (an HTML page, text), or ``decode_error`` if it
   starts like an image.  More pixels than ``max_pixels`` is ``too_large``, decided from
   the header before any pixel is decoded (a 100,000 x 100,000 PNG of one kilobyte costs
   nothing).  Pillow's own global cap (``Image.MAX_IMAGE_PIXELS``) is never changed; it
   still applies above twice its value.
2. For JPEG, when the caller needs fewer pixels, ``draft`` decodes directly at 1/2, 1/4 or
   1/8 scale (DCT scaling: 2-8x cheaper), never below what is asked for; `process_image`
   also at 3/8.
3. Decode the first frame (animations, camera MPO files); truncated or corrupt data is
   ``decode_error``.
4. Apply the EXIF orientation (``ImageOps.exif_transpose``; also read from XMP).
5. Normalise to 8 bits: 16-bit gray is scaled (``v * 255 / 65535``, not clipped), CMYK,
   YCbCr and palette images become RGB, and transparency (alpha channels, palette or
   colour-key transparency) becomes an alpha channel, which is either kept (PNG and WebP
   outputs) or composited on white.

Failures raise `ImageError` (an `ItemError` whose ``error_class`` is one of
`ERROR_CLASSES`); the filters raise `Filtered` with a reason in `FILTER_REASONS`.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import io
import math
import os
import warnings
from dataclasses import dataclass
from typing import IO, Literal

import numpy as np
from PIL import Image, ImageOps

from ..errors import Filtered, ItemError
from ..options import OptionError, Options, option

ERROR_CLASSES = ("not_image", "decode_error", "too_large", "encode_error")
FILTER_REASONS = ("too_small", "too_large_aspect")
RESIZE_MODES = ("no", "keep_ratio", "center_crop", "border")
ENCODINGS = ("jpg", "webp", "png")
# Pillow's own default decompression-bomb limit (Image.MAX_IMAGE_PIXELS): about 0.25 GB of RGBA.
DEFAULT_MAX_PIXELS = 89_478_485
# Formats opened at all.  Others Pillow knows are left out on purpose: formats with no magic
# number (TGA) or made of text (PPM "P1", XBM, XPM) would accept pages that are not images,
# and every parser left out is one less exposed to untrusted bytes.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "ICO", "JPEG2000", "AVIF")
# The Pillow plugins that read IMAGE_FORMATS (PIL.<name>ImagePlugin).
_PLUGINS = ("Jpeg", "Png", "Gif", "WebP", "Bmp", "Tiff", "Ico", "Jpeg2K", "Avif")
_EXT_OF_FORMAT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
_SAVE_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
# Source modes each output format stores as they are, so such a source needs no re-encode.
_NATIVE_MODES = {"jpg": {"L", "RGB"}, "png": {"1", "L", "LA", "P", "RGB", "RGBA"}, "webp": {"RGB", "RGBA"}}
_DRAFTABLE = ("JPEG", "MPO")
# How a body starts when it was meant to be an image, so that Pillow failing to identify
# it means corrupt, not "not an image".
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
                b"\x00\x00\x01\x00", b"\x00\x00\x00\x0cjP  ")
_ORIENTATION_TAG = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)
_WHITE = (255, 255, 255)
# Downscaling: decode JPEGs at the smallest DCT scale (1/2, 1/4, 1/8) that still holds the
# target, then Pillow's BILINEAR, which shrinks with a triangle filter as wide as the scale
# (antialiased, as torchvision's default Resize); enlarging uses BICUBIC.  Why these (time and
# quality of each filter and draft scale against img2dataset): BENCHMARKS.md, Download.
_DRAFT_GAP = 1.0
_DOWNSCALE = Image.Resampling.BILINEAR
_UPSCALE = Image.Resampling.BICUBIC

PathOrBytes = str | os.PathLike | bytes | bytearray | memoryview


class ImageError(ItemError):
    """An image that cannot be used: ``not_image``, ``decode_error``, ``too_large``, or
    ``encode_error`` (an output format's limit, such as WebP's 16383 pixels a side)."""

    error_class = "decode_error"


@dataclass(frozen=True)
class ImageOptions(Options):
    """What `process_image` does to each image (the download job's image options).

    resize:       target side in pixels, or None to keep the size.
    resize_mode:  img2dataset's semantics.  ``keep_ratio``: the short side becomes
                  `resize`.  ``center_crop``: the same, then the centre `resize` x `resize`
                  square is kept.  ``border``: the long side becomes `resize` and the image
                  is centred on a `resize` x `resize` square of `border_color`.  ``no``:
                  never resize.
    upscale:      False (the default): only images larger than the target are resized (the
                  short side for keep_ratio and center_crop, the long side for border),
                  smaller ones are kept as they are, uncropped and unpadded, as
                  img2dataset's ``resize_only_if_bigger``.  True: small images are enlarged.
    encode:       output format ``jpg``, ``webp`` or ``png``; None keeps the source's format
                  when it is one of those, else png for images with transparency and jpg
                  for the others.  JPEG output has no alpha: transparency is composited on
                  white.  PNG and WebP keep it.
    quality:      JPEG and WebP quality (0-100); PNG is lossless and ignores it.
    min_size:     images whose short side (original pixels) is smaller are filtered
                  (``too_small``).
    max_aspect:   images whose long side / short side is larger are filtered
                  (``too_large_aspect``).
    max_pixels:   images with more pixels fail as ``too_large`` (decompression bombs).
    border_color: the RGB colour of ``border`` padding.
    """

    resize: int | None = option(None, "Target side in pixels (downscale only unless --upscale).",
                                min=1)
    resize_mode: Literal["no", "keep_ratio", "center_crop", "border"] = option(
        "keep_ratio", "keep_ratio: short side = N; center_crop: N x N centre; border: fit in "
        "N x N, padded.", choices=RESIZE_MODES)
    upscale: bool = option(False, "Also enlarge images smaller than --resize.")
    encode: Literal["jpg", "webp", "png"] | None = option(
        "jpg", "Output format (None in Python: keep the source's when it is one of these).",
        choices=ENCODINGS)
    quality: int = option(95, "JPEG and WebP quality.", min=0, max=100)
    min_size: int | None = option(None, "Filter images whose short side is smaller (too_small).",
                                  min=1)
    max_aspect: float | None = option(
        None, "Filter images more elongated than this (too_large_aspect).", min=1)
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "Fail larger images (decompression bombs) as "
                             "too_large.", min=1)
    border_color: tuple[int, int, int] = option(_WHITE, "RGB colour of border padding.",
                                                cli=False)

    def check(self) -> None:
        if len(self.border_color) != 3 or not all(0 <= c <= 255 for c in self.border_color):
            raise OptionError(f"border_color must be three values in 0..255, not "
                              f"{self.border_color}")


@dataclass(frozen=True)
class ImageResult:
    """One processed image: the bytes to store and what is known about them.

    width/height are the stored image's; original_width/original_height the source's,
    upright (after the EXIF orientation).  sha256 is the hex digest of the input bytes, so
    byte-identical downloads can be found.  reencoded is False when `data` is the input
    itself.  mode is the source's Pillow mode (``RGB``, ``CMYK``, ``P``, ``I;16``...).
    """

    data: bytes
    ext: str
    width: int
    height: int
    original_width: int
    original_height: int
    sha256: str
    reencoded: bool
    mode: str


@dataclass(frozen=True)
class _Plan:
    """A resize: `region` of the upright original (float pixel box) is scaled to `size`,
    then pasted at `offset` on a `canvas` of the border colour when there is one."""

    region: tuple[float, float, float, float]
    size: tuple[int, int]
    canvas: tuple[int, int] | None = None
    offset: tuple[int, int] = (0, 0)

    def draft_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The smallest decode of the width x height original that still resizes well."""
        fx = self.size[0] / (self.region[2] - self.region[0])
        fy = self.size[1] / (self.region[3] - self.region[1])
        if fx >= 1 or fy >= 1:
            return None
        return math.ceil(width * fx * _DRAFT_GAP), math.ceil(height * fy * _DRAFT_GAP)


def process_image(data: bytes, opts: ImageOptions) -> ImageResult:
    """Check, filter, orient, resize and encode one downloaded image body.

    Raises `ImageError` (``not_image``, ``decode_error``, ``too_large``, ``encode_error``)
    for bodies that cannot be used and `Filtered` (``too_small``, ``too_large_aspect``) for images the
    options remove.  When the source already is in the requested format, in a mode that
    format stores, upright, with one frame, and needs no resize, the input bytes are
    returned as they are (``reencoded=False``) after a full check that they decode.

    The filters look at the header only, so a corrupt image that the options would remove
    anyway is filtered, not failed.

    >>> result = process_image(body_of_a_640x480_png, ImageOptions(resize=256))  # doctest: +SKIP
    >>> result.ext, result.width, result.height, result.reencoded               # doctest: +SKIP
    ('jpg', 341, 256, True)
    """
    sha256 = hashlib.sha256(data).hexdigest()
    img = _open(io.BytesIO(data), opts.max_pixels)
    _apply_filters(*img.size, opts)  # the short side and the aspect do not depend on orientation
    orientation = _orientation(img)
    width, height = img.size[::-1] if orientation in _SWAPS_SIDES else img.size
    plan = _plan_resize(width, height, opts)
    source_ext = _EXT_OF_FORMAT.get(img.format or "")
    ext = opts.encode or source_ext or ("png" if _has_transparency(img) else "jpg")
    animated = img.format not in _DRAFTABLE and getattr(img, "is_animated", False)  # MPO: one picture
    if (plan is None and orientation == 1 and not animated and ext == source_ext
            and img.mode in _NATIVE_MODES[ext]):
        _load(img, draft_size=(1, 1))  # every byte decoded (at 1/8 scale for JPEG)
        return ImageResult(data, ext, width, height, width, height, sha256, False, img.mode)
    source_mode, icc_profile = img.mode, img.info.get("icc_profile")
    pixels, reduction = _decode(img, keep_alpha=ext != "jpg", finer=True,
                                draft_size=plan.draft_size(width, height) if plan else None)
    if plan is not None:
        pixels = _resize(pixels, plan, reduction, opts.border_color)
    return ImageResult(_encode(pixels, ext, opts.quality, icc_profile), ext, pixels.width, pixels.height,
                       width, height, sha256, True, source_mode)


def load_image_rgb(source: PathOrBytes, *, draft_size: tuple[int, int] | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file or bytes to the upright 8-bit RGB picture a person would see.

    The first frame of an animation, EXIF orientation applied, transparency composited on
    white, 16-bit gray scaled to 8 bits, CMYK, palette and other modes converted to RGB:
    the same pixels `process_image` starts from, and the ones the dedup job hashes.

    draft_size (width, height), upright: the caller needs no more pixels than that, so a
    JPEG may be decoded at 1/2, 1/4 or 1/8 scale (much faster); the result is still at
    least that large in both sides (unless the image is smaller) and is NOT resized to it.
    Other formats ignore it.

    Raises `ImageError` (``not_image``, ``decode_error``, ``too_large``); a path that
    cannot be opened raises the OSError of ``open``.

    >>> load_image_rgb("photo_4000x3000.jpg", draft_size=(64, 64)).size   # doctest: +SKIP
    (500, 375)
    """
    fp: IO[bytes]
    if isinstance(source, (bytes, bytearray, memoryview)):
        fp = io.BytesIO(source)
    else:
        fp = open(source, "rb")  # closed below, after decoding
    with fp:
        img = _open(fp, max_pixels)
        pixels, _ = _decode(img, keep_alpha=False, draft_size=draft_size)
        if pixels is img:
            pixels = img.copy() if getattr(img, "is_animated", False) else img  # detach animations from fp
    return pixels if pixels.mode == "RGB" else pixels.convert("RGB")


# ---------------------------------------------------------------------------------------
# The shared decoding path


@functools.cache
def _formats() -> tuple[str, ...]:
    """The formats of IMAGE_FORMATS that this Pillow reads, with their plugins imported:
    those alone, not every plugin of `Image.init()` (30 ms more in every worker process)."""
    Image.preinit()
    for plugin in _PLUGINS:
        try:
            importlib.import_module(f"PIL.{plugin}ImagePlugin")
        except ImportError:  # a Pillow without it (AVIF before 11.2): that format is not read
            pass
    return tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)


def _open(fp: IO[bytes], max_pixels: int) -> Image.Image:
    """Open the header of an image; ImageError unless it is an image of acceptable size."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above its global cap; our own per-image cap decides below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp, formats=_formats())
    except Image.DecompressionBombError as exc:
        raise ImageError(str(exc), "too_large") from None
    except Image.UnidentifiedImageError:
        fp.seek(0)
        head = fp.read(16)
        if head.startswith(_IMAGE_MAGIC) or head[8:12] == b"WEBP":
            raise ImageError("corrupt image header", "decode_error") from None
        raise ImageError(f"not an image (starts with {head[:12]!r})", "not_image") from None
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's parsers raise many kinds on bad headers
        raise ImageError(f"corrupt image header: {exc}", "decode_error") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})", "decode_error")
    if width * height > max_pixels:
        raise ImageError(f"{width}x{height} is {width * height} pixels, more than {max_pixels}", "too_large")
    return img


def _load(img: Image.Image, draft_size: tuple[int, int] | None = None, *, finer: bool = False) -> float:
    """Decode the current frame, JPEGs at the smallest scale >= draft_size (stored sides).

    Returns the scale reduction (1, 2, 4 or 8; 8/3 with `finer`).  Corrupt or truncated
    data: ImageError.
    """
    reduction: float = 1
    try:
        if draft_size is not None and img.format in _DRAFTABLE:
            full_size = img.size
            drafted = img.draft("RGB", draft_size)
            if drafted is not None:  # box: the whole original in drafted pixels
                reduction = round(full_size[0] / drafted[1][2])
                if finer and reduction == 2 and _draft_three_eighths(img, full_size, draft_size):
                    reduction = 8 / 3
        img.load()
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's decoders raise many kinds on bad data
        raise ImageError(f"cannot decode image: {exc}", "decode_error") from None
    return reduction


def _draft_three_eighths(img: Image.Image, full_size: tuple[int, int],
                         draft_size: tuple[int, int]) -> bool:
    """Turn a JPEG drafted at 1/2 into one decoded at 3/8 when that still covers draft_size.

    libjpeg-turbo scales by k/8: asked for 1/3 it decodes at 3/8 (DCT scaling), a scale
    Pillow's draft never asks for.  A 1280x960 photo resized to 341x256 decodes to 480x360
    instead of 640x480: the same decode time (the entropy decoding is the same), less to
    resize, the same quality (BENCHMARKS.md, Download).  Pillow's private draft state is
    set as its own draft sets it; anything unexpected (another Pillow, a libjpeg that does
    not scale by 3/8: `_scales_by_three_eighths`) keeps the 1/2 draft.
    """
    size = (-(-full_size[0] * 3 // 8), -(-full_size[1] * 3 // 8))
    if size[0] < draft_size[0] or size[1] < draft_size[1] or not _scales_by_three_eighths():
        return False
    half = (0, 0, -(-full_size[0] // 2), -(-full_size[1] // 2))
    return _set_jpeg_scale(img, half, size, 3)


def _set_jpeg_scale(img: Image.Image, drafted: tuple[int, ...], size: tuple[int, int],
                    denominator: int) -> bool:
    """Ask the JPEG decoder of `img`, drafted at 1/2 to `drafted` (its tile's extents), for
    scale 1/denominator instead, decoding to `size`; False (nothing changed) when Pillow's
    draft state is not what this expects."""
    try:
        tile = img.tile
        if (getattr(img, "decoderconfig", None) != (2, 0) or len(tile) != 1
                or tuple(tile[0][1]) != drafted or not hasattr(tile[0], "_replace")):
            return False
        img.tile = [tile[0]._replace(extents=(0, 0, *size))]
        img._size = size
        img.decoderconfig = (denominator, 0)
        return True
    except Exception:  # noqa: BLE001 - the draft Pillow made stays
        return False


@functools.cache
def _scales_by_three_eighths() -> bool:
    """Whether this Pillow's JPEG decoder decodes at 3/8 when asked for 1/3: a 64x48
    horizontal ramp must come out 24x18, the same ramp."""
    row = np.linspace(0, 255, 64)
    buffer = io.BytesIO()
    Image.fromarray(np.repeat(row[None, :], 48, axis=0).astype(np.uint8)).save(buffer, "JPEG", quality=95)
    try:
        img = Image.open(buffer)
        img.draft("L", (32, 24))
        if not _set_jpeg_scale(img, (0, 0, 32, 24), (24, 18), 3):
            return False
        img.load()
        got = np.asarray(img, np.float64)
    except Exception:  # noqa: BLE001 - any failure means: do not use it
        return False
    want = np.interp((np.arange(24) + 0.5) * 64 / 24 - 0.5, np.arange(64), row)
    return got.shape == (18, 24) and float(np.abs(got - want[None, :]).mean()) < 6


def _orientation(img: Image.Image) -> int:
    """The EXIF (or XMP) orientation, 1-8; 1 when absent or unreadable."""
    if img.format not in _DRAFTABLE:
        _load(img)  # PNG and others may store EXIF after the pixels: reading it decodes them
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block does not make the pixels unusable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _decode(img: Image.Image, *, keep_alpha: bool, draft_size: tuple[int, int] | None,
            finer: bool = False) -> tuple[Image.Image, float]:
    """Decode, orient and normalise `img` (see the module docstring).

    Returns the picture (mode L or RGB, or LA or RGBA when `keep_alpha`) and the scale
    reduction the JPEG draft applied; draft_size is upright.  `finer` (process_image,
    which resizes what it decodes): a JPEG may also be decoded at 3/8.
    """
    orientation = _orientation(img)
    if draft_size is not None and orientation in _SWAPS_SIDES:
        draft_size = draft_size[::-1]
    reduction = _load(img, draft_size, finer=finer)
    pixels = ImageOps.exif_transpose(img) if orientation != 1 else img
    return _to_8bit(pixels, keep_alpha), reduction


def _has_transparency(img: Image.Image) -> bool:
    if img.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in img.info:
        return True
    return img.mode == "P" and img.palette is not None and img.palette.mode.endswith("A")


def _to_8bit(img: Image.Image, keep_alpha: bool) -> Image.Image:
    """`img` as L or RGB, or LA or RGBA when it has transparency and `keep_alpha`."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit gray: scale the full 0..65535 range to 0..255 (rounded), do not clip.
        values = np.asarray(img).astype(np.int64, copy=False)
        img = Image.fromarray(((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8))
    elif _has_transparency(img):
        img = img.convert("LA" if mode in ("L", "LA", "La", "1") else "RGBA")
    elif mode not in ("L", "RGB"):
        try:
            img = img.convert("L" if mode in ("1", "F") else "RGB")
        except ValueError as exc:  # a mode Pillow cannot turn into RGB (LAB...)
            raise ImageError(f"cannot convert {mode} to RGB: {exc}", "decode_error") from None
    if keep_alpha or img.mode not in ("LA", "RGBA"):
        return img
    base = img.mode[:-1]
    flat = Image.new(base, img.size, 255 if base == "L" else _WHITE)
    flat.paste(img.convert(base), mask=img.getchannel("A"))
    return flat


# ---------------------------------------------------------------------------------------
# Filters, resize and encode (process_image)


def _apply_filters(width: int, height: int, opts: ImageOptions) -> None:
    short, long = min(width, height), max(width, height)
    if opts.min_size is not None and short < opts.min_size:
        raise Filtered("too_small", f"{width}x{height}: short side below {opts.min_size}")
    if opts.max_aspect is not None and long / short > opts.max_aspect:
        raise Filtered("too_large_aspect", f"{width}x{height}: aspect ratio above {opts.max_aspect}")


def _plan_resize(width: int, height: int, opts: ImageOptions) -> _Plan | None:
    """The resize of an upright width x height image the options ask for, or None."""
    target = opts.resize
    if target is None or opts.resize_mode == "no":
        return None
    whole = (0.0, 0.0, float(width), float(height))
    short, long = min(width, height), max(width, height)
    if opts.resize_mode in ("keep_ratio", "center_crop"):
        if short < target and not opts.upscale:
            return None
        # The short side becomes `target` (the long side rounded), as img2dataset.
        scaled = (target, max(1, round(height * target / width))) if width <= height else \
                 (max(1, round(width * target / height)), target)
        if opts.resize_mode == "keep_ratio":
            return None if scaled == (width, height) else _Plan(whole, scaled)
        if (width, height) == (target, target):
            return None
        # Crop the centre square of the scaled image, mapped back to the original.
        x0, y0 = (scaled[0] - target) // 2, (scaled[1] - target) // 2
        fx, fy = width / scaled[0], height / scaled[1]
        return _Plan((x0 * fx, y0 * fy, (x0 + target) * fx, (y0 + target) * fy), (target, target))
    # border: the long side becomes `target`, centred on a target x target square.
    if long < target and not opts.upscale:
        return None
    if (width, height) == (target, target):
        return None
    scaled = (target, max(1, round(height * target / width))) if width >= height else \
             (max(1, round(width * target / height)), target)
    offset = ((target - scaled[0]) // 2, (target - scaled[1]) // 2)
    return _Plan(whole, scaled, (target, target), offset)


def _resize(pixels: Image.Image, plan: _Plan, reduction: float, border_color: tuple[int, int, int]) -> Image.Image:
    """Apply `plan` to `pixels`, the upright image decoded at 1/`reduction` scale."""
    box = tuple(v / reduction for v in plan.region)
    if (box[2] - box[0], box[3] - box[1]) == plan.size and all(float(v).is_integer() for v in box):
        out = pixels.crop(tuple(int(v) for v in box))  # same scale: a plain crop
    else:
        shrinks = plan.size[0] <= box[2] - box[0] and plan.size[1] <= box[3] - box[1]
        out = pixels.resize(plan.size, _DOWNSCALE if shrinks else _UPSCALE, box=box)
    if plan.canvas is None:
        return out
    if out.mode in ("L", "LA") and len(set(border_color)) > 1:
        out = out.convert(out.mode.replace("L", "RGB"))  # a coloured border on a gray image
    color = border_color[:1] if out.mode in ("L", "LA") else border_color
    canvas = Image.new(out.mode, plan.canvas, (*color, 255) if out.mode in ("LA", "RGBA") else color)
    canvas.paste(out, plan.offset)
    return canvas


def _encode(pixels: Image.Image, ext: str, quality: int, icc_profile: bytes | None) -> bytes:
    """Encode `pixels` (L, LA, RGB or RGBA); the source's ICC profile is kept when its
    colour space is the output's (a gray profile on gray pixels, RGB on RGB)."""
    if ext == "webp" and pixels.mode in ("L", "LA"):
        pixels = pixels.convert(pixels.mode.replace("L", "RGB"))
    options: dict = {} if ext == "png" else {"quality": quality}
    if icc_profile and icc_profile[16:20] == (b"GRAY" if pixels.mode in ("L", "LA") else b"RGB "):
        options["icc_profile"] = icc_profile
    buffer = io.BytesIO()
    try:
        pixels.save(buffer, format=_SAVE_FORMAT[ext], **options)
    except (OSError, ValueError) as exc:  # e.g. WebP is limited to 16383 pixels a side
        raise ImageError(f"cannot encode {pixels.width}x{pixels.height} as {ext}: {exc}", "encode_error") from None
    return buffer.getvalue()


def load_thumbnail(source: PathOrBytes, size: int, *,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The picture of `load_image_rgb`, fitted in size x size (aspect kept, never enlarged).

    A JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still covers the fitted
    size, not the square: a 640x480 photo fitted in 160x160 (160x120) decodes at 1/4 with no
    resize left to do, where a draft to (160, 160) would decode at 1/2 and resize.
    """
    fp: IO[bytes] = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) \
        else open(source, "rb")
    with fp:
        img = _open(fp, max_pixels)
        width, height = img.size[::-1] if _orientation(img) in _SWAPS_SIDES else img.size
        scale = min(1.0, size / width, size / height)
        fit = (max(1, int(width * scale)), max(1, int(height * scale)))
        pixels, _ = _decode(img, keep_alpha=False, draft_size=fit)
        if pixels is img:
            pixels = img.copy() if getattr(img, "is_animated", False) else img
    rgb = pixels if pixels.mode == "RGB" else pixels.convert("RGB")
    rgb.thumbnail((size, size))
    return rgb
