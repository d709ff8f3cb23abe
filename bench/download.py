"""Job `download`: datamill against img2dataset on URL lists served by a local image server.

    .venv/bin/python bench/download.py [--quick] [--repeat N] [--urls 5000] [--hang-cap 120]
                                       [--mem-lines 1000000] [--only throughput,hang,memory]

The image server (datamill.testing.server) runs in its own process on 127.0.0.1 and is warmed
(every picture of every size encoded) before anything is timed.  Each tool runs as its command
line in a fresh process: the wall clock is the whole command's, Python start-up included, with
its byte code cached as an installed package has it (datamill's in bench/_data/pycache, filled
by an untimed warm-up run; img2dataset's by pip).
Figures are medians of N runs (default 3; --quick: 1 run, fewer URLs), the tools alternating
within each round; the ratio is the median of the rounds' ratios.  The machine may be shared:
each run first waits (a little) for other work to stop, the cores other processes took during
the runs are reported, and so is each tool's CPU time (user + system of all its processes,
from getrusage of waited-for children), which other work disturbs least.

1. Throughput: `--urls` URLs (default 5,000) of JPEGs from 300x200 to 1600x1200 (12-454 KB,
   median 148 KB; quality lowered for the big ones; see `SIZES`), each served after 20-200 ms (chosen from the row
   number), and 3% failing kinds (404, an HTML page, a truncated JPEG).  Resize 256
   keep_ratio, downscale only, JPEG quality 95, webdataset shards of URLs/10 (500: ten
   shards keep both processes busy to the end), retries 0, timeout 10 s, 2 processes each:
   - datamill: `datamill download --workers 2 --concurrency 64 --per-host 64` (one host;
     tuned, see `DM_CONCURRENCY`);
   - img2dataset (`pip install img2dataset` in its own virtual environment
     bench/_venvs/img2dataset, created on first use) with its best settings for 2 cores:
     processes_count 2, thread_count `I2D_THREADS` (tuned with --tune), resize_only_if_bigger
     and skip_reencode (datamill's defaults: downscale only, an image left unchanged is kept
     as it is), extract_exif False (datamill does not extract EXIF), compute_hash sha256
     (datamill hashes every image too), incremental_mode incremental into a fresh folder
     (img2dataset 1.47's `overwrite` deletes its own _tmp folder and fails).
   Output quality of the last run of each: the mean PSNR of every 10th output JPEG against the
   source picture decoded in full and resized in float by area (img2dataset's own filter) and
   by a Gaussian low-pass then Lanczos (a neutral reference).
2. No hang: `HANG_URLS` URLs of the same mix with every 100th replaced by `/drip/<n>.jpg`
   (a JPEG header, then 16 bytes every 0.5 s for ever; the list's last URL is one), timeout
   5 s, shards of URLs/10, against the same list without the drips.  The tail: from the last
   normal image the server sent (it keeps the time) to the end of the command; and the whole
   run's time against the run without drips.  img2dataset's urllib timeout limits each
   socket read, not the download: its run is killed after `--hang-cap` seconds, and the time
   its processes last used CPU (over 5% of a core) is reported.
3. Memory: a `--mem-lines` URL file whose first 20,000 lines are the throughput mix and the
   rest `ftp://x/<n>.jpg` (bad_url, no request; generated once in bench/_data): the job reads
   the whole file and records every line's outcome.  Run through the Python API (shards of
   10,000) with the systemic-failure stop off (failure_ratio=1.01: 98% of the lines fail on
   purpose).  Peak RSS: the parent polls (psutil, every 0.1 s) the RSS of every process of the
   job's tree and keeps the largest sum (pages shared after fork count once per process, so
   the sum is an upper bound); each process's own high-water mark is shown too (driver VmHWM,
   the largest worker's ru_maxrss).  The phases (fetching, recording the bad lines, writing
   the reports) come from the ledger's timestamps; below 10,000,000 lines they are
   extrapolated linearly to 10,000,000.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import (machine, machine_busy_cpu, median, peak_rss_mb, rate, ratio, table,
                     wait_until_quiet)

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"
VENV = HERE / "_venvs" / "img2dataset"
DATAMILL = str(Path(sys.executable).with_name("datamill"))

WORKERS = 2
TIMEOUT = 10            # s, throughput runs (no URL comes near it)
HANG_TIMEOUT = 5        # s, the no-hang runs
HANG_URLS = (20000, 500)  # full (a clean run of over 60 s here), quick
ONE_HOST_URLS = (2000, 500)  # full, quick
ONE_HOST_LATENCY = (20, 100)  # ms
# datamill --concurrency (and --per-host: one host) per worker.  5,000 URLs, two sweeps:
# 256/64/32/16 took 21.4/17.9/24.9/29.3 s and 33.1/21.9/33.1/41.3 s wall clock, 34.2/31.6/
# 33.9/34.3 s and 34.9/32.0/38.9/36.3 s CPU; 64 x 2 workers = 128 requests in flight, as
# img2dataset's 64 threads x 2 processes.
DM_CONCURRENCY = 64
# img2dataset --thread_count per process.  `--tune 32,64,128,256` (5,000 URLs, one run each,
# other work taking 1.2-1.6 of the 2 cores) gave 84, 104, 140, 172 s wall clock (following the
# other work, which grew during the tune) and 63.6, 61.5, 66.1, 63.7 s of CPU: 32-64 threads
# already cover 20-200 ms of latency at this rate; more threads only add GIL contention.
I2D_THREADS = 64
POOL = 64               # distinct pictures per size on the server
MEM_REAL = 20_000       # lines of the memory file that are fetched

# (width, height, JPEG quality): the 64 pictures of each size are 12-454 KB (5% below 32 KB,
# 5% above 406 KB), median 148 KB, mean 174 KB
SIZES = [(300, 200, 90), (400, 300, 90), (640, 480, 90), (480, 640, 90), (800, 600, 85),
         (1024, 768, 75), (768, 1024, 75), (1280, 960, 60), (1600, 1200, 40), (1200, 1600, 40)]
FAILING = {13: "/status/404", 47: "/html", 81: "/truncated.jpg"}  # row % 100 -> path

ENV = {**os.environ, "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
       "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "WANDB_SILENT": "true",
       "PYTHONWARNINGS": "ignore"}
for _k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
    ENV.pop(_k, None)
# datamill runs as an installed package does, with its byte code cached (img2dataset's venv has
# pip's): in a folder of its own, so that a PYTHONDONTWRITEBYTECODE environment does not make
# every datamill process compile datamill (~0.15 s of each run here); `warm_up` fills it.
DM_ENV = {**{k: v for k, v in ENV.items() if k != "PYTHONDONTWRITEBYTECODE"},
          "PYTHONPYCACHEPREFIX": str(DATA / "pycache")}


# -- the server --------------------------------------------------------------------------------
def serve() -> None:
    """Runs in its own process: warm every size of the mix, print the base URL, serve.

    ``GET /_bench/last-image`` answers when (time.time()) the last /latency/ image was sent,
    which is how the no-hang test knows when the last normal URL was done.
    """
    from aiohttp import web

    from datamill.testing.server import DEFAULT_SIZE, ImageServer

    class BenchServer(ImageServer):
        last_image = 0.0

        async def _latency(self, request: web.Request) -> web.Response:
            response = await super()._latency(request)
            self.last_image = time.time()
            return response

        async def _last_image(self, request: web.Request) -> web.Response:
            return web.json_response({"t": self.last_image})

        def _app(self) -> web.Application:
            app = super()._app()
            app.router.add_get("/_bench/last-image", self._last_image)
            return app

    server = BenchServer(pool=POOL)
    jobs = [(n, w, h, q) for w, h, q in SIZES + [(*DEFAULT_SIZE, 90)] for n in range(POOL)]
    with ThreadPoolExecutor(2) as ex:  # Pillow encodes without the GIL
        list(ex.map(lambda j: server.jpeg(*j), jobs))
    with server:
        print(server.base_url, flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})


class Server:
    def __enter__(self) -> "Server":
        import psutil
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], env=ENV,
                                     stdout=subprocess.PIPE, text=True)
        self.base = self.proc.stdout.readline().strip()
        if not self.base.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"image server did not start: {self.base!r}")
        self.ps = psutil.Process(self.proc.pid)
        return self

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def last_image(self) -> float:
        """When the server last sent an image of /latency/ (time.time())."""
        import urllib.request
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only
        with opener.open(self.base + "/_bench/last-image", timeout=10) as r:
            return json.load(r)["t"]

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- URL lists ---------------------------------------------------------------------------------
def mix_url(base: str, i: int, latency: tuple[int, int] = (20, 200)) -> str:
    """Row i of the throughput mix: 3% failing kinds, else a JPEG after 20-200 ms (`latency`)."""
    if i % 100 in FAILING:
        return base + FAILING[i % 100]
    w, h, q = SIZES[(i * 7 + i // 10) % len(SIZES)]
    ms = latency[0] + (i * 37) % (latency[1] - latency[0] + 1)
    return f"{base}/latency/{ms}/{i}.jpg?w={w}&h={h}&q={q}"


def write_lines(path: Path, lines) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp-" + path.name)
    with open(tmp, "w") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)
    return path


def mix_list(base: str, n: int, path: Path, latency: tuple[int, int] = (20, 200)) -> Path:
    return write_lines(path, (mix_url(base, i, latency) for i in range(n)))


def drip_lists(base: str, n: int, root: Path) -> tuple[Path, Path, int]:
    """(with drips, without, drips): every 100th row (the last one too) never ends."""
    rows = [(i % 100 == 99, f"{base}/drip/{i}.jpg" if i % 100 == 99 else mix_url(base, i))
            for i in range(n)]
    drips = sum(d for d, _ in rows)
    return (write_lines(root / "drips.txt", (u for _, u in rows)),
            write_lines(root / "nodrips.txt", (u for d, u in rows if not d)), drips)


def memory_list(base: str, lines: int, root: Path) -> Path:
    """The first MEM_REAL lines name this server (its port changes); the rest, ftp:// URLs,
    are generated once into bench/_data and appended."""
    tail = DATA / f"download-ftp-{MEM_REAL}-{lines}.txt"
    if not tail.exists():
        write_lines(tail, (f"ftp://x/{i}.jpg" for i in range(MEM_REAL, lines)))
    path = mix_list(base, min(MEM_REAL, lines), root / f"memory-{lines}.txt")
    with open(path, "ab") as out, open(tail, "rb") as f:
        shutil.copyfileobj(f, out, 2**20)
    return path


# -- the tools -----------------------------------------------------------------------------------
def datamill_argv(urls: Path, dst: Path, timeout: float, shard: int,
                  fetch: list[str] | None = None) -> list[str]:
    """`fetch`: the connection options (default: the tuned DM_CONCURRENCY; [] for
    datamill's defaults)."""
    if fetch is None:
        fetch = ["--concurrency", str(DM_CONCURRENCY), "--per-host", str(DM_CONCURRENCY)]
    return [DATAMILL, "download", str(urls), str(dst), "--format", "webdataset",
            "--resize", "256", "--resize-mode", "keep_ratio", "--quality", "95",
            "--timeout", str(timeout), "--retries", "0", *fetch, "--workers", str(WORKERS),
            "--shard-size", str(shard), "--quiet"]


def i2d_argv(urls: Path, dst: Path, timeout: float, shard: int, threads: int = I2D_THREADS) -> list[str]:
    return [str(VENV / "bin" / "img2dataset"), f"--url_list={urls}", f"--output_folder={dst}",
            "--input_format=txt", "--output_format=webdataset", f"--processes_count={WORKERS}",
            f"--thread_count={threads}", "--image_size=256", "--resize_mode=keep_ratio",
            "--resize_only_if_bigger=True", "--skip_reencode=True", "--encode_quality=95",
            "--encode_format=jpg", f"--timeout={int(timeout)}", "--retries=0",
            f"--number_sample_per_shard={shard}", "--extract_exif=False", "--compute_hash=sha256",
            "--incremental_mode=incremental", "--enable_wandb=False", "--disable_all_reencoding=False"]


def ensure_img2dataset() -> str:
    """Create the virtual environment on first use; return img2dataset's version."""
    exe = VENV / "bin" / "img2dataset"
    if not exe.exists():
        print(f"creating {VENV} (python3 -m venv; pip install img2dataset) ...", flush=True)
        subprocess.run(["python3", "-m", "venv", str(VENV)], check=True, env=ENV)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "img2dataset"], check=True, env=ENV)
    names = ("img2dataset", "opencv-python-headless", "albumentations", "numpy")
    out = subprocess.run([str(VENV / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(' '.join(n + ' ' + m.version(n) "
                          f"for n in {names!r}))"],
                         capture_output=True, text=True, env=ENV, check=True)
    return out.stdout.strip()


def run_tree(argv: list[str], log: Path, cap: float | None = None, server: "Server | None" = None,
             poll: float = 0.1, env: dict | None = None) -> dict:
    """Run a command to its end (or kill its process group after `cap` s).

    Polls the RSS of every process of its tree (the largest sum and the largest single
    process are kept) and when the tree last used CPU (over 5% of a core in the last second).  CPU seconds: the tree's (getrusage
    of waited-for children: the command and the processes it waited for), the server's,
    and the rest of the machine's ("others", in cores).
    """
    import psutil
    log.parent.mkdir(parents=True, exist_ok=True)
    ours0 = _children_cpu()
    server0 = server.cpu() if server else 0.0
    busy0 = machine_busy_cpu()
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env or ENV,
                                start_new_session=True)
        top = psutil.Process(proc.pid)
        peak_sum, peak_one, cpu_seen, last_busy, killed = 0.0, 0.0, {}, 0.0, False
        history: collections.deque = collections.deque()  # (time, the tree's CPU seconds)
        while proc.poll() is None:
            now = time.perf_counter() - start
            try:
                procs = [top, *top.children(recursive=True)]
            except psutil.Error:
                procs = []
            total = 0.0
            for p in procs:
                try:
                    rss = p.memory_info().rss / 2**20
                    t = p.cpu_times()
                except psutil.Error:
                    continue
                total += rss
                peak_one = max(peak_one, rss)
                cpu_seen[p.pid] = t.user + t.system
            peak_sum = max(peak_sum, total)
            history.append((now, sum(cpu_seen.values())))
            while len(history) > 2 and history[1][0] <= now - 1.0:
                history.popleft()
            if history[-1][1] - history[0][1] > 0.05 * (now - history[0][0]):  # > 5% of a core
                last_busy = now
            if cap is not None and now > cap:
                killed = True
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(poll)
        proc.wait()
        seconds = time.perf_counter() - start
        ended = time.time()
    if killed:  # the killed group's orphans, if any, must not outlive the benchmark
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    cpu = _children_cpu() - ours0
    server_cpu = (server.cpu() - server0) if server else 0.0
    others = max(0.0, machine_busy_cpu() - busy0 - cpu - server_cpu)
    return {"seconds": seconds, "began": ended - seconds, "ended": ended,
            "rc": proc.returncode, "killed": killed, "peak_sum_mb": peak_sum,
            "peak_one_mb": peak_one, "last_busy": last_busy, "cpu": cpu,
            "server_cores": server_cpu / seconds, "others_cores": others / seconds}


def _children_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def datamill_result(dst: Path) -> dict:
    stats = json.loads((dst / "stats.json").read_text())
    counts = stats.get("counts") or stats.get("outcomes") or {}
    failures: dict[str, int] = {}
    fpath = dst / "failures.jsonl"
    if fpath.exists():
        for line in fpath.open():
            c = json.loads(line)["error_class"]
            failures[c] = failures.get(c, 0) + 1
    return {"ok": counts.get("ok", 0), "failed": counts.get("failed", 0),
            "filtered": counts.get("filtered", 0), "failures": failures,
            "images": tar_images(dst)}


def i2d_result(dst: Path) -> dict:
    ok = failed = 0
    failures: dict[str, int] = {}
    for p in glob.glob(str(dst / "*_stats.json")):
        s = json.loads(Path(p).read_text())
        ok += s.get("successes", 0)
        failed += s.get("failed_to_download", 0) + s.get("failed_to_resize", 0)
        for msg, n in (s.get("status_dict") or {}).items():
            if msg != "success":
                failures[msg[:60]] = failures.get(msg[:60], 0) + n
    return {"ok": ok, "failed": failed, "filtered": 0, "failures": failures,
            "images": tar_images(dst)}


def tar_images(dst: Path) -> int:
    n = 0
    for p in glob.glob(str(dst / "*.tar")):
        with tarfile.open(p) as tf:
            n += sum(1 for m in tf if m.name.endswith(".jpg"))
    return n


def output_quality(dst: Path, every: int = 10) -> dict:
    """Mean PSNR of a tool's output JPEGs against references made from the source picture
    (the server's, rebuilt from the URL): its full decode resized in float by area, and by a
    Gaussian low-pass (sigma half the scale) then Lanczos."""
    import io
    import urllib.parse

    import cv2
    import numpy as np
    from PIL import Image

    from datamill.testing.server import make_jpeg
    cv2.setNumThreads(1)
    area, neutral, kb = [], [], []
    for path in sorted(glob.glob(str(dst / "*.tar"))):
        with tarfile.open(path) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
        for k, name in enumerate(sorted(n for n in members if n.endswith(".jpg"))):
            if k % every:
                continue
            meta = json.loads(members[name[:-4] + ".json"])
            url = urllib.parse.urlsplit(meta["url"])
            n = int(url.path.rsplit("/", 1)[1].split(".")[0])
            args = {a: int(v[0]) for a, v in urllib.parse.parse_qs(url.query).items()}
            source = np.asarray(Image.open(io.BytesIO(make_jpeg(n % POOL, args["w"], args["h"], args["q"])))
                                .convert("RGB"), np.float32)
            out = np.asarray(Image.open(io.BytesIO(members[name])).convert("RGB"), np.float64)
            size = (out.shape[1], out.shape[0])
            if size == (source.shape[1], source.shape[0]):
                continue  # not resized
            refs = (cv2.resize(source, size, interpolation=cv2.INTER_AREA),
                    cv2.resize(cv2.GaussianBlur(source, (0, 0), 0.5 * source.shape[0] / size[1]), size,
                               interpolation=cv2.INTER_LANCZOS4))
            a, b = (10 * np.log10(255 ** 2 / np.mean((out - r) ** 2)) for r in refs)
            area.append(a)
            neutral.append(b)
            kb.append(len(members[name]) / 1000)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"n": len(area), "area": mean(area), "neutral": mean(neutral), "kb": mean(kb)}


TOOLS = {
    "datamill": (datamill_argv, datamill_result),
    "img2dataset": (i2d_argv, i2d_result),
}


def run_tool(tool: str, urls: Path, dst: Path, timeout: float, shard: int, server: "Server",
             cap: float | None = None, **kw) -> dict:
    """One run of a tool's command line into a fresh `dst`; its figures and outcomes."""
    argv_fn, result_fn = TOOLS[tool]
    shutil.rmtree(dst, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    res = run_tree(argv_fn(urls, dst, timeout, shard, **kw), dst.with_name(dst.name + ".log"),
                   cap, server, env=DM_ENV if tool == "datamill" else ENV)
    if not res["killed"]:
        try:
            res.update(result_fn(dst))
        except (OSError, ValueError) as exc:
            res["error"] = f"no result in {dst}: {exc}; rc {res['rc']}, see {dst}.log"
    return res


def warm_up(srv: Server, work: Path) -> None:
    """One untimed datamill run of 20 URLs: its byte code (DM_ENV's folder) and the page cache."""
    res = run_tool("datamill", mix_list(srv.base, 20, work / "warm-up.txt"), work / "warm-up", TIMEOUT, 10, srv)
    print(f"  warm-up (untimed): datamill, 20 URLs, {res['seconds']:.1f} s  {describe(res)}", flush=True)


# -- 3. memory: a child running the Python API -------------------------------------------------
def memory_child(urls: str, dst: str) -> None:
    import resource

    from datamill.io.http import FetchOptions
    from datamill.jobs.download import download
    from datamill.media.image import ImageOptions
    shutil.rmtree(dst, ignore_errors=True)
    start = time.perf_counter()
    report = download(urls, dst, format="webdataset", shard_size=10_000,
                      image=ImageOptions(resize=256, resize_mode="keep_ratio"),
                      fetch=FetchOptions(timeout=TIMEOUT, retries=0, concurrency=DM_CONCURRENCY,
                                         per_host=DM_CONCURRENCY),
                      workers=WORKERS, quiet=True, failure_ratio=1.01)
    seconds = time.perf_counter() - start
    worker_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # phases, from the ledger: items are recorded when their task ends
    db = sqlite3.connect(Path(dst) / "_datamill" / "state.sqlite")
    started, ended = db.execute("SELECT started, ended FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    real_done = db.execute("SELECT MAX(updated) FROM items WHERE key < ?", (f"{MEM_REAL:09d}",)).fetchone()[0]
    db.close()
    print(json.dumps({"seconds": seconds, "counts": report.counts, "driver_mb": peak_rss_mb(),
                      "worker_mb": worker_kb / 1024, "exit": report.exit_code,
                      "message": report.message, "real_seconds": real_done - started,
                      "rest_seconds": ended - real_done, "final_seconds": seconds - (ended - started)}),
          flush=True)


def run_memory(urls: Path, dst: Path, server: "Server") -> dict:
    res = run_tree([sys.executable, __file__, "--memory-child", str(urls), str(dst)],
                   dst.with_name(dst.name + ".log"), server=server, env=DM_ENV)
    lines = dst.with_name(dst.name + ".log").read_text().strip().splitlines()
    try:
        res.update(json.loads(lines[-1]))
    except (IndexError, ValueError):
        res["error"] = f"rc {res['rc']}: {' '.join(lines[-3:])[:300]}"
    return res


# -- the three benchmarks ----------------------------------------------------------------------
class Quiet:
    """Before each timed run, wait (a little) for other work on the machine to stop."""

    def __init__(self, each: float, total: float):
        self.each, self.total, self.budget = each, total, total

    def wait(self) -> None:
        self.budget -= wait_until_quiet(min(self.each, max(0.0, self.budget)))


def describe(res: dict) -> str:
    if "error" in res:
        return f"ERROR {res['error']}"
    if res["killed"]:
        return f"KILLED (the tree last used CPU at {res['last_busy']:.0f} s)"
    fails = ", ".join(f"{k} {v}" for k, v in sorted(res.get("failures", {}).items()))
    return (f"ok {res['ok']} (tar images {res['images']}), failed {res['failed']} ({fails}); "
            f"CPU {res['cpu']:.1f} s, server {res['server_cores']:.2f} cores, other work "
            f"{res['others_cores']:.2f} cores, peak RSS {res['peak_sum_mb']:.0f} MB")


def throughput(srv: Server, urls: Path, n: int, shard: int, repeat: int, work: Path,
               quiet: Quiet) -> tuple[list, list]:
    runs: dict[str, list[dict]] = {"datamill": [], "img2dataset": []}
    rounds = []
    for r in range(repeat):
        for tool in ["datamill", "img2dataset"][:: 1 if r % 2 == 0 else -1]:
            quiet.wait()
            res = run_tool(tool, urls, work / f"throughput-{tool}", TIMEOUT, shard, srv)
            runs[tool].append(res)
            print(f"  run {r + 1}/{repeat} throughput {tool:11} {res['seconds']:6.1f} s "
                  f"{res.get('ok', 0) / res['seconds']:6.1f} images/s  {describe(res)}", flush=True)
        d, i = runs["datamill"][-1], runs["img2dataset"][-1]
        if "error" not in d and "error" not in i:
            rounds.append((i["seconds"] / d["seconds"], i["cpu"] / d["cpu"],
                           d["others_cores"], i["others_cores"]))
    rows, notes = [], []
    label = f"1. throughput: {n:,} URLs"
    for tool, rs in runs.items():
        good = [x for x in rs if "error" not in x]
        if not good:
            rows.append([label, tool, "FAILED", "", "", "", "", ""])
            notes.append(f"{tool} failed: {rs[-1]['error']}")
            continue
        s, last = median([x["seconds"] for x in good]), good[-1]
        ok_counts = sorted({x["ok"] for x in good})
        mine = tool == "datamill" and rounds
        rows.append([
            label, tool, f"{s:.1f} s", rate(last["ok"] / s), f"{last['ok']:,} / {n:,}",
            f"{1000 * median([x['cpu'] for x in good]) / n:.1f} s",
            f"{max(x['peak_sum_mb'] for x in good):,.0f} MB",
            f"{ratio(median([x[0] for x in rounds]))} (CPU {ratio(median([x[1] for x in rounds]))})"
            if mine else ("1.00x" if tool == "img2dataset" else ""),
        ])
        notes.append(f"{tool}: failures of the last run: "
                     + ", ".join(f"{k}: {v}" for k, v in sorted(last["failures"].items()))
                     + (f"; successes varied between runs: {ok_counts}" if len(ok_counts) > 1 else ""))
    oks = {t: rs[-1].get("ok") for t, rs in runs.items()}
    if len(set(oks.values())) > 1:
        notes.append(f"successes differ: {oks}")
    if rounds:
        notes.append("throughput, each round: datamill / img2dataset wall clock (other work on the "
                     "machine during datamill's run / img2dataset's, in cores): " + ", ".join(
                         f"{a:.2f}x ({od:.2f} / {oi:.2f})" for a, _, od, oi in rounds))
    quality = {tool: output_quality(work / f"throughput-{tool}") for tool in runs}
    notes.append("output quality (last run, every 10th image): mean PSNR of each tool's JPEGs against the "
                 "source decoded in full and resized in float by area (OpenCV INTER_AREA: img2dataset's "
                 "own filter) / by a Gaussian low-pass then Lanczos (a neutral reference): " + "; ".join(
                     f"{t} {q['area']:.2f} / {q['neutral']:.2f} dB over {q['n']} images, {q['kb']:.1f} kB each"
                     for t, q in quality.items() if q["n"]))
    everyone = [x for rs in runs.values() for x in rs]
    notes.append("during the throughput runs the image server used "
                 f"{median([x['server_cores'] for x in everyone]):.2f} cores and other work on the "
                 f"machine {median([x['others_cores'] for x in everyone]):.2f} cores (medians; max "
                 f"{max(x['others_cores'] for x in everyone):.2f}) of its "
                 f"{len(os.sched_getaffinity(0))}")
    return rows, notes


def no_hang(srv: Server, n: int, repeat: int, cap: float, work: Path, quiet: Quiet,
            peer: bool = True) -> tuple[list, list]:
    """Each run's tail: from the server's last image sent to the command's end."""
    with_drips, without, drips = drip_lists(srv.base, n, work / "hang")
    shard = max(100, n // 10)
    shards = -(-n // shard)
    label = f"2. no hang: {n:,} URLs, {drips} never end, timeout {HANG_TIMEOUT} s"
    rows, notes = [], []
    runs: dict[str, list[dict]] = {"without": [], "with": []}
    for r in range(repeat):
        for kind, path in (("without", without), ("with", with_drips)):
            quiet.wait()
            res = run_tool("datamill", path, work / f"hang-datamill-{kind}", HANG_TIMEOUT, shard, srv,
                           cap=30 * HANG_TIMEOUT + 120)
            res["tail"] = res["ended"] - srv.last_image()
            runs[kind].append(res)
            print(f"  run {r + 1}/{repeat} no-hang datamill {kind:7} drips {res['seconds']:6.1f} s, "
                  f"ended {res['tail']:.1f} s after the last image was sent  {describe(res)}", flush=True)
    w, wo = (median([x["seconds"] for x in runs[k]]) for k in ("with", "without"))
    tail, tail_wo = (median([x["tail"] for x in runs[k]]) for k in ("with", "without"))
    last = runs["with"][-1]
    rows.append([label, "datamill", f"{w:.1f} s (without drips {wo:.1f} s)",
                 f"ended {tail:.1f} s ({tail / HANG_TIMEOUT:.1f}x the timeout) after the last image "
                 f"was sent ({tail_wo:.1f} s without drips)",
                 f"{last.get('ok', 0):,} ok, {last.get('failures', {}).get('timeout', 0)} timeout",
                 "", "", ""])
    notes.append(f"no hang, datamill: {shards} shards of {shard} URLs on {WORKERS} workers; a worker starts its "
                 "next shard's URLs beside the last ones of the current shard (at most two open), so the "
                 f"drips cost {w - wo:+.1f} s in all ({w / wo:.2f}x the run without them, medians: with "
                 f"{', '.join(format(x['seconds'], '.1f') for x in runs['with'])} s, without "
                 f"{', '.join(format(x['seconds'], '.1f') for x in runs['without'])} s); the tail after the last "
                 "image is the last drip's deadline")
    if not peer:
        return rows, notes
    quiet.wait()
    i_wo = run_tool("img2dataset", without, work / "hang-img2dataset-without", HANG_TIMEOUT, shard, srv,
                    cap=cap)
    i_wo["tail"] = i_wo["ended"] - srv.last_image()
    print(f"  no-hang img2dataset without drips {i_wo['seconds']:6.1f} s, ended {i_wo['tail']:.1f} s after "
          f"the last image was sent  {describe(i_wo)}", flush=True)
    quiet.wait()
    i_w = run_tool("img2dataset", with_drips, work / "hang-img2dataset-with", HANG_TIMEOUT, shard, srv,
                   cap=cap)
    i_w["tail"] = i_w["ended"] - srv.last_image()
    served = i_w["seconds"] - i_w["tail"]
    done = len(glob.glob(str(work / "hang-img2dataset-with" / "*_stats.json")))
    print(f"  no-hang img2dataset with drips    {i_w['seconds']:6.1f} s, last image sent at {served:.1f} s; "
          f"{describe(i_w)}; {done} of {shards} shards finished", flush=True)
    if i_w["killed"]:
        rows.append([label, "img2dataset", f"killed after {i_w['seconds']:.0f} s (without drips "
                     f"{i_wo['seconds']:.1f} s)", f"still running {i_w['tail']:.0f} s after the last image "
                     f"was sent (at {served:.0f} s); no CPU used after {i_w['last_busy']:.0f} s",
                     f"{done} of {shards} shards written", "", "", ""])
        notes.append(f"no hang, img2dataset: its urllib timeout ({HANG_TIMEOUT} s) limits each socket read, "
                     "and a drip sends 16 bytes every 0.5 s, so no read ever times out and no shard "
                     f"holding a drip ever ends; stopped (SIGKILL of its process group) after {cap:.0f} s")
    else:
        rows.append([label, "img2dataset", f"{i_w['seconds']:.1f} s (without drips {i_wo['seconds']:.1f} s)",
                     f"ended {i_w['tail']:.1f} s after the last image was sent", f"{i_w.get('ok', 0):,} ok",
                     "", "", ""])
    return rows, notes


def one_host(srv: Server, n: int, repeat: int, work: Path, quiet: Quiet,
             per_hosts: list[int]) -> tuple[list, list]:
    """Issue 14's comparison: `n` URLs of the mix on one host with 20-100 ms latency,
    datamill with its default connection options against img2dataset (I2D_THREADS threads),
    alternating, best of `repeat`; then datamill with each --per-host of `per_hosts`."""
    urls = mix_list(srv.base, n, work / "onehost.txt", latency=ONE_HOST_LATENCY)
    shard = max(100, n // 10)
    label = f"4. one host: {n:,} URLs, {ONE_HOST_LATENCY[0]}-{ONE_HOST_LATENCY[1]} ms"
    runs: dict[str, list[dict]] = {"datamill": [], "img2dataset": []}
    for r in range(repeat):
        for tool in ["datamill", "img2dataset"][:: 1 if r % 2 == 0 else -1]:
            quiet.wait()
            res = run_tool(tool, urls, work / f"onehost-{tool}", TIMEOUT, shard, srv,
                           **({"fetch": []} if tool == "datamill" else {}))
            runs[tool].append(res)
            print(f"  run {r + 1}/{repeat} one host {tool:11} {res['seconds']:6.1f} s "
                  f"{res.get('ok', 0) / res['seconds']:6.1f} images/s  {describe(res)}", flush=True)
    rows, notes = [], []
    best = {}
    for tool, rs in runs.items():
        good = [x for x in rs if "error" not in x]
        if not good:
            rows.append([label, tool, "FAILED", "", "", "", "", ""])
            continue
        b = best[tool] = max(good, key=lambda x: x["ok"] / x["seconds"])
        rows.append([label, tool + (" (defaults)" if tool == "datamill" else f" ({I2D_THREADS} threads)"),
                     f"{b['seconds']:.1f} s (runs {', '.join(format(x['seconds'], '.1f') for x in good)})",
                     rate(b["ok"] / b["seconds"]), f"{b['ok']:,} / {n:,}",
                     f"{1000 * median([x['cpu'] for x in good]) / n:.1f} s",
                     f"{max(x['peak_sum_mb'] for x in good):,.0f} MB", ""])
    if len(best) == 2:
        d, i = best["datamill"], best["img2dataset"]
        rows[0][-1] = (f"{(d['ok'] / d['seconds']) / (i['ok'] / i['seconds']):.2f}x images/s (best of "
                       f"{repeat}; CPU {median([x['cpu'] for x in runs['img2dataset']]) / median([x['cpu'] for x in runs['datamill']]):.2f}x)")
        rows[1][-1] = "1.00x"
        notes.append(f"one host: successes datamill {d['ok']:,}, img2dataset {i['ok']:,}; CPU per image "
                     f"(median) datamill {1000 * median([x['cpu'] for x in runs['datamill']]) / d['ok']:.2f} ms, "
                     f"img2dataset {1000 * median([x['cpu'] for x in runs['img2dataset']]) / i['ok']:.2f} ms")
    sweep: dict[int, list[dict]] = {p: [] for p in per_hosts}
    for r in range(repeat):
        for p in per_hosts[:: 1 if r % 2 == 0 else -1]:
            quiet.wait()
            res = run_tool("datamill", urls, work / f"onehost-perhost-{p}", TIMEOUT, shard, srv,
                           fetch=["--per-host", str(p)])
            sweep[p].append(res)
            print(f"  run {r + 1}/{repeat} one host datamill --per-host {p:3} {res['seconds']:6.1f} s "
                  f"{res.get('ok', 0) / res['seconds']:6.1f} images/s  {describe(res)}", flush=True)
    for p, rs in sweep.items():
        good = [x for x in rs if "error" not in x]
        if good:
            rows.append([label, f"datamill --per-host {p}",
                         f"{median([x['seconds'] for x in good]):.1f} s (median; runs "
                         f"{', '.join(format(x['seconds'], '.1f') for x in good)})",
                         rate(good[-1]["ok"] / median([x["seconds"] for x in good])),
                         f"{good[-1]['ok']:,} / {n:,}", f"{1000 * median([x['cpu'] for x in good]) / n:.1f} s",
                         f"{max(x['peak_sum_mb'] for x in good):,.0f} MB", ""])
    return rows, notes


def memory(srv: Server, lines: int, work: Path, quiet: Quiet) -> tuple[list, list]:
    t0 = time.perf_counter()
    path = memory_list(srv.base, lines, work)
    print(f"  memory: URL file {path.stat().st_size / 2**20:,.0f} MB, {lines:,} lines, ready in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    quiet.wait()
    res = run_memory(path, work / "memory-datamill", srv)
    label = f"3. memory: {lines:,}-line file, first {MEM_REAL:,} fetched"
    if "error" in res:
        print(f"  memory: FAILED {res['error']}", flush=True)
        return [[label, "datamill", "FAILED", "", "", "", "", ""]], [f"memory run failed: {res['error']}"]
    c = res["counts"]
    print(f"  memory: {res['seconds']:.0f} s, counts {c}, peak RSS "
          f"sum {res['peak_sum_mb']:.0f} MB, largest process {res['peak_one_mb']:.0f} MB, driver VmHWM "
          f"{res['driver_mb']:.0f} MB, largest worker ru_maxrss {res['worker_mb']:.0f} MB; CPU "
          f"{res['cpu']:.0f} s, other work {res['others_cores']:.2f} cores; exit {res['exit']} "
          f"{res['message']}", flush=True)
    rows = [[label, "datamill", f"{res['seconds']:.0f} s", f"{rate(lines / res['seconds'])} lines",
             f"{c.get('ok', 0):,} ok / {c.get('failed', 0):,} failed",
             f"{1000 * res['cpu'] / lines:.2f} s",
             f"{res['peak_sum_mb']:,.0f} MB", ""]]
    rest = lines - MEM_REAL
    notes = [f"memory: phases: the first {MEM_REAL:,} URLs fetched in {res['real_seconds']:.0f} s, "
             f"the other {rest:,} lines (bad_url) recorded in {res['rest_seconds']:.0f} s "
             f"({rest / res['rest_seconds']:,.0f}/s), then {res['final_seconds']:.0f} s from the run's end "
             "in the ledger to the call's return (manifest.parquet, failures.jsonl, "
             "failed_urls.txt, stats.json) and start-up"]
    if lines < 10_000_000:
        scale = (10_000_000 - MEM_REAL) / rest
        notes.append(f"memory: extrapolated to 10,000,000 lines (linearly, per phase): "
                     f"{res['real_seconds'] + scale * (res['rest_seconds'] + res['final_seconds']):,.0f} s")
    notes += [f"memory: peak RSS is the largest sum over the job's processes (polled every 0.1 s); "
             f"each process's own peak: driver {res['driver_mb']:.0f} MB (VmHWM), largest worker "
             f"{res['worker_mb']:.0f} MB (ru_maxrss), largest process seen {res['peak_one_mb']:.0f} MB"]
    return rows, notes


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 run, fewer URLs: a smoke run")
    ap.add_argument("--repeat", type=int, help="runs per figure (median; default 3, quick 1)")
    ap.add_argument("--urls", type=int, help="URLs in the throughput list (default 5000, quick 1000)")
    ap.add_argument("--hang-cap", type=float, help="kill img2dataset's no-hang run after this many "
                    "seconds (default 120, quick 60)")
    ap.add_argument("--mem-lines", type=int, help="lines of the memory test's URL file (default "
                    "1,000,000, quick 200,000; the target's 10,000,000 takes ~30 min here)")
    ap.add_argument("--only", default="throughput,hang,memory,onehost",
                    help="parts to run (comma-separated)")
    ap.add_argument("--hang-urls", type=int, help="URLs of the no-hang list (default 20,000: a clean "
                    "run over 60 s; quick 500)")
    ap.add_argument("--no-peer-hang", action="store_true", help="no-hang: datamill only (img2dataset "
                    "never ends with drips, and takes minutes without them at 14,000 URLs)")
    ap.add_argument("--per-host", default="8,16,32,64", help="one host: the --per-host values "
                    "datamill runs with (comma-separated; '' for none)")
    ap.add_argument("--tune", help="img2dataset thread counts to try on the throughput list "
                    "(e.g. 32,64,128,256), one run each; nothing else runs")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve()
    if args.memory_child:
        return memory_child(*args.memory_child)
    q = args.quick
    repeat = args.repeat or (1 if q else 3)
    n_urls = args.urls or (1000 if q else 5000)
    shard = max(100, n_urls // 10)
    cap = args.hang_cap or (60.0 if q else 120.0)
    mem_lines = args.mem_lines or (200_000 if q else 1_000_000)
    parts = set(args.only.split(","))
    work = DATA / f"download-{'quick' if q else 'full'}"
    versions = ensure_img2dataset()
    print(f"bench/download.py: {machine()}; datamill against {versions} (own venv); "
          f"{WORKERS} processes each; median of {repeat} run(s)" + (" (quick)" if q else ""), flush=True)
    quiet = Quiet(45.0, 12.0 if q else 180.0)
    started = time.perf_counter()
    rows, notes = [], []
    with Server() as srv:
        print(f"image server {srv.base} in its own process, warmed ({len(SIZES) + 1} sizes x {POOL} "
              "pictures); shards of {shard} URLs".replace("{shard}", str(shard)), flush=True)
        urls = mix_list(srv.base, n_urls, work / "urls.txt")
        warm_up(srv, work)
        if args.tune:
            for threads in (int(t) for t in args.tune.split(",")):
                quiet.wait()
                res = run_tool("img2dataset", urls, work / "tune", TIMEOUT, shard, srv, threads=threads)
                print(f"  img2dataset thread_count {threads:4}: {res['seconds']:6.1f} s "
                      f"{res.get('ok', 0) / res['seconds']:6.1f} images/s  {describe(res)}", flush=True)
            return
        if "throughput" in parts:
            r, n = throughput(srv, urls, n_urls, shard, repeat, work, quiet)
            rows += r
            notes += n
        if "hang" in parts:
            r, n = no_hang(srv, args.hang_urls or HANG_URLS[q], repeat, cap, work, quiet,
                           peer=not args.no_peer_hang)
            rows += r
            notes += n
        if "onehost" in parts:
            r, n = one_host(srv, ONE_HOST_URLS[q], repeat, work, quiet,
                            [int(p) for p in args.per_host.split(",") if p])
            rows += r
            notes += n
        if "memory" in parts:
            r, n = memory(srv, mem_lines, work, quiet)
            rows += r
            notes += n
    print()
    print(table(["benchmark", "tool", "wall clock", "rate, or what happened", "successes", "CPU per 1000 URLs",
                 "peak RSS (all processes)", "datamill / img2dataset"], rows), flush=True)
    print()
    for n in notes:
        print(f"- {n}")
    print(f"- waited {quiet.total - max(0.0, quiet.budget):.0f} s in all for a quiet machine "
          f"(up to {quiet.each:.0f} s before each run, {quiet.total:.0f} s in all)")
    print(f"\nbenchmark wall clock {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
