"""Crash safety: kill -9 of the driver or of a worker, Ctrl-C, --timeout, --overwrite, a full
disk, two runs at once, at deterministic points (DATAMILL_FAULT, engine/fault.py).  After the
rerun every test checks the outputs themselves: each key exactly once across all shards or
files, no temporary file, no process of the run alive."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from datamill.io.shards import iter_shard
from datamill.testing.server import ImageServer

HERE = Path(__file__).parent
ENV = {**os.environ, "no_proxy": "127.0.0.1,localhost"}
N_URLS = 40


@pytest.fixture(scope="module")
def server():
    with ImageServer() as s:
        yield s


def url_list(server, path: Path, n: int = N_URLS, start: int = 0) -> Path:
    path.write_text("\n".join(server.url(f"img/{i}.jpg?w=64&h=48") for i in range(start, start + n)) + "\n")
    return path


def datamill(*args, fault: str | None = None, once: Path | None = None, timeout: float = 120):
    env = dict(ENV)
    env.pop("DATAMILL_FAULT", None)
    if fault:
        env["DATAMILL_FAULT"] = fault
    if once:
        env["DATAMILL_FAULT_ONCE"] = str(once)
    return subprocess.run([sys.executable, "-m", "datamill", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def shard_keys(dst: Path) -> Counter:
    """How many times each key is stored across every shard of DST, counting raw files and
    members (a record cut short counts too)."""
    seen: Counter = Counter()
    for entry in sorted(dst.iterdir()):
        if not entry.name[:1].isdigit():
            continue
        if entry.is_dir():
            keys = {p.name.split(".")[0] for p in entry.iterdir()}
        elif entry.suffix == ".tar":
            with tarfile.open(entry) as tar:
                keys = {m.name.split(".")[0] for m in tar.getmembers()}
        else:
            keys = {r.key for r in iter_shard(entry)}
        seen.update(keys)
    return seen


def text_files(src: Path, n: int, text: str | None = None) -> Path:
    """SRC for tests/textjob.py: f00.txt ... holding `text` (default: the letter of each)."""
    src.mkdir(parents=True)
    for i in range(n):
        (src / f"f{i:02d}.txt").write_text(text if text is not None else chr(97 + i % 26) * 100_000)
    return src


def textjob(src: Path, dst: Path) -> list[str]:
    return [sys.executable, str(HERE / "textjob.py"), str(src), str(dst)]


def temp_files(dst: Path) -> list[Path]:
    return [p for p in dst.rglob("*") if ".datamill-tmp-" in p.name]


def live_processes(marker: str) -> list[int]:
    """Processes (other than this one) whose command line names `marker` (workers are forked
    from their driver, so they carry its command line)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append(int(proc.name))
    return found


