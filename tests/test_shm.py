"""engine/shm: the shared-memory ring (delivery, backpressure, drop-oldest, endings) and the
cleanup of its segments after any ending of any process."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from datamill.engine.shm import Ring, RingError, die_with_owner
from datamill.engine.shm.segments import SHM_DIR, process_start, registry_dir

fork = mp.get_context("fork")


def segments() -> set[str]:
    return {n for n in os.listdir(SHM_DIR) if n.startswith("datamill-")}


@pytest.fixture(autouse=True)
def no_segment_left(tmp_path, monkeypatch):
    """Each test has its own registry, and leaves /dev/shm as it found it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = segments()
    yield
    assert not segments() - before  # (other processes' segments may come and go meanwhile)


def wait_for(cond, seconds=5.0):
    end = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def python(code: str, **kw) -> subprocess.Popen:
    """A child Python running `code`, with pipes."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# A child that creates a ring, prints its segment, then waits for its stdin to close.
OWNER = """
    import sys
    from datamill.engine.shm import Ring
    ring = Ring.create(4096, 2, name="child")
    print(ring.handle.segment, flush=True)
    sys.stdin.read()
"""


def _produce(handle, n, shape=(4, 5)):
    ring = Ring.attach(handle)
    for i in range(n):
        slot = ring.reserve()
        slot.view(np.int32, shape)[:] = i
        slot.commit({"i": i, "name": f"frame{i}"})
    ring.close()


# -- delivery ------------------------------------------------------------------------------
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_round_trip_across_processes_read_only_views(start):
    with Ring.create(4 * 20, 3) as ring:
        proc = mp.get_context(start).Process(target=_produce, args=(ring.handle, 10))
        proc.start()
        got = []
        while (slot := ring.get(timeout=10)) is not None:
            with slot:
                view = slot.view(np.int32, (4, 5))
                assert not view.flags.writeable
                with pytest.raises(ValueError):
                    view[0, 0] = 1
                with pytest.raises(ValueError):
                    view.flags.writeable = True
                assert (view == slot.meta["i"]).all()
                got.append(slot.meta["name"])
        proc.join(10)
        assert proc.exitcode == 0
        assert got == [f"frame{i}" for i in range(10)]


def test_views_are_the_slot_memory_and_must_fit():
    with Ring.create(64, 2) as ring:
        slot = ring.reserve()
        assert slot.view().shape == (64,)
        with pytest.raises(RingError, match="65 bytes .* slot of 64 bytes"):
            slot.view(np.uint8, 65)
        slot.view(np.uint8)[:] = 7
        slot.commit()
        read = ring.get(timeout=1)
        assert read.meta == {}
        a, b = read.view(), read.view()
        assert np.shares_memory(a, b) and (a == 7).all()
        assert not np.shares_memory(read.copy(), a)


def test_meta_too_large_names_meta_bytes():
    with Ring.create(8, 1, meta_bytes=64) as ring:
        slot = ring.reserve()
        with pytest.raises(RingError, match="meta_bytes"):
            slot.commit({"text": "x" * 100})
        slot.abort()
        assert ring.reserve(timeout=0) is not None  # the aborted slot is free again


def test_use_after_release_raises_naming_copy():
    with Ring.create(16, 1) as ring:
        ring.reserve().commit({"pts": 0.04})
        slot = ring.get(timeout=1)
        kept = slot.copy(np.uint8, 16)
        slot.release()
        for use in (slot.view, slot.copy):
            with pytest.raises(RingError, match=r"\.copy\(\)"):
                use()
        slot.release()  # idempotent
        assert kept.shape == (16,) and slot.meta == {"pts": 0.04}


def test_slot_not_committed_in_its_block_is_aborted():
    with Ring.create(16, 1) as ring:
        with pytest.raises(ZeroDivisionError):
            with ring.reserve() as slot:
                1 / 0
        assert ring.get(timeout=0) is None
        with ring.reserve(timeout=0) as slot:
            slot.commit()
        with pytest.raises(RingError, match="already committed"):
            slot.commit()


# -- backpressure and drop-oldest ----------------------------------------------------------
def test_backpressure_blocks_the_producer_until_a_release():
    with Ring.create(8, 2) as ring:
        for i in range(2):
            ring.reserve(timeout=0).commit({"i": i})
        assert ring.reserve(timeout=0.2) is None  # full
        reserved = []
        waiter = threading.Thread(target=lambda: reserved.append(ring.reserve(timeout=10)))
        waiter.start()
        time.sleep(0.3)
        assert not reserved  # still blocked
        first = ring.get(timeout=1)
        assert first.meta == {"i": 0}
        first.release()
        waiter.join(5)
        assert reserved and reserved[0] is not None
        assert ring.dropped == 0


def _produce_fast(handle, n):
    ring = Ring.attach(handle)
    for i in range(n):
        slot = ring.reserve(timeout=5)
        slot.view(np.int64, 1)[0] = i
        slot.commit({"i": i})
    ring.close()


def test_drop_oldest_with_a_slow_consumer():
    n = 200
    with Ring.create(1 << 16, 3, drop_oldest=True) as ring:
        size = os.path.getsize(os.path.join(SHM_DIR, ring.handle.segment))
        proc = fork.Process(target=_produce_fast, args=(ring.handle, n))
        proc.start()
        got = []
        while (slot := ring.get(timeout=10)) is not None:
            with slot:
                assert slot.view(np.int64, 1)[0] == slot.meta["i"]
                got.append(slot.meta["i"])
            time.sleep(0.01)  # slower than the producer
        proc.join(10)
        assert proc.exitcode == 0
        assert got == sorted(got) and got[-1] == n - 1  # in order, ending with the newest
        assert ring.dropped > 0 and ring.dropped + len(got) == n
        assert os.path.getsize(os.path.join(SHM_DIR, ring.handle.segment)) == size


def test_drop_oldest_takes_back_committed_slots_only():
    with Ring.create(8, 2, drop_oldest=True) as ring:
        held = [ring.reserve(timeout=0) for _ in range(2)]
        held[0].commit({"i": 0})
        reading = ring.get(timeout=0)
        assert ring.reserve(timeout=0.1) is None  # one slot read, one written: nothing to drop
        held[1].commit({"i": 1})
        ring.reserve(timeout=0).commit({"i": 2})  # takes back slot 1 (committed, unread)
        assert ring.dropped == 1
        reading.release()
        assert ring.get(timeout=0).meta == {"i": 2}


# -- endings ---------------------------------------------------------------------------------
def test_close_wakes_a_waiting_consumer_and_producer():
    with Ring.create(8, 1) as ring:
        results = {}
        consumer = threading.Thread(target=lambda: results.update(get=ring.get()))
        consumer.start()
        time.sleep(0.1)
        ring.reserve().commit()
        consumer.join(5)
        assert results["get"] is not None  # the ring is now full and its slot held
        producer = threading.Thread(target=lambda: results.update(reserve=ring.reserve()))
        consumer = threading.Thread(target=lambda: results.update(get=ring.get()))
        producer.start()
        consumer.start()
        time.sleep(0.2)
        start = time.monotonic()
        ring.close()
        producer.join(5)
        consumer.join(5)
        assert time.monotonic() - start < 1
        assert results == {"get": None, "reserve": None}


def test_close_by_the_producer_lets_the_consumer_drain():
    with Ring.create(8, 3) as ring:
        proc = fork.Process(target=_produce, args=(ring.handle, 3, (2,)))
        proc.start()
        proc.join(10)
        assert ring.closed
        assert [ring.get(timeout=1).meta["i"] for _ in range(3)] == [0, 1, 2]
        assert ring.get(timeout=1) is None


def test_no_room_in_dev_shm_names_the_sizes(monkeypatch):
    real = os.statvfs(SHM_DIR)

    class Small:
        f_frsize = real.f_frsize
        f_bavail = (64 << 20) // real.f_frsize

    monkeypatch.setattr(os, "statvfs", lambda path: Small)
    with pytest.raises(RingError) as err:
        Ring.create(100 << 20, 1, size_option="--ring-mb")
    message = str(err.value)
    assert "a ring of 1 slots of 104,857,600 bytes needs 104,8" in message
    assert "67,108,864 bytes (64 MiB) free" in message and "--ring-mb" in message
    assert not list(registry_dir().glob("*.json"))


def test_owner_exception_and_ctrl_c_inside_with_remove_the_segment():
    for exc in (ValueError, KeyboardInterrupt):
        with pytest.raises(exc):
            with Ring.create(64, 2) as ring:
                segment = ring.handle.segment
                assert segment in segments()
                raise exc()
        assert segment not in segments()
        assert not list(registry_dir().glob("*.json"))


def test_ctrl_c_of_an_owner_waiting_in_get():
    child = python("""
        import sys
        from datamill.engine.shm import Ring
        with Ring.create(4096, 2) as ring:
            print(ring.handle.segment, flush=True)
            ring.get()
    """)
    segment = child.stdout.readline().strip()
    assert segment in segments()
    time.sleep(0.3)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=10)
    assert "KeyboardInterrupt" in err
    assert segment not in segments()


def test_sigkilled_owner_segment_removed_by_the_next_create_never_a_live_one():
    dead, alive = python(OWNER), python(OWNER)
    try:
        dead_segment, live_segment = dead.stdout.readline().strip(), alive.stdout.readline().strip()
        assert {dead_segment, live_segment} <= segments()
        dead.kill()
        dead.wait()
        assert dead_segment in segments()  # SIGKILL leaves it
        with Ring.create(64, 1):
            assert dead_segment not in segments()
            assert live_segment in segments()  # its owner lives
        assert [p.name for p in registry_dir().glob("*.json")] == [f"{live_segment}.json"]
    finally:
        alive.stdin.close()  # its owner ends normally and removes its segment
        alive.wait(10)
    assert live_segment not in segments()


def test_a_reused_pid_is_not_the_owner_and_unregistered_files_are_left_alone():
    orphan, stranger = Path(SHM_DIR, "datamill-test-orphan"), Path(SHM_DIR, "datamill-test-stranger")
    orphan.write_bytes(b"x")
    stranger.write_bytes(b"x")
    try:
        registry_dir().mkdir(parents=True)
        # This process's pid, with another start time: a pid reused since the owner died.
        (registry_dir() / f"{orphan.name}.json").write_text(json.dumps(
            {"segment": orphan.name, "pid": os.getpid(), "start": process_start(os.getpid()) - 1}))
        with Ring.create(64, 1):
            assert not orphan.exists()
            assert stranger.exists()
    finally:
        orphan.unlink(missing_ok=True)
        stranger.unlink()


def _produce_then_hang(handle):
    ring = Ring.attach(handle)
    ring.reserve().commit({"i": 0})
    ring.reserve()  # holds a slot ...
    time.sleep(60)  # ... until SIGKILLed


def test_sigkilled_producer_consumer_does_not_hang():
    with Ring.create(64, 3) as ring:
        proc = fork.Process(target=_produce_then_hang, args=(ring.handle,))
        proc.start()
        first = ring.get(timeout=10)
        assert first.meta == {"i": 0}
        first.release()
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(5)
        start = time.monotonic()
        assert ring.get(timeout=0.5) is None
        assert time.monotonic() - start < 2
        # the slot it held is lost; the others still work
        ring.reserve(timeout=1).commit({"i": 1})
        assert ring.get(timeout=1).meta == {"i": 1}


def test_producers_die_with_a_sigkilled_owner_and_its_segment_goes_at_the_next_start():
    child = python("""
        import multiprocessing as mp, time
        from datamill.engine.shm import Ring, die_with_owner

        def produce(ring):
            die_with_owner(ring)
            while (slot := ring.reserve()) is not None:
                slot.commit()

        ring = Ring.create(4096, 2)
        proc = mp.get_context("fork").Process(target=produce, args=(ring,))
        proc.start()
        print(ring.handle.segment, proc.pid, flush=True)
        time.sleep(60)
    """)
    segment, producer = child.stdout.readline().split()
    wait_for(lambda: Path(f"/proc/{producer}").exists())
    child.kill()
    child.wait()
    wait_for(lambda: process_start(int(producer)) is None)  # the producer died with it
    assert segment in segments()
    with Ring.create(64, 1):
        assert segment not in segments()


def test_no_resource_tracker_warning_at_exit(tmp_path):
    script = tmp_path / "child.py"  # a file: spawned children import their function from it
    script.write_text(textwrap.dedent("""
        import multiprocessing as mp
        import numpy as np
        from datamill.engine.shm import Ring

        def produce(handle):
            ring = Ring.attach(handle)
            slot = ring.reserve()
            slot.view(np.float64, 3)[:] = 1.5
            slot.commit()

        if __name__ == "__main__":
            for start in ("fork", "spawn"):
                with Ring.create(64, 2) as ring:
                    proc = mp.get_context(start).Process(target=produce, args=(ring.handle,))
                    proc.start()
                    with ring.get(timeout=30) as slot:
                        assert slot.view(np.float64, 3).sum() == 4.5
                    proc.join()
            print("ok")
    """))
    child = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           timeout=60)
    out, err = child.stdout, child.stderr
    assert out.strip() == "ok" and child.returncode == 0
    assert "resource_tracker" not in err and "leaked" not in err and err == ""


def _frame(i):
    import numpy as np
    if i == 3:
        return np.full((1200, 1200, 3), i, np.uint8).repeat(2, axis=0)  # 8.6 MB: too large
    return np.full((1080, 640, 3), i, np.uint8)  # 2 MB


def test_pmap_returns_large_arrays_through_the_ring(monkeypatch):
    import numpy as np
    from datamill import pmap
    from datamill.engine import pmap as pmap_module
    taken = []
    real_get = pmap_module.Ring.get

    def counting_get(self, timeout=None):
        slot = real_get(self, timeout)
        taken.append(slot is not None)
        return slot
    monkeypatch.setattr(pmap_module.Ring, "get", counting_get)
    before = {n for n in os.listdir("/dev/shm") if n.startswith("datamill-")}
    got = {r.item: r.value for r in pmap(_frame, range(12), workers=2, shm_slot_bytes=4 << 20)}
    assert sum(taken) >= 6  # most 2 MB frames came through the ring (a full ring pickles)
    assert sorted(got) == list(range(12))
    for i, v in got.items():
        assert isinstance(v, np.ndarray) and v.flags.writeable and (v == i).all()
        assert v.shape == ((2400, 1200, 3) if i == 3 else (1080, 640, 3))
    after = {n for n in os.listdir("/dev/shm") if n.startswith("datamill-")}
    assert after <= before
