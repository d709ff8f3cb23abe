"""`datamill.streams` on live sources that run on 127.0.0.1: FIFOs fed in real time by an
encoder process (steady, pausing, dying) and an HTTP stream served by a local thread.
Generated data only; nothing is left in /dev/shm after any test."""
from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import datamill
from conftest import segments
from datamill.testing.videos import make_video

SIZE = (96, 64)  # what the stream gives (W, H)
pytestmark = pytest.mark.usefixtures("no_shm_segment_left")

# A live encoder: H.264 in MPEG-TS into PATH, 25 frames a second paced in real time, each
# frame stamped with the wall-clock time since the writer started (so that a pause shows in
# the timestamps too), flushed packet by packet.  Args: PATH SECONDS PAUSE_AT PAUSE_SECONDS.
WRITER = r"""
import sys, time
from fractions import Fraction
import av, numpy as np
path, seconds, pause_at, pause = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
W, H, FPS = 160, 120, 25
ms = Fraction(1, 1000)
with av.open(path, "w", format="mpegts", options={"flush_packets": "1"}) as out:
    s = out.add_stream("libx264", rate=FPS,
                       options={"preset": "ultrafast", "tune": "zerolatency", "g": "25"})
    s.width, s.height, s.pix_fmt = W, H, "yuv420p"
    s.time_base = ms
    s.codec_context.time_base = ms
    start, last, paused, i = time.monotonic(), -1, 0.0, 0
    while i / FPS < seconds:
        if pause and not paused and i / FPS >= pause_at:
            print("pausing", flush=True)
            time.sleep(pause)
            paused = pause
            print("resumed", flush=True)
        wait = start + i / FPS + paused - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), (i * 7) % 256, np.uint8),
                                           format="rgb24")
        # strictly increasing even when the writer is late and catches up
        last = max(last + 1, round((time.monotonic() - start) * 1000))
        frame.pts, frame.time_base = last, ms
        for p in s.encode(frame):
            out.mux(p)
        i += 1
    for p in s.encode(None):
        out.mux(p)
"""






@pytest.fixture
def writers():
    """Start live encoders into new FIFOs; every one still running is killed at the end."""
    procs: list[subprocess.Popen] = []

    def start(path: Path, seconds: float, pause_at: float = 0.0, pause: float = 0.0):
        os.mkfifo(path)
        log = open(path.with_suffix(".log"), "w")
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(seconds),
                              str(pause_at), str(pause)],
                             stdout=log, stderr=subprocess.STDOUT, text=True)
        log.close()
        procs.append(p)

        def unblock():  # a writer that died before opening the FIFO must not leave its
            p.wait()    # reader blocked in open(): open and close the write end once
            for _ in range(20):
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                    return
                except OSError:  # no reader yet
                    time.sleep(0.1)
        threading.Thread(target=unblock, daemon=True).start()
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def collect(sources, windows, on_batch=None, **kw):
    """The first `windows` windows: [(delivered seconds after start, window, mask, pts,
    frames shape, stats)], and the stream's source states then.  (A live source that ends
    is reopened, so a stream of live sources goes on until the loop stops.)"""
    out = []
    t0 = time.monotonic()
    with datamill.streams([str(s) for s in sources], size=SIZE, **kw) as stream:
        for b in stream:
            assert not b.frames.flags.writeable
            out.append((time.monotonic() - t0, b.window, b.mask.copy(), b.pts.copy(),
                        b.frames.shape, [dict(s) for s in b.stats]))
            if on_batch:
                on_batch(stream, b)
            if len(out) >= windows:
                break
        ended = [(st.ended, st.stats.get("failed")) for st in stream.states]
    return out, ended


@pytest.mark.parametrize("align", ["arrival", "pts"])
def test_a_fifo_fed_in_real_time(tmp_path, writers, align):
    fifo = tmp_path / "cam.ts"
    w = writers(fifo, 3.0)
    out, ended = collect([fifo], 4, window=1, fps=25, align=align, stall_timeout=2.0)
    assert w.wait(timeout=20) == 0
    assert [o[1] for o in out] == sorted(o[1] for o in out)
    assert all(shape == (1, 25, SIZE[1], SIZE[0], 3) for *_, shape, _ in out)
    masks = np.stack([o[2][0] for o in out])
    assert masks.mean() >= 0.3, masks.sum(1)
    assert any(m.all() for m in masks)  # at least one whole window of 25 real frames
    pts = np.concatenate([o[3][0][o[2][0]] for o in out])
    assert (np.diff(pts) >= 0).all() and np.isfinite(pts).all()
    last = out[-1][5][0]
    assert 40 <= last["decoded"] <= 80


