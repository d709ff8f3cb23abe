"""Job `clips`: datamill.clips against the seed's OpenCV script and a PyAV decode-only ceiling,
on generated 1080p H.264 (x264, B-frames, long GOPs), cut into 64-frame clips at 565x320.

    .venv/bin/python bench/clips.py [--quick] [--repeat N] [--only PARTS] [--workdir bench/_data]

Corpus parts (`--only long,long720` runs just those): short (6 x 300 @1080p), long (1 x 1800
@1080p), long720 (issue 14's video: 1 x 1500 @720p, 3 B-frames, GOP 250, open GOP, scene
cuts: 6 keyframes) and short720 (4 x 300 @720p: the long one's first 1,200 frames' scenes in 4
files, encoded the same way: the many-short-videos CPU per frame the long one is held to, with
both workers busy to the end as the long one's are).  The CPU-per-frame target compares the two
run by run (they run one after the other) and takes the median of those ratios: the machine's
speed drifts between runs more than the difference measured.

Every method runs in a fresh Python process (so no method inherits another's memory), its
time measured inside that process from starting its workers to the last output written.
Rates are source frames per second; every figure is the median of N runs (default 3),
interleaved, measured in this run, so the ratios compare like with like.  On a shared machine,
each run first waits (a little) for other work to go quiet, the CPU that other processes
took during each run is reported, and so is each method's own CPU time per source frame
(user + system of all its processes), which other work disturbs least.

- baseline: the seed's script written plainly: per video cv2.VideoCapture -> cv2.resize
  INTER_AREA -> cv2.VideoWriter mp4v, 64-frame clips, a multiprocessing.Pool(2) over files.
- ceiling: PyAV decode only (codec threads on), a Pool(2) over files.  A single long video
  gives it one process (decoding with frame threads).
- datamill: datamill.clips(..., workers=2) with the default codec; `--codec copy` on the long
  video.

Quality: each method's clips are decoded (every 8th frame of the first 2 short videos, every
16th frame of the long one) and compared, at the same source frame index, with the source
frame resized by cv2.resize INTER_AREA to the clip's actual size (mean PSNR over RGB).
"frames exact" reads the frame number drawn into every synthetic frame back from the clip.

Peak RSS per worker: a thread of each method's process polls (psutil, every 0.1 s) the RSS of
all its descendant processes, and takes the larger of that and getrusage(RUSAGE_CHILDREN)
.ru_maxrss (which also catches peaks between polls).  RSS counts pages shared with the parent
after fork, so it is an upper bound of what a worker costs.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

from _common import machine, median, peak_rss_mb, ratio, run_child, table, video_corpus

WORKERS = 2
CLIP_FRAMES = 64
SIZE = (565, 320)

# Corpus: x264 with B-frames and a long GOP, as cameras and the web produce.
ENCODING = {"fps": 30, "codec": "libx264", "gop": 250, "bframes": 3}
CORPORA = {
    False: {"size": (1920, 1080), "short": 6, "short_frames": 300, "long_frames": 1800},
    True: {"size": (960, 540), "short": 3, "short_frames": 128, "long_frames": 512},
}
PSNR_EVERY = {"short": 8, "long": 16, "long720": 16, "short720": 8}
# Issue 14's long video: x264 veryfast, 3 B-frames, GOP 250, open GOP, scene-cut keyframes;
# scenes (the picture's colours permuted) change at SCENES (fractions of the video).
ENCODING_720 = {"fps": 30, "gop": 250, "bframes": 3}
SIZE_720 = (1280, 720)
LONG_720, SHORT_720 = 1500, (4, 300)  # the short ones: the long one's first scenes, in 4 files
SCENES = (500 / 1500, 1000 / 1500)  # on GOP ends: 6 keyframes in the long one, as in the issue
PSNR_VIDEOS = 2  # short videos compared
QUIET_WAIT = (120.0, 20.0)  # seconds: in all, before one run (waiting for other work to stop)


# -- corpus ----------------------------------------------------------------------------------
def corpus(workdir: Path, quick: bool) -> dict:
    """Generate the corpus once (cached in workdir); return its description."""
    spec = CORPORA[quick]
    root = workdir / f"clips-corpus-{'quick' if quick else 'full'}"
    wanted = {**spec, **ENCODING, "size": list(spec["size"])}
    short, long_ = root / "short", root / "long"
    # A small tree mixed with other files, as the seed's.
    shorts = [short / f"day{1 + i * 2 // spec['short']}" / f"cam{i:02d}.mp4" for i in range(spec["short"])]
    long_path = long_ / "long.mp4"
    videos = [(long_path, spec["long_frames"])] + [(p, spec["short_frames"]) for p in shorts]
    if video_corpus(root, wanted, videos, spec["size"], ENCODING, WORKERS):
        (short / "notes.txt").write_text("not a video\n")
    return {
        "short": {"src": short, "videos": sorted(shorts), "frames": spec["short"] * spec["short_frames"]},
        "long": {"src": long_, "videos": [long_path], "frames": spec["long_frames"]},
        "spec": spec,
    }


def make_scene_video(job: tuple[str, int, int]) -> str:
    """A 720p H.264 video with open GOPs and scene cuts (x264 places keyframes there too):
    `frames` frames numbered from 0, whose scenes are those of the long video's frames from
    `first` on."""
    import av
    import numpy as np

    from datamill.testing.videos import draw_frame
    path, frames, first = job
    cuts = [round(f * LONG_720) for f in SCENES]
    perms = [(0, 1, 2), (2, 0, 1), (1, 2, 0)]
    tmp = Path(path).with_name(".tmp-" + Path(path).name)
    w, h = SIZE_720
    with av.open(str(tmp), "w", options={"movflags": "+faststart"}) as out:
        opts = {"g": str(ENCODING_720["gop"]), "bf": str(ENCODING_720["bframes"]),
                "preset": "veryfast", "x264-params": "open-gop=1"}
        stream = out.add_stream("libx264", rate=ENCODING_720["fps"], options=opts)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for n in range(frames):
            scene = sum(first + n >= c for c in cuts)
            img = np.ascontiguousarray(draw_frame(n, w, h)[..., perms[scene % len(perms)]])
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = n
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    os.replace(tmp, path)
    return path


def corpus_720(workdir: Path) -> dict:
    """Issue 14's long 720p video and 4 short ones encoded alike (cached in workdir)."""
    root = workdir / "clips-corpus-720"
    wanted = {"size": list(SIZE_720), **ENCODING_720, "long": LONG_720, "short": list(SHORT_720),
              "scenes": list(SCENES), "open_gop": True}
    long_path = root / "long720" / "long.mp4"
    shorts = [root / "short720" / f"cam{i:02d}.mp4" for i in range(SHORT_720[0])]
    marker = root / "corpus.json"
    videos = [(long_path, LONG_720, 0)] + [(p, SHORT_720[1], i * SHORT_720[1])
                                           for i, p in enumerate(shorts)]
    if not (marker.exists() and json.loads(marker.read_text()) == wanted
            and all(p.exists() for p, _, _ in videos)):
        shutil.rmtree(root, ignore_errors=True)
        for p, _, _ in videos:
            p.parent.mkdir(parents=True, exist_ok=True)
        print(f"generating the 720p corpus in {root} (once) ...", flush=True)
        with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
            list(pool.imap_unordered(make_scene_video, [(str(p), n, f) for p, n, f in videos]))
        marker.write_text(json.dumps(wanted))
    from datamill.media.video import probe_video
    keyframes = len(probe_video(long_path).keyframes)
    return {"long720": {"src": long_path.parent, "videos": [long_path], "frames": LONG_720,
                        "keyframes": keyframes},
            "short720": {"src": shorts[0].parent, "videos": shorts,
                         "frames": SHORT_720[0] * SHORT_720[1]}}


