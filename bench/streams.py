"""The streams job: the transport of frame batches between processes.

    .venv/bin/python bench/streams.py [--quick] [--repeat N] [--only transport]

transport: 25-frame batches of 1080p RGB frames (155.5 MB each) go from a producer process
to a consumer process, which copies every batch out (np.copyto into a preallocated array,
so it touches every byte) and checks each frame's stamp.  Side by side, in alternating
order within each round:

- `mp.Queue`: the seed's design, each batch pickled through the queue's pipe;
- `mp.Pipe` + a prefetch thread: the seed's improved design (`conn.send` of each batch, a
  thread in the consumer receiving the next batch while the main thread copies one);
- datamill's `Ring` (one slot per batch, 4 slots): the producer stamps each frame in the
  slot and commits it, the consumer copies out of the read-only view and releases it.  A
  decoder writes its frames into the slot; that write is the decoder's work, and is the
  same in every design, so the producers only stamp frames.  The row "producer writes every
  byte" also copies a whole batch into each slot, on the same 2 cores as the consumer;
- memcpy: np.copyto of the same batches in one process, the bandwidth ceiling.

Every figure is the median of N rounds (default 3); a ratio is the median of the ratios
within each round.  Times run from the consumer's go signal to its last copy.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import queue
import sys
import threading
import time

import numpy as np

from datamill.engine.shm import Ring

from _common import machine, median, ratio, table

FRAME = (1080, 1920, 3)
BATCH_FRAMES = 25
BATCH = (BATCH_FRAMES, *FRAME)
BATCH_BYTES = int(np.prod(BATCH))
RING_SLOTS = 4
_ctx = mp.get_context("fork")


# -- transport ------------------------------------------------------------------------------
def _stamp(batch: np.ndarray, n: int) -> None:
    """Number the frames of batch `n` (the first pixel of each frame)."""
    batch[:, 0, 0, 0] = (n * BATCH_FRAMES + np.arange(BATCH_FRAMES)) % 251


def _check(batch: np.ndarray, n: int) -> None:
    if not np.array_equal(batch[:, 0, 0, 0], (n * BATCH_FRAMES + np.arange(BATCH_FRAMES)) % 251):
        raise AssertionError(f"batch {n} arrived wrong")


def _queue_producer(ready, go, q, batches: int) -> None:
    batch = np.ones(BATCH, np.uint8)
    ready.set()
    go.wait()
    for n in range(batches):
        _stamp(batch, n)
        q.put(batch.copy())  # the queue pickles it later, in its feeder thread
    q.put(None)


def _pipe_producer(ready, go, conn, batches: int) -> None:
    batch = np.ones(BATCH, np.uint8)
    ready.set()
    go.wait()
    for n in range(batches):
        _stamp(batch, n)
        conn.send(batch)
    conn.send(None)


def _ring_producer(ready, go, handle, batches: int, write_all: bool) -> None:
    ring = Ring.attach(handle)
    source = np.ones(BATCH, np.uint8) if write_all else None
    ready.set()
    go.wait()
    for n in range(batches):
        slot = ring.reserve()
        view = slot.view(np.uint8, BATCH)
        if write_all:
            np.copyto(view, source)
        _stamp(view, n)
        slot.commit({"batch": n})
    ring.close()


def _run(target, args, consume, out: np.ndarray) -> float:
    """Start a producer, wait until it is ready, then time `consume(out)`."""
    ready, go = _ctx.Event(), _ctx.Event()
    proc = _ctx.Process(target=target, args=(ready, go, *args), daemon=True)
    proc.start()
    ready.wait()
    start = time.perf_counter()
    go.set()
    consume(out)
    seconds = time.perf_counter() - start
    proc.join(30)
    if proc.exitcode != 0:
        raise RuntimeError(f"the producer exited with {proc.exitcode}")
    return seconds


def transport_queue(batches: int, out: np.ndarray) -> float:
    q = _ctx.Queue(maxsize=2)

    def consume(out):
        n = 0
        while (batch := q.get()) is not None:
            np.copyto(out, batch)
            _check(out, n)
            n += 1
    return _run(_queue_producer, (q, batches), consume, out)


def transport_pipe(batches: int, out: np.ndarray) -> float:
    reader, writer = _ctx.Pipe(duplex=False)

    def consume(out):
        prefetched: queue.Queue = queue.Queue(maxsize=2)
        thread = threading.Thread(target=lambda: [prefetched.put(reader.recv())
                                                  for _ in range(batches + 1)], daemon=True)
        thread.start()
        n = 0
        while (batch := prefetched.get()) is not None:
            np.copyto(out, batch)
            _check(out, n)
            n += 1
        thread.join()
    return _run(_pipe_producer, (writer, batches), consume, out)


def transport_ring(batches: int, out: np.ndarray, write_all: bool = False) -> float:
    with Ring.create(BATCH_BYTES, RING_SLOTS, name="bench") as ring:
        def consume(out):
            while (slot := ring.get()) is not None:
                with slot:
                    np.copyto(out, slot.view(np.uint8, BATCH))
                    _check(out, slot.meta["batch"])
        return _run(_ring_producer, (ring.handle, batches, write_all), consume, out)


def transport_memcpy(batches: int, out: np.ndarray, source: np.ndarray) -> float:
    start = time.perf_counter()
    for n in range(batches):
        np.copyto(out, source)
    return time.perf_counter() - start


def bench_transport(quick: bool, repeat: int) -> tuple[str, dict]:
    slow_batches, fast_batches = (2, 8) if quick else (6, 40)
    out = np.zeros(BATCH, np.uint8)
    source = np.ones(BATCH, np.uint8)
    methods = {
        "mp.Queue (seed)": (slow_batches, lambda n: transport_queue(n, out)),
        "mp.Pipe + prefetch thread (seed, improved)": (slow_batches, lambda n: transport_pipe(n, out)),
        "datamill Ring": (fast_batches, lambda n: transport_ring(n, out)),
        "datamill Ring, producer writes every byte": (fast_batches,
                                                      lambda n: transport_ring(n, out, True)),
        "memcpy, one process (ceiling)": (fast_batches, lambda n: transport_memcpy(n, out, source)),
    }
    names = list(methods)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            batches, fn = methods[name]
            rates[name].append(batches * BATCH_FRAMES / fn(batches))
        print(f"  round {r + 1}/{repeat}: " + ", ".join(f"{n.split(' (')[0]} {rates[n][-1]:,.0f}"
                                                       for n in names) + " frames/s", flush=True)
    ring, queue_, memcpy = "datamill Ring", "mp.Queue (seed)", "memcpy, one process (ceiling)"
    per_round = lambda a, b: median([x / y for x, y in zip(rates[a], rates[b])])  # noqa: E731
    rows = []
    for name in names:
        fps = median(rates[name])
        rows.append([name, f"{fps:,.0f}", f"{fps * BATCH_BYTES / BATCH_FRAMES / 1e9:.2f}",
                     ratio(per_round(name, queue_)), f"{per_round(name, memcpy):.0%}"])
    text = table(["transport, 25-frame batches of 1080p RGB", "frames/s", "GB/s", "vs Queue",
                  "of memcpy"], rows)
    result = {"ring_vs_queue": per_round(ring, queue_), "ring_vs_memcpy": per_round(ring, memcpy),
              "rates": rates}
    return text, result


def transport_targets(res: dict) -> list[list[str]]:
    q, m = res["ring_vs_queue"], res["ring_vs_memcpy"]
    return [["ring >= 20x mp.Queue's frames/s", f"{q:.1f}x", "met" if q >= 20 else "NOT met"],
            ["ring >= 50% of memcpy bandwidth", f"{m:.0%}", "met" if m >= 0.5 else "NOT met"]]


# -- generated videos -----------------------------------------------------------------------
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_data", "streams")
E2E_SIZE = (640, 360)
FPS = 25


def _concat(src: str, dst: str, times: int) -> str:
    """`src` repeated `times` times in one file, by copying its packets with shifted
    timestamps (no re-encoding; the clip starts with a keyframe and has closed GOPs)."""
    import av
    if os.path.exists(dst):
        return dst
    with av.open(src) as inp:
        vin = inp.streams.video[0]
        packets = [p for p in inp.demux(vin) if p.dts is not None]
        step = max(p.pts + (p.duration or 0) for p in packets) - min(p.pts for p in packets)
        tmp = dst + ".tmp.mp4"
        with av.open(tmp, "w") as out:
            vout = out.add_stream_from_template(vin)
            for k in range(times):
                for p in packets:
                    q = av.Packet(bytes(p))
                    q.pts, q.dts, q.duration = p.pts + k * step, p.dts + k * step, p.duration
                    q.is_keyframe = p.is_keyframe
                    q.time_base = p.time_base
                    q.stream = vout
                    out.mux(q)
    os.replace(tmp, dst)
    return dst


def _videos(kind: str, seconds: int) -> list[str]:
    """Two different generated H.264 files of `seconds` at 25 fps: 1080p ("hd"; a 10 s clip
    encoded once per source and repeated by remuxing) or 160x120 ("small")."""
    from datamill.testing.videos import make_video
    os.makedirs(DATA, exist_ok=True)
    size, clip_s = ((1920, 1080), 10) if kind == "hd" else ((160, 120), 40)
    out = []
    for i, pattern in enumerate(("moving", "static")):
        clip = os.path.join(DATA, f"{kind}{i}-clip{clip_s}s.mp4")
        if not os.path.exists(clip):
            t = time.perf_counter()
            make_video(clip + ".tmp.mp4", frames=clip_s * FPS, size=size, fps=FPS, gop=FPS,
                       pattern=pattern)
            os.replace(clip + ".tmp.mp4", clip)
            print(f"  generated {clip} in {time.perf_counter() - t:.0f} s", flush=True)
        times = -(-seconds // clip_s)
        out.append(_concat(clip, os.path.join(DATA, f"{kind}{i}-{times * clip_s}s.mp4"), times))
    return out


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def _shm_left() -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("datamill-"))


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


# -- e2e-realtime ---------------------------------------------------------------------------
def _seed_decoder(path: str, q, t0: float, windows: int) -> None:
    """The seed's design: decode, resize, pace to real time, put 25-frame batches in a Queue."""
    import av
    w, h = E2E_SIZE
    batch = []
    n = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        first = None
        for frame in c.decode(s):
            t = float(frame.time)
            first = t if first is None else first
            wait = t0 + (t - first) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            batch.append(frame.reformat(width=w, height=h, format="rgb24").to_ndarray())
            if len(batch) == FPS:
                q.put(np.stack(batch))
                batch = []
                n += 1
                if n >= windows:
                    break
    q.put(None)