def test_a_fifo_whose_writer_pauses_is_stalled_then_comes_back(tmp_path, writers):
    steady, pausing = tmp_path / "steady.ts", tmp_path / "pausing.ts"
    writers(steady, 12.0)
    p = writers(pausing, 4.0, pause_at=1.5, pause=5.0)
    out, _ = collect([steady, pausing], 11, window=1, fps=25, align="arrival", stall_timeout=1.0)
    m1 = [o[2][1].mean() for o in out]
    dark = [i for i, m in enumerate(m1) if m == 0]
    # windows go on through the pause without the pausing source...
    runs = np.split(dark, np.flatnonzero(np.diff(dark) != 1) + 1) if dark else []
    assert runs and len(runs[0]) >= 3, m1  # the pause (the windows after its writer ended
    # are dark too: a second run)
    # (the steady source is full in most of them)
    assert sum(out[i][2][0].mean() >= 0.8 for i in dark) >= 3, [o[2].sum(1) for o in out]
    assert out[-1][5][1]["stalled"] > 0
    # ...and after it, its frames are back; what came after the stream moved on was late
    after = [m for i, m in enumerate(m1) if i > runs[0][-1]]
    assert any(m >= 0.8 for m in after), m1
    assert out[-1][5][1]["late"] > 0
    assert out[-1][5][1]["decoded"] >= 60 and p.poll() is not None


def test_a_healthy_live_source_is_never_stalled_when_stall_timeout_is_below_the_window(
        tmp_path, writers):
    fifo = tmp_path / "cam.ts"
    writers(fifo, 3.0)
    out, _ = collect([fifo], 3, window=1, fps=25, align="arrival", stall_timeout=0.5)
    # the stall deadline runs from each window's end: a source that keeps real time is never
    # stalled once it has started (its writer may start after the stream's first window)
    first = next(i for i, o in enumerate(out) if o[2][0].any())
    assert out[-1][5][0]["stalled"] <= first + 1
    assert all(o[2][0].mean() >= 0.8 for o in out[first + 1:]), [o[2][0].sum() for o in out]


def test_a_fifo_whose_writer_dies_gives_nothing_more_and_the_other_source_goes_on(tmp_path, writers):
    steady, dying = tmp_path / "steady.ts", tmp_path / "dying.ts"
    writers(steady, 4.0)
    victim = writers(dying, 10.0)
    killed_at: list[int] = []

    def kill(stream, b):
        if b.window == 1 and not killed_at:
            victim.kill()
            killed_at.append(b.window)

    out, ended = collect([steady, dying], 5, window=1, fps=25, align="pts", stall_timeout=1.0,
                         on_batch=kill)
    assert killed_at and victim.wait(timeout=5) < 0
    windows = [o[1] for o in out]
    assert windows[-1] >= 3  # the steady source went on to its end (4 s)
    assert sum(o[2][0].all() for o in out) >= 2, [o[2].sum(1) for o in out]
    later = [o for o in out if o[1] >= 3]
    assert later and all(not o[2][1].any() for o in later)  # nothing of the dead source
    # (the dead source is reopened with backoff, its FIFO has no writer: it stays missing)
    assert out[-1][0] < 15


class _Paced(http.server.BaseHTTPRequestHandler):
    """Serves the file `data` as a progressive stream: sent in real time over `seconds`,
    without a length (the end of the connection is the end of the stream)."""

    data = b""
    seconds = 2.0

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.end_headers()
        chunks = 40
        step = -(-len(self.data) // chunks)
        start = time.monotonic()
        try:
            for i in range(chunks):
                self.wfile.write(self.data[i * step:(i + 1) * step])
                self.wfile.flush()
                wait = start + (i + 1) * self.seconds / chunks - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


def _serve(tmp_path, monkeypatch, frames=75):
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    video = make_video(tmp_path / "cam.ts", frames=frames, size=(160, 120), fps=25, gop=25)
    handler = type("Handler", (_Paced,), {"data": video.read_bytes(), "seconds": 2.0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/cam.ts"


def test_an_http_stream_served_on_localhost_and_its_end(tmp_path, monkeypatch):
    """Frames of a paced HTTP stream arrive; its end (EIO from FFmpeg's http protocol) is an
    end, not a failure, and the decoder's last frames are not lost."""
    server, url = _serve(tmp_path, monkeypatch)
    try:
        out, ended = collect([url], 3, window=1, fps=25, stall_timeout=2.0)
    finally:
        server.shutdown()
        server.server_close()
    assert len(out) == 3 and all(shape == (1, 25, SIZE[1], SIZE[0], 3) for *_, shape, _ in out)
    assert all(o[2][0].all() for o in out), [o[2][0].sum() for o in out]
    # (the stream is then reopened, as live sources are: more frames may follow)
    assert out[-1][5][0]["decoded"] >= 75 and out[-1][5][0]["failed"] is None


def test_a_source_that_starts_late_is_missing_until_it_comes(tmp_path, writers):
    steady, late = tmp_path / "steady.ts", tmp_path / "late.ts"
    writers(steady, 6.0)
    os.mkfifo(late)  # the stream's decoder opens it now and waits for a writer...
    procs: list[subprocess.Popen] = []
    timer = threading.Timer(2.5, lambda: procs.append(subprocess.Popen(  # ...who comes later
        [sys.executable, "-c", WRITER, str(late), "3.0", "0", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    timer.start()
    try:
        out, _ = collect([steady, late], 5, window=1, fps=25, align="arrival",
                         stall_timeout=1.0)
    finally:
        timer.join()
        for p in procs:
            p.kill()
            p.wait(timeout=10)
    m1 = [o[2][1].mean() for o in out]
    assert m1[0] == 0 and m1[1] == 0, m1  # nothing before it started...
    assert any(m >= 0.8 for m in m1[3:]), m1  # ...then its frames, in the windows they came in
    assert all(o[2][0].mean() >= 0.8 for o in out[1:]), [o[2][0].sum() for o in out]
