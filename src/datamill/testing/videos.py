"""Deterministic synthetic videos (and an audio-only file) for tests, benchmarks and
``datamill demo``.

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

import av
import numpy as np

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