def e2e_seed(files: list[str], windows: int) -> dict:
    queues = [_ctx.Queue(maxsize=4) for _ in files]
    t0 = time.monotonic() + 0.5  # both decoders start their clock together
    procs = [_ctx.Process(target=_seed_decoder, args=(f, q, t0, windows), daemon=True)
             for f, q in zip(files, queues)]
    for p in procs:
        p.start()
    delays, counts = [], []
    for w in range(windows):
        got = [q.get() for q in queues]
        if any(g is None for g in got):
            break
        delays.append(time.monotonic() - (t0 + (w + 1) * 1.0))
        counts.append(min(len(g) for g in got))
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
    return {"delays": delays, "counts": counts, "full": math.nan, "windows": len(delays)}


def e2e_datamill(files: list[str], windows: int, realtime: bool = True) -> dict:
    import datamill
    delays, counts, full, frames = [], [], [], 0
    start = time.monotonic()
    with datamill.streams(files, window=1, fps=FPS, size=E2E_SIZE, realtime=realtime) as stream:
        clock = stream.t0  # the clock the decoders pace the files by (the cameras' time)
        print(f"  stream start-up (rings, decoders): {clock - start:.3f} s", flush=True)
        for b in stream:
            now = time.monotonic()
            delays.append(now - (clock + (b.window + 1) * 1.0))
            mask = b.mask
            counts.append(int(mask.sum(axis=1).min()))
            full.append(bool(mask.all()))
            frames += int(mask.sum())
            if len(delays) >= windows:
                break
        stats = [dict(s) for s in b.stats]
    seconds = time.monotonic() - start
    return {"delays": delays, "counts": counts, "full": float(np.mean(full)),
            "windows": len(delays), "stats": stats, "fps": frames / seconds}


