"""Engine overhead: datamill.pmap and a ledger-backed job against multiprocessing.Pool,
concurrent.futures and mpire, on tiny tasks; peak driver memory on a 10-million-item input.

    .venv/bin/python bench/engine.py [--quick] [--repeat N] [--only tiny,job,rss]

Every figure is the median of N runs (default 3) measured in this run, so the ratios compare
like with like on a noisy machine; a ratio is the median of the ratios within each round
(the methods run one after the other, in alternating order).  Times are end to end: starting
the worker processes, feeding every item, collecting every result (and, for the job, writing
the ledger, manifest.parquet, failures.jsonl and stats.json).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from mpire import WorkerPool
from tqdm import tqdm

from datamill import pmap

from _common import machine, median, peak_rss_mb, rate, ratio, rss_mb, run_child, table, timed

WORKERS = 2


# -- the tasks --------------------------------------------------------------------------------
def noop(x):
    return x


def spin_1ms(x):
    end = time.perf_counter() + 0.001
    while time.perf_counter() < end:
        pass
    return x


def sleep_10ms(x):
    time.sleep(0.01)
    return x


# -- one measurement of each method: returns seconds ----------------------------------------
def run_pmap(fn, n, batch_size=None):
    with open(os.devnull, "w") as devnull:
        start = time.perf_counter()
        bar = tqdm(pmap(fn, range(n), workers=WORKERS, batch_size=batch_size), total=n,
                   file=devnull)
        bad = sum(1 for r in bar if not r.ok)
        seconds = time.perf_counter() - start
    assert bad == 0, f"{bad} items failed"
    return seconds


def run_pool(fn, n, chunksize):
    start = time.perf_counter()
    with mp.get_context("fork").Pool(WORKERS) as pool:
        count = sum(1 for _ in pool.imap_unordered(fn, range(n), chunksize=chunksize))
    seconds = time.perf_counter() - start
    assert count == n
    return seconds


def run_executor(fn, n, chunksize):
    start = time.perf_counter()
    with cf.ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("fork")) as ex:
        count = sum(1 for _ in ex.map(fn, range(n), chunksize=chunksize))
    seconds = time.perf_counter() - start
    assert count == n
    return seconds


def run_mpire(fn, n):
    start = time.perf_counter()
    with WorkerPool(WORKERS, start_method="fork") as pool:
        count = sum(1 for _ in pool.imap_unordered(fn, range(n)))
    seconds = time.perf_counter() - start
    assert count == n
    return seconds


# name, function, N (full, quick), Pool chunksizes to try, ProcessPoolExecutor chunksize,
# whether to add pmap with one item per task (on a shared machine, long CPU-bound tasks get
# a smaller share of the cores than processes that block often)
TINY = [
    ("no-op", noop, (500_000, 20_000), (100, 1000, 10_000), 1000, False),
    ("1 ms CPU", spin_1ms, (5_000, 400), (1, 10, 50, 200), 10, True),
    ("10 ms sleep", sleep_10ms, (1_000, 100), (1, 5, 25, 100), 5, False),
]


def bench_tiny(quick: bool, repeat: int) -> tuple[str, dict]:
    rows, found = [], {}
    for name, fn, sizes, chunks, ex_chunk, probe in TINY:
        n = sizes[quick]
        tuning = {c: n / run_pool(fn, n, c) for c in chunks}
        best_c = max(chunks, key=tuning.get)
        methods = {
            "pmap": lambda: run_pmap(fn, n),
            "pool": lambda: run_pool(fn, n, best_c),
            "executor": lambda: run_executor(fn, n, ex_chunk),
            "mpire": lambda: run_mpire(fn, n),
        }
        if probe:
            methods["pmap1"] = lambda: run_pmap(fn, n, batch_size=1)
        runs: dict[str, list[float]] = {k: [] for k in methods}
        for i in range(repeat):  # rounds, alternately reversed, so slow spells hit every method
            for k in list(methods)[::1 if i % 2 == 0 else -1]:
                runs[k].append(n / methods[k]())
        med = {k: median(v) for k, v in runs.items()}
        # a ratio is the median of the ratios within each round: the machine's load drifts
        vs = {base: {k: median([a / b for a, b in zip(runs[k], runs[base])]) for k in runs}
              for base in ("pool", "mpire")}
        tried = ", ".join(f"{c}: {rate(tuning[c])}" for c in chunks)
        lines = [
            ("pmap", "datamill.pmap (adaptive batches, tqdm bar)", ""),
            ("pool", f"Pool.imap_unordered, best chunksize={best_c}",
             f"chunksize tuned on one run each: {tried}"),
            ("executor", f"ProcessPoolExecutor.map, chunksize={ex_chunk}",
             "submits the whole input up front"),
            ("mpire", "mpire WorkerPool.imap_unordered (default chunks)", ""),
        ]
        if probe:
            lines.append(("pmap1", "datamill.pmap, batch_size=1 (diagnostic)",
                          "one item per task"))
        for i, (k, method, note) in enumerate(lines):
            rows.append([name if i == 0 else "", f"{n:,}" if i == 0 else "", method, rate(med[k]),
                         ratio(vs["pool"][k]), ratio(vs["mpire"][k]), note])
        found[name] = {"pmap": med["pmap"], "pool": med["pool"], "mpire": med["mpire"],
                       "vs_pool": vs["pool"]["pmap"], "vs_mpire": vs["mpire"]["pmap"],
                       "pool_chunksize": best_c}
    text = table(["tasks", "N", "method", "items/s", "vs Pool", "vs mpire", "notes"], rows)
    return text, found


# -- a ledger-backed job of no-op items -------------------------------------------------------
def record(i):
    return [{"v": i}]


def make_job(src: Path, dst: Path, n: int):
    import pyarrow as pa

    from datamill.engine.job import Item, Job
    from datamill.engine.task import TaskRunner

    class NoopJob(Job):
        name = "bench-noop"
        manifest_fields = [pa.field("v", pa.int64())]
        batch_size = None  # the engine batches

        def fingerprint(self):
            return {"n": n}

        def items(self):
            return (Item(f"{i:09d}", i) for i in range(n))

        def runner(self):
            return TaskRunner(record)

    return NoopJob(src, dst)


def bench_job(quick: bool, repeat: int, pmap_rate: float | None) -> tuple[str, dict]:
    from datamill.engine.run import RunOptions, run_job
    n = 20_000 if quick else 1_000_000
    first, again, loop_first, loop_again = [], [], [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="datamill-bench-") as tmp:
            src, dst = Path(tmp, "src"), Path(tmp, "dst")
            src.mkdir()
            opts = RunOptions(workers=WORKERS, quiet=True)
            seconds, report = timed(run_job, make_job(src, dst, n), opts)
            assert report.ok and report.counts["ok"] == n, report.counts
            assert report.stats["manifest_rows"] == n
            first.append(seconds)
            loop_first.append(report.stats["this_run"]["seconds"])
            seconds, report = timed(run_job, make_job(src, dst, n), opts)
            assert report.ok and report.stats["this_run"]["skipped_done"] == n
            again.append(seconds)
            loop_again.append(report.stats["this_run"]["seconds"])
    job_rate = n / median(first)

    def split(total: list[float], loop: list[float]) -> str:
        t, lp = median(total), median(loop)
        return f"run loop {lp:.1f} s, then reports (manifest, failures, stats) {t - lp:.1f} s"

    rows = [
        ["first run (every item runs; ledger, manifest.parquet of N rows)", f"{n:,}",
         f"{median(first):.1f} s", rate(job_rate),
         ratio(job_rate / pmap_rate) if pmap_rate else "",
         ">= 20,000/s " + ("met" if job_rate >= 20_000 else "NOT met"), split(first, loop_first)],
        ["second run over the same DST (resume: all skipped)", f"{n:,}",
         f"{median(again):.1f} s", rate(n / median(again)), "", "", split(again, loop_again)],
    ]
    text = table(["run_job, no-op items, ledger on", "N", "time", "items/s", "vs bare pmap",
                  "target", "notes"], rows)
    return text, {"job_rate": job_rate, "resume_seconds": median(again)}


# -- peak memory of the driver on a huge lazy input -----------------------------------------
GUARD_MB = 2048


def rss_child(kind: str, n: int, consume_us: float) -> None:
    """Runs in a fresh process: consume an n-item generator with `kind`, spending
    `consume_us` microseconds on each result; print JSON with the peak RSS."""
    rss_mb()  # imports psutil
    consumed = results = 0

    def gen():
        nonlocal consumed
        for i in range(n):
            consumed = i + 1
            yield i

    def guard():  # stop an eager reader before it takes the machine down
        while True:
            time.sleep(0.05)
            if rss_mb() > GUARD_MB:
                print(f'{{"driver_mb": {peak_rss_mb():.1f}, "stopped": true, '
                      f'"consumed": {consumed}, "results": {results}}}', flush=True)
                os._exit(0)

    def consume(it):
        nonlocal results
        for _ in it:
            results += 1
            if consume_us:
                end = time.perf_counter() + consume_us / 1e6
                while time.perf_counter() < end:
                    pass

    threading.Thread(target=guard, daemon=True).start()
    if kind == "pmap":
        consume(pmap(noop, gen(), workers=WORKERS))
    elif kind == "pool":
        with mp.get_context("fork").Pool(WORKERS) as pool:
            consume(pool.imap_unordered(noop, gen(), chunksize=1000))
    elif kind == "executor":
        with cf.ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("fork")) as ex:
            consume(ex.map(noop, gen(), chunksize=1000))
    print(f'{{"driver_mb": {peak_rss_mb():.1f}, "workers_mb": {peak_rss_mb(children=True):.1f}, '
          f'"stopped": false, "consumed": {consumed}, "results": {results}}}', flush=True)


def bench_rss(quick: bool) -> tuple[str, dict]:
    n = 300_000 if quick else 10_000_000
    n_slow = 100_000 if quick else 3_000_000
    me = os.path.abspath(__file__)
    base = run_child([me, "--rss-child", "baseline", "0", "0"])
    rows = [["interpreter + imports (datamill, mpire, psutil), no work", "", "", f"{base['driver_mb']:.0f} MB",
             "", "", ""]]
    out = {}
    cases = [("pmap", n, 0), ("pool", n, 0), ("executor", n, 0), ("pmap", n_slow, 10),
             ("pool", n_slow, 10)]
    labels = {"pmap": "datamill.pmap", "pool": "Pool.imap_unordered, chunksize=1000",
              "executor": "ProcessPoolExecutor.map, chunksize=1000"}
    for kind, size, us in cases:
        seconds, res = timed(run_child, [me, "--rss-child", kind, str(size), str(us)])
        if res["stopped"]:
            note = (f"stopped at {GUARD_MB} MB after {seconds:.0f} s: {res['consumed']:,} items "
                    f"read, {res['results']:,} results consumed")
            workers = ""
        else:
            note = f"{seconds:.0f} s"
            workers = f"{res['workers_mb']:.0f} MB"
        target = met = ""
        if kind == "pmap" and not us:
            target = "< 300 MB"
            met = " met" if res["driver_mb"] < 300 else " NOT met"
        rows.append([labels[kind], f"{size:,}", f"{us} µs" if us else "none",
                     f"{res['driver_mb']:.0f} MB", workers, target + met, note])
        out[(kind, us)] = res
    text = table(["peak RSS, no-op items from a generator", "N", "work per result", "driver",
                  "largest worker", "target", "notes"], rows)
    return text, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small N: a smoke run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    ap.add_argument("--only", default="tiny,job,rss", help="comma-separated: tiny,job,rss")
    ap.add_argument("--rss-child", nargs=3, metavar=("KIND", "N", "US"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]), float(args.rss_child[2]))
        return
    parts = set(args.only.split(","))
    print(f"bench/engine.py: {machine()}, {WORKERS} workers, median of {args.repeat} runs"
          + (" (quick)" if args.quick else "") + f"; load average {os.getloadavg()[0]:.1f}",
          flush=True)
    targets = []
    tiny = job = rss = None
    if "tiny" in parts:
        text, tiny = bench_tiny(args.quick, args.repeat)
        print("\n" + text, flush=True)
        t = tiny["no-op"]["vs_mpire"]
        targets.append(["pmap no-op >= mpire", f"{t:.2f}x mpire", "met" if t >= 1 else "NOT met"])
        t = tiny["1 ms CPU"]["vs_pool"]
        targets.append(["pmap 1 ms CPU >= 0.95x tuned Pool", f"{t:.2f}x Pool",
                        "met" if t >= 0.95 else "NOT met"])
    if "job" in parts:
        text, job = bench_job(args.quick, args.repeat, tiny["no-op"]["pmap"] if tiny else None)
        print("\n" + text, flush=True)
        targets.append(["job (ledger on) >= 20,000 items/s", rate(job["job_rate"]),
                        "met" if job["job_rate"] >= 20_000 else "NOT met"])
    if "rss" in parts:
        text, rss = bench_rss(args.quick)
        print("\n" + text, flush=True)
        mb = rss[("pmap", 0)]["driver_mb"]
        targets.append([f"pmap driver peak RSS on {'300k' if args.quick else '10M'} items < 300 MB",
                        f"{mb:.0f} MB", "met" if mb < 300 else "NOT met"])
    print("\n" + table(["target", "measured", ""], targets), flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (other processes share the cores)")


if __name__ == "__main__":
    sys.exit(main())
