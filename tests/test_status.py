"""`datamill status DST` (issue 10, item 16): what it says about folders that are not a
job's, damaged ledgers, runs that died and items gone from the input; it changes nothing."""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from datamill.engine.ledger import Ledger
from datamill.engine.run import RunOptions, run_job
from textjob import UpperJob


def status(dst: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datamill", "status", str(dst)],
                          capture_output=True, text=True, timeout=120)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def job(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"{i}.txt").write_text(f"text {i}")
    (src / "bad.txt").write_text("RAISE")
    dst = tmp_path / "dst"
    assert run_job(UpperJob(src, dst), RunOptions(quiet=True, executor="serial")).exit_code == 1
    return dst


def test_a_job_folder_is_summarised_and_left_unchanged(job):
    before = snapshot(job)
    out = status(job)
    assert out.returncode == 0, out.stderr
    assert f"{job}: datamill upper job" in out.stdout
    assert "items: ok 4, filtered 0, failed 1" in out.stdout
    assert "run 1 " in out.stdout and ": completed" in out.stdout
    assert snapshot(job) == before  # no -wal or -shm left, nothing rewritten


@pytest.mark.parametrize("content", [b"", b"not a database, just text" * 200])
def test_a_damaged_ledger_is_named_exit_2_without_traceback(job, content):
    ledger = job / "_datamill" / "state.sqlite"
    ledger.write_bytes(content)
    before = snapshot(job)
    out = status(job)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert f"{ledger} is not a readable datamill ledger (" in out.stderr
    assert snapshot(job) == before  # an empty file stays empty: no schema written into it


def test_a_sqlite_file_of_something_else_is_not_a_ledger(tmp_path):
    dst = tmp_path / "dst"
    (dst / "_datamill").mkdir(parents=True)
    db = sqlite3.connect(dst / "_datamill" / "state.sqlite")
    db.execute("CREATE TABLE photos (name TEXT)")
    db.commit()
    db.close()
    out = status(dst)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "is not a readable datamill ledger (no such table: meta)" in out.stderr


def test_folders_that_are_not_a_job_are_said_so_exit_2(tmp_path):
    plain = tmp_path / "photos"
    plain.mkdir()
    (plain / "a.jpg").write_bytes(b"x")
    out = status(plain)
    assert out.returncode == 2 and f"{plain} is not a datamill job folder" in out.stderr
    assert not (plain / "_datamill").exists()  # nothing created

    out = status(tmp_path / "missing")
    assert out.returncode == 2 and "does not exist" in out.stderr
    assert not (tmp_path / "missing").exists()

    nojob = tmp_path / "nojob"
    Ledger(nojob / "_datamill" / "state.sqlite").close()  # a ledger no run ever started in
    out = status(nojob)
    assert out.returncode == 2
    assert "None" not in out.stderr + out.stdout
    assert f"{nojob} is not a datamill job folder" in out.stderr


def test_gone_items_and_dead_runs_are_said(job):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ledger = Ledger(job / "_datamill" / "state.sqlite")
    ledger.set_meta("gone", 3)
    died = ledger.begin_run(["datamill"], dead.pid, socket.gethostname())
    alive = ledger.begin_run(["datamill"], os.getpid(), socket.gethostname())
    elsewhere = ledger.begin_run(["datamill"], 4242, "another-host")
    ledger.close()
    out = status(job)
    assert out.returncode == 0, out.stderr
    assert "items: ok 4, filtered 0, failed 1, gone 3" in out.stdout
    assert f"run {died} " in out.stdout
    assert f": interrupted (process {dead.pid} gone)" in out.stdout
    assert f"run {alive} " in out.stdout and f": running (process {os.getpid()})" in out.stdout
    assert "running on host another-host (process 4242)" in out.stdout