def bench_e2e_realtime(quick: bool, repeat: int) -> tuple[str, dict]:
    windows, seed_windows = (20, 10) if quick else (300, 60)
    files = _videos("hd", max(windows, seed_windows) + 10)
    rows, res = [], {}
    for name, fn, n in (("datamill.streams, realtime=True", e2e_datamill, windows),
                        ("seed: 2 processes -> mp.Queue of 25-frame batches", e2e_seed,
                         seed_windows)):
        load0 = _load()
        r = fn(files, n)
        res[name] = r
        d = r["delays"]
        per_window = f"{min(r['counts'])}-{max(r['counts'])}" if r["counts"] else "-"
        rows.append([name, r["windows"], f"{_pct(d, 50) * 1000:.0f}", f"{_pct(d, 99) * 1000:.0f}",
                     f"{max(d) * 1000:.0f}" if d else "-", per_window,
                     "" if math.isnan(r["full"]) else f"{r['full']:.0%}", f"{load0} -> {_load()}"])
        print(f"  {name}: {r['windows']} windows, p99 {_pct(d, 99) * 1000:.0f} ms", flush=True)
    text = table(["two 1080p H.264 files, 25 fps, to 640x360, window 1 s", "windows",
                  "delay p50 ms", "p99 ms", "max ms", "frames/source/window", "mask all true",
                  "load avg 1/5/15 (start -> end)"], rows)
    dm = res["datamill.streams, realtime=True"]
    text += "\n\ndatamill per-source counters at the end: " + "; ".join(
        f"source {i}: " + ", ".join(f"{k} {v}" for k, v in s.items()) for i, s in enumerate(dm["stats"]))
    return text, {"p99": _pct(dm["delays"], 99), "min_frames": min(dm["counts"]),
                  "full": dm["full"], "windows": dm["windows"]}


