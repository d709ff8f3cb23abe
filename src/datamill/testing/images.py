"""Deterministic synthetic still images for tests, benchmarks and ``datamill demo``: one
generator per kind of picture.

- `draw_image` / `make_image`: a picture drawn from a seed (gradients that show any rotation
  or flip, a disc, a bar and a stripe, optionally grain) in any mode, format, EXIF
  orientation or frame count Pillow writes; the image server serves these too.
- `make_scene`: a random scene; scenes of different seeds have unrelated perceptual hashes.
- `make_bomb_png`: a decompression bomb.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

BOMB_SIDE = 100_000  # the side `make_bomb_png` claims by default

# The inverse of each EXIF orientation's display transform: applied to the upright picture
# it gives the stored pixels, so that only a reader that honours the tag sees it upright.
_UNDO_ORIENTATION = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
                     6: "ROTATE_90", 7: "TRANSVERSE", 8: "ROTATE_270"}


def draw_image(width: int, height: int, seed: int = 0, noise: float = 0.0) -> np.ndarray:
    """The upright RGB picture (height x width x 3, uint8) that `make_image` stores.

    Red grows left to right and green top to bottom (so any rotation or flip is visible),
    with a dark disc, a bright bar and a diagonal stripe placed by `seed`: large, smooth
    shapes that survive resizing and lossy compression.  `noise` > 0 adds grain of that
    amplitude (a tiled 128 x 128 patch: busy enough for JPEG, ten times cheaper than full
    noise), which makes encoded sizes grow from smooth to busy pictures.
    """
    rng = np.random.default_rng(seed)
    ys = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height
    xs = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width
    img = np.empty((height, width, 3), dtype=np.float32)
    img[..., 0] = 30 + 200 * xs
    img[..., 1] = 30 + 200 * ys
    img[..., 2] = rng.uniform(40, 200) + 40 * np.sin(6.0 * (xs + ys) + rng.uniform(0, 6.3))
    cx, cy, r = rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.4), rng.uniform(0.08, 0.14)
    disc = (xs - cx) ** 2 + ((ys - cy) * height / width) ** 2 < r * r
    img[disc] = (20, 20, 60)
    bx, by = rng.uniform(0.55, 0.7), rng.uniform(0.6, 0.75)
    img[(xs > bx) & (xs < bx + 0.25) & (ys > by) & (ys < by + 0.12)] = (250, 240, 90)
    stripe = np.abs(xs - ys - rng.uniform(-0.2, 0.2)) < 0.03
    img[stripe] = img[stripe] * 0.4
    if noise:
        tile = rng.standard_normal((128, 128, 3), dtype=np.float32) * np.float32(noise)
        img += np.tile(tile, (height // 128 + 1, width // 128 + 1, 1))[:height, :width]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _image_of_mode(picture: np.ndarray, mode: str) -> Image.Image:
    rgb = Image.fromarray(picture)
    height, width = picture.shape[:2]
    if mode in ("RGB", "L", "CMYK", "1"):
        return rgb.convert(mode)
    if mode in ("RGBA", "LA"):
        # Transparent top-left block, half-transparent band below it, opaque elsewhere.
        alpha = np.full((height, width), 255, dtype=np.uint8)
        alpha[: max(1, height // 4), : max(1, width // 4)] = 0
        alpha[height // 4 : height // 2, :] = 128
        out = rgb.convert(mode[:-1])
        out.putalpha(Image.fromarray(alpha))
        return out
    if mode == "P":
        # 63 colours plus index 63 (magenta) marked transparent on the top-left block.
        pal = rgb.quantize(63, dither=Image.Dither.NONE)
        indices = np.asarray(pal).copy()
        indices[: max(1, height // 4), : max(1, width // 4)] = 63
        out = Image.fromarray(indices)
        out.putpalette(pal.getpalette()[: 63 * 3] + [255, 0, 255])
        out.info["transparency"] = 63
        return out
    if mode == "I;16":
        # The gray level of the picture on the full 16-bit range (0..65535).
        gray = np.asarray(rgb.convert("L"), dtype=np.float64)
        span = max(float(gray.max() - gray.min()), 1.0)
        return Image.fromarray(np.round((gray - gray.min()) * 65535.0 / span).astype(np.uint16))
    raise ValueError(f"unsupported mode {mode!r}")


def make_image(
    path: str | os.PathLike | None,
    size: tuple[int, int] = (320, 240),
    mode: str = "RGB",
    fmt: str = "JPEG",
    exif_orientation: int | None = None,
    seed: int = 0,
    quality: int = 90,
    frames: int = 1,
    noise: float = 0.0,
) -> bytes:
    """Encode a deterministic synthetic image (`draw_image`) and return its bytes.

    `size` is the stored width x height, as in `make_video`; with `exif_orientation` 5-8
    the upright picture is height x width.  `mode`: RGB, L, 1, CMYK (JPEG), RGBA and LA
    (a transparent block top-left, a half-transparent band), P (a palette with the
    top-left block transparent), I;16 (16-bit gray over the whole 0..65535 range; PNG).
    `fmt` is any format Pillow writes (JPEG, PNG, WEBP, GIF, BMP, TIFF...).  `frames` > 1
    writes an animation (GIF, WEBP, PNG) whose frame i is drawn with seed + i.  `noise`: as
    in `draw_image`.
    `exif_orientation` (1-8) stores the pixels turned the other way with that tag, so
    the picture is upright only for a reader that applies it.  With a `path`, the bytes
    are also written there.
    """
    width, height = size
    swapped = exif_orientation in (5, 6, 7, 8)
    pictures = []
    for index in range(frames):
        picture = draw_image(height if swapped else width, width if swapped else height, seed + index,
                             noise)
        image = _image_of_mode(picture, mode)
        if exif_orientation in _UNDO_ORIENTATION:
            transparency = image.info.get("transparency")
            image = image.transpose(getattr(Image.Transpose, _UNDO_ORIENTATION[exif_orientation]))
            if transparency is not None:
                image.info["transparency"] = transparency
        pictures.append(image)
    options: dict = {}
    if fmt.upper() in ("JPEG", "WEBP"):
        options["quality"] = quality
    if "transparency" in pictures[0].info:
        options["transparency"] = pictures[0].info["transparency"]
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        options["exif"] = exif.tobytes()
    if frames > 1:
        options.update(save_all=True, append_images=pictures[1:], duration=100, loop=0)
    buffer = io.BytesIO()
    pictures[0].save(buffer, format=fmt, **options)
    data = buffer.getvalue()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return data


def make_bomb_png(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A valid PNG header claiming width x height RGB pixels, with a tiny body (a
    decompression bomb).

    The file is about a kilobyte; the IDAT holds only the first rows (zeros), so a reader
    that trusted the header would allocate width * height * 3 bytes before noticing the
    truncation.  Readers must reject it from the header alone (Pillow refuses it at open
    time for its pixel count).
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(bytes((1 + 3 * width) * 4), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def make_scene(path: str | os.PathLike | None, size: tuple[int, int] = (640, 480), seed: int = 0,
               quality: int = 90) -> bytes:
    """A JPEG of a random scene (background gradient, a few dozen coloured shapes): unlike
    `draw_image`'s patterns, scenes of different seeds have unrelated perceptual hashes, as
    different photos do.  With a `path`, the bytes are also written there."""
    rng = np.random.default_rng(seed)
    width, height = size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(background, (height, width, 3)).copy())
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(12, 40))):
        x0, x1 = sorted(rng.integers(0, width, 2))
        y0, y1 = sorted(rng.integers(0, height, 2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1 + 4, y1 + 4), fill=color)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    data = buffer.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data