# -- baseline: the seed's script, written plainly --------------------------------------------
def get_video_files(path):
    video_files = []
    for filename in os.listdir(path):
        filepath = os.path.join(path, filename)
        if os.path.isfile(filepath) and (filename.endswith(".mp4") or filename.endswith(".avi")):
            video_files.append(filepath)
        elif os.path.isdir(filepath):
            video_files += get_video_files(filepath)
    return video_files


def video_snipping_multiprocess(input, frame=CLIP_FRAMES, resize=SIZE):
    import cv2
    video_file, output_dir = input
    os.makedirs(output_dir, exist_ok=True)
    cap = cv2.VideoCapture(video_file)
    fps = cap.get(cv2.CAP_PROP_FPS)
    total_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    num_segments = (total_frames + frame - 1) // frame
    for i in range(num_segments):
        frames = []
        for _ in range(frame):
            ret, img = cap.read()
            if not ret:
                break
            if resize:
                img = cv2.resize(img, resize, interpolation=cv2.INTER_AREA)
            frames.append(img)
        if not frames:  # the seed would crash here (frames[0]) when the count is over
            break
        segment_name = os.path.splitext(os.path.basename(video_file))[0] + f"_{i + 1}.mp4"
        height, width, _ = frames[0].shape
        if resize:
            width, height = resize
        writer = cv2.VideoWriter(os.path.join(output_dir, segment_name),
                                 cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        for img in frames:
            writer.write(img)
        writer.release()
    cap.release()


def run_baseline(src: str, dst: str) -> dict:
    import cv2  # noqa: F401  (imported before the pool forks, as the seed's script does)
    files = get_video_files(src)
    ds = [(f, os.path.splitext(f.replace(src, dst, 1))[0]) for f in files]
    with multiprocessing.Pool(processes=WORKERS) as pool:
        for _ in pool.imap_unordered(video_snipping_multiprocess, ds):
            pass
    return {"videos": len(files)}


# -- ceiling: PyAV decode only ---------------------------------------------------------------
def decode_only(path: str) -> int:
    import av
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def run_ceiling(src: str, dst: str) -> dict:
    import av  # noqa: F401
    files = get_video_files(src)
    with multiprocessing.Pool(processes=WORKERS) as pool:
        frames = sum(pool.imap_unordered(decode_only, files))
    return {"videos": len(files), "decoded_frames": frames}


# -- datamill --------------------------------------------------------------------------------
def run_datamill(src: str, dst: str, codec: str | None = None) -> dict:
    import datamill
    import datamill.jobs.clips  # noqa: F401  (imported before timing, like the others' imports)
    kwargs = {"codec": codec} if codec else {}
    size = None if codec == "copy" else SIZE
    start = time.perf_counter()
    report = datamill.clips(src, dst, frames=CLIP_FRAMES, size=size, workers=WORKERS,
                            quiet=True, **kwargs)
    seconds = time.perf_counter() - start
    if report.counts.get("failed"):
        raise RuntimeError(f"datamill.clips: {report.counts} {report.message}")
    return {"counts": report.counts, "seconds_inner": seconds}


METHODS = {
    "baseline": run_baseline,
    "ceiling": run_ceiling,
    "datamill": run_datamill,
    "datamill-copy": lambda src, dst: run_datamill(src, dst, codec="copy"),
    "datamill-ref": run_datamill,  # the same, with another commit's src first on sys.path
}


def ref_source(workdir: Path, ref: str) -> Path:
    """Commit `ref`'s src/ folder, extracted once under workdir (for --compare)."""
    import subprocess
    repo = Path(__file__).resolve().parent.parent
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", ref], check=True,
                            capture_output=True, text=True).stdout.strip()
    root = workdir / f"clips-src-{commit}"
    if not (root / "src" / "datamill").exists():
        root.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root / "src"


