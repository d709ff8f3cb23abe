"""The command line: exit statuses, status of a job folder, help and version."""
from __future__ import annotations

import subprocess
import sys

from datamill.engine.run import RunOptions, run_job
from textjob import UpperJob


def datamill(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datamill", *args], capture_output=True,
                          text=True, timeout=120)


def test_help_and_version():
    out = datamill("--help")
    assert out.returncode == 0 and "clips" in out.stdout and "status" in out.stdout
    assert "demo" in out.stdout
    version = datamill("--version")
    assert version.returncode == 0 and "datamill, version" in version.stdout


def test_usage_errors_exit_2(tmp_path):
    missing = datamill("clips", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert missing.returncode == 2 and "SRC does not exist" in missing.stderr
    src = tmp_path / "src"
    src.mkdir()
    inside = datamill("clips", str(src), str(src / "out"))
    assert inside.returncode == 2 and "inside SRC" in inside.stderr
    bad_option = datamill("clips", str(src), str(tmp_path / "out"), "--size", "abc")
    assert bad_option.returncode == 2 and "WIDTHxHEIGHT" in bad_option.stderr
    both = datamill("clips", str(src), str(tmp_path / "out"), "--size", "64x64", "--short-side", "32")
    assert both.returncode == 2 and "at most one" in both.stderr


def test_status_summarises_a_job_folder_without_running(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("x")
    (src / "b.txt").write_text("RAISE")
    dst = tmp_path / "dst"
    run_job(UpperJob(src, dst), RunOptions(quiet=True))
    before = sorted(p.name for p in dst.iterdir())
    out = datamill("status", str(dst))
    assert out.returncode == 0, out.stderr
    assert "datamill upper job" in out.stdout
    assert "ok 1, filtered 0, failed 1" in out.stdout and "ValueError 1" in out.stdout
    assert "run 1" in out.stdout
    assert sorted(p.name for p in dst.iterdir()) == before
    assert datamill("status", str(tmp_path)).returncode == 2


def test_ray_options_without_the_ray_executor_are_a_usage_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    out = datamill("clips", str(src), str(tmp_path / "out"), "--ray-address", "auto")
    assert out.returncode == 2 and "the local executor takes no option 'address'" in out.stderr
    assert not (tmp_path / "out" / "_datamill" / "state.sqlite").exists()


def test_a_bad_option_value_is_exit_2_naming_the_flag(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    out = datamill("clips", str(src), str(tmp_path / "out"), "--frames", "0")
    assert out.returncode == 2 and "--frames" in out.stderr
    out = datamill("clips", str(src), str(tmp_path / "out"), "--codec", "copy", "--size", "64x64")
    assert out.returncode == 2 and "--codec copy does not re-encode" in out.stderr
    out = datamill("dedup", str(src), str(tmp_path / "out"), "--action", "move-duplicates")
    assert out.returncode == 2 and "--move-to" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_value_error_from_a_bug_is_a_traceback_and_exit_1(tmp_path):
    """Only usage errors are exit 2: a ValueError raised by a bug inside a job is not one."""
    src = tmp_path / "src"
    src.mkdir()
    program = ("import sys\n"
               "from datamill.jobs.clips import ClipsJob\n"
               "def bug(self):\n"
               "    raise ValueError('a bug, not a usage error')\n"
               "ClipsJob.items = bug\n"
               "from datamill.__main__ import run\n"
               "sys.exit(run(sys.argv[1:]))\n")
    out = subprocess.run([sys.executable, "-c", program, "clips", str(src), str(tmp_path / "out"),
                          "--quiet"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "Traceback" in out.stderr and "ValueError: a bug, not a usage error" in out.stderr


def test_download_retries_default_to_2_per_url_from_both():
    from datamill.jobs.download import DownloadOptions
    help_text = " ".join(datamill("download", "--help").stdout.split())
    retries = help_text.split("--retries INTEGER RANGE")[1].split(" --")[0]
    assert "[default: 2; x>=0]" in retries
    assert DownloadOptions().fetch.retries == 2
    clips_help = " ".join(datamill("clips", "--help").stdout.split())
    assert "[default: 1; x>=0]" in clips_help.split("--retries INTEGER RANGE")[1].split(" --")[0]
