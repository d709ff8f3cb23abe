"""Job `map`: datamill.map against litdata.optimize, Hugging Face datasets and the seed's static split.

    .venv/bin/python bench/map.py [--quick] [--rounds N] [--only small,large,seed,memory,ordered]

Every measured run is a fresh process timed whole (Python start-up, imports, starting the
workers, every item, the last byte of output): the parent starts it and waits for it with
wait4, which also gives the CPU time (user + system) of the run and of every process it waited
for.  The tools of one benchmark alternate within each round (the order flips every round);
a figure is the median of the rounds (default 3; --quick: 1 round, fewer items) and a ratio
is the median of the rounds' ratios.  The machine may be shared: before each run the script
waits (a little) for other work to stop, and reports how many cores other work took during
each tool's runs (the whole machine's busy CPU from /proc/stat, less the run's own).
Outputs go to bench/_data/map/ (gitignored) and are deleted after each run, once their
records are counted (every run must hold every record, or the benchmark stops).

The baselines' own environments: litdata (which needs torch) is installed once into its own
virtual environment OUTSIDE the repo, `LITDATA_VENV` (default ../.bench-venvs/litdata beside
the repo's folder, or $DATAMILL_BENCH_VENVS/litdata): the script creates it when missing
(`python3 -m venv` + `pip install litdata`, ~6 GB with torch's CUDA wheels; a couple of
minutes from a local mirror), never under CI=true.  Hugging Face `datasets` is a dev
dependency of datamill, so it runs from datamill's venv.

1. small: `--items` (1,000,000) ints; the function (`small_record`) returns
   {"i": i, "text": f"item {i}", "x": 64 float32 values}; shards of 10,000 records, 2 workers.
   - datamill: `datamill.map(small_record, range(N), DST, format="parquet",
     shard_size=10_000, workers=2, quiet=True)` (the Python API over a range: what a user whose
     items are numbers writes; the CLI needs a file of N lines first);
   - litdata: `litdata.optimize(small_record, inputs=list(range(N)), output_dir=DST,
     chunk_size=10_000, num_workers=2)` (its own venv; litdata's default: spawn);
   - datasets: `Dataset.from_dict({"i": range(N)}).map(hf_small, num_proc=2)` then
     `.to_parquet(DST/data.parquet)` (one example at a time, as the same function is written;
     its map cache lives in a temporary folder of the run).
   Targets: datamill >= 3x litdata, and ahead of datasets (records/s).
2. large: `--large-items` (10,000) items of one 1 MiB float32 array (256 x 1024) each, shards
   of 128 records (128 MiB) for both datamill (parquet) and litdata (chunk_size=128), each
   run ending with os.sync() inside the timed process (so the data is on the disk).  The
   arrays are a random float32 array rotated by i (np.roll): np.full((256, 1024), i) would be
   stored in ~nothing by parquet's dictionary/RLE encoding and never exercise the disk.  The
   disk's sequential write speed is measured in the same rounds: `dd bs=8M count=N
   conv=fsync` of 4 GiB into the same folder.  Throughput is records/s and MB/s of the
   bytes on disk (du of the output).  Targets: datamill >= 1x litdata, >= 50% of the disk.
3. seed: `--seed-items` (2,000) items split by the seed's static scheme into N = 2 blocks
   (the machine's cores, as the seed used its n_cores); the items of the last block sleep
   10 ms, the others 1 ms (sleep, not CPU: the test is the scheduling, and sleeping is not
   slowed by other work on the machine).  The seed (003): N multiprocessing.Process, each
   its contiguous block (block_size = int(len / N), the remainder dropped, as in the seed),
   pickle shards of 10,000 records named '{:>02}{:>04}.pkl', started and never joined (the
   interpreter's exit waits for them, so the timed process still ends with the last one);
   against `datamill.map(seed_record, range(N), DST, format="pickle", workers=N)`.
   The ideal: static 10 ms x 1,000 = 10 s, balanced (10 + 1) x 1,000 / 2 = 5.5 s (1.82x).
   Target: datamill >= 1.5x faster.
4. memory: a `--mem-lines` (10,000,000) line txt ("line <i>", generated once in
   bench/_data/map) through the CLI, `datamill map TXT DST --fn bench/map.py:line_record
   --format parquet --shard-size 10000 --workers 2` (the function returns {"line": line}).
   Every 0.25 s the parent reads the driver's VmRSS and VmHWM and each descendant's VmRSS
   (/proc); the driver's peak is its VmHWM (its own high-water mark; workers excluded);
   workers are flat when the sum of their RSS at the end is within 10% of the sum at 10% of
   the run.  Target: driver peak < 300 MB.
5. ordered: the small workload through datamill with ordered=True and ordered=False,
   alternating, median of the rounds.  Target: ordered costs <= 10%.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the CLI loads this file for --fn; _common lives beside it
    sys.path.insert(0, str(HERE))

from _common import machine, median, ratio, table  # noqa: E402  (stdlib only)

DATA = HERE / "_data" / "map"
PY = sys.executable
DATAMILL = str(Path(sys.executable).with_name("datamill"))
VENVS = Path(os.environ.get("DATAMILL_BENCH_VENVS") or HERE.parent.parent / ".bench-venvs")
LITDATA_VENV = VENVS / "litdata"
LITDATA_PY = str(LITDATA_VENV / "bin" / "python")

WORKERS = 2
SHARD = 10_000               # records per shard, small and seed workloads
LARGE_SHARD = 128            # records (1 MiB each) per shard in the large workload: 128 MiB
SEED_FAST, SEED_SLOW = 0.001, 0.010  # s per item; the last block's items are the slow ones

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_DATASETS_OFFLINE": "1",
       "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "DATA_OPTIMIZER_CACHE_FOLDER": str(DATA / "litdata-cache" / "chunks"),
       "DATA_OPTIMIZER_DATA_CACHE_FOLDER": str(DATA / "litdata-cache" / "data")}


# -- the functions (imported by every tool's workers: keep this module's top level light) ---------
def small_record(i):
    import numpy as np
    i = int(i)
    return {"i": i, "text": f"item {i}", "x": np.arange(64, dtype=np.float32) + np.float32(i)}


def hf_small(example):
    r = small_record(example["i"])
    return {"text": r["text"], "x": r["x"]}


_BASE = None


def large_record(i):
    """A 1 MiB float32 array (256 x 1024) that no encoder can shrink: a random array rotated by i."""
    global _BASE
    import numpy as np
    if _BASE is None:
        _BASE = np.random.default_rng(0).random((256, 1024), dtype=np.float32)
    i = int(i)
    return {"i": i, "x": np.roll(_BASE, i * 4099)}


def seed_record(i):
    """The seed workload's item: the items of the last of N static blocks are 10x slower."""
    items, procs = (int(v) for v in os.environ["BENCH_MAP_SEED"].split(","))
    i = int(i)
    block = items // procs
    time.sleep(SEED_SLOW if i >= block * (procs - 1) else SEED_FAST)
    return small_record(i)


