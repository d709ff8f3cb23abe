"""Deterministic synthetic media for tests, benchmarks and ``datamill demo``.

Every generated video frame shows a moving gradient and a moving square (so frames differ
and encoders do real motion work) plus its own frame number written as a grid of black and
white cells with a checksum.  `read_frame_number` reads that number back from a decoded RGB
frame, robustly after resizing (even to another aspect ratio) and lossy compression, so a
test can check that clip k starts at source frame k * stride.

The pattern is drawn upright in *display* orientation; with ``rotation`` the coded pixels are
turned the other way and the display matrix says how to turn them back, as a phone does, so
only a reader that honours the rotation sees an upright, readable pattern.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

if TYPE_CHECKING:  # imported where used: PIL is slow to import
    from PIL import Image

# The code region: CODE_ROWS x CODE_COLS cells in the upper part of the frame, holding
# NUMBER_BITS bits of the frame number followed by CHECK_BITS bits of checksum.
CODE_ROWS, CODE_COLS = 3, 8
NUMBER_BITS, CHECK_BITS = 16, 8
_CODE_X0, _CODE_X1 = 0.05, 0.95
_CODE_Y0, _CODE_Y1 = 0.05, 0.60
_BLACK, _WHITE = 16, 235


def _checksum(number: int) -> int:
    return ((number * 37) ^ (number >> 8) ^ 0xA5) & 0xFF


def _code_bits(number: int) -> list[int]:
    value = (number & 0xFFFF) | (_checksum(number & 0xFFFF) << NUMBER_BITS)
    return [(value >> i) & 1 for i in range(NUMBER_BITS + CHECK_BITS)]


def _cell_box(row: int, col: int, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """Pixel box (y0, y1, x0, x1) of one code cell, shrunk by `margin` (a fraction) per side."""
    cw = (_CODE_X1 - _CODE_X0) / CODE_COLS
    ch = (_CODE_Y1 - _CODE_Y0) / CODE_ROWS
    x0 = (_CODE_X0 + (col + margin) * cw) * width
    x1 = (_CODE_X0 + (col + 1 - margin) * cw) * width
    y0 = (_CODE_Y0 + (row + margin) * ch) * height
    y1 = (_CODE_Y0 + (row + 1 - margin) * ch) * height
    return int(round(y0)), max(int(round(y1)), int(round(y0)) + 1), int(round(x0)), max(int(round(x1)), int(round(x0)) + 1)


def draw_frame(number: int, width: int, height: int) -> np.ndarray:
    """The upright RGB image (height x width x 3, uint8) of frame `number`."""
    ys = np.arange(height, dtype=np.int32)[:, None]
    xs = np.arange(width, dtype=np.int32)[None, :]
    shift = number * 3
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., 0] = ((xs + shift) * 255 // max(width, 1)) % 256
    img[..., 1] = ((ys + 2 * shift) * 255 // max(height, 1)) % 256
    img[..., 2] = ((xs + ys + shift) * 2) % 256
    # A moving square in the lower part, away from the code cells.
    side = max(2, min(width, height) // 6)
    sx = (number * max(1, width // 50)) % max(1, width - side)
    sy = int(height * 0.7)
    img[sy : sy + side, sx : sx + side] = (250, 250, 40)
    for bit_index, bit in enumerate(_code_bits(number)):
        row, col = divmod(bit_index, CODE_COLS)
        y0, y1, x0, x1 = _cell_box(row, col, width, height, margin=0.0)
        img[y0:y1, x0:x1] = _WHITE if bit else _BLACK
    return img


def read_frame_number(rgb: np.ndarray) -> int | None:
    """The frame number drawn by `draw_frame` in an upright RGB (or gray) image, or None.

    None means the code could not be read (checksum mismatch), e.g. because the image is
    sideways or is not a synthetic frame.
    """
    gray = rgb.astype(np.float32).mean(axis=2) if rgb.ndim == 3 else rgb.astype(np.float32)
    height, width = gray.shape
    value = 0
    for bit_index in range(NUMBER_BITS + CHECK_BITS):
        row, col = divmod(bit_index, CODE_COLS)
        y0, y1, x0, x1 = _cell_box(row, col, width, height, margin=0.3)
        if gray[y0:y1, x0:x1].mean() > (_BLACK + _WHITE) / 2:
            value |= 1 << bit_index
    number = value & 0xFFFF
    return number if (value >> NUMBER_BITS) == _checksum(number) else None


def _encoder_options(codec: str, gop: int | None, bframes: int | None) -> dict[str, str]:
    options: dict[str, str] = {}
    if gop is not None:
        # Keyframes exactly every `gop` frames: no scene-cut keyframes in between.
        options.update({"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"})
    if bframes is not None:
        options["bf"] = str(bframes)
    if codec == "libx264":
        options.setdefault("preset", "ultrafast" if bframes is None else "veryfast")
    if codec == "libx265":
        options.update({"preset": "ultrafast", "x265-params": "log-level=error"})
    if codec == "libvpx-vp9":
        options.update({"deadline": "realtime", "cpu-used": "8"})
    return options


def make_video(
    path: str | os.PathLike,
    frames: int = 100,
    size: tuple[int, int] = (320, 240),
    fps: int | Fraction = 25,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    gop: int | None = None,
    bframes: int | None = None,
    rotation: int = 0,
    audio: bool = False,
    vfr: bool = False,
    pattern: str = "moving",
    faststart: bool = True,
) -> Path:
    """Write a synthetic video and return its path.

    `size` is the coded (stored) width x height.  `rotation` (0, 90, 180, 270) is the
    clockwise rotation a player must apply to show it upright: the display matrix says so,
    and the pattern is readable only after that rotation.  `gop`/`bframes` force the
    keyframe interval and B-frames; `vfr` gives irregular frame durations (30, 50, 40 ms
    repeating, in a 1/1000 time base); `audio` adds a 440 Hz track of the same length
    (AAC; Opus in webm);
    `pattern` is "moving" (the default) or "static" (every frame shows frame 0's
    picture, to test encoders' best case).  mp4 files are written with the index first
    (`faststart`) so a truncated copy stays partly readable, as camera files do.
    """
    if rotation not in (0, 90, 180, 270):
        raise ValueError(f"rotation must be 0, 90, 180 or 270, not {rotation}")
    if pattern not in ("moving", "static"):
        raise ValueError(f"unknown pattern {pattern!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    display_w, display_h = (height, width) if rotation in (90, 270) else (width, height)
    fps = Fraction(fps)
    container_options = {"movflags": "+faststart"} if faststart and path.suffix in (".mp4", ".mov", ".m4v") else {}
    with av.open(str(path), "w", options=container_options) as out:
        stream = out.add_stream(codec, rate=fps, options=_encoder_options(codec, gop, bframes))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        time_base = Fraction(1, 1000) if vfr else 1 / fps
        stream.codec_context.time_base = time_base
        if rotation:
            # PyAV's degrees are counter-clockwise (as VideoFrame.rotation reads them back).
            stream.set_display_rotation(-rotation)
        audio_stream = None
        if audio:
            audio_codec = "libopus" if path.suffix.lower() in (".webm", ".ogg") else "aac"
            audio_stream = out.add_stream(audio_codec, rate=48000, layout="mono")
        vfr_steps = (30, 50, 40)
        pts = 0
        for number in range(frames):
            picture = draw_frame(0 if pattern == "static" else number, display_w, display_h)
            coded = np.ascontiguousarray(np.rot90(picture, k=rotation // 90))
            frame = av.VideoFrame.from_ndarray(coded, format="rgb24")
            frame.pts = pts
            frame.time_base = time_base
            pts += vfr_steps[number % len(vfr_steps)] if vfr else 1
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if audio_stream is not None:
            seconds = float(pts * time_base)
            _write_tone(out, audio_stream, seconds)
    return path


def _write_tone(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    rate = stream.codec_context.sample_rate
    total = int(round(seconds * rate))
    chunk = 960 if stream.codec_context.name in ("libopus", "opus") else 1024
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        t = (np.arange(start, start + n) / rate).astype(np.float32)
        samples = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def make_audio_only(path: str | os.PathLike, seconds: float = 1.0) -> Path:
    """An AAC file (mp4/m4a container by suffix) with no video stream."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        _write_tone(out, out.add_stream("aac", rate=48000, layout="mono"), seconds)
    return path


def make_corrupt_file(path: str | os.PathLike, size: int = 4096, seed: int = 0) -> Path:
    """`size` bytes of deterministic noise: not a media file whatever its name says."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def make_truncated(path_src: str | os.PathLike, path_dst: str | os.PathLike, fraction: float) -> Path:
    """Copy the first `fraction` (0..1) of `path_src`'s bytes to `path_dst`, like a cut download."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], not {fraction}")
    data = Path(path_src).read_bytes()
    path_dst = Path(path_dst)
    path_dst.parent.mkdir(parents=True, exist_ok=True)
    path_dst.write_bytes(data[: int(len(data) * fraction)])
    return path_dst


# --------------------------------------------------------------------------------------
# Still images (the download and dedup jobs)

# The inverse of each EXIF orientation's display transform: applied to the upright picture
# it gives the stored pixels, so that only a reader that honours the tag sees it upright.
_UNDO_ORIENTATION = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
                     6: "ROTATE_90", 7: "TRANSVERSE", 8: "ROTATE_270"}


