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


# -- main -----------------------------------------------------------------------------------
SECTIONS = {"transport": (bench_transport, transport_targets)}


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