def e2e_realtime_targets(res: dict) -> list[list[str]]:
    return [["realtime: every window within 100 ms of its end (p99)", f"{res['p99'] * 1000:.0f} ms",
             "met" if res["p99"] <= 0.1 else "NOT met"],
            ["realtime: 25 frames per source, mask all true",
             f"min {res['min_frames']}, {res['full']:.0%} all true",
             "met" if res["min_frames"] == 25 and res["full"] == 1 else "NOT met"],
            ["realtime: at least 300 windows", str(res["windows"]),
             "met" if res["windows"] >= 300 else "NOT met (quick)"]]


# -- e2e-fast -------------------------------------------------------------------------------
def _ceiling_decoder(path: str, frames: int, done) -> None:
    import av
    w, h = E2E_SIZE
    n = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for frame in c.decode(s):
            frame.reformat(w, h, "rgb24").to_ndarray()
            n += 1
            if n >= frames:
                break
    done.put(n)


def e2e_ceiling(files: list[str], frames: int) -> float:
    done = _ctx.Queue()
    start = time.monotonic()
    procs = [_ctx.Process(target=_ceiling_decoder, args=(f, frames, done)) for f in files]
    for p in procs:
        p.start()
    total = sum(done.get() for _ in procs)
    seconds = time.monotonic() - start
    for p in procs:
        p.join()
    return total / seconds


def bench_e2e_fast(quick: bool, repeat: int) -> tuple[str, dict]:
    windows = 8 if quick else 40
    files = _videos("hd", max(windows + 10, 310 if not quick else 30))
    dm, ceil, ratios = [], [], []
    load0 = _load()
    for r in range(repeat):
        pair = []
        for name in (("datamill", "ceiling") if r % 2 == 0 else ("ceiling", "datamill")):
            if name == "datamill":
                pair.append(("d", e2e_datamill(files, windows, realtime=False)["fps"]))
            else:
                pair.append(("c", e2e_ceiling(files, windows * FPS)))
        d, c = dict(pair)["d"], dict(pair)["c"]
        dm.append(d)
        ceil.append(c)
        ratios.append(d / c)
        print(f"  round {r + 1}/{repeat}: datamill {d:.0f} frames/s, ceiling {c:.0f}", flush=True)
    rows = [["datamill.streams, realtime=False (frames of both sources)", f"{median(dm):.0f}",
             f"{median(ratios):.0%}"],
            ["ceiling: 2 plain processes, decode + reformat(640, 360, rgb24)", f"{median(ceil):.0f}",
             "100%"]]
    text = table([f"two 1080p H.264 files, first {windows} s each, to 640x360", "frames/s",
                  "of ceiling"], rows) + f"\n\nload average {load0} -> {_load()}"
    return text, {"ratio": median(ratios)}


