"""A tiny job for engine tests: upper-case every .txt file of SRC into DST.

A file's content steers its fate: KILL kills the worker, RAISE raises, SLEEP hangs,
SKIP is filtered, SLOW takes 0.2 s.  Run as a script: python textjob.py SRC DST [--overwrite].
"""
from __future__ import annotations

import errno
import os
import signal
import sys
import time

import pyarrow as pa

from datamill.atomic import write_text_atomic
from datamill.errors import Filtered, UsageError
from datamill.engine.job import Item, Job
from datamill.engine.run import RunOptions, run_job
from datamill.engine.task import TaskRunner
from datamill.io.sources import walk_files


def upper(payload):
    src, dst = payload
    text = open(src, encoding="utf-8").read()
    if text.startswith("KILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    if text.startswith("RAISE"):
        raise ValueError(f"cannot handle {os.path.basename(src)}")
    if text.startswith("SLEEP"):
        time.sleep(3600)
    if text.startswith("SKIP"):
        raise Filtered("skip_marker")
    if text.startswith("FULL"):
        raise OSError(errno.ENOSPC, "No space left on device")
    if text.startswith("SLOW"):
        time.sleep(0.2)
    write_text_atomic(dst, text.upper())
    return [{"output": dst, "bytes": len(text)}]


class UpperJob(Job):
    name = "upper"
    outputs_per_item = True
    manifest_fields = [pa.field("output", pa.string()), pa.field("bytes", pa.int64())]

    def __init__(self, src, dst, suffix=".out"):
        super().__init__(src, dst)
        self.suffix = suffix

    def fingerprint(self):
        return {"suffix": self.suffix}

    def items(self):
        for e in walk_files(self.src, ["txt"]):
            yield Item(e.rel, (e.path, str(self.dst.path / (e.rel + self.suffix))), source=e.path,
                       size=e.size, mtime=e.mtime)

    def outputs(self, task_id, payloads):
        return [os.path.relpath(dst, self.dst.path) for _, dst in payloads]

    def runner(self):
        return TaskRunner(upper)


if __name__ == "__main__":
    args = sys.argv[1:]
    opts = RunOptions(overwrite="--overwrite" in args, progress_interval=0.5, grace=3,
                      retry_failed="--retry-failed" in args)
    suffix = ".up" if "--suffix-up" in args else ".out"
    try:
        report = run_job(UpperJob(args[0], args[1], suffix), opts)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(report.exit_code)