def line_record(line):
    return {"line": line}


# -- the children: each is one timed process --------------------------------------------------------
def child(kind: str, spec: dict) -> None:
    n, dst = spec["n"], Path(spec["dst"])
    out: dict = {}
    if kind == "datamill-small":
        import datamill
        rep = datamill.map(small_record, range(n), dst, format="parquet", shard_size=SHARD,
                           workers=WORKERS, ordered=spec.get("ordered", False), quiet=True)
        out = {"exit": rep.exit_code, "counts": dict(rep.counts)}
    elif kind == "litdata-small":
        import litdata
        litdata.optimize(fn=small_record, inputs=list(range(n)), output_dir=str(dst),
                         chunk_size=SHARD, num_workers=WORKERS)
    elif kind == "datasets-small":
        import datasets
        datasets.disable_progress_bars()
        ds = datasets.Dataset.from_dict({"i": range(n)}).map(hf_small, num_proc=WORKERS)
        dst.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(dst / "data.parquet"))
    elif kind.startswith("datamill-large"):
        import datamill
        fmt = kind.split(":")[1] if ":" in kind else "parquet"
        rep = datamill.map(large_record, range(n), dst, format=fmt, shard_size=LARGE_SHARD,
                           workers=WORKERS, quiet=True)
        os.sync()
        out = {"exit": rep.exit_code, "counts": dict(rep.counts)}
    elif kind == "litdata-large":
        import litdata
        litdata.optimize(fn=large_record, inputs=list(range(n)), output_dir=str(dst),
                         chunk_size=LARGE_SHARD, num_workers=WORKERS)
        os.sync()
    elif kind == "seed-static":
        seed_static(list(range(n)), spec["procs"], dst)
    elif kind == "datamill-seed":
        import datamill
        rep = datamill.map(seed_record, range(n), dst, format="pickle", shard_size=SHARD,
                           workers=spec["procs"], quiet=True)
        out = {"exit": rep.exit_code, "counts": dict(rep.counts)}
    else:
        raise SystemExit(f"unknown child {kind}")
    print(json.dumps(out), flush=True)
    if out.get("exit"):
        raise SystemExit(f"datamill.map's exit code {out['exit']}")