def e2e_fast_targets(res: dict) -> list[list[str]]:
    return [["realtime=False >= 85% of the two-process ceiling", f"{res['ratio']:.0%}",
             "met" if res["ratio"] >= 0.85 else "NOT met"]]


# -- rss ------------------------------------------------------------------------------------
def bench_rss(quick: bool, repeat: int) -> tuple[str, dict]:
    import datamill
    windows = 500 if quick else 5000
    window = 0.2
    files = _videos("small", int(windows * window) + 40)
    every = max(1, windows // 20)
    samples = []  # (window, consumer MB, decoder MBs)
    start = time.monotonic()
    with datamill.streams(files, window=window, fps=FPS, size=(64, 36)) as stream:
        pids = [st.process.pid for st in stream.states]
        n = 0
        for b in stream:
            n += 1
            if n % every == 0 or n == 1:
                samples.append((n, _rss_mb(os.getpid()), [_rss_mb(p) for p in pids]))
            if n >= windows:
                break
    seconds = time.monotonic() - start
    time.sleep(0.2)
    left = _shm_left()
    first, last = samples[1] if len(samples) > 2 else samples[0], samples[-1]
    flat = lambda a, b: abs(b - a) <= 0.1 * a  # noqa: E731
    rows = [["consumer", f"{first[1]:.0f}", f"{last[1]:.0f}", f"{max(s[1] for s in samples):.0f}",
             "flat" if flat(first[1], last[1]) else "GROWS"]]
    for i in range(len(pids)):
        a, b = first[2][i], last[2][i]
        rows.append([f"decoder {i}", f"{a:.0f}", f"{b:.0f}", f"{max(s[2][i] for s in samples):.0f}",
                     "flat" if flat(a, b) else "GROWS"])
    text = table([f"RSS MiB over {n} windows of {window} s (2 sources, 160x120 -> 64x36, "
                  f"realtime=False, {seconds:.0f} s)", f"at window {first[0]}",
                  f"at window {last[0]}", "max", "within 10%"], rows)
    text += f"\n\n/dev/shm after the stream: {', '.join(left) or 'no datamill-* file'}"
    ok = all(r[-1] == "flat" for r in rows)
    return text, {"flat": ok, "left": left, "windows": n}


def rss_targets(res: dict) -> list[list[str]]:
    return [[f"RSS flat over {res['windows']} windows", "flat" if res["flat"] else "grows",
             "met" if res["flat"] else "NOT met"],
            ["no segment left in /dev/shm", ", ".join(res["left"]) or "none",
             "met" if not res["left"] else "NOT met"]]


# -- main -----------------------------------------------------------------------------------
SECTIONS = {"transport": (bench_transport, transport_targets),
            "e2e-realtime": (bench_e2e_realtime, e2e_realtime_targets),
            "e2e-fast": (bench_e2e_fast, e2e_fast_targets),
            "rss": (bench_rss, rss_targets)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer batches: a smoke run")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per figure (median)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated: "
                    + ",".join(SECTIONS))
    args = ap.parse_args()
    parts = args.only.split(",")
    unknown = [p for p in parts if p not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    print(f"bench/streams.py: {machine()}, median of {args.repeat} rounds"
          + (" (quick)" if args.quick else "") + f"; load average {os.getloadavg()[0]:.1f}",
          flush=True)
    targets = []
    for part in parts:
        run, judge = SECTIONS[part]
        text, res = run(args.quick, args.repeat)
        print("\n" + text, flush=True)
        targets += judge(res)
    print("\n" + table(["target", "measured", ""], targets), flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (other processes share the cores)")


if __name__ == "__main__":
    sys.exit(main())