def draw_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """The upright RGB picture (height x width x 3, uint8) that `make_image` stores.

    Red grows left to right and green top to bottom (so any rotation or flip is visible),
    with a dark disc, a bright bar and a diagonal stripe placed by `seed`: large, smooth
    shapes that survive resizing and lossy compression.
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
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _image_of_mode(picture: np.ndarray, mode: str) -> Image.Image:
    from PIL import Image

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
) -> bytes:
    """Encode a deterministic synthetic image (`draw_image`) and return its bytes.

    `size` is the stored width x height, as in `make_video`; with `exif_orientation` 5-8
    the upright picture is height x width.  `mode`: RGB, L, 1, CMYK (JPEG), RGBA and LA
    (a transparent block top-left, a half-transparent band), P (a palette with the
    top-left block transparent), I;16 (16-bit gray over the whole 0..65535 range; PNG).
    `fmt` is any format Pillow writes (JPEG, PNG, WEBP, GIF, BMP, TIFF...).  `frames` > 1
    writes an animation (GIF, WEBP, PNG) whose frame i is drawn with seed + i.
    `exif_orientation` (1-8) stores the pixels turned the other way with that tag, so
    the picture is upright only for a reader that applies it.  With a `path`, the bytes
    are also written there.
    """
    import io

    from PIL import Image

    width, height = size
    swapped = exif_orientation in (5, 6, 7, 8)
    pictures = []
    for index in range(frames):
        picture = draw_image(height if swapped else width, width if swapped else height, seed + index)
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


def make_bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header claiming width x height RGB pixels, with a tiny body.

    The file is a few hundred bytes; the IDAT holds only the first rows (zeros), so a
    reader that trusted the header would allocate width * height * 3 bytes before
    noticing the truncation.  Readers must reject it from the header alone.
    """
    import struct
    import zlib

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
    import io

    from PIL import Image, ImageDraw

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