def child(method: str, src: str, dst: str) -> None:
    """Runs in a fresh process: run one method once; print JSON (seconds, peak RSS)."""
    import psutil
    if method.startswith("datamill"):
        import datamill.jobs.clips  # noqa: F401  (import errors surface here, untimed)
    me = psutil.Process()
    peaks: dict[int, float] = {}
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.1):
            for p in me.children(recursive=True):
                try:
                    peaks[p.pid] = max(peaks.get(p.pid, 0.0), p.memory_info().rss / 2**20)
                except psutil.Error:
                    pass

    def busy_cpu() -> float:  # CPU seconds the whole machine has spent busy
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)

    def our_cpu() -> float:  # this process and its finished (waited-for) children
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    shutil.rmtree(dst, ignore_errors=True)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    machine0, ours0 = busy_cpu(), our_cpu()
    start = time.perf_counter()
    info = METHODS[method](src, dst)
    seconds = time.perf_counter() - start
    done.set()
    poller.join()
    ours = our_cpu() - ours0
    others = max(0.0, busy_cpu() - machine0 - ours)
    worker_mb = max([*peaks.values(), peak_rss_mb(children=True)])
    print(json.dumps({"seconds": seconds, "cpu_seconds": ours, "others_cores": others / seconds,
                      "worker_mb": worker_mb, "driver_mb": peak_rss_mb(), **info}), flush=True)


