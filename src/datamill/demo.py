"""`datamill demo`: generate small media collections and run every job on them (clips,
download, dedup, map, streams)."""
from __future__ import annotations

import os
from pathlib import Path

import click

from .engine.run import RunOptions, run_job
from .io.http import FetchOptions
from .jobs.clips import ClipOptions, ClipsJob
from .jobs.dedup import DedupJob, DedupOptions
from .jobs.download import DownloadJob, DownloadOptions
from .jobs.map import MapJob, MapOptions
from .jobs.streams.write import StreamsJob, StreamsOptions
from .media.image import ImageOptions
from .testing.files import make_corrupt_file
from .testing.images import make_scene
from .testing.server import ImageServer
from .testing.videos import make_video

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


# Paths on the local image server whose failure the demo shows on purpose.
DEMO_BAD_URLS = ["status/404", "html", "truncated.jpg", "tiny.jpg", "drip/1.jpg"]


def write_demo_urls(path: Path, server: ImageServer, n: int = 200) -> Path:
    server.warm(480, 360)
    urls = [server.url(f"img/{i}.jpg?w=480&h=360") for i in range(n)]
    urls += [server.url(p) for p in DEMO_BAD_URLS]
    path.write_text("\n".join(urls) + "\n")
    return path


def make_demo_photos(folder: Path, n: int = 40) -> Path:
    """A photo folder with known duplicates: every fourth photo has a half-size copy, a
    recompressed copy and a byte-identical copy elsewhere in the tree."""
    from PIL import Image
    photos = folder / "photos"
    for i in range(n):
        path = photos / f"trip-{i // 10}" / f"IMG_{i:04d}.jpg"
        if path.exists():
            continue
        make_scene(path, size=(640, 480), seed=i, quality=92)
        if i % 4 == 0:
            img = Image.open(path).convert("RGB")
            (photos / "shared").mkdir(parents=True, exist_ok=True)
            img.resize((320, 240)).save(photos / "shared" / f"IMG_{i:04d}-small.jpg", quality=90)
            img.save(photos / "shared" / f"IMG_{i:04d}-q60.jpg", quality=60)
            (photos / "backup").mkdir(exist_ok=True)
            (photos / "backup" / f"IMG_{i:04d}.jpg").write_bytes(path.read_bytes())
    return photos


def photo_features(path: str) -> dict:
    """The demo's `map` function: a photo's name, size, mean colour and a 32x32 thumbnail."""
    import numpy as np
    from PIL import Image
    with Image.open(path) as im:
        width, height = im.size
        im.draft("RGB", (64, 64))  # a JPEG decoded at reduced scale: only a thumbnail is kept
        thumb = np.asarray(im.convert("RGB").resize((32, 32)))
    return {"name": os.path.basename(path), "width": width, "height": height,
            "mean_rgb": thumb.reshape(-1, 3).mean(axis=0).astype(np.float32), "thumb": thumb}


def run_demo(folder: str | os.PathLike, workers: int | None = None, quiet: bool = False) -> int:
    """Generate the demo collections in `folder` and run each job; return the exit status."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    echo = (lambda *a, **k: None) if quiet else click.echo
    engine = RunOptions(workers=workers, quiet=quiet, progress_interval=2.0)
    echo(f"datamill demo: generating a small video collection in {folder / 'videos'}")
    videos = make_demo_videos(folder)
    echo("\n$ datamill clips videos clips --frames 64 --size 565x320   (the seed's job)")
    clips = run_job(ClipsJob(videos, folder / "clips", ClipOptions(frames=64, size=(565, 320))),
                    engine)
    clips_ok = clips.counts["ok"] > 0 and clips.stats["failures"] == {"unreadable": 1}
    echo(f"clips: {folder / 'clips'} (one folder per video, clips named <video>_0000.mp4 ...); "
         "the one failure is intended: videos/broken.mp4 is not a video")

    with ImageServer() as server:
        urls = write_demo_urls(folder / "urls.txt", server)
        echo(f"\nserving generated images and broken URLs on {server.base_url}; "
             f"{urls} lists {len(urls.read_text().split())} of them")
        echo("$ datamill download urls.txt images --resize 256 --min-size 100 --format webdataset "
             "--timeout 2 --shard-size 50")
        options = DownloadOptions(output_format="webdataset", shard_size=50,
                                  image=ImageOptions(resize=256, min_size=100),
                                  fetch=FetchOptions(timeout=2, retries=1, backoff=0.1))
        images = run_job(DownloadJob(urls, folder / "images", options), engine)
    expected = {"http_404": 1, "not_image": 1, "decode_error": 1, "timeout": 1}
    images_ok = images.counts["ok"] == 200 and images.stats["failures"] == expected
    echo(f"images: {folder / 'images'} (00000.tar ...); the failures and the filtered tiny image "
         "are intended")

    photos = make_demo_photos(folder)
    echo(f"\n$ datamill dedup photos dedup   ({photos}: 40 photos, 10 of them copied 3 ways)")
    found = run_job(DedupJob(photos, folder / "dedup", DedupOptions()), engine)
    dedup_ok = found.exit_code == 0 and found.counts == {"ok": 40, "filtered": 30, "failed": 0}
    echo(f"dedup: open {folder / 'dedup' / 'report.html'} in a browser to see the groups")

    echo("\n$ datamill map photos features --fn datamill.demo:photo_features --shard-size 25 "
         "--ordered")
    features = run_job(MapJob(photos, folder / "features", MapOptions(
        fn="datamill.demo:photo_features", shard_size=25, ordered=True)), engine)
    map_ok = features.exit_code == 0 and features.counts["ok"] == 70
    echo(f"features: {folder / 'features'} (00000.parquet ..., index.json); read them back with "
         f"datamill.read_shards({str(folder / 'features')!r})")
    cams = folder / "cameras"
    for name, frames, fps in (("cam1.mp4", 100, 25), ("cam2.mp4", 90, 30)):
        if not (cams / name).exists():
            make_video(cams / name, frames=frames, size=(320, 240), fps=fps, gop=25)
    echo("\n$ datamill streams cameras/cam1.mp4 cameras/cam2.mp4 windows --fps 25 --size 320x180"
         "   (4 s at 25 fps and 3 s at 30 fps)")
    windows = run_job(StreamsJob([cams / "cam1.mp4", cams / "cam2.mp4"], folder / "windows",
                                 StreamsOptions(fps=25, size=(320, 180))), engine)
    streams_ok = windows.exit_code == 0 and windows.counts["ok"] == 4
    echo(f"windows: {folder / 'windows'} (000000/cam1.npy, cam2.npy, mask.npy, pts.npy ...); "
         "datamill.streams([...]) gives the same windows live, in shared memory")

    echo(f"\ninspect any job folder with: datamill status {folder / 'clips'}")
    return 0 if clips_ok and images_ok and dedup_ok and map_ok and streams_ok else 1
