"""Executor `ray` against `local` on the same clips job (2 workers), and Ray's fixed start-up cost.

    .venv/bin/python bench/ray.py [--quick] [--repeat N] [--copies 3] [--workdir bench/_data]

The job: generated 1080p H.264 videos (x264, B-frames, GOP 250; twelve short ones and one long
one), each reached `--copies` times through hard links in folders copy0/, copy1/, ... (default
3: 32,400 source frames, about 2 minutes of work on 2 quiet cores), cut into 64-frame clips at
565x320, codec h264.
Each run is a fresh Python process; local and Ray runs alternate; every figure is the median
of N runs (default 3).

- local: datamill.clips(..., workers=2); its wall clock from the call to its return.
- ray: a fresh local Ray instance of 2 CPUs: `ray.init` (timed), one trivial task (timed: the
  first-task latency, which includes starting a worker process), then datamill.clips(...,
  executor="ray") on that instance (timed).  The Ray wall clock is the sum: what a user of
  `--executor ray` waits for on one machine.
- ratio: local wall / Ray wall (target: >= 0.7, i.e. Ray no slower than 1/0.7 of local).

Both must write the same clips (same count; checked every run).  "machine CPU" is the CPU
time every process on the machine used during the run (Ray's workers are not children of
the run, so only the whole machine counts them; other work on the machine shows up there).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from _common import (machine, machine_busy_cpu, median, ratio, run_child, table, video_corpus,
                     wait_until_quiet)

# This file is named ray.py: once _common is imported, its folder must not hide the ray package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

WORKERS = 2
SIZE = (565, 320)
ENCODING = {"fps": 30, "codec": "libx264", "gop": 250, "bframes": 3}
CORPORA = {
    False: {"size": (1920, 1080), "short": 12, "short_frames": 600, "long_frames": 3600},
    True: {"size": (640, 360), "short": 2, "short_frames": 128, "long_frames": 256},
}
QUIET_WAIT = 20.0  # seconds at most before a run, waiting for other work to stop


# -- corpus ----------------------------------------------------------------------------------
def corpus(workdir: Path, quick: bool) -> tuple[Path, int]:
    """Generate the videos once (cached in workdir); return (folder, source frames)."""
    spec = CORPORA[quick]
    root = workdir / f"ray-corpus-{'quick' if quick else 'full'}"
    wanted = {**spec, **ENCODING, "size": list(spec["size"])}
    videos = [root / "short" / f"cam{i:02d}.mp4" for i in range(spec["short"])]
    long_path = root / "long" / "long.mp4"
    frames = spec["short"] * spec["short_frames"] + spec["long_frames"]
    video_corpus(root, wanted, [(long_path, spec["long_frames"])] + [(p, spec["short_frames"]) for p in videos],
                 spec["size"], ENCODING, WORKERS)
    return root, frames


# -- one run, in a fresh process --------------------------------------------------------------
def child(method: str, src: str, dst: str) -> dict:
    import logging

    import datamill
    shutil.rmtree(dst, ignore_errors=True)
    out: dict = {}
    busy0 = machine_busy_cpu()
    kw = dict(size=SIZE, workers=WORKERS, quiet=True)
    if method == "ray":
        import ray
        start = time.perf_counter()
        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        out["init"] = time.perf_counter() - start
        start = time.perf_counter()
        ray.get(ray.remote(lambda: 1).remote())
        out["first_task"] = time.perf_counter() - start
        start = time.perf_counter()
        report = datamill.clips(src, dst, executor="ray", **kw)
        out["job"] = time.perf_counter() - start
        out["wall"] = out["init"] + out["first_task"] + out["job"]
        ray.shutdown()
    else:
        start = time.perf_counter()
        report = datamill.clips(src, dst, **kw)
        out["wall"] = out["job"] = time.perf_counter() - start
    out["machine_cpu"] = machine_busy_cpu() - busy0
    out["clips"] = sum(1 for _ in Path(dst).rglob("*.mp4"))
    out["failed"] = report.counts["failed"]
    return out


def replicate(src: Path, copies: int) -> Path:
    """A folder reaching every video of `src` `copies` times (hard links: no generation; the
    job would skip symlinks to a file it already met)."""
    if copies <= 1:
        return src
    root = src.with_name(f"{src.name}-x{copies}")
    for k in range(copies):
        for video in sorted(src.rglob("*.mp4")):
            link = root / f"copy{k}" / video.relative_to(src)
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                os.link(video, link)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small corpus: a smoke run")
    ap.add_argument("--repeat", type=int, default=None, help="runs per executor (default 3; 1 with --quick)")
    ap.add_argument("--copies", type=int, default=None, help="times each video is reached (default 3; 1 with --quick)")
    ap.add_argument("--workdir", type=Path, default=Path(__file__).parent / "_data")
    ap.add_argument("--child", nargs=3, metavar=("METHOD", "SRC", "DST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    repeat = args.repeat or (1 if args.quick else 3)
    src, frames = corpus(args.workdir, args.quick)
    copies = args.copies or (1 if args.quick else 3)
    src, frames = replicate(src, copies), frames * copies
    out_root = args.workdir / f"ray-out-{'quick' if args.quick else 'full'}"
    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    for i in range(repeat):
        for method in ("local", "ray"):
            wait_until_quiet(QUIET_WAIT)
            r = run_child([__file__, "--child", method, str(src), str(out_root / method)])
            runs[method].append(r)
            extra = (f" (init {r['init']:.1f} s, first task {r['first_task']:.2f} s, job "
                     f"{r['job']:.1f} s)" if method == "ray" else "")
            print(f"round {i + 1} {method}: {r['wall']:.1f} s{extra}, {r['clips']} clips, machine "
                  f"CPU {r['machine_cpu']:.0f} s", flush=True)
    local, on_ray = runs["local"], runs["ray"]
    if {r["clips"] for r in local + on_ray} != {local[0]["clips"]} or any(
            r["failed"] for r in local + on_ray):
        sys.exit(f"the runs did not write the same clips: {runs}")
    med = lambda rs, k: median([r[k] for r in rs])  # noqa: E731
    rows = [
        ["local", f"{med(local, 'wall'):.1f}", "", "", f"{med(local, 'job'):.1f}",
         f"{frames / med(local, 'wall'):.0f}", f"{med(local, 'machine_cpu'):.0f}", ""],
        ["ray", f"{med(on_ray, 'wall'):.1f}", f"{med(on_ray, 'init'):.1f}",
         f"{med(on_ray, 'first_task'):.2f}", f"{med(on_ray, 'job'):.1f}",
         f"{frames / med(on_ray, 'wall'):.0f}", f"{med(on_ray, 'machine_cpu'):.0f}",
         ratio(median([a["wall"] / b["wall"] for a, b in zip(local, on_ray)]))],
    ]
    print(f"\n{machine()}; {frames} source frames, {local[0]['clips']} clips of 64 frames at "
          f"{SIZE[0]}x{SIZE[1]}, {WORKERS} workers; median of {repeat}\n")
    print(table(["executor", "wall (s)", "ray.init (s)", "first task (s)", "job (s)",
                 "frames/s", "machine CPU (s)", "local/ray (>= 0.7)"], rows))


if __name__ == "__main__":
    main()