def wait_until_quiet(max_wait: float, threshold: float = 15.0) -> float:
    """Wait (at most `max_wait` s) until other work uses < `threshold`% of the machine's CPU
    for a second; return the seconds waited."""
    import psutil
    start = time.monotonic()
    while psutil.cpu_percent(interval=1.0) >= threshold and time.monotonic() - start < max_wait:
        pass
    return time.monotonic() - start


# -- outputs and quality ---------------------------------------------------------------------
def clip_list(method: str, src: Path, dst: Path) -> dict[Path, list[tuple[int, Path]]]:
    """{source video: [(first source frame, clip path), ...] in order} for a method's output."""
    out: dict[Path, list[tuple[int, Path]]] = {}
    if method == "baseline":
        for path in dst.rglob("*.mp4"):
            stem, number = re.fullmatch(r"(.*)_(\d+)\.mp4", path.name).groups()
            video = src / path.parent.relative_to(dst).parent / f"{stem}.mp4"
            out.setdefault(video, []).append(((int(number) - 1) * CLIP_FRAMES, path))
    else:
        import pyarrow.parquet as pq
        for row in pq.read_table(dst / "manifest.parquet").to_pylist():
            if row["status"] != "ok":
                continue
            video = Path(row["source"])
            video = video if video.is_absolute() else src / video
            out.setdefault(video.resolve(), []).append((row["first_frame"], dst / row["path"]))
    return {v.resolve(): sorted(c) for v, c in out.items()}


def output_facts(dst: Path) -> dict:
    import av
    clips = sorted(p for p in dst.rglob("*.mp4") if "_datamill" not in p.parts)
    frames = 0
    for p in clips:
        with av.open(str(p)) as c:
            frames += c.streams.video[0].frames
    size = None
    if clips:
        with av.open(str(clips[0])) as c:
            s = c.streams.video[0]
            size = (s.codec_context.width, s.codec_context.height, s.codec_context.name)
    return {"clips": len(clips), "bytes": sum(p.stat().st_size for p in clips),
            "frames": frames, "size": size}


class SourceFrames:
    """The source's RGB frames by index, decoded forward once (only requested ones converted)."""

    def __init__(self, path: Path):
        import av
        self.container = av.open(str(path))
        stream = self.container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        self.frames = self.container.decode(stream)
        self.index = -1

    def get(self, index: int):
        if index <= self.index:
            raise ValueError(f"frames must be asked in order ({index} after {self.index})")
        for frame in self.frames:
            self.index += 1
            if self.index == index:
                return frame.to_ndarray(format="rgb24")
        raise IndexError(f"source has no frame {index}")

    def close(self) -> None:
        self.container.close()


