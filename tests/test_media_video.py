"""media.video: probe, plan, output_size and cut_clips on small generated videos."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from datamill.atomic import TMP_MARK
from datamill.testing.files import make_corrupt_file, make_truncated
from datamill.testing.videos import make_audio_only, make_video, read_frame_number
from datamill.media.video import (
    ClipSpec,
    ClipTask,
    VideoError,
    VideoInfo,
    cut_clips,
    encoder_settings,
    output_size,
    plan_clip_tasks,
    probe_video,
    resampled_frame_count,
)

SMALL = (160, 120)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="module")
def gop10(videos: Path) -> Path:
    """100 frames, keyframes every 10, B-frames, with audio."""
    return make_video(videos / "gop10.mp4", frames=100, size=SMALL, gop=10, bframes=2, audio=True)


@pytest.fixture(scope="module")
def long_gop(videos: Path) -> Path:
    """300 frames, keyframes every 100 (so tasks must seek into the middle), B-frames."""
    return make_video(videos / "long_gop.mp4", frames=300, size=SMALL, gop=100, bframes=3)


def decode(path: str | Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def numbers(path: str | Path) -> list[int | None]:
    return [read_frame_number(frame.to_ndarray(format="rgb24")) for frame in decode(path)]


def cut_all(path: Path, tasks: list[ClipTask], out: Path, ext: str = ".mp4", **options) -> list:
    results = []
    for task in tasks:
        results += cut_clips(path, task, out_paths=lambda spec: out / f"clip_{spec.index:04d}{ext}", **options)
    return results


def no_temp_files(folder: Path) -> bool:
    return not any(TMP_MARK in name for _, dirs, files in os.walk(folder) for name in dirs + files)


def fake_info(frame_count: int, keyframes: tuple[int, ...], fps: int = 25) -> VideoInfo:
    """A VideoInfo for planning tests: constant rate, time base 1/fps (pts = frame index)."""
    return VideoInfo(
        width=320, height=240, rotation=0, display_width=320, display_height=240,
        fps=Fraction(fps), time_base=Fraction(1, fps), frame_count=frame_count,
        keyframes=keyframes, keyframe_pts=keyframes, duration=frame_count / fps,
        codec="h264", pix_fmt="yuv420p", has_audio=False, start_pts=0,
    )


# ---------------------------------------------------------------------------- probe


def test_probe_reads_frames_keyframes_and_stream(gop10: Path) -> None:
    info = probe_video(gop10)
    assert info.frame_count == 100 == info.declared_frames
    assert info.keyframes == tuple(range(0, 100, 10))
    assert len(info.keyframe_pts) == 10 and info.keyframe_pts[0] == info.start_pts
    assert (info.width, info.height, info.rotation) == (160, 120, 0)
    assert (info.display_width, info.display_height) == (160, 120)
    assert info.fps == 25 and info.duration == pytest.approx(4.0, abs=0.01)
    assert info.codec == "h264" and info.pix_fmt == "yuv420p" and info.has_audio


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_probe_reads_rotation(videos: Path, rotation: int) -> None:
    info = probe_video(make_video(videos / f"probe_rot{rotation}.mp4", frames=3, size=SMALL, rotation=rotation))
    assert info.rotation == rotation
    swapped = rotation in (90, 270)
    assert (info.display_width, info.display_height) == ((120, 160) if swapped else (160, 120))
    assert (info.width, info.height) == (160, 120)


def test_probe_errors(tmp_path: Path) -> None:
    with pytest.raises(VideoError) as corrupt:
        probe_video(make_corrupt_file(tmp_path / "noise.mp4"))
    assert corrupt.value.error_class == "unreadable"
    (tmp_path / "zero.mp4").write_bytes(b"")
    with pytest.raises(VideoError) as zero:
        probe_video(tmp_path / "zero.mp4")
    assert zero.value.error_class in ("unreadable", "empty")
    with pytest.raises(VideoError) as audio_only:
        probe_video(make_audio_only(tmp_path / "tone.m4a"))
    assert audio_only.value.error_class == "no_video_stream"
    with pytest.raises(FileNotFoundError):
        probe_video(tmp_path / "missing.mp4")


# ---------------------------------------------------------------------------- plan


def starts_and_counts(tasks: list[ClipTask]) -> list[tuple[int, int]]:
    return [(clip.start_frame, clip.frame_count) for task in tasks for clip in task.clips]


@pytest.mark.parametrize(
    "stride, expected",
    [
        (64, [(0, 64), (64, 64), (128, 64), (192, 8)]),
        (32, [(0, 64), (32, 64), (64, 64), (96, 64), (128, 64), (160, 40), (192, 8)]),
        (100, [(0, 64), (100, 64)]),
    ],
)
def test_plan_clip_ranges(stride: int, expected: list[tuple[int, int]]) -> None:
    tasks = plan_clip_tasks(fake_info(200, (0,)), frames=64, stride=stride)
    assert starts_and_counts(tasks) == expected
    assert [clip.index for task in tasks for clip in task.clips] == list(range(len(expected)))


def test_plan_drop_last() -> None:
    tasks = plan_clip_tasks(fake_info(200, (0,)), frames=64, stride=32, drop_last=True)
    assert starts_and_counts(tasks) == [(0, 64), (32, 64), (64, 64), (96, 64), (128, 64)]
    assert plan_clip_tasks(fake_info(50, (0,)), frames=64, drop_last=True) == []


def test_plan_short_video_is_one_task() -> None:
    tasks = plan_clip_tasks(fake_info(150, (0, 50, 100)), frames=64)
    assert len(tasks) == 1
    assert (tasks[0].seek_frame, tasks[0].seek_pts) == (0, 0)
    assert starts_and_counts(tasks) == [(0, 64), (64, 64), (128, 22)]


def test_plan_groups_tasks_at_keyframes() -> None:
    keyframes = tuple(range(0, 3000, 250))
    tasks = plan_clip_tasks(fake_info(3000, keyframes), frames=64, task_frames=512)
    assert len(tasks) > 2
    assert starts_and_counts(tasks) == [(s, min(64, 3000 - s)) for s in range(0, 3000, 64)]
    for task in tasks:
        first = task.clips[0].start_frame
        assert task.seek_frame in keyframes and task.seek_frame <= first
        assert task.seek_pts == task.seek_frame  # fake_info: pts = frame index
        if task is not tasks[0]:
            assert first - task.seek_frame < 64  # starts right after a keyframe
        if task is not tasks[-1]:
            assert 512 <= task.end_frame - first <= 1024
    # Keyframes every frame: tasks are exactly task_frames long.
    tasks = plan_clip_tasks(fake_info(1000, tuple(range(1000))), frames=64, task_frames=128)
    assert [len(t.clips) for t in tasks] == [2] * 7 + [2]
    assert all(t.seek_frame == t.clips[0].start_frame for t in tasks)


def test_plan_long_video_for_workers_keyframe_aligned() -> None:
    """1,500 frames with keyframes every 250: tasks of about 1500 / (4 x workers) frames, each
    starting just after a keyframe, the clips the same as without workers."""
    keyframes = tuple(range(0, 1500, 250))
    info = fake_info(1500, keyframes)
    alone = plan_clip_tasks(info, frames=64)
    assert len(alone) == 3
    tasks = plan_clip_tasks(info, frames=64, workers=2)  # target 188: one GOP each
    assert starts_and_counts(tasks) == starts_and_counts(alone)
    assert [(t.seek_frame, t.clips[0].start_frame) for t in tasks] == [
        (0, 0), (250, 256), (500, 512), (750, 768), (1000, 1024), (1250, 1280)]
    assert all(t.end_frame - t.clips[0].start_frame >= 188 for t in tasks[:-1])
    # Many workers: tasks of two clips, most starting within a GOP (decoding from the keyframe
    # before, never more than a GOP and a task back).
    tasks = plan_clip_tasks(info, frames=64, workers=8)
    assert starts_and_counts(tasks) == starts_and_counts(alone)
    assert len(tasks) == 12 and all(len(t.clips) == 2 for t in tasks[:-1])
    for t in tasks:
        first = t.clips[0].start_frame
        assert t.seek_frame == max(k for k in keyframes if k <= first)
        assert first - t.seek_frame < 250
    assert sum(t.clips[0].start_frame - t.seek_frame >= 64 for t in tasks) >= 4


def test_plan_few_keyframes_and_short_videos() -> None:
    # One keyframe in 1,500 frames: tasks close at twice the target, each decoding from frame 0.
    tasks = plan_clip_tasks(fake_info(1500, (0,)), frames=64, workers=2)
    assert [t.clips[0].start_frame for t in tasks] == [0, 384, 768, 1152]
    assert {t.seek_frame for t in tasks} == {0}
    # Videos of at most task_frames frames stay one task, whatever the worker count.
    for frames in (300, 512):
        info = fake_info(frames, tuple(range(0, frames, 30)))
        for workers in (None, 1, 2, 64):
            assert len(plan_clip_tasks(info, frames=64, workers=workers)) == 1
    # One minute on 64 workers: a clip per task (the target is at least one clip).
    tasks = plan_clip_tasks(fake_info(1800, tuple(range(0, 1800, 30))), frames=64, workers=64)
    assert [len(t.clips) for t in tasks] == [1] * 29
    assert [t.seek_frame for t in tasks] == [max(k for k in range(0, 1800, 30) if k <= s)
                                             for s in range(0, 1800, 64)]


def test_plan_with_fps_resampling() -> None:
    info = fake_info(100, (0, 25, 50, 75))  # 4 s at 25 fps
    assert resampled_frame_count(info, 10) == 40
    tasks = plan_clip_tasks(info, frames=8, fps=10, task_frames=8)
    assert starts_and_counts(tasks) == [(s, 8) for s in range(0, 40, 8)]
    # keyframe 25 (1.0 s) is resampled frame 10, 50 -> 20, 75 -> 30; clip 8 follows no
    # keyframe, so it stays with clip 0
    assert [t.clips[0].start_frame for t in tasks] == [0, 16, 24, 32]
    assert [(t.seek_frame, t.seek_pts) for t in tasks] == [(0, 0), (10, 25), (20, 50), (30, 75)]
    assert all(t.fps == 10 for t in tasks)


# ---------------------------------------------------------------------------- output size


def test_output_size() -> None:
    assert output_size(1920, 1080, size=(565, 320)) == (564, 320, "565x320 rounded to 564x320 (yuv420p needs even sizes)")
    assert output_size(1920, 1080, size=(640, 360)) == (640, 360, None)
    assert output_size(1920, 1080, short_side=256) == (454, 256, "455x256 rounded to 454x256 (yuv420p needs even sizes)")
    assert output_size(1080, 1920, short_side=256)[:2] == (256, 454)
    assert output_size(1920, 1080, max_side=640) == (640, 360, None)
    assert output_size(640, 360, max_side=1280) == (640, 360, None)
    assert output_size(321, 241) == (320, 240, "321x241 rounded to 320x240 (yuv420p needs even sizes)")
    assert output_size(321, 241, short_side=120)[:2] == (160, 120)
    assert output_size(320, 240, size=(640, 480), upscale=False)[:2] == (320, 240)
    assert output_size(320, 240, short_side=480, upscale=False)[:2] == (320, 240)
    assert output_size(3, 1, size=(1, 1)) == (2, 2, "1x1 rounded to 2x2 (yuv420p needs even sizes)")
    for bad in (dict(size=(0, 10)), dict(size=(10.5, 10)), dict(short_side=-1), dict(max_side=0), dict(size=(2, 2), short_side=2)):
        with pytest.raises(ValueError):
            output_size(100, 100, **bad)
    with pytest.raises(ValueError):
        output_size(0, 100)


def test_encoder_settings_validate() -> None:
    assert encoder_settings("h264") == ("libx264", {"crf": "23", "preset": "ultrafast"})
    assert encoder_settings("vp9", crf=40)[1]["crf"] == "40"
    for bad in (dict(codec="h265"), dict(codec="h264", crf=60), dict(codec="mpeg4", preset="fast")):
        with pytest.raises(ValueError):
            encoder_settings(**bad)


# ---------------------------------------------------------------------------- cut


@pytest.mark.parametrize("stride", [32, 20])  # 20: overlapping clips, a frame in two clips
def test_cut_frame_identity_across_tasks(long_gop: Path, tmp_path: Path, stride: int) -> None:
    info = probe_video(long_gop)
    tasks = plan_clip_tasks(info, frames=32, stride=stride, task_frames=64)
    assert len(tasks) > 2 and any(t.seek_frame > 0 for t in tasks)
    results = cut_all(long_gop, tasks, tmp_path, size=(96, 64))
    assert [r.index for r in results] == list(range(len(results)))
    assert all(r.status == "ok" for r in results), [r.message for r in results if r.status != "ok"]
    for k, result in enumerate(results):
        start = k * stride
        count = min(32, 300 - start)
        frames = decode(result.path)
        assert (result.first_frame, result.frame_count, len(frames)) == (start, count, count)
        assert numbers(result.path) == list(range(start, start + count))
        assert {(f.width, f.height) for f in frames} == {(96, 64)}
        assert result.start_time == pytest.approx(start / 25) and result.duration == pytest.approx(count / 25)
        assert result.bytes == os.path.getsize(result.path) and (result.width, result.height) == (96, 64)
    assert no_temp_files(tmp_path)


def test_cut_seek_into_long_gop_matches_decoding_from_start(long_gop: Path, tmp_path: Path) -> None:
    info = probe_video(long_gop)
    task = next(t for t in plan_clip_tasks(info, frames=16, task_frames=32) if 100 < t.clips[0].start_frame < 200)
    assert task.seek_frame == 100 and task.clips[0].start_frame > 100
    from_start = ClipTask(task.clips, 0, info.start_pts, info.start_pts)
    seeked = cut_clips(long_gop, task, out_paths=lambda s: tmp_path / f"seek_{s.index}.npy", size=(80, 60), fmt="npy")
    full = cut_clips(long_gop, from_start, out_paths=lambda s: tmp_path / f"full_{s.index}.npy", size=(80, 60), fmt="npy")
    for a, b in zip(seeked, full, strict=True):
        assert a.status == b.status == "ok"
        assert np.array_equal(np.load(a.path), np.load(b.path))
    assert [read_frame_number(f) for f in np.load(seeked[0].path)] == list(range(task.clips[0].start_frame, task.clips[0].end_frame))


@pytest.mark.parametrize("rotation, size", [(90, None), (270, (60, 80)), (180, (80, 60))])
def test_cut_rotated_source_comes_out_upright(videos: Path, tmp_path: Path, rotation: int, size) -> None:
    source = make_video(videos / f"cut_rot{rotation}.mp4", frames=12, size=SMALL, rotation=rotation)
    info = probe_video(source)
    results = cut_all(source, plan_clip_tasks(info, frames=6), tmp_path, size=size)
    expected = size or (info.display_width, info.display_height)
    for k, result in enumerate(results):
        frames = decode(result.path)
        assert {(f.width, f.height) for f in frames} == {expected} == {(result.width, result.height)}
        assert all(f.rotation == 0 for f in frames)
        assert numbers(result.path) == list(range(6 * k, 6 * k + 6))
    # rotation=0 keeps the coded orientation: the pattern is then unreadable when sideways
    kept = cut_clips(source, plan_clip_tasks(info, frames=6)[0], out_paths=lambda s: tmp_path / f"coded_{s.index}.mp4", rotation=0)
    assert (kept[0].width, kept[0].height) == (160, 120)
    if rotation != 180:
        assert read_frame_number(decode(kept[0].path)[0].to_ndarray(format="rgb24")) is None


@pytest.mark.parametrize("pix_fmt", ["yuv420p10le", "yuv444p"])
def test_cut_high_bit_depth_and_444_sources(videos: Path, tmp_path: Path, pix_fmt: str) -> None:
    source = make_video(videos / f"{pix_fmt}.mp4", frames=10, size=SMALL, pix_fmt=pix_fmt)
    assert probe_video(source).pix_fmt == pix_fmt
    [result] = cut_all(source, plan_clip_tasks(probe_video(source), frames=10), tmp_path, size=(80, 60))
    assert result.status == "ok"
    assert numbers(result.path) == list(range(10))
    with av.open(result.path) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"


def test_cut_odd_sized_source_rounds_down_and_says_so(videos: Path, tmp_path: Path) -> None:
    source = make_video(videos / "odd.mp4", frames=6, size=(321, 241), pix_fmt="yuv444p")
    [result] = cut_all(source, plan_clip_tasks(probe_video(source), frames=6), tmp_path)
    assert (result.status, result.width, result.height) == ("ok", 320, 240)
    assert "321x241 rounded to 320x240" in result.message
    assert {(f.width, f.height) for f in decode(result.path)} == {(320, 240)}
    with pytest.raises(ValueError):
        cut_all(source, plan_clip_tasks(probe_video(source), frames=6), tmp_path, size=(565, 320))


def test_cut_variable_frame_rate_keeps_timing(videos: Path, tmp_path: Path) -> None:
    source = make_video(videos / "vfr.mp4", frames=30, size=SMALL, vfr=True)  # 30, 50, 40 ms...
    info = probe_video(source)
    assert info.frame_count == 30 and info.duration == pytest.approx(1.2, abs=0.01)
    results = cut_all(source, plan_clip_tasks(info, frames=10, task_frames=10), tmp_path)
    assert [numbers(r.path) for r in results] == [list(range(k, k + 10)) for k in (0, 10, 20)]
    assert [r.start_time for r in results] == pytest.approx([0.0, 0.39, 0.80], abs=0.002)
    with av.open(results[0].path) as container:
        times = [float(f.pts * f.time_base) for f in container.decode(video=0)]
    assert np.diff(times)[:3] == pytest.approx([0.03, 0.05, 0.04], abs=0.002)


def test_cut_fps_resampling_matches_an_fps_filter(gop10: Path, tmp_path: Path) -> None:
    info = probe_video(gop10)  # 100 frames at 25 fps
    tasks = plan_clip_tasks(info, frames=8, fps=10, task_frames=16)
    assert len(tasks) > 1 and any(t.seek_frame > 0 for t in tasks)
    results = cut_all(gop10, tasks, tmp_path, size=(80, 60))
    assert len(results) == 5 and all(r.status == "ok" for r in results)
    # output frame j shows the last source frame i with round(i * 10 / 25) <= j
    shown = [max(i for i in range(100) if (i * 10 + 12) // 25 <= j) for j in range(40)]
    assert [n for r in results for n in numbers(r.path)] == shown
    assert [r.start_time for r in results] == pytest.approx([0.0, 0.8, 1.6, 2.4, 3.2])
    assert all(r.duration == pytest.approx(0.8) for r in results)
    with av.open(results[0].path) as container:
        assert container.streams.video[0].average_rate == 10


def test_cut_truncated_file_keeps_clips_before_the_damage(videos: Path, tmp_path: Path) -> None:
    whole = make_video(videos / "whole.mp4", frames=200, size=SMALL, gop=20)
    broken = make_truncated(whole, videos / "truncated.mp4", 0.5)
    info = probe_video(broken)
    assert 0 < info.frame_count < info.declared_frames == 200
    results = cut_all(broken, plan_clip_tasks(info, frames=32, task_frames=64), tmp_path)
    statuses = [r.status for r in results]
    assert "ok" in statuses and "failed" in statuses
    assert statuses == sorted(statuses, key=lambda s: s != "ok")  # ok ones first, then failed
    for result in results:
        if result.status == "ok":
            assert numbers(result.path) == list(range(result.first_frame, result.first_frame + 32))
        else:
            assert result.error_class == "decode_error" and result.message
            assert not os.path.exists(result.path)
    assert no_temp_files(tmp_path)


def test_cut_copy_starts_clips_on_keyframes(tmp_path: Path, videos: Path) -> None:
    source = make_video(videos / "copy.mp4", frames=100, size=SMALL, gop=20, bframes=2)
    info = probe_video(source)
    results = cut_all(source, plan_clip_tasks(info, frames=32, task_frames=40), tmp_path, codec="copy")
    # nominal starts 0, 32, 64, 96 -> keyframes 0, 40, 80; 96..99 holds none (merged into the clip before)
    assert [(r.status, r.first_frame, r.frame_count) for r in results] == [
        ("ok", 0, 40), ("ok", 40, 40), ("ok", 80, 20), ("filtered", 96, 0)]
    assert results[3].error_class == "no_keyframe"
    for result in results[:3]:
        with av.open(result.path) as container:
            first_packet = next(p for p in container.demux(video=0) if p.size)
        assert first_packet.is_keyframe
        assert numbers(result.path) == list(range(result.first_frame, result.first_frame + result.frame_count))
        assert result.start_time == pytest.approx(result.first_frame / 25)
    with pytest.raises(ValueError):
        cut_all(source, plan_clip_tasks(info, frames=32), tmp_path, codec="copy", size=(80, 60))


def test_cut_copy_keeps_rotation_metadata(videos: Path, tmp_path: Path) -> None:
    source = make_video(videos / "copy_rot.mp4", frames=10, size=SMALL, rotation=90)
    [result] = cut_all(source, plan_clip_tasks(probe_video(source), frames=10), tmp_path, codec="copy")
    assert probe_video(result.path).rotation == 90


def test_cut_frames_and_npy_formats(gop10: Path, tmp_path: Path) -> None:
    tasks = plan_clip_tasks(probe_video(gop10), frames=40)
    folders = cut_all(gop10, tasks, tmp_path / "frames", ext="", fmt="frames", size=(80, 60))
    assert [r.frame_count for r in folders] == [40, 40, 20]
    for result in folders:
        names = sorted(os.listdir(result.path))
        assert names == [f"frame_{i:06d}.jpg" for i in range(result.frame_count)]
        first = np.asarray(Image.open(Path(result.path) / names[0]).convert("RGB"))
        assert first.shape == (60, 80, 3) and read_frame_number(first) == result.first_frame
    arrays = cut_all(gop10, tasks, tmp_path / "npy", ext=".npy", fmt="npy", size=(80, 60))
    for result in arrays:
        array = np.load(result.path)
        assert array.shape == (result.frame_count, 60, 80, 3) and array.dtype == np.uint8
        assert [read_frame_number(a) for a in array] == list(range(result.first_frame, result.first_frame + result.frame_count))
    assert no_temp_files(tmp_path)


def test_cut_keeps_audio(gop10: Path, tmp_path: Path) -> None:
    info = probe_video(gop10)
    results = cut_all(gop10, plan_clip_tasks(info, frames=30, stride=20, task_frames=40), tmp_path, size=(80, 60), audio="keep")
    assert len(results) == 5 and all(r.status == "ok" for r in results)
    for result in results:
        with av.open(result.path) as container:
            audio = container.streams.audio[0]
            assert float(audio.duration * audio.time_base) == pytest.approx(result.duration, abs=0.03)
            samples = sum(frame.samples for frame in container.decode(audio=0))
        assert samples / 48000 == pytest.approx(result.duration, abs=0.05)
    dropped = cut_all(gop10, plan_clip_tasks(info, frames=100), tmp_path / "drop", size=(80, 60))
    with av.open(dropped[0].path) as container:
        assert not container.streams.audio
    with pytest.raises(ValueError):
        cut_all(gop10, plan_clip_tasks(info, frames=100), tmp_path, fmt="npy", audio="keep")


@pytest.mark.parametrize("codec, decoder", [("mpeg4", "mpeg4"), ("vp9", "vp9"), ("hevc", "hevc"), ("av1", "av1")])
def test_cut_other_codecs(videos: Path, tmp_path: Path, codec: str, decoder: str) -> None:
    source = make_video(videos / "codecs.mp4", frames=16, size=SMALL)
    results = cut_all(source, plan_clip_tasks(probe_video(source), frames=8), tmp_path, size=(96, 64), codec=codec)
    assert [r.status for r in results] == ["ok", "ok"] and results[0].codec == codec
    for k, result in enumerate(results):
        assert numbers(result.path) == list(range(8 * k, 8 * k + 8))
        with av.open(result.path) as container:
            assert container.streams.video[0].codec_context.codec.name in (decoder, "libdav1d")


def test_cut_encoder_failure_is_a_failed_clip(gop10: Path, tmp_path: Path) -> None:
    results = cut_all(gop10, plan_clip_tasks(probe_video(gop10), frames=50), tmp_path, preset="no-such-preset")
    assert [(r.status, r.error_class) for r in results] == [("failed", "encode_error")] * 2
    assert not any(os.path.exists(r.path) for r in results) and no_temp_files(tmp_path)


def test_cut_unreadable_and_bad_options(tmp_path: Path, gop10: Path) -> None:
    task = ClipTask((ClipSpec(0, 0, 10),), 0, 0, 0)
    with pytest.raises(VideoError) as err:
        cut_clips(make_corrupt_file(tmp_path / "x.mp4"), task, out_paths=lambda s: tmp_path / "o.mp4")
    assert err.value.error_class == "unreadable"
    for bad in (dict(fmt="gif"), dict(audio="mute"), dict(codec="h266"), dict(rotation=45), dict(size=(81, 60))):
        with pytest.raises(ValueError):
            cut_clips(gop10, task, out_paths=lambda s: tmp_path / "o.mp4", **bad)


def test_cut_seeks_in_mpeg_ts_and_matroska(videos: Path, tmp_path: Path) -> None:
    """MPEG-TS has no index (seeking lands near, not on, the keyframe); Matroska seeks by cues."""
    for suffix in (".ts", ".mkv"):
        source = make_video(videos / f"seek{suffix}", frames=90, size=SMALL, gop=30, bframes=2)
        info = probe_video(source)
        tasks = plan_clip_tasks(info, frames=16, task_frames=32)
        assert tasks[-1].seek_frame == 60
        results = cut_all(source, tasks, tmp_path / suffix[1:], size=(80, 60))
        assert [numbers(r.path) for r in results] == [list(range(s, min(s + 16, 90))) for s in range(0, 90, 16)]


def test_cut_copy_open_gop_and_webm_audio(videos: Path, tmp_path: Path) -> None:
    # x265 uses open GOPs: a keyframe's leading frames follow it in decode order but are
    # shown before it, so they cannot go with it; the result counts what the clip holds.
    hevc = make_video(videos / "open_gop.mkv", frames=60, size=SMALL, gop=30, codec="libx265")
    info = probe_video(hevc)
    results = cut_all(hevc, plan_clip_tasks(info, frames=30), tmp_path / "hevc", ext=".mkv", codec="copy")
    assert [r.first_frame for r in results] == [0, 30] and all(r.status == "ok" for r in results)
    for result in results:
        assert numbers(result.path) == list(range(result.first_frame, result.first_frame + result.frame_count))
    webm = make_video(videos / "copy.webm", frames=40, size=SMALL, gop=20, codec="libvpx-vp9", audio=True)
    results = cut_all(webm, plan_clip_tasks(probe_video(webm), frames=20), tmp_path / "webm", ext=".webm", codec="copy", audio="keep")
    assert [(r.status, r.first_frame, r.frame_count) for r in results] == [("ok", 0, 20), ("ok", 20, 20)]
    with av.open(results[1].path) as container:
        assert container.streams.audio[0].codec_context.name == "opus"
        assert sum(f.samples for f in container.decode(audio=0)) / 48000 == pytest.approx(0.8, abs=0.03)


def test_non_square_pixels_are_stretched_to_display_size(tmp_path: Path) -> None:
    source = tmp_path / "anamorphic.mp4"
    with av.open(str(source), "w") as out:  # 160x120 coded, pixels twice as wide as tall
        stream = out.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), 40 * i, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    info = probe_video(source)
    assert (info.width, info.height, info.display_width, info.display_height) == (160, 120, 320, 120)
    [result] = cut_clips(source, plan_clip_tasks(info, frames=4)[0], out_paths=lambda s: tmp_path / "out.mp4")
    assert (result.width, result.height) == (320, 120)
    assert {(f.width, f.height) for f in decode(result.path)} == {(320, 120)}
