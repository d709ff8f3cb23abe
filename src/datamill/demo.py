"""`datamill demo`: generate a small media collection and run every job on it."""
from __future__ import annotations

import os
from pathlib import Path

import click

from .engine.run import RunOptions, run_job
from .jobs.clips import ClipOptions, ClipsJob
from .media.synthetic import make_corrupt_file, make_video

# (relative path, frames, coded size, rotation): a tree as users have them, with a broken
# file, a file that is not a video, an uppercase extension, spaces and non-ASCII in names.
DEMO_VIDEOS = [
    ("park/walk.mp4", 200, (480, 270), 0),
    ("park/run.MP4", 150, (320, 240), 0),
    ("phone/portrait clip.mp4", 100, (320, 180), 90),
    ("city/été à Paris.mkv", 130, (320, 240), 0),
]


def make_demo_videos(folder: Path) -> Path:
    videos = folder / "videos"
    for rel, frames, size, rotation in DEMO_VIDEOS:
        path = videos / rel
        if not path.exists():
            make_video(path, frames=frames, size=size, fps=25, gop=50, bframes=2,
                       rotation=rotation)
    if not (videos / "broken.mp4").exists():
        make_corrupt_file(videos / "broken.mp4")
    (videos / "park" / "notes.txt").write_text("not a video\n")
    return videos


def run_demo(folder: str | os.PathLike, workers: int | None = None, quiet: bool = False) -> int:
    """Generate the demo collection in `folder` and run each job; return the exit status."""
    folder = Path(folder)
    echo = (lambda *a, **k: None) if quiet else click.echo
    echo(f"datamill demo: generating a small video collection in {folder / 'videos'}")
    videos = make_demo_videos(folder)
    echo("\n$ datamill clips videos clips --frames 64 --size 565x320   (the seed's job)")
    report = run_job(ClipsJob(videos, folder / "clips", ClipOptions(frames=64, size=(565, 320))),
                     RunOptions(workers=workers, quiet=quiet, progress_interval=2.0))
    expected = {"unreadable": 1}
    ok = report.counts["ok"] > 0 and report.stats["failures"] == expected
    echo(f"\nclips: {folder / 'clips'} (one folder per video, clips named <video>_0000.mp4 ...)")
    echo("the one failure above is intended: videos/broken.mp4 is not a video")
    echo(f"inspect any job folder with: datamill status {folder / 'clips'}")
    return 0 if ok else 1