def psnr(a, b) -> float:
    import numpy as np
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def compare(video: Path, clips: list[tuple[int, Path]], every: int) -> dict:
    """PSNR of a video's clips against its resized source frames, every `every`-th frame.

    Two references: the source resized (INTER_AREA) to the clip's actual size, and, when that
    differs from the requested size, the source resized to the requested size then cropped to
    the actual one (what OpenCV's writer does with 565 wide: it drops the last column).
    """
    import av
    import cv2

    from datamill.testing.videos import read_frame_number
    src = SourceFrames(video)
    scores: dict[str, list[float]] = {"resize": [], "crop": []}
    exact = checked = 0
    try:
        for first, path in clips:
            with av.open(str(path)) as c:
                for j, frame in enumerate(c.decode(video=0)):
                    index = first + j
                    if index % every:
                        continue
                    out = frame.to_ndarray(format="rgb24")
                    ref = src.get(index)
                    h, w = out.shape[:2]
                    if (w, h) != (ref.shape[1], ref.shape[0]):
                        scores["resize"].append(psnr(out, cv2.resize(ref, (w, h), interpolation=cv2.INTER_AREA)))
                        if (w, h) != SIZE and w <= SIZE[0] and h <= SIZE[1]:
                            wide = cv2.resize(ref, SIZE, interpolation=cv2.INTER_AREA)
                            scores["crop"].append(psnr(out, wide[:h, :w]))
                    else:
                        scores["resize"].append(psnr(out, ref))
                    checked += 1
                    exact += read_frame_number(out) == index
    finally:
        src.close()
    return {"scores": scores, "exact": exact, "checked": checked}


def quality(method: str, corpus_part: dict, dst: Path, every: int) -> dict:
    import numpy as np
    lists = clip_list(method, corpus_part["src"], dst)
    scores: dict[str, list[float]] = {"resize": [], "crop": []}
    exact = checked = 0
    for video in corpus_part["videos"][:PSNR_VIDEOS]:
        r = compare(video, lists.get(video.resolve(), []), every)
        for k in scores:
            scores[k] += r["scores"][k]
        exact += r["exact"]
        checked += r["checked"]
    means = {k: (float(np.mean(v)) if v else None) for k, v in scores.items()}
    return {"psnr": means, "exact": exact, "checked": checked}


def fmt_psnr(q: dict | None) -> tuple[str, float | None]:
    """The PSNR cell (the better of the two references) and its value."""
    if not q:
        return "", None
    values = {k: v for k, v in q["psnr"].items() if v is not None}
    if not values:
        return "", None
    kind, best = max(values.items(), key=lambda kv: kv[1])
    if best == float("inf"):
        return "identical", best
    return f"{best:.2f} dB" + (" (565 cropped)" if kind == "crop" else ""), best


# -- the benchmark ---------------------------------------------------------------------------
ROWS = [  # corpus part, method, label
    ("short", "baseline", "baseline: seed script (OpenCV, mp4v), Pool(2)"),
    ("short", "ceiling", "ceiling: PyAV decode only, Pool(2)"),
    ("short", "datamill", "datamill clips, 2 workers"),
    ("long", "baseline", "baseline (one file: one process)"),
    ("long", "ceiling", "ceiling (one file: one process)"),
    ("long", "datamill", "datamill clips, 2 workers"),
    ("long", "datamill-copy", "datamill clips --codec copy"),
    ("short720", "baseline", "baseline: seed script (OpenCV, mp4v), Pool(2)"),
    ("short720", "datamill", "datamill clips, 2 workers"),
    ("long720", "baseline", "baseline (one file: one process)"),
    ("long720", "datamill", "datamill clips, 2 workers"),
]
PARTS = ("short", "long", "short720", "long720")


