"""Job `clips` end to end on a generated tree holding every bad input the issue lists."""
from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

import datamill
from datamill.engine.ledger import Ledger
from datamill.engine.dst import state_path
from datamill.testing.files import make_corrupt_file, make_truncated
from datamill.testing.videos import make_audio_only, make_video, read_frame_number

SMALL = (160, 120)


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def manifest(dst: Path) -> list[dict]:
    return pq.read_table(dst / "manifest.parquet").to_pylist()


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("videos")
    make_video(src / "plain.mp4", frames=70, size=SMALL, gop=12, bframes=2)
    make_corrupt_file(src / "corrupt.mp4")
    (src / "empty.avi").write_bytes(b"")
    full = make_video(src.parent / "full-for-truncation.mp4", frames=200, size=SMALL, gop=16)
    make_truncated(full, src / "truncated.mp4", 0.6)
    make_audio_only(src / "audio only.mp4")
    make_video(src / "odd/odd size.mp4", frames=20, size=(161, 121), codec="libx264rgb",
               pix_fmt="rgb24")
    make_video(src / "vfr.mkv", frames=40, size=SMALL, vfr=True)
    make_video(src / "phone/rotated.mp4", frames=20, size=SMALL, rotation=90)
    make_video(src / "deep/10bit.mkv", frames=20, size=SMALL, pix_fmt="yuv420p10le")
    make_video(src / "deep/444.mp4", frames=20, size=SMALL, pix_fmt="yuv444p")
    make_video(src / "names/été à la plage.mp4", frames=20, size=SMALL)
    make_video(src / "names/UPPER.MP4", frames=20, size=SMALL)
    make_video(src / "short.mp4", frames=10, size=SMALL)
    (src / "notes.txt").write_text("not a video")
    (src / "names" / "loop").symlink_to(src, target_is_directory=True)
    return src


@pytest.fixture(scope="module")
def run(tree, tmp_path_factory):
    dst = tmp_path_factory.mktemp("clips")
    report = datamill.clips(tree, dst, frames=16, size=(65, 48), quiet=True, workers=2)
    rows = manifest(dst)
    return report, dst, rows


def clips_of(rows: list[dict], source_name: str) -> list[dict]:
    return sorted((r for r in rows if r["source"].endswith(source_name) and r["status"] == "ok"),
                  key=lambda r: r["clip_index"])


def failure_of(rows: list[dict], key: str) -> dict:
    [row] = [r for r in rows if r["key"] == key and r["status"] == "failed"]
    return row


def test_every_video_is_cut_into_sorted_clips_of_exact_length(run):
    report, dst, rows = run
    clips = clips_of(rows, "/plain.mp4")
    assert [c["frame_count"] for c in clips] == [16, 16, 16, 16, 6]
    assert [c["path"] for c in clips] == [f"plain/plain_{i:04d}.mp4" for i in range(5)]
    for c in clips:
        frames = decode(dst / c["path"])
        assert len(frames) == c["frame_count"]
        assert frames[0].shape == (48, 64, 3)


def test_odd_target_size_is_rounded_down_and_said(run):
    report, dst, rows = run
    clip = clips_of(rows, "/plain.mp4")[0]
    assert (clip["width"], clip["height"]) == (64, 48)
    assert clip["size_note"] == "65x48 rounded to 64x48 (yuv420p needs even sizes)"
    with open(dst / "stats.json") as f:
        assert json.load(f)["options"]["size"] == [65, 48]


def test_corrupt_zero_byte_and_audio_only_files_fail_with_their_reason(run):
    report, dst, rows = run
    assert report.exit_code == 1
    assert failure_of(rows, "corrupt.mp4")["reason"] == "unreadable"
    assert failure_of(rows, "empty.avi")["reason"] in ("unreadable", "empty")
    assert failure_of(rows, "audio only.mp4")["reason"] == "no_video_stream"
    failures = {json.loads(line)["key"] for line in (dst / "failures.jsonl").read_text().splitlines()}
    assert {"corrupt.mp4", "empty.avi", "audio only.mp4"} <= failures


def test_truncated_file_keeps_the_clips_before_the_damage(run):
    report, dst, rows = run
    kept = clips_of(rows, "/truncated.mp4")
    assert kept, "clips before the damage are kept"
    assert all(c["frame_count"] == 16 for c in kept[:-1])
    assert sum(c["frame_count"] for c in kept) < 200
    damaged = [r for r in rows if r["source"].endswith("/truncated.mp4") and r["status"] == "failed"]
    assert damaged and damaged[0]["reason"] == "decode_error"
    summary = "\n".join(datamill.jobs.clips.ClipsJob(".", ".").summary_lines(Ledger(state_path(dst))))
    assert "1 partial" in summary


