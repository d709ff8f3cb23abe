"""`datamill.streams`: time-aligned windows from several sources through shared memory; every
ending leaves nothing in /dev/shm and no decoder alive."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import datamill
from conftest import segments
from datamill.engine.shm import RingError
from datamill.errors import UsageError
from datamill.testing.files import make_corrupt_file
from datamill.testing.videos import make_video

SIZE = (96, 64)
pytestmark = pytest.mark.usefixtures("no_shm_segment_left")




@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    make_video(d / "a25.mp4", frames=100, size=(160, 120), fps=25)   # 4.0 s
    make_video(d / "b30.mp4", frames=90, size=(160, 120), fps=30)    # 3.0 s
    make_video(d / "c25.mp4", frames=50, size=(160, 120), fps=25)    # 2.0 s
    make_video(d / "vfr.mp4", frames=60, size=(160, 120), fps=25, vfr=True)
    make_corrupt_file(d / "corrupt.mp4")
    (d / "audio.txt").write_text("not a video at all\n")
    return d




def run(sources, **kw):
    out = []
    with datamill.streams([str(s) for s in sources], size=SIZE, **kw) as stream:
        for b in stream:
            assert not b.frames.flags.writeable
            out.append((b.window, b.start, b.mask.copy(), b.pts.copy(), b.frames.copy(),
                        [dict(s) for s in b.stats]))
    return out


def test_two_rates_resampled_to_one_aligned_by_timestamp(videos):
    out = run([videos / "a25.mp4", videos / "b30.mp4"], fps=25)
    assert [w for w, *_ in out] == [0, 1, 2, 3]
    assert [s for _, s, *_ in out] == [0.0, 1.0, 2.0, 3.0]
    for w, _, mask, pts, frames, _ in out:
        assert frames.shape == (2, 25, SIZE[1], SIZE[0], 3) and mask.shape == pts.shape == (2, 25)
        assert mask[0].all()
        target = w + np.arange(25) / 25
        assert np.allclose(pts[0], target, atol=1e-6)
        if w < 3:  # the 30 fps source: the nearest of its frames, never more than 1/60 s away
            assert mask[1].all() and np.abs(pts[1] - target).max() <= 1 / 60 + 1e-6
        else:  # it is 3 s long: its fourth window is missing, repeated from its last frame
            assert not mask[1].any() and np.isnan(pts[1]).all()
            assert (frames[1] == out[2][4][1][-1]).all()
    stats = out[-1][5]
    assert stats[0]["decoded"] == 100 and stats[0]["dropped"] == 0
    assert stats[1]["decoded"] == 90 and stats[1]["dropped"] == 15  # 90 frames for 75 targets


def test_until_first_ends_with_the_shortest_source(videos):
    out = run([videos / "a25.mp4", videos / "c25.mp4"], until="first")
    assert [w for w, *_ in out] == [0, 1]


def test_black_fills_missing_frames_and_drop_drops_the_window(videos):
    black = run([videos / "a25.mp4", videos / "c25.mp4"], on_missing="black")
    assert len(black) == 4 and not black[3][2][1].any() and (black[3][4][1] == 0).all()
    dropped = run([videos / "a25.mp4", videos / "c25.mp4"], on_missing="drop")
    assert [w for w, *_ in dropped] == [0, 1]


def test_variable_frame_rate(videos):
    out = run([videos / "vfr.mp4"], fps=25)
    assert out and all(np.isfinite(p[0][m[0]]).all() for _, _, m, p, _, _ in out)
    pts = np.concatenate([p[0][m[0]] for _, _, m, p, _, _ in out])
    assert (np.diff(pts) >= 0).all()


def test_rates_that_differ_need_fps_and_a_whole_number_of_frames(videos):
    with pytest.raises(UsageError, match="give fps="):
        datamill.streams([str(videos / "a25.mp4"), str(videos / "b30.mp4")])
    with pytest.raises(UsageError, match="whole number"):
        datamill.streams([str(videos / "a25.mp4")], fps=25, window=0.1)
    with pytest.raises(UsageError, match="on_missing"):
        datamill.streams([str(videos / "a25.mp4")], on_missing="guess")


@pytest.mark.parametrize("bad", ["corrupt.mp4", "audio.txt"])
def test_a_source_that_cannot_be_read_fails_alone(videos, bad):
    out = run([videos / "a25.mp4", videos / bad], fps=25)
    assert len(out) == 4 and all(m[0].all() and not m[1].any() for _, _, m, *_ in out)
    failed = out[-1][5][1]["failed"]
    assert failed and ("cannot" in failed or "no video" in failed)


def test_a_batch_used_after_its_release_raises_naming_copy(videos):
    with datamill.streams([str(videos / "c25.mp4")], size=SIZE) as stream:
        it = iter(stream)
        first = next(it)
        kept = first.copy()
        frames = first.frames
        with pytest.raises(ValueError):
            frames[0, 0, 0, 0] = 1  # read-only
        next(it)
        with pytest.raises(RingError, match=r"copy\(\)"):
            first.frames
    assert kept["frames"].shape == (1, 25, SIZE[1], SIZE[0], 3) and kept["window"] == 0


def test_a_consumer_that_raises_leaves_no_segment_and_no_decoder(videos):
    with pytest.raises(RuntimeError, match="consumer"):
        with datamill.streams([str(videos / "a25.mp4"), str(videos / "b30.mp4")], fps=25,
                              size=SIZE) as stream:
            procs = [st.process for st in stream.states]
            for b in stream:
                raise RuntimeError("the consumer broke")
    assert not any(p.is_alive() for p in procs)


def test_a_decoder_killed_marks_its_source_failed_and_the_stream_goes_on(videos):
    got = []
    with datamill.streams([str(videos / "a25.mp4"), str(videos / "b30.mp4")], fps=25,
                          size=SIZE, ring_windows=2, stall_timeout=1.0) as stream:
        for b in stream:
            if b.window == 0:
                os.kill(stream.states[1].process.pid, signal.SIGKILL)
            got.append((b.window, b.mask[0].all(), b.stats[1]["failed"]))
    assert [w for w, *_ in got] == [0, 1, 2, 3] and all(ok for _, ok, _ in got)
    assert got[-1][2] and "died" in got[-1][2]


def test_a_slow_consumer_in_real_time_loses_the_oldest_windows(videos):
    t0 = time.monotonic()
    windows = []
    rss = []
    with datamill.streams([str(videos / "a25.mp4")], size=SIZE, realtime=True,
                          ring_windows=2) as stream:
        for b in stream:
            windows.append(b.window)
            rss.append(_rss_mb())
            time.sleep(2.5)  # slower than real time
        stats = b.stats[0]
    assert rss[-1] - rss[0] < 20, rss  # the rings are the memory: nothing piles up
    assert time.monotonic() - t0 < 15
    assert len(windows) < 4 and windows == sorted(windows)
    assert stats["windows_dropped"] >= 1


def test_sigkill_of_the_consumer_leaves_nothing_after_the_next_start(videos, tmp_path):
    code = (f"import datamill, os, signal\n"
            f"with datamill.streams([{str(videos / 'a25.mp4')!r}], size={SIZE!r}) as s:\n"
            f"    next(iter(s))\n"
            f"    print('ready', flush=True)\n"
            f"    os.kill(os.getpid(), signal.SIGKILL)\n")
    before = segments()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL and "ready" in p.stdout
    assert segments() - before  # the killed consumer's segments are still there...
    out = run([videos / "c25.mp4"])  # ...until the next start removes them
    assert len(out) == 2


def test_the_cli_writes_one_folder_per_window_and_resumes(videos, tmp_path):
    dst = tmp_path / "out"
    args = [sys.executable, "-m", "datamill", "streams", str(videos / "a25.mp4"),
            str(videos / "b30.mp4"), str(dst), "--fps", "25", "--size", "96x64"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "b30: decoded 90, dropped 15" in p.stdout and "missing 25" in p.stdout
    windows = sorted(d.name for d in dst.iterdir() if d.name[0].isdigit())
    assert windows == ["000000", "000001", "000002", "000003"]
    frames = np.load(dst / "000001" / "b30.npy")
    mask = np.load(dst / "000003" / "mask.npy")
    assert frames.shape == (25, 64, 96, 3) and mask.shape == (2, 25) and not mask[1].any()
    import pyarrow.parquet as pq
    rows = pq.read_table(dst / "manifest.parquet").to_pylist()
    assert [r["real"] for r in rows] == [50, 50, 50, 25]
    assert rows[3]["missing_sources"] == "b30"
    before = {w: (dst / w / "a25.npy").stat().st_mtime_ns for w in windows}
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "4 already done" in p.stdout
    assert {w: (dst / w / "a25.npy").stat().st_mtime_ns for w in windows} == before
    p = subprocess.run(args + ["--executor", "ray"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "runs only with serial" in p.stderr


def test_ctrl_c_in_the_loop_leaves_no_segment_and_no_decoder(videos):
    code = (f"import datamill, time\n"
            f"with datamill.streams([{str(videos / 'a25.mp4')!r}, {str(videos / 'c25.mp4')!r}],"
            f" size={SIZE!r}, realtime=True) as s:\n"
            f"    for b in s:\n"
            f"        print('window', b.window, flush=True)\n"
            f"        time.sleep(30)\n")
    before = segments()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: (signal.signal(signal.SIGINT, signal.SIG_DFL),
                                                os.setpgrp()))
    assert proc.stdout.readline().startswith("window 0")
    decoders = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                and _parent(int(p.name)) == proc.pid]
    assert len(decoders) == 2
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it: to the whole group
    proc.wait(timeout=30)
    assert proc.returncode in (130, -signal.SIGINT, 1)
    assert not segments() - before
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{d}").exists() and _state(d) != "Z" for d in decoders) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{d}").exists() and _state(d) != "Z" for d in decoders)


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def test_write_streams_in_mp4(videos, tmp_path):
    import av
    report = datamill.write_streams([videos / "a25.mp4", videos / "c25.mp4"], tmp_path / "out",
                                    size="96x64", format="mp4", quiet=True)
    assert report.exit_code == 0 and report.counts["ok"] == 4
    with av.open(str(tmp_path / "out" / "000001" / "a25.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 25 and frames[0].shape == (64, 96, 3)
    assert (tmp_path / "out" / "000003" / "mask.npy").exists()


def test_a_dev_shm_too_small_is_refused_naming_the_size_and_nothing_is_left(videos, monkeypatch):
    from datamill.engine.shm import segments as seg
    monkeypatch.setattr(seg, "shm_free_bytes", lambda: 64 * 1000 * 1000)  # a container's 64 MB
    with pytest.raises(RingError) as err:
        with datamill.streams([str(videos / "a25.mp4"), str(videos / "c25.mp4")],
                              size=(1920, 1080)) as stream:
            next(iter(stream))
    text = str(err.value)
    assert "bytes" in text or "MB" in text
    assert "size, window or fps" in text or "ring_windows" in text


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_write_streams_killed_mid_run_then_the_same_command(videos, tmp_path):
    dst = tmp_path / "out"
    args = [sys.executable, "-m", "datamill", "streams", str(videos / "a25.mp4"),
            str(videos / "c25.mp4"), str(dst), "--size", "96x64"]
    env = {**os.environ, "DATAMILL_FAULT": "commit:kill:3"}
    p = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == -signal.SIGKILL
    (dst / "mine.txt").write_text("the user's")  # beside the outputs: never touched
    env.pop("DATAMILL_FAULT")
    p = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    import pyarrow.parquet as pq
    keys = [r["key"] for r in pq.read_table(dst / "manifest.parquet").to_pylist()]
    assert keys == ["000000", "000001", "000002", "000003"]
    windows = sorted(d.name for d in dst.iterdir() if d.name[0].isdigit())
    assert windows == keys
    assert all(np.load(dst / w / "a25.npy").shape == (25, 64, 96, 3) for w in windows)
    assert not [q for q in dst.rglob("*") if ".datamill-tmp-" in q.name]
    assert (dst / "mine.txt").read_text() == "the user's"
    assert not [d for d in Path("/proc").iterdir() if d.name.isdigit()
                and str(dst).encode() in _cmdline(int(d.name))]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