def mb(x: float) -> str:
    return f"{x / 2**20:,.1f} MB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small corpus: a smoke run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    ap.add_argument("--workdir", default=str(Path(__file__).parent / "_data"),
                    help="where the corpus (cached) and the outputs go")
    ap.add_argument("--only", default=",".join(PARTS),
                    help=f"comma-separated corpus parts to run (of {', '.join(PARTS)})")
    ap.add_argument("--compare", metavar="REF",
                    help="also run datamill as of git commit REF (its src/ first on sys.path), "
                    "interleaved with the others: a row 'datamill @REF' per part")
    ap.add_argument("--child", nargs=3, metavar=("METHOD", "SRC", "DST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    if set(only) - set(PARTS):
        ap.error(f"--only: unknown parts {sorted(set(only) - set(PARTS))}; choose from {PARTS}")
    rows_run = [r for r in ROWS if r[0] in only]
    ref_src = None
    if args.compare:
        ref_src = ref_source(workdir, args.compare)
        rows_run = [x for r in rows_run for x in ([r] if r[1] != "datamill" else
                    [r, (r[0], "datamill-ref", f"datamill clips @{args.compare}, 2 workers")])]
    data = corpus(workdir, args.quick)
    if {"short720", "long720"} & set(only):
        data.update(corpus_720(workdir))
    spec = data["spec"]
    w, h = spec["size"]
    out_root = workdir / f"clips-out-{'quick' if args.quick else 'full'}"
    me = os.path.abspath(__file__)
    print(f"bench/clips.py: {machine()}, {WORKERS} workers, median of {args.repeat} runs"
          + (" (quick)" if args.quick else ""), flush=True)
    print(f"corpus: short = {spec['short']} videos x {spec['short_frames']} frames; long = 1 video x "
          f"{spec['long_frames']} frames; all {w}x{h} H.264 (x264 veryfast, {ENCODING['bframes']} "
          f"B-frames, GOP {ENCODING['gop']}), {ENCODING['fps']} fps; clips of {CLIP_FRAMES} frames "
          f"at {SIZE[0]}x{SIZE[1]}", flush=True)
    if "long720" in data:
        print(f"720p: long720 = 1 x {LONG_720} frames, short720 = {SHORT_720[0]} x {SHORT_720[1]}; "
              f"{SIZE_720[0]}x{SIZE_720[1]} H.264 (x264 veryfast, {ENCODING_720['bframes']} B-frames, "
              f"GOP {ENCODING_720['gop']}, open GOP, scene cuts: the long one has "
              f"{data['long720']['keyframes']} keyframes)", flush=True)

    runs: dict[tuple[str, str], list[dict]] = {}
    errors: dict[tuple[str, str], str] = {}
    wait_budget = total_wait = QUIET_WAIT[0] * (0.1 if args.quick else 1)
    for r in range(args.repeat):
        for part, method, _ in rows_run:
            if (part, method) in errors:
                continue
            dst = out_root / part / method
            wait_budget -= wait_until_quiet(min(QUIET_WAIT[1], max(0.0, wait_budget)))
            try:
                env_path = os.environ.get("PYTHONPATH")
                if method == "datamill-ref":  # the child imports datamill from the other commit
                    os.environ["PYTHONPATH"] = str(ref_src)
                try:
                    res = run_child([me, "--child", method, str(data[part]["src"]), str(dst)],
                                    timeout=1800)
                finally:
                    if env_path is None:
                        os.environ.pop("PYTHONPATH", None)
                    else:
                        os.environ["PYTHONPATH"] = env_path
            except Exception as exc:  # a method that does not run is reported, not fatal
                errors[(part, method)] = str(exc).strip().splitlines()[-1][:200]
                print(f"  {part}/{method}: FAILED: {errors[(part, method)]}", flush=True)
                continue
            runs.setdefault((part, method), []).append(res)
            print(f"  run {r + 1}/{args.repeat} {part:5} {method:13} {res['seconds']:7.2f} s "
                  f"{data[part]['frames'] / res['seconds']:7.1f} frames/s  "
                  f"{1000 * res['cpu_seconds'] / data[part]['frames']:5.2f} CPU ms/frame  "
                  f"{res['cpu_seconds'] / res['seconds']:4.2f} cores  worker "
                  f"{res['worker_mb']:.0f} MB  other work {res['others_cores']:.2f} cores", flush=True)

    print("measuring outputs and quality (last run's clips) ...", flush=True)
    result: dict[tuple[str, str], dict] = {}
    for part, method, _ in rows_run:
        if (part, method) not in runs:
            continue
        rs = runs[(part, method)]
        seconds = median([x["seconds"] for x in rs])
        res = {"seconds": seconds, "rate": data[part]["frames"] / seconds,
               "cpu_ms": 1000 * median([x["cpu_seconds"] for x in rs]) / data[part]["frames"],
               "cores": median([x["cpu_seconds"] / x["seconds"] for x in rs]),
               "worker_mb": max(x["worker_mb"] for x in rs), "driver_mb": max(x["driver_mb"] for x in rs),
               "last": rs[-1]}
        if method != "ceiling":
            dst = out_root / part / method
            res["out"] = output_facts(dst)
            res["quality"] = quality(method, data[part], dst, PSNR_EVERY[part])
        result[(part, method)] = res

    rows = []
    notes = []
    for part, method, label in rows_run:
        frames = data[part]["frames"]
        corpus_cell = {"short": f"{spec['short']} x {spec['short_frames']} @{h}p",
                       "long": f"1 x {spec['long_frames']} @{h}p",
                       "short720": f"{SHORT_720[0]} x {SHORT_720[1]} @720p",
                       "long720": f"1 x {LONG_720} @720p"}[part]
        if (part, method) in errors:
            rows.append([corpus_cell, label, "", "", "FAILED", "", "", "", "", "", "", "", ""])
            notes.append(f"{part}/{method} failed: {errors[(part, method)]}")
            continue
        res = result[(part, method)]
        base = result.get((part, "baseline"))
        ceil = result.get((part, "ceiling"))
        out = res.get("out")
        q = res.get("quality")
        psnr_cell, _ = fmt_psnr(q)
        size_cell = f"{out['size'][0]}x{out['size'][1]} {out['size'][2]}" if out and out["size"] else ""
        rows.append([
            corpus_cell, label,
            f"{out['clips']}" if out else "",
            size_cell,
            f"{frames / res['seconds']:,.0f}",
            f"{res['cpu_ms']:.2f}",
            f"{res['cores']:.2f}",
            ratio(res["rate"] / base["rate"]) if base else "",
            ratio(res["rate"] / ceil["rate"]) if ceil else "",
            mb(out["bytes"]) if out else "",
            psnr_cell,
            f"{q['exact']}/{q['checked']}" if q else "",
            f"{res['worker_mb']:.0f} / {res['driver_mb']:.0f} MB",
        ])
        if out and out["frames"] != frames:
            notes.append(f"{part}/{method}: the clips hold {out['frames']} frames, the source {frames}")
        if method == "baseline" and out and out["size"] and out["size"][:2] != SIZE and part == rows_run[0][0]:
            how = ("drops the rightmost pixel column(s)" if q and q["psnr"]["crop"] is not None
                   and q["psnr"]["crop"] > q["psnr"]["resize"] else "rescales")
            notes.append(f"OpenCV's VideoWriter, asked for {SIZE[0]}x{SIZE[1]}, writes "
                         f"{out['size'][0]}x{out['size'][1]} without a word: it {how} (PSNR below)")
        if q and q["psnr"]["crop"] is not None:
            notes.append(f"{part}/{method}: PSNR against the source resized to the clips' size "
                         f"{q['psnr']['resize']:.2f} dB, against it resized to {SIZE[0]}x{SIZE[1]} and "
                         f"cropped to the clips' size {q['psnr']['crop']:.2f} dB")
    print()
    print(table(["corpus", "method", "clips", "output", "source frames/s", "CPU ms/frame", "cores busy",
                 "vs baseline",
                 "vs ceiling", "output bytes", "PSNR", "frames exact", "peak RSS worker / driver"],
                rows), flush=True)
    others = [x["others_cores"] for rs in runs.values() for x in rs]
    if others:
        notes.append(f"other processes on the machine used {median(others):.2f} cores during a run "
                     f"(median; max {max(others):.2f}) of its {os.cpu_count()}; runs first wait for a "
                     f"quiet machine (up to {QUIET_WAIT[1]:.0f} s each, {total_wait:.0f} s in all); "
                     "'CPU ms/frame' (all processes of a method, user + system) is the figure other "
                     "work disturbs least")
    if notes:
        print()
        for n in notes:
            print(f"- {n}")

    # Targets
    def check(ok):
        return "" if ok is None else ("met" if ok else "NOT met")

    def speed(part, a, b):
        """(wall-clock ratio a/b, CPU-time ratio b/a per source frame), None when missing."""
        ra, rb = result.get((part, a)), result.get((part, b))
        if not (ra and rb):
            return None, None
        return ra["rate"] / rb["rate"], rb["cpu_ms"] / ra["cpu_ms"]

    def speed_row(name, part, a, b, goal, pct=False):
        wall, cpu = speed(part, a, b)
        show = (lambda x: f"{100 * x:.0f}%") if pct else ratio
        return [name, show(wall) if wall else "", show(cpu) if cpu else "",
                check(wall >= goal if wall else None)]

    targets = []
    if "short" in only:
        targets.append(speed_row("short: datamill >= 2.2x baseline", "short", "datamill", "baseline", 2.2))
    dq = fmt_psnr(result.get(("short", "datamill"), {}).get("quality"))[1]
    bq = fmt_psnr(result.get(("short", "baseline"), {}).get("quality"))[1]
    if "short" in only:
        targets.append(["short: datamill PSNR >= baseline PSNR",
                        f"{dq:.2f} vs {bq:.2f} dB" if dq is not None and bq is not None else "", "",
                        check(dq >= bq if dq is not None and bq is not None else None)])
        targets.append(speed_row("short: datamill >= 70% of the decode-only ceiling", "short",
                                 "datamill", "ceiling", 0.7, pct=True))
    for long_, short_ in (("long", "short"), ("long720", "short720")):
        if long_ not in only:
            continue
        targets.append(speed_row(f"{long_}: datamill (2 workers) >= 3x baseline", long_, "datamill",
                                 "baseline", 3))
        dm = result.get((long_, "datamill"))
        if dm:
            targets.append([f"{long_}: datamill >= 1.8 cores busy (CPU s / wall s)",
                            f"{dm['cores']:.2f}", "", check(dm["cores"] >= 1.8)])
        sm = result.get((short_, "datamill"))
        if dm and sm:  # paired: each long run against the short run of the same round
            pairs = [(lr["cpu_seconds"] / data[long_]["frames"]) / (sr["cpu_seconds"] / data[short_]["frames"])
                     for lr, sr in zip(runs[(long_, "datamill")], runs[(short_, "datamill")])]
            paired = median(pairs)
            targets.append([f"{long_}: CPU per frame <= 1.10x {short_}'s (median of paired runs)",
                            f"{paired:.2f}x ({', '.join(f'{x:.2f}' for x in pairs)})",
                            f"{dm['cpu_ms']:.2f} vs {sm['cpu_ms']:.2f} ms", check(paired <= 1.1)])
    if "long" in only:
        targets.append(speed_row("long: --codec copy >= 20x re-encoding (datamill default codec)", "long",
                                 "datamill-copy", "datamill", 20))
    rss = [r["worker_mb"] for (p, m), r in result.items() if m.startswith("datamill")]
    targets.append(["datamill peak RSS per worker < 400 MB", f"{max(rss):.0f} MB" if rss else "", "",
                    check(max(rss) < 400 if rss else None)])
    print()
    print(table(["target", "measured (wall clock)", "same by CPU time", "(wall clock)"], targets),
          flush=True)
    if args.quick:
        print("\n(quick: a small corpus where fixed start-up costs weigh; the targets are for the "
              "full run)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