def test_odd_source_dimensions_444_and_10bit_sources(run):
    report, dst, rows = run
    for name in ("/odd size.mp4", "/10bit.mkv", "/444.mp4"):
        clips = clips_of(rows, name)
        assert [c["frame_count"] for c in clips] == [16, 4], name
        frames = decode(dst / clips[0]["path"])
        assert frames[0].shape == (48, 64, 3)


def test_rotated_video_comes_out_upright(run, tree, tmp_path):
    report, dst, rows = run
    clip = clips_of(rows, "/rotated.mp4")[0]
    assert (clip["width"], clip["height"]) == (64, 48)  # exact size asked, display orientation
    # keep the source size to check orientation: 160x120 coded, rotated 90 -> 120x160 upright
    out = tmp_path / "upright"
    datamill.clips(tree / "phone", out, frames=8, quiet=True, workers=1)
    [first] = [r for r in manifest(out) if r["clip_index"] == 0]
    assert (first["width"], first["height"]) == (120, 160)
    frames = decode(out / first["path"])
    assert [read_frame_number(f) for f in frames[:3]] == [0, 1, 2]


def test_vfr_short_unicode_and_uppercase_names(run):
    report, dst, rows = run
    assert sum(c["frame_count"] for c in clips_of(rows, "/vfr.mkv")) == 40
    assert [c["frame_count"] for c in clips_of(rows, "/short.mp4")] == [10]
    assert clips_of(rows, "/été à la plage.mp4")[0]["path"] == "names/été à la plage/été à la plage_0000.mp4"
    assert clips_of(rows, "/UPPER.MP4")[0]["path"] == "names/UPPER/UPPER_0000.mp4"


def test_symlink_loop_and_other_files_are_skipped(run):
    report, dst, rows = run
    sources = [r["source"] for r in rows]
    assert not any("/loop/" in s for s in sources)
    assert not any(s.endswith("notes.txt") for s in sources)
    summary = "\n".join(datamill.jobs.clips.ClipsJob(".", ".").summary_lines(Ledger(state_path(dst))))
    assert "videos: 13 found, 10 readable" in summary
    assert "clips: " in summary


def test_long_video_is_split_into_ranges_with_exact_frames(tmp_path):
    src = tmp_path / "src"
    make_video(src / "long.mp4", frames=300, size=(128, 96), gop=30, bframes=3)
    dst = tmp_path / "dst"
    from datamill.engine.run import RunOptions, run_job
    from datamill.jobs.clips import ClipOptions, ClipsJob
    job = ClipsJob(src, dst, ClipOptions(frames=20, stride=25, task_frames=60))
    report = run_job(job, RunOptions(quiet=True, workers=2))
    assert report.exit_code == 0
    rows = manifest(dst)
    assert len({r["key"] for r in rows}) >= 4, "several tasks for one video"
    assert [r["clip_index"] for r in rows] == list(range(12))
    for r in rows:
        frames = decode(dst / r["path"])
        assert len(frames) == r["frame_count"] == 20
        assert read_frame_number(frames[0]) == r["clip_index"] * 25 == r["first_frame"]
        assert read_frame_number(frames[-1]) == r["clip_index"] * 25 + 19


