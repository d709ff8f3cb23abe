"""`datamill demo`: every job runs on the generated collections and ends as the demo says."""
from __future__ import annotations

import subprocess
import sys


def test_demo_runs_every_job_and_exits_0(tmp_path):
    out = subprocess.run([sys.executable, "-m", "datamill", "demo", str(tmp_path / "demo"), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for folder in ("clips", "images", "dedup"):
        assert (tmp_path / "demo" / folder / "manifest.parquet").is_file()
    assert (tmp_path / "demo" / "dedup" / "report.html").is_file()
