"""Regression check: the same jobs on two commits of datamill, interleaved, median of N.

    .venv/bin/python bench/commits.py OLD_COMMIT [NEW_COMMIT|worktree] [--rounds 5] [--only job,download,clips,dedup]

Each commit's source is checked out in a temporary git worktree and imported through
PYTHONPATH (the dependencies are this environment's).  Each round runs every scenario once per
commit, alternating which goes first; a scenario is a fresh process that prepares its data
(outside the timing), times one job and prints the seconds.  A regression is a drop of more
than 5% that is also larger than the spread of the runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from _common import machine, median, table

ROOT = Path(__file__).resolve().parent.parent

SCENARIOS = {
    # the engine alone: 200,000 no-op items through run_job (ledger, manifest), then a resume
    "job": """
        import pyarrow as pa
        from datamill.engine.job import Item, Job
        from datamill.engine.run import RunOptions, run_job
        from datamill.engine.task import TaskRunner
        def record(i):
            return [{"v": i}]
        class NoopJob(Job):
            name = "bench-noop"
            manifest_fields = [pa.field("v", pa.int64())]
            batch_size = None
            def fingerprint(self): return {}
            def items(self): return (Item(f"{i:09d}", i) for i in range(200_000))
            def runner(self): return TaskRunner(record)
        src = DATA / "src"; src.mkdir(exist_ok=True)
        t = time.perf_counter()
        assert run_job(NoopJob(src, OUT), RunOptions(workers=2, quiet=True)).ok
        first = time.perf_counter() - t
        t = time.perf_counter()
        assert run_job(NoopJob(src, OUT), RunOptions(workers=2, quiet=True)).ok
        result = {"job first run": first, "job resume": time.perf_counter() - t}
    """,
    # 1,000 URLs from a local server (20-60 ms each), resized to 64, webdataset shards of 100
    "download": """
        try:
            from datamill.testing.server import ImageServer
        except ImportError:  # a commit from before datamill/testing/
            from datamill.io.imageserver import ImageServer
        from datamill.media.image import ImageOptions
        from datamill.io.http import FetchOptions
        os.environ["no_proxy"] = "127.0.0.1,localhost"
        with ImageServer() as server:
            urls = DATA / "urls.txt"
            urls.write_text("\\n".join(server.url(f"img/{i}.jpg?w=320&h=240&delay=0.02")
                                       for i in range(1000)))
            t = time.perf_counter()
            r = datamill.download(urls, OUT, format="webdataset", shard_size=100, workers=2,
                                  image=ImageOptions(resize=64), fetch=FetchOptions(timeout=10),
                                  quiet=True)
            assert r.counts["ok"] == 1000, r.counts
            result = {"download 1,000 urls": time.perf_counter() - t}
    """,
    # 4 videos of 300 frames at 640x360 into 32-frame clips at 160x90
    "clips": """
        try:
            from datamill.testing.videos import make_video
        except ImportError:  # a commit from before datamill/testing/
            from datamill.media.synthetic import make_video
        src = DATA / "videos"
        if not src.exists():
            for i in range(4):
                make_video(src / f"v{i}.mp4", frames=300, size=(640, 360), gop=30)
        t = time.perf_counter()
        r = datamill.clips(src, OUT, frames=32, size=(160, 90), workers=2, quiet=True)
        assert r.ok, r.counts
        result = {"clips 4 x 300 frames": time.perf_counter() - t}
    """,
    # 600 JPEGs (200 scenes, 3 copies each, one resized), hashed, grouped, reported
    "dedup": """
        import numpy as np
        from PIL import Image
        src = DATA / "images"
        if not src.exists():
            src.mkdir()
            rng = np.random.default_rng(0)
            for i in range(200):
                img = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((320, 240))
                img.save(src / f"{i}.jpg", quality=90)
                img.save(src / f"{i}_copy.jpg", quality=90)
                img.resize((160, 120)).save(src / f"{i}_small.jpg", quality=80)
        t = time.perf_counter()
        r = datamill.dedup(src, OUT, workers=2, quiet=True)
        assert r.ok, r.counts
        result = {"dedup 600 images": time.perf_counter() - t}
    """,
}

PRELUDE = """
import json, os, sys, time
from pathlib import Path
import datamill
DATA = Path(sys.argv[1]); OUT = Path(sys.argv[2])
"""


def checkout(commit: str, where: Path) -> Path:
    if commit == "worktree":
        return ROOT / "src"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), commit],
                   check=True, capture_output=True)
    return where / "src"


def run_scenario(name: str, src: Path, data: Path) -> dict[str, float]:
    code = PRELUDE + textwrap.dedent(SCENARIOS[name]) + "\nprint(json.dumps(result))\n"
    with tempfile.TemporaryDirectory(prefix="datamill-commits-out-") as out:
        env = {**os.environ, "PYTHONPATH": str(src)}
        done = subprocess.run([sys.executable, "-c", code, str(data), str(Path(out) / "dst")],
                              capture_output=True, text=True, env=env, timeout=900)
    if done.returncode:
        raise SystemExit(f"{name} failed on {src}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new", nargs="?", default="worktree")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    args = ap.parse_args()
    names = args.only.split(",")
    with tempfile.TemporaryDirectory(prefix="datamill-commits-") as tmp:
        tmp = Path(tmp)
        srcs = {"old": checkout(args.old, tmp / "old"), "new": checkout(args.new, tmp / "new")}
        times: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
        try:
            for rnd in range(args.rounds):
                for name in names:
                    data = tmp / f"data-{name}"
                    data.mkdir(exist_ok=True)
                    order = ["old", "new"] if rnd % 2 == 0 else ["new", "old"]
                    for which in order:
                        for metric, sec in run_scenario(name, srcs[which], data).items():
                            times[which].setdefault(metric, []).append(sec)
                print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            for which in ("old", "new"):
                if (tmp / which).exists():
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                    str(tmp / which)], capture_output=True)
    rows = []
    for metric in times["old"]:
        o, n = times["old"][metric], times["new"][metric]
        spread = max(max(o) - min(o), max(n) - min(n))
        change = median(n) / median(o) - 1
        verdict = "regression" if change > 0.05 and median(n) - median(o) > spread else "no regression"
        rows.append([metric, f"{median(o):.2f} s", f"{median(n):.2f} s", f"{change:+.1%}",
                     f"{spread:.2f} s", verdict])
    print(f"{machine()}; {args.rounds} rounds, interleaved; old {args.old}, new {args.new}")
    print(table(["scenario", "old (median)", "new (median)", "change", "spread", "verdict"], rows))


if __name__ == "__main__":
    main()
