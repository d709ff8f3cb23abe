"""Helpers shared by the benchmark scripts: timing, medians, peak memory, Markdown tables."""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Run `fn` once; return (wall seconds, its result)."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory of this process (or of its largest waited-for child), MiB.

    For this process Linux's VmHWM is used: ru_maxrss survives execve, so a child started
    by a big parent would report the parent's peak.
    """
    if not children:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
    kb = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20  # macOS reports bytes


def rss_mb() -> float:
    """Current resident memory of this process, MiB."""
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def run_child(args: Sequence[str], timeout: float | None = None) -> dict:
    """Run `python args...` in a fresh process; return the JSON object on its last stdout line."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {args} exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cores} cores, {mem:.0f} GiB, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def rate(x: float) -> str:
    """Items per second, with thousands separators."""
    return f"{x:,.0f}/s" if x >= 100 else f"{x:,.1f}/s"


def ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table with padded columns (readable as plain text too)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in cells[1:]])


def machine_busy_cpu() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot."""
    import psutil
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


def wait_until_quiet(max_wait: float, threshold: float = 15.0) -> float:
    """Wait (at most `max_wait` s) until other work uses < `threshold`% of the machine's CPU
    for a second; return the seconds waited."""
    import psutil
    start = time.monotonic()
    while time.monotonic() - start < max_wait and psutil.cpu_percent(interval=1.0) >= threshold:
        pass
    return time.monotonic() - start


def _make_video(job: tuple[str, int, tuple[int, int], dict]) -> str:
    from pathlib import Path

    from datamill.testing.videos import make_video
    path, frames, size, encoding = job
    tmp = Path(path).with_name(".tmp-" + Path(path).name)
    make_video(tmp, frames, size=size, pattern="moving", **encoding)
    os.replace(tmp, path)
    return path


def video_corpus(root: Any, wanted: dict, videos: Sequence[tuple[Any, int]], size: tuple[int, int],
                 encoding: dict, workers: int = 2) -> bool:
    """Generate `videos` ((path, frames) under `root`, moving synthetic pictures) once: they are
    made again only when `root/corpus.json` differs from `wanted` or a video is missing.
    Returns True when it generated them."""
    import multiprocessing
    import shutil
    from pathlib import Path
    root = Path(root)
    marker = root / "corpus.json"
    if marker.exists() and json.loads(marker.read_text()) == wanted and all(Path(p).exists() for p, _ in videos):
        return False
    shutil.rmtree(root, ignore_errors=True)
    for p, _ in videos:
        Path(p).parent.mkdir(parents=True, exist_ok=True)
    print(f"generating the corpus in {root} (once) ...", flush=True)
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for _ in pool.imap_unordered(_make_video, [(str(p), n, size, encoding) for p, n in videos]):
            pass
    marker.write_text(json.dumps(wanted))
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return True