# The seed (003), rewritten for Python 3 with its shape kept: N processes, each a contiguous
# block of int(len / N) items (the remainder dropped), records kept in a list and dumped in
# pickle shards of 10,000 ('{:>02}{:>04}.pkl'), the processes started and never joined.
def seed_block(path_case, name_prefix, out_dir):
    ret, file_idx = [], 0
    for path in path_case:
        ret.extend([seed_record(path)])
        while ret.__len__() > 10000:
            with open(os.path.join(out_dir, "{:>02}{:>04}.pkl".format(name_prefix, file_idx)), "wb") as f:
                pickle.dump(ret[:10000], f)
            file_idx += 1
            del ret[:10000]
    else:
        with open(os.path.join(out_dir, "{:>02}{:>04}.pkl".format(name_prefix, file_idx)), "wb") as f:
            pickle.dump(ret, f)
        del ret[:]


def seed_static(path_case, n_cores, out_dir):
    import multiprocessing
    os.makedirs(out_dir, exist_ok=True)
    block_size = int(path_case.__len__() / n_cores)
    for core in range(n_cores):
        args = (path_case[block_size * core: block_size * core + block_size], core, str(out_dir))
        p = multiprocessing.Process(target=seed_block, args=args)
        p.start()
    # the seed prints 'Waiting for all subprocesses done ...' and returns; Python's exit joins