def assert_exactly_once(dst: Path, n: int = N_URLS) -> None:
    manifest = pq.read_table(dst / "manifest.parquet").to_pylist()
    assert len(manifest) == n and len({r["key"] for r in manifest}) == n
    ok = {r["key"] for r in manifest if r["status"] == "ok"}
    stored = shard_keys(dst)
    assert set(stored) == ok, (set(stored) ^ ok)
    assert max(stored.values()) == 1, [k for k, c in stored.items() if c > 1]
    assert not temp_files(dst)
    deadline = time.monotonic() + 5
    while live_processes(str(dst)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not live_processes(str(dst))


@pytest.mark.parametrize("fmt", ["files", "webdataset", "parquet"])
@pytest.mark.parametrize("fault", ["startup:kill", "submitted:kill:3", "commit:kill",
                                   "commit:kill:4", "reports:kill"])
def test_driver_killed_at_any_point_then_rerun_stores_every_url_once(server, tmp_path, fmt, fault):
    urls = url_list(server, tmp_path / "urls.txt")
    dst = tmp_path / "out"
    args = ["download", urls, dst, "--format", fmt, "--shard-size", 5, "--workers", 2]
    killed = datamill(*args, fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = datamill(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_exactly_once(dst)


@pytest.mark.parametrize("fmt", ["files", "webdataset"])
def test_a_worker_killed_after_writing_its_shard_costs_nothing(server, tmp_path, fmt):
    urls = url_list(server, tmp_path / "urls.txt")
    dst = tmp_path / "out"
    run = datamill("download", urls, dst, "--format", fmt, "--shard-size", 5, "--workers", 2,
                   fault="task-end:kill", once=tmp_path / "killed-once")
    assert (tmp_path / "killed-once").exists()
    assert run.returncode == 0, run.stdout + run.stderr
    assert_exactly_once(dst)


def test_interrupt_mid_shard_exits_130_and_the_rerun_stores_every_url_once(server, tmp_path):
    urls = url_list(server, tmp_path / "urls.txt")
    dst = tmp_path / "out"
    args = ["download", urls, dst, "--format", "files", "--shard-size", 5, "--workers", 2]
    stopped = datamill(*args, fault="submitted:interrupt:3")
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert "Traceback" not in stopped.stderr and "Aborted" not in stopped.stderr
    assert not temp_files(dst)
    assert datamill(*args).returncode == 0
    assert_exactly_once(dst)


def test_overwrite_removes_the_outputs_of_earlier_runs_and_only_those(server, tmp_path):
    urls = url_list(server, tmp_path / "urls.txt", n=12)
    dst = tmp_path / "out"
    args = ["download", urls, dst, "--format", "webdataset", "--shard-size", 5]
    assert datamill(*args, "--resize", 32).returncode == 0
    (dst / "notes.txt").write_text("mine")
    assert datamill(*args, "--resize", 16).returncode == 2  # other options: refused
    assert datamill(*args, "--resize", 16, "--overwrite").returncode == 0
    assert_exactly_once(dst, 12)
    assert sorted(p.name for p in dst.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert (dst / "notes.txt").read_text() == "mine"
    for r in pq.read_table(dst / "manifest.parquet").to_pylist():
        assert max(r["width"], r["height"]) <= 22  # 16 on the short side: the new size


def test_a_dst_that_is_not_datamills_is_refused_and_never_touched(server, tmp_path):
    urls = url_list(server, tmp_path / "urls.txt", n=6)
    dst = tmp_path / "home"
    (dst / "2019").mkdir(parents=True)
    (dst / "2019" / "photo.jpg").write_bytes(b"mine")
    (dst / "2020.notes.txt").write_text("mine")
    (dst / "00000.tar").write_bytes(b"mine")
    refused = datamill("download", urls, dst, "--format", "webdataset")
    assert refused.returncode == 2
    assert "not a datamill folder" in refused.stderr and "2019" in refused.stderr
    assert not (dst / "_datamill").exists()
    run = datamill("download", urls, dst, "--format", "webdataset", "--shard-size", 3,
                   "--allow-existing")
    assert run.returncode == 0, run.stdout + run.stderr
    # shard number 0 is taken by the user's file: it is skipped, never overwritten
    assert sorted(p.name for p in dst.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert (dst / "00000.tar").read_bytes() == b"mine"
    assert (dst / "2019" / "photo.jpg").read_bytes() == b"mine"
    assert (dst / "2020.notes.txt").read_text() == "mine"
    assert datamill("download", urls, dst, "--format", "webdataset", "--shard-size", 3).returncode == 0
    assert datamill("download", urls, dst, "--overwrite").returncode == 0
    assert (dst / "00000.tar").read_bytes() == b"mine" and (dst / "2019" / "photo.jpg").exists()
    assert not list(dst.glob("*.tar"))[1:]  # the shards datamill wrote are gone


def test_a_file_in_the_way_of_a_per_item_output_fails_that_item_alone(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b", "c"):
        (src / f"{name}.txt").write_text(name)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "b.txt.out").write_text("the user's")
    from textjob import UpperJob
    from datamill.engine.run import RunOptions, run_job
    report = run_job(UpperJob(src, dst), RunOptions(quiet=True, allow_existing=True))
    assert report.exit_code == 1 and report.counts == {"ok": 2, "filtered": 0, "failed": 1}
    assert (dst / "b.txt.out").read_text() == "the user's"
    assert json.loads((dst / "failures.jsonl").read_text())["error_class"] == "dst_exists"
    report = run_job(UpperJob(src, dst), RunOptions(quiet=True, overwrite=True))
    assert report.counts == {"ok": 2, "filtered": 0, "failed": 1}  # b is in the way still
    assert (dst / "b.txt.out").read_text() == "the user's"
    assert (dst / "a.txt.out").read_text() == "A" and (dst / "c.txt.out").read_text() == "C"


def test_rows_are_identified_by_what_they_hold(server, tmp_path):
    urls = url_list(server, tmp_path / "urls.txt", n=4)
    dst = tmp_path / "out"
    assert datamill("download", urls, dst).returncode == 0
    lines = urls.read_text().splitlines()
    new = server.url("img/99.jpg?w=64&h=48")
    urls.write_text("\n".join([new] + lines[:3]) + "\n")  # one new on top, the last one removed
    run = datamill("download", urls, dst)
    assert run.returncode == 0
    stats = json.loads((dst / "stats.json").read_text())
    assert stats["this_run"]["items"] == 1 and stats["this_run"]["skipped_done"] == 3
    assert stats["gone"] == 1 and "gone 1" in run.stdout
    rows = pq.read_table(dst / "manifest.parquet").to_pylist()
    assert sorted(r["url"] for r in rows) == sorted(lines + [new])
    assert max(shard_keys(dst).values()) == 1
    other = tmp_path / "other.txt"
    other.write_text(server.url("img/50.jpg") + "\n" + server.url("img/50.jpg") + "\n")
    run = datamill("download", other, dst)
    assert run.returncode == 0 and "this run 2 urls" in run.stdout  # a repeated row is its own item


def test_two_runs_on_one_dst_the_second_is_refused_naming_the_first(tmp_path):
    src = text_files(tmp_path / "src", 30, "SLOW")
    dst = tmp_path / "dst"
    first = subprocess.Popen(textjob(src, dst),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not (dst / "_datamill" / "lock").exists() or not (dst / "_datamill" / "lock").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = subprocess.run(textjob(src, dst), capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert f"pid {first.pid}" in second.stderr and socket.gethostname() in second.stderr
    assert first.wait(timeout=60) == 0
    assert sorted(p.name for p in dst.glob("*.out")) == [f"f{i:02d}.txt.out" for i in range(30)]


def test_a_lock_left_by_a_dead_process_is_taken_over_one_from_another_host_is_not(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    dst = tmp_path / "dst"
    (dst / "_datamill").mkdir(parents=True)
    lock = dst / "_datamill" / "lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    cmd = textjob(src, dst)
    assert subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
    lock.write_text(json.dumps({"pid": 4242, "host": "another-machine"}))
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "another-machine" in refused.stderr
    assert "--break-lock" in refused.stderr
    from textjob import UpperJob
    from datamill.engine.run import RunOptions, run_job
    assert run_job(UpperJob(src, dst), RunOptions(quiet=True, break_lock=True)).ok
    assert json.loads(lock.read_text() or "{}") == {}  # released at the end


def test_dry_run_writes_nothing(server, tmp_path):
    urls = url_list(server, tmp_path / "urls.txt", n=3)
    dst = tmp_path / "out"
    dry = datamill("download", urls, dst, "--dry-run", "--resize", 8)
    assert dry.returncode == 0 and "3 urls to do" in dry.stdout
    assert not dst.exists()
    assert datamill("download", urls, dst, "--resize", 16).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in dst.rglob("*")}
    dry = datamill("download", urls, dst, "--dry-run", "--resize", 16)
    assert dry.returncode == 0 and "0 urls to do, 3 already done" in dry.stdout
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*")} == before


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (CI runs as root, which may mount one); unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_stops_with_the_cause_and_the_rerun_completes(tmp_path, small_disk):
    src = text_files(tmp_path / "src", 40)
    dst = small_disk / "out"
    cmd = textjob(src, dst)
    full = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert full.returncode == 1, full.stdout + full.stderr
    assert "disk is full" in full.stdout and "Traceback" not in full.stderr + full.stdout
    subprocess.run(["mount", "-o", "remount,size=40m", str(small_disk)], check=True)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    rows = pq.read_table(dst / "manifest.parquet").to_pylist()
    assert sorted(r["key"] for r in rows) == [f"f{i:02d}.txt" for i in range(40)]
    for i in range(40):
        assert (dst / f"f{i:02d}.txt.out").read_text() == chr(65 + i % 26) * 100_000
    assert not temp_files(dst)
    from datamill.engine.ledger import Ledger
    ledger = Ledger(dst / "_datamill" / "state.sqlite", readonly=True)
    assert [r["status"] for r in ledger.runs()] == ["stopped", "completed"]
    ledger.close()


def test_the_ledger_failing_to_write_stops_the_run_and_the_next_run_resumes(tmp_path):
    src = text_files(tmp_path / "src", 20, "x")
    dst = tmp_path / "dst"
    cmd = textjob(src, dst)
    env = {**ENV, "DATAMILL_FAULT": "ledger:enospc:2"}
    full = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert full.returncode == 1 and "disk is full" in full.stdout, full.stdout + full.stderr
    assert "Traceback" not in full.stderr
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert len(pq.read_table(dst / "manifest.parquet")) == 20
    assert len(list(dst.glob("*.out"))) == 20 and not temp_files(dst)


def test_a_run_killed_is_marked_interrupted_by_the_next(tmp_path):
    src = text_files(tmp_path / "src", 1, "a")
    dst = tmp_path / "dst"
    cmd = textjob(src, dst)
    killed = subprocess.run(cmd, capture_output=True, env={**ENV, "DATAMILL_FAULT": "startup:kill"})
    assert killed.returncode == -signal.SIGKILL
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    from datamill.engine.ledger import Ledger
    ledger = Ledger(dst / "_datamill" / "state.sqlite", readonly=True)
    assert [r["status"] for r in ledger.runs()] == ["interrupted", "completed"]
    ledger.close()


def clip_files(dst: Path) -> set[str]:
    """Every file of DST but the reports and the ledger."""
    return {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()
            and p.parts[len(dst.parts)] != "_datamill"
            and p.name not in ("manifest.parquet", "failures.jsonl", "stats.json")}


def listed_clips(dst: Path) -> list[str]:
    return [r["path"] for r in pq.read_table(dst / "manifest.parquet").to_pylist()
            if r["status"] == "ok" and r["path"]]


def test_clips_overwrite_and_a_changed_video_leave_only_the_new_clips(tmp_path):
    import datamill
    from datamill.testing.videos import make_video
    src = tmp_path / "src"
    make_video(src / "a" / "v.mp4", frames=64, size=(96, 64))
    make_video(src / "w.mp4", frames=32, size=(96, 64))
    dst = tmp_path / "clips"
    assert datamill.clips(src, dst, frames=8, quiet=True).exit_code == 0
    assert len(listed_clips(dst)) == 12
    report = datamill.clips(src, dst, frames=16, quiet=True, overwrite=True)
    assert report.exit_code == 0
    assert sorted(listed_clips(dst)) == sorted(clip_files(dst)) and len(clip_files(dst)) == 6
    make_video(src / "a" / "v.mp4", frames=20, size=(96, 64))  # shorter: 2 clips, not 4
    os.utime(src / "a" / "v.mp4", (1, 1))
    assert datamill.clips(src, dst, frames=16, quiet=True).exit_code == 0
    assert sorted(listed_clips(dst)) == sorted(clip_files(dst))
    assert sorted(clip_files(dst)) == ["a/v/v_0000.mp4", "a/v/v_0001.mp4", "w/w_0000.mp4",
                                       "w/w_0001.mp4"]


def test_clips_past_their_deadline_leave_no_clip_the_manifest_does_not_list(tmp_path):
    import datamill
    from datamill.testing.videos import make_video
    src = tmp_path / "src"
    make_video(src / "long.mp4", frames=1200, size=(640, 480), gop=30)
    dst = tmp_path / "clips"
    # 2 workers: tasks of about 1200 / 8 = 150 frames (0.4 s or more of decoding and encoding)
    report = datamill.clips(src, dst, frames=8, quiet=True, timeout=0.15, retries=0, workers=2)
    assert report.stats["failures"].get("timeout"), report.stats["failures"]
    assert sorted(listed_clips(dst)) == sorted(clip_files(dst))
    assert not temp_files(dst)


def test_the_temporary_file_of_a_report_cut_short_is_removed_by_the_next_run(tmp_path):
    src = text_files(tmp_path / "src", 3, "x")
    dst = tmp_path / "dst"
    assert subprocess.run(textjob(src, dst), capture_output=True).returncode == 0
    left = dst / ".manifest.datamill-tmp-999999.parquet"  # as a run killed mid-write leaves it
    left.write_bytes(b"PAR1 half")
    mine = dst / ".manifest.notes"  # the user's, though it looks alike
    mine.write_text("mine")
    assert subprocess.run(textjob(src, dst), capture_output=True).returncode == 0
    assert not left.exists() and mine.read_text() == "mine"