def open_gop_video(path: Path, frames: int, gop: int, size=SMALL) -> Path:
    """H.264 with 3 B-frames, open GOPs and keyframes only every `gop` frames."""
    from datamill.testing.videos import draw_frame
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={
            "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": "3",
            "preset": "veryfast", "x264-params": "open-gop=1"})
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        for n in range(frames):
            frame = av.VideoFrame.from_ndarray(draw_frame(n, *size), format="rgb24")
            frame.pts = n
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_long_video_with_few_keyframes_is_cut_by_several_workers_frame_exact(tmp_path):
    """600 frames, 3 keyframes: with 3 workers most tasks start within a GOP (they decode
    from the keyframe before and throw the frames before their first clip away); the clips
    are frame-exact and decode to the same frames as with one worker."""
    from datamill.media.video import plan_clip_tasks, probe_video
    source = open_gop_video(tmp_path / "src" / "long.mp4", frames=600, gop=250)
    info = probe_video(source)
    assert info.keyframes == (0, 250, 500)
    tasks = {w: plan_clip_tasks(info, frames=16, workers=w) for w in (1, 3)}
    assert len(tasks[3]) > len(tasks[1]) > 1
    within_gop = [t for t in tasks[3] if t.clips[0].start_frame - t.seek_frame >= 16]
    assert len(within_gop) >= 3, "tasks start past a whole clip after their keyframe"
    runs = {}
    for workers in (3, 1):
        for fmt in ("mp4", "npy"):
            dst = tmp_path / f"{fmt}-{workers}"
            report = datamill.clips(tmp_path / "src", dst, frames=16, size=(80, 60), format=fmt,
                                    workers=workers, quiet=True)
            assert report.exit_code == 0
            rows = manifest(dst)
            assert len({r["key"] for r in rows}) == len(tasks[workers])
            assert [r["clip_index"] for r in rows] == list(range(600 // 16 + 1))
            runs[fmt, workers] = rows
    for r in runs["mp4", 3]:  # clip k holds source frames 16k .. 16k + 15, every one
        frames = decode(tmp_path / "mp4-3" / r["path"])
        start = r["clip_index"] * 16
        assert r["first_frame"] == start and len(frames) == r["frame_count"] == min(16, 600 - start)
        assert [read_frame_number(f) for f in frames] == list(range(start, start + len(frames)))
    for a, b in zip(runs["npy", 3], runs["npy", 1], strict=True):
        assert a["path"] == b["path"]
        assert np.array_equal(np.load(tmp_path / "npy-3" / a["path"]),
                              np.load(tmp_path / "npy-1" / b["path"]))
    # mp4: the same frames (numbered above); x264 may be given another thread count per
    # worker on another machine, so the encoded pixels are compared within a small tolerance
    for a, b in zip(runs["mp4", 3], runs["mp4", 1], strict=True):
        assert a["path"] == b["path"]
        pairs = list(zip(decode(tmp_path / "mp4-3" / a["path"]), decode(tmp_path / "mp4-1" / b["path"]),
                         strict=True))
        assert all(np.abs(x.astype(int) - y.astype(int)).mean() < 2.0 for x, y in pairs)


def test_rerun_redoes_only_unfinished_ranges(tmp_path):
    src = tmp_path / "src"
    make_video(src / "v.mp4", frames=120, size=SMALL, gop=10)
    dst = tmp_path / "dst"
    from datamill.engine.run import RunOptions, run_job
    from datamill.jobs.clips import ClipOptions, ClipsJob

    def job():
        return ClipsJob(src, dst, ClipOptions(frames=10, task_frames=30))

    assert run_job(job(), RunOptions(quiet=True)).exit_code == 0
    rows = manifest(dst)
    keys = sorted({r["key"] for r in rows})
    lost = [r for r in rows if r["key"] == keys[1]]
    ledger = Ledger(state_path(dst))
    ledger.forget([keys[1]])  # as if the run had been killed before this range finished
    ledger.close()
    for r in lost:
        os.unlink(dst / r["path"])
    untouched = dst / rows[0]["path"]
    mtime = untouched.stat().st_mtime_ns
    again = run_job(job(), RunOptions(quiet=True))
    assert again.exit_code == 0 and again.stats["this_run"]["items"] == 1
    assert all((dst / r["path"]).exists() for r in lost)
    assert untouched.stat().st_mtime_ns == mtime
    assert len(manifest(dst)) == len(rows)


def test_other_formats_overlap_copy_and_flat_layout(tmp_path):
    src = tmp_path / "src"
    make_video(src / "a/v.mp4", frames=40, size=SMALL, gop=10)
    npy = tmp_path / "npy"
    assert datamill.clips(src, npy, frames=16, stride=8, format="npy", size=(32, 24),
                          quiet=True).exit_code == 0
    rows = manifest(npy)
    assert [r["first_frame"] for r in rows] == [0, 8, 16, 24, 32]
    arr = np.load(npy / rows[1]["path"])
    assert arr.shape == (16, 24, 32, 3) and arr.dtype == np.uint8
    frames = tmp_path / "frames"
    datamill.clips(src, frames, frames=16, format="frames", quiet=True, layout="flat")
    first = manifest(frames)[0]
    assert first["path"] == "a__v_0000"
    assert len(list((frames / first["path"]).glob("*.jpg"))) == 16
    copy = tmp_path / "copy"
    assert datamill.clips(src, copy, frames=10, codec="copy", quiet=True).exit_code == 0
    rows = manifest(copy)
    assert all(r["first_frame"] % 10 == 0 for r in rows)  # keyframes every 10 frames
    assert sum(r["frame_count"] for r in rows) == 40


def test_changing_the_clip_length_needs_overwrite(tmp_path):
    src = tmp_path / "src"
    make_video(src / "v.mp4", frames=20, size=SMALL)
    dst = tmp_path / "dst"
    datamill.clips(src, dst, frames=10, quiet=True)
    with pytest.raises(datamill.UsageError, match="frames: 10 -> 12"):
        datamill.clips(src, dst, frames=12, quiet=True)
    assert datamill.clips(src, dst, frames=12, quiet=True, overwrite=True).exit_code == 0


def test_a_planned_task_survives_the_ledger_unchanged():
    from datamill.jobs.clips import task_from_json, task_to_json
    from datamill.media.video import ClipSpec, ClipTask
    from fractions import Fraction
    task = ClipTask(clips=(ClipSpec(3, 96, 32), ClipSpec(4, 128, 32)), seek_frame=90, seek_pts=4500,
                    start_pts=-1024, fps=Fraction(30000, 1001), keyframes=((90, 4500), (120, 6000)))
    assert task_from_json(json.loads(json.dumps(task_to_json(task)))) == task