# -- measuring (Linux /proc; no psutil) -----------------------------------------------------------
def busy_cpu() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (at most `max_wait` s) until other work uses < `threshold` cores for a second."""
    start = time.monotonic()
    while time.monotonic() - start < max_wait:
        b0, t0 = busy_cpu(), time.monotonic()
        time.sleep(1.0)
        if (busy_cpu() - b0) / (time.monotonic() - t0) < threshold:
            break
    return time.monotonic() - start


class Quiet:
    def __init__(self, each: float, total: float):
        self.each, self.total, self.budget = each, total, total

    def wait(self) -> None:
        self.budget -= wait_until_quiet(min(self.each, max(0.0, self.budget)))


def _status_mb(pid: int, field: str) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _descendants(root: int) -> list[int]:
    parent: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parent.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        kids = parent.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def run(argv: list[str], log: Path, env: dict | None = None, poll: float | None = None,
        cap: float | None = None) -> dict:
    """Run one measured process to its end (or kill its process group after `cap` s): wall
    clock, CPU (rusage of it and what it waited for), other work on the machine in cores, its
    last stdout line; with `poll`, RSS samples of the driver and of its descendants."""
    log.parent.mkdir(parents=True, exist_ok=True)
    busy0 = busy_cpu()
    samples = []  # (t, driver rss, driver hwm, {pid: rss})
    killed = False
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env or ENV,
                                start_new_session=True)
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            t = time.perf_counter() - start
            if cap is not None and t > cap and not killed:
                killed = True
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            if poll:
                hwm = _status_mb(proc.pid, "VmHWM:")
                rss = _status_mb(proc.pid, "VmRSS:")
                kids = {k: _status_mb(k, "VmRSS:") for k in _descendants(proc.pid)}
                if hwm:
                    samples.append((t, rss, hwm, kids))
            time.sleep(poll or 0.02)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    if killed:  # orphans of the killed group must not outlive the run
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.5)
    cpu = ru.ru_utime + ru.ru_stime
    others = max(0.0, busy_cpu() - busy0 - cpu)
    lines = log.read_text(errors="replace").strip().splitlines()
    last = {}
    if lines:
        try:
            last = json.loads(lines[-1])
        except ValueError:
            pass
    if proc.returncode != 0 and not killed:
        raise RuntimeError(f"{argv[:4]} exited {proc.returncode}; see {log}:\n" + "\n".join(lines[-15:]))
    return {"seconds": seconds, "cpu": cpu, "others": others / seconds, "out": last,
            "samples": samples, "killed": killed}


def child_argv(python: str, kind: str, **spec) -> list[str]:
    return [python, str(HERE / "map.py"), "--child", kind, json.dumps(spec)]


def clean(*paths: Path) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def count_records(tool: str, dst: Path) -> int:
    """Records in a finished output, read from its index (pickle shards are loaded)."""
    if tool == "datamill":
        return sum(s["records"] for s in json.loads((dst / "index.json").read_text())["shards"])
    if tool == "litdata":
        return sum(c["chunk_size"] for c in json.loads((dst / "index.json").read_text())["chunks"])
    if tool == "datasets":
        import pyarrow.parquet as pq
        return pq.ParquetFile(dst / "data.parquet").metadata.num_rows
    if tool == "seed":
        n = 0
        for f in dst.glob("*.pkl"):
            with open(f, "rb") as fh:
                n += len(pickle.load(fh))
        return n
    raise ValueError(tool)


def ensure_litdata() -> str:
    if not Path(LITDATA_PY).exists():
        if os.environ.get("CI"):
            raise SystemExit(f"litdata's venv {LITDATA_VENV} is missing; it is not built under CI")
        print(f"litdata's virtual environment {LITDATA_VENV} is missing: creating it once "
              "(python3 -m venv; pip install litdata, which brings torch: ~6 GB, a few minutes) ...",
              flush=True)
        LITDATA_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["python3", "-m", "venv", str(LITDATA_VENV)], check=True)
        subprocess.run([str(LITDATA_VENV / "bin" / "pip"), "install", "-q", "litdata"], check=True)
    out = subprocess.run([LITDATA_PY, "-c", "import importlib.metadata as m; print(' '.join("
                          "n + ' ' + m.version(n) for n in ('litdata', 'torch', 'numpy')))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def use_commit(rev: str) -> str:
    """Run datamill from `rev`'s src/ (exported once into bench/_data/map), not the work tree's."""
    global DATAMILL_ARGV, COMMIT
    sha = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", rev], capture_output=True,
                         text=True, check=True).stdout.strip()
    root = DATA / f"src-{sha}"
    if not (root / "src" / "datamill").exists():
        clean(root)
        root.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", sha, "src"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    src = str(root / "src")
    ENV["PYTHONPATH"] = src + os.pathsep + ENV.get("PYTHONPATH", "")
    sys.path.insert(0, src)
    DATAMILL_ARGV = [PY, "-m", "datamill"]
    COMMIT = sha
    return sha


COMMIT = ""
DATAMILL_ARGV = [DATAMILL]


def versions() -> str:
    import importlib.metadata as m
    try:
        git = ["git", "-C", str(HERE.parent)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "src"], capture_output=True, text=True).stdout.strip()
        commit = f" at {head}" + (" + uncommitted changes in src/" if dirty else "")
        if COMMIT:
            commit = f" at {COMMIT} (its src/ exported, on PYTHONPATH)"
    except OSError:
        commit = ""
    return f"datamill{commit}, " + ", ".join(f"{n} {m.version(n)}" for n in ("datasets", "pyarrow", "numpy"))


def have_map() -> bool:
    try:
        import datamill
        return callable(getattr(datamill, "map", None))
    except ImportError:
        return False


# -- the benchmarks -------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.rows: list[list] = []
        self.notes: list[str] = []
        self.targets: list[list] = []
        self.quiet = Quiet(20.0, 30.0 if args.quick else 150.0)
        self.capped: set[str] = set()
        self.dm = have_map() and not args.no_datamill
        if not self.dm:
            self.notes.append("datamill.map is missing (or --no-datamill): only the baselines ran")

    def measure(self, name: str, argv: list[str], dst: Path, tool: str, n: int, env=None,
                poll=None, keep=False) -> dict:
        clean(dst)
        self.quiet.wait()
        res = run(argv, DATA / "logs" / f"{name}.log", env=env, poll=poll, cap=self.args.cap)
        res["bytes"] = du(dst) if dst.exists() else 0
        got = count_records(tool, dst) if tool and not res["killed"] else n
        if got != n:
            raise RuntimeError(f"{name}: {got:,} records in {dst}, expected {n:,}")
        if res["killed"]:
            self.capped.add(name.rsplit("-", 1)[0])
        print(f"  {name:28} {res['seconds']:7.2f} s{' KILLED at the cap' if res['killed'] else ''}  "
              f"{n / res['seconds']:>10,.0f} records/s  "
              f"CPU {res['cpu']:6.1f} s  other work {res['others']:.2f} cores"
              + (f"  {res['bytes'] / 2**20:,.0f} MiB on disk" if res["bytes"] > 2**24 else ""),
              flush=True)
        if not keep:
            clean(dst)
        return res

    def add(self, label: str, tool: str, runs: list[dict], n: int, vs: str = "", extra: str = "") -> float:
        s = median([r["seconds"] for r in runs])
        if any(r["killed"] for r in runs):  # a killed run's time is a lower bound
            tool += f" (KILLED at the {self.args.cap:.0f} s cap: bounds)"
            self.notes.append(f"{label}: {tool}: {sum(r['killed'] for r in runs)} of {len(runs)} runs killed "
                              f"at the cap; its time is at least, its rate at most, the figure shown (the CPU of a "
                              "killed tree, whose workers were never waited for, is not meaningful)")
        self.rows.append([label, tool, f"{s:.2f} s", f"{n / s:,.0f}/s", f"{median([r['cpu'] for r in runs]):.1f} s",
                          f"{median([r['others'] for r in runs]):.2f}", vs, extra])
        return s

    # 1 + 5 ----------------------------------------------------------------------------------------
    def small(self) -> None:
        n, rounds = self.args.items, self.args.rounds
        tools = (["datamill"] if self.dm else []) + ["litdata", "datasets"]
        runs: dict[str, list[dict]] = {t: [] for t in tools}
        for r in range(rounds):
            for tool in tools[:: 1 if r % 2 == 0 else -1]:
                py = LITDATA_PY if tool == "litdata" else PY
                dst = DATA / f"small-{tool}"
                env = {**ENV, "TMPDIR": str(DATA / "tmp")} if tool == "datasets" else None
                if env:
                    clean(DATA / "tmp")
                    (DATA / "tmp").mkdir(parents=True)
                runs[tool].append(self.measure(f"small-{tool}-{r}", child_argv(py, f"{tool}-small", n=n, dst=str(dst)),
                                               dst, tool, n, env=env))
            clean(DATA / "tmp")
        label = f"1. small records: {n:,} ints -> parquet"
        vs_l = [b["seconds"] / a["seconds"] for a, b in zip(runs.get("datamill", []), runs["litdata"])]
        vs_d = [b["seconds"] / a["seconds"] for a, b in zip(runs.get("datamill", []), runs["datasets"])]
        if self.dm:
            self.add(label, "datamill.map (range, 2 workers)", runs["datamill"], n,
                     f"{ratio(median(vs_l))} litdata, {ratio(median(vs_d))} datasets")
            self.targets.append(["small: datamill >= 3x litdata (records/s)", ratio(median(vs_l)),
                                 "met" if median(vs_l) >= 3 else "NOT met"])
            self.targets.append(["small: datamill ahead of datasets", ratio(median(vs_d)),
                                 "met" if median(vs_d) > 1 else "NOT met"])
            self.notes.append("small, each round (datamill's speed over litdata's / datasets'): "
                              + ", ".join(f"{a:.2f}x / {b:.2f}x" for a, b in zip(vs_l, vs_d)))
        self.add(label, "litdata.optimize (num_workers=2)", runs["litdata"], n, "1.00x" if not self.dm else "")
        self.add(label, "datasets .map(num_proc=2) + .to_parquet", runs["datasets"], n)

    def ordered(self) -> None:
        if not self.dm:
            return
        n, rounds = self.args.ordered_items or self.args.items, self.args.rounds
        runs: dict[bool, list[dict]] = {True: [], False: []}
        for r in range(rounds):
            for o in [False, True][:: 1 if r % 2 == 0 else -1]:
                dst = DATA / "ordered"
                runs[o].append(self.measure(f"ordered-{o}-{r}", child_argv(PY, "datamill-small", n=n, dst=str(dst),
                                                                           ordered=o), dst, "datamill", n))
        cost = [a["seconds"] / b["seconds"] - 1 for a, b in zip(runs[True], runs[False])]
        label = f"5. ordered: {n:,} small records"
        self.add(label, "datamill.map ordered=False", runs[False], n)
        self.add(label, "datamill.map ordered=True", runs[True], n, f"{median(cost):+.1%} time")
        self.targets.append(["ordered costs <= 10%", f"{median(cost):+.1%}",
                             "met" if median(cost) <= 0.10 else "NOT met"])
        self.notes.append("ordered, each round (ordered's time over unordered's, - 1): "
                          + ", ".join(f"{c:+.1%}" for c in cost))

    # 2 ------------------------------------------------------------------------------------------
    def disk(self, mib: int) -> dict:
        path = DATA / "dd.bin"
        path.unlink(missing_ok=True)
        self.quiet.wait()
        res = run(["dd", "if=/dev/zero", f"of={path}", "bs=8M", f"count={mib // 8}", "conv=fsync"],
                  DATA / "logs" / "dd.log")
        path.unlink(missing_ok=True)
        res["mbs"] = mib * 2**20 / 1e6 / res["seconds"]
        print(f"  {'disk (dd, fsync)':28} {res['seconds']:7.2f} s  {res['mbs']:>10,.0f} MB/s  "
              f"other work {res['others']:.2f} cores", flush=True)
        return res

    def large(self) -> None:
        n, rounds, mib = self.args.large_items, self.args.rounds, self.args.disk_mib
        fmts = self.args.large_formats.split(",")
        tools = ([f"datamill:{f}" for f in fmts] if self.dm else []) + ["litdata"]
        runs: dict[str, list[dict]] = {t: [] for t in tools}
        disks = []
        for r in range(rounds):
            disks.append(self.disk(mib))
            for tool in tools[:: 1 if r % 2 == 0 else -1]:
                py = LITDATA_PY if tool == "litdata" else PY
                name = tool.replace(":", "-")
                kind = "litdata-large" if tool == "litdata" else f"datamill-large:{tool.split(':')[1]}"
                dst = DATA / f"large-{name}"
                runs[tool].append(self.measure(f"large-{name}-{r}", child_argv(py, kind, n=n, dst=str(dst)),
                                               dst, tool.split(":")[0], n))
        disk = median([d["mbs"] for d in disks])
        label = f"2. large records: {n:,} x 1 MiB -> {LARGE_SHARD} MiB shards, to fsync"

        payload = n * 2**20 / 1e6  # MB of arrays

        def mbs(rs):  # payload MB/s, and MB/s of the bytes on disk
            return (median([payload / x["seconds"] for x in rs]),
                    median([x["bytes"] / 1e6 / x["seconds"] for x in rs]))

        def describe(rs):
            p, d = mbs(rs)
            return (f"{p:,.0f} MB/s of arrays ({p / disk:.0%} of dd); {d:,.0f} MB/s on disk "
                    f"({d / disk:.0%} of dd): {rs[-1]['bytes'] / 2**20:,.0f} MiB written")
        self.rows.append([label, f"disk: dd 8 MiB blocks, {mib:,} MiB, conv=fsync",
                          f"{median([d['seconds'] for d in disks]):.2f} s", f"{disk:,.0f} MB/s", "",
                          f"{median([d['others'] for d in disks]):.2f}", "", ""])
        for tool in (tools[:-1] if self.dm else []):
            fmt = tool.split(":")[1]
            vs = [b["seconds"] / a["seconds"] for a, b in zip(runs[tool], runs["litdata"])]
            of_disk = mbs(runs[tool])[0] / disk
            self.add(label, f"datamill.map {fmt} (2 workers)", runs[tool], n,
                     f"{ratio(median(vs))} litdata", describe(runs[tool]))
            self.targets.append([f"large ({fmt}): datamill >= 1x litdata", ratio(median(vs)),
                                 "met" if median(vs) >= 1 else "NOT met"])
            self.targets.append([f"large ({fmt}): datamill >= 50% of the disk's speed (arrays' MB/s over dd's)",
                                 f"{of_disk:.0%}", "met" if of_disk >= 0.5 else "NOT met"])
            self.notes.append(f"large {fmt}, each round (datamill's speed over litdata's; dd MB/s): " + ", ".join(
                f"{v:.2f}x ({d['mbs']:,.0f})" for v, d in zip(vs, disks)))
        self.add(label, "litdata.optimize chunk_size=128 (2 workers)", runs["litdata"], n, "",
                 describe(runs["litdata"]))
        self.notes.append("large: 'other work' includes the kernel's writeback threads flushing the "
                          "runs' own pages (dd itself uses little CPU, its 'other work' is mostly that)")

    # 3 ------------------------------------------------------------------------------------------
    def seed(self) -> None:
        n, rounds, procs = self.args.seed_items, self.args.rounds, WORKERS
        env = {**ENV, "BENCH_MAP_SEED": f"{n},{procs}"}
        tools = (["datamill"] if self.dm else []) + ["seed"]
        runs: dict[str, list[dict]] = {t: [] for t in tools}
        for r in range(rounds):
            for tool in tools[:: 1 if r % 2 == 0 else -1]:
                dst = DATA / f"seed-{tool}"
                kind = "datamill-seed" if tool == "datamill" else "seed-static"
                runs[tool].append(self.measure(f"seed-{tool}-{r}", child_argv(PY, kind, n=n, dst=str(dst), procs=procs),
                                               dst, tool, n, env=env))
        block = n // procs
        ideal_static = block * SEED_SLOW
        ideal_dyn = (block * SEED_SLOW + (n - block) * SEED_FAST) / procs
        label = (f"3. seed shape: {n:,} items, {procs} static blocks, the last 10x slower "
                 f"({SEED_SLOW * 1000:.0f} vs {SEED_FAST * 1000:.0f} ms sleep)")
        if self.dm:
            vs = [b["seconds"] / a["seconds"] for a, b in zip(runs["datamill"], runs["seed"])]
            self.add(label, f"datamill.map pickle (workers={procs})", runs["datamill"], n,
                     f"{ratio(median(vs))} the seed", f"balanced ideal {ideal_dyn:.1f} s")
            self.targets.append(["seed shape: datamill >= 1.5x the seed's static split", ratio(median(vs)),
                                 "met" if median(vs) >= 1.5 else "NOT met"])
        self.add(label, f"seed 003: {procs} Processes, static blocks, pickle", runs["seed"], n, "",
                 f"ideal {ideal_static:.1f} s")

    # 4 ------------------------------------------------------------------------------------------
    def memory(self) -> None:
        if not self.dm:
            return
        n = self.args.mem_lines
        txt = DATA / f"lines-{n}.txt"
        if not txt.exists():
            t0 = time.perf_counter()
            tmp = txt.with_name(".tmp-" + txt.name)
            with open(tmp, "w") as f:
                for s in range(0, n, 100_000):
                    f.write("".join(f"line {i}\n" for i in range(s, min(n, s + 100_000))))
            os.replace(tmp, txt)
            print(f"  generated {txt} ({txt.stat().st_size / 2**20:,.0f} MiB) in "
                  f"{time.perf_counter() - t0:.0f} s (once)", flush=True)
        dst = DATA / "memory"
        argv = [*DATAMILL_ARGV, "map", str(txt), str(dst), "--fn", f"{HERE / 'map.py'}:line_record",
                "--format", "parquet", "--shard-size", str(SHARD), "--workers", str(WORKERS), "--quiet"]
        res = self.measure("memory", argv, dst, "datamill", n, poll=0.25)
        sm = res["samples"]
        if not sm:
            raise RuntimeError("memory: no samples")
        driver_peak = max(s[2] for s in sm)
        # the workers' span: the samples in which all of them are alive
        nk = max(len(s[3]) for s in sm)
        span = [s for s in sm if len(s[3]) == nk and nk]
        if not span:
            raise RuntimeError("memory: no worker process was seen")
        t0, t1 = span[0][0], span[-1][0]
        at10 = next(s for s in span if s[0] >= t0 + 0.1 * (t1 - t0))
        w10, wend = sum(at10[3].values()), sum(span[-1][3].values())
        wmax = max(sum(s[3].values()) for s in sm)
        one = max((v for s in sm for v in s[3].values()), default=0.0)
        flat = wend <= 1.1 * w10
        label = f"4. memory: {n:,}-line txt, CLI, trivial function"
        if res["killed"]:
            self.notes.append(f"memory: KILLED at the {self.args.cap:.0f} s cap before its {n:,} lines were "
                              "done: its rate is at most the figure shown, its memory figures cover the "
                              "time it ran, and its CPU (rusage of a killed tree) is not meaningful")
        self.rows.append([label, "datamill map (CLI, 2 workers)" + (" (KILLED at the cap)" if res["killed"] else ""),
                          f"{res['seconds']:.1f} s", f"{'<= ' if res['killed'] else ''}{n / res['seconds']:,.0f}/s",
                          f"{res['cpu']:.1f} s", f"{res['others']:.2f}",
                          f"driver peak {driver_peak:,.0f} MB",
                          f"workers (sum of {nk} processes) {w10:,.0f} MB at 10% of their span ({at10[0]:.0f} s) -> "
                          f"{wend:,.0f} MB at its end ({t1:.0f} s), "
                          f"max {wmax:,.0f} MB (largest one {one:,.0f} MB): {'flat' if flat else 'GROWING'}"])
        self.targets.append(["memory: driver peak RSS < 300 MB", f"{driver_peak:,.0f} MB",
                             "met" if driver_peak < 300 else "NOT met"])
        self.targets.append(["memory: workers' RSS flat (end <= 1.1x the 10% sample)",
                             f"{wend / w10 if w10 else 0:.2f}x", "met" if flat else "NOT met"])
        self.notes.append("memory, driver RSS over the run (s: MB): " + ", ".join(
            f"{s[0]:.0f}: {s[1]:.0f}" for s in sm[:: max(1, len(sm) // 10)]))
        self.notes.append("memory, workers' RSS sum over the run (s: MB): " + ", ".join(
            f"{s[0]:.0f}: {sum(s[3].values()):.0f}" for s in sm[:: max(1, len(sm) // 10)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round, fewer items: a smoke run")
    ap.add_argument("--rounds", type=int, help="rounds per figure (median; default 3, quick 1)")
    ap.add_argument("--only", default="small,large,seed,memory,ordered", help="parts to run (comma-separated)")
    ap.add_argument("--items", type=int, help="small and ordered workloads (default 1,000,000; quick 50,000)")
    ap.add_argument("--ordered-items", type=int, help="ordered workload (default: --items)")
    ap.add_argument("--large-items", type=int, help="1 MiB items (default 10,000; quick 600)")
    ap.add_argument("--large-formats", default="webdataset,parquet",
                    help="datamill's formats in the large workload (comma-separated)")
    ap.add_argument("--disk-mib", type=int, help="MiB written by dd (default 4096; quick 512)")
    ap.add_argument("--seed-items", type=int, help="seed workload items (default 2,000; quick 400)")
    ap.add_argument("--mem-lines", type=int, help="memory workload lines (default 10,000,000; quick 500,000)")
    ap.add_argument("--cap", type=float, default=600.0, help="kill a run after this many seconds "
                    "(its time then bounds the figure; default 600)")
    ap.add_argument("--commit", help="benchmark datamill as of this commit (git archive of its src/), "
                    "not the work tree (which may be mid-edit)")
    ap.add_argument("--no-datamill", action="store_true", help="baselines only")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], json.loads(args.child[1]))
    q = args.quick
    args.rounds = args.rounds or (1 if q else 3)
    args.items = args.items or (50_000 if q else 1_000_000)
    args.large_items = args.large_items or (600 if q else 10_000)
    args.disk_mib = args.disk_mib or (512 if q else 4096)
    args.seed_items = args.seed_items or (400 if q else 2_000)
    args.mem_lines = args.mem_lines or (500_000 if q else 10_000_000)
    parts = args.only.split(",")
    unknown = set(parts) - {"small", "large", "seed", "memory", "ordered"}
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}")
    DATA.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.commit:
        use_commit(args.commit)
    lit = ensure_litdata() if {"small", "large"} & set(parts) else "not used"
    print(f"bench/map.py: {machine()}; {versions()}; litdata venv {LITDATA_VENV} ({lit}); "
          f"{WORKERS} workers; median of {args.rounds} round(s){' (quick)' if q else ''}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    b = Bench(args)
    for part in ["small", "large", "seed", "memory", "ordered"]:
        if part in parts:
            print(f"{part}:", flush=True)
            getattr(b, part)()
    clean(DATA / "litdata-cache", DATA / "tmp")
    print()
    rows, prev = [], None
    for r in b.rows:  # each benchmark's label once
        rows.append(["" if r[0] == prev else r[0], *r[1:]])
        prev = r[0]
    print(table(["benchmark", "tool", "wall clock", "records/s", "CPU", "other work (cores)",
                 "datamill vs", "notes"], rows))
    if b.targets:
        print()
        print(table(["target", "measured", ""], b.targets))
    print()
    for n in b.notes:
        print(f"- {n}")
    print(f"- waited {b.quiet.total - max(0.0, b.quiet.budget):.0f} s in all for a quiet machine; "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"\nbenchmark wall clock {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
