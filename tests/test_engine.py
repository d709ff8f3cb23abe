"""The engine: pmap's guarantees and the job run loop (ledger, resume, failures, stops)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from datamill import pmap
from datamill.errors import UsageError
from datamill.engine.executors import Executor
from datamill.engine.run import RunOptions, run_job
from datamill.engine.scheduler import Scheduler
from datamill.engine.task import Crash, Done, TaskRunner
from faults import hang_on_3, kill_on_7, ten_div
from textjob import UpperJob

HERE = Path(__file__).parent





# -- pmap ------------------------------------------------------------------------------------
def test_pmap_returns_every_item_once_with_errors_as_data():
    results = list(pmap(ten_div, [1, 2, 0, 5], workers=2))
    assert sorted(r.item for r in results) == [0, 1, 2, 5]
    by_item = {r.item: r for r in results}
    assert by_item[2].ok and by_item[2].value == 5
    bad = by_item[0]
    assert not bad.ok and bad.error.type == "ZeroDivisionError"
    assert "division" in bad.error.message and "_div" in bad.error.traceback


def test_pmap_worker_killed_costs_only_its_item():
    start = time.monotonic()
    results = list(pmap(kill_on_7, range(30), workers=2, retries=1))
    assert time.monotonic() - start < 60
    failed = [r for r in results if not r.ok]
    assert [r.item for r in failed] == [7]
    assert failed[0].reason == "worker_died" and failed[0].attempts == 2
    assert "SIGKILL" in failed[0].error.message
    assert sorted(r.value for r in results if r.ok) == [2 * x for x in range(30) if x != 7]


def test_pmap_poison_item_in_a_large_batch_is_isolated():
    results = list(pmap(kill_on_7, range(200), workers=2, batch_size=50, retries=0))
    assert len(results) == 200
    assert [r.item for r in results if not r.ok] == [7]


def test_pmap_item_past_deadline_is_killed():
    start = time.monotonic()
    results = list(pmap(hang_on_3, range(6), workers=2, timeout=2, retries=0))
    assert time.monotonic() - start < 30
    failed = [r for r in results if not r.ok]
    assert [(r.item, r.reason) for r in failed] == [(3, "timeout")]
    assert len(results) == 6


def test_pmap_unpicklable_argument_and_result_are_named():
    lock = threading.Lock()
    results = list(pmap(lambda x: x if x != "lock-result" else threading.Lock(),
                        [1, lock, "lock-result", 4], workers=2))
    assert len(results) == 4
    failed = {repr(r.item): r for r in results if not r.ok}
    assert len(failed) == 2
    arg = failed[repr(lock)]
    assert arg.reason == "unpicklable" and "lock" in arg.error.message.lower()
    assert failed[repr("lock-result")].reason == "unpicklable"
    assert "result" in failed[repr("lock-result")].error.message


_INIT = {}


def _init(tag):
    _INIT["tag"] = tag
    _INIT["count"] = _INIT.get("count", 0) + 1


def _report_init(x):
    return os.getpid(), _INIT.get("tag"), _INIT.get("count")


def test_pmap_initializer_runs_once_per_worker():
    results = list(pmap(_report_init, range(100), workers=2, initializer=_init, initargs=("m",),
                        batch_size=1))
    assert all(r.ok for r in results)
    assert {r.value[1] for r in results} == {"m"}
    assert {r.value[2] for r in results} == {1}
    assert 1 <= len({r.value[0] for r in results}) <= 2


def test_pmap_serial_gives_the_same_results_as_local():
    items = [1, 2, 0, 5, 3]
    local = sorted((r.item, r.ok, r.value) for r in pmap(ten_div, items, workers=2))
    serial = sorted((r.item, r.ok, r.value) for r in pmap(ten_div, items, executor="serial"))
    assert local == serial


def _slow(x):
    time.sleep(0.02)
    return x


def test_pmap_consumes_its_input_lazily():
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield i

    it = pmap(_slow, source(), workers=2)
    for _ in range(20):
        next(it)
    it.close()
    assert pulled < 500, pulled


def _flaky(path):
    if not os.path.exists(path):
        open(path, "w").close()
        raise ConnectionError("first try fails")
    return "ok"


def test_pmap_retries_a_transient_failure(tmp_path):
    results = list(pmap(_flaky, [str(tmp_path / "marker")], workers=1, retries=1))
    assert results[0].ok and results[0].attempts == 2


class _CrashIfSeven(Executor):
    """An executor that cannot say which item was running, like a remote cluster."""

    name = "fake"

    def __init__(self):
        super().__init__(1)
        self.queue = []
        self.tasks_run = 0

    def start(self, runner, timeout=None):
        self.runner = runner

    def free_slots(self):
        return 1 - len(self.queue)

    def submit(self, task_id, payloads):
        self.queue.append((task_id, payloads))

    def poll(self, timeout):
        task_id, payloads = self.queue.pop()
        self.tasks_run += 1
        if 7 in payloads:
            return [Done(task_id, crash=Crash("worker_died", "lost", culprit=None))]
        return [Done(task_id, self.runner.run(payloads), 0.0)]

    def shutdown(self, cancel=False, grace=0.0):
        return []


def test_crash_without_a_culprit_is_bisected_until_the_item_is_alone():
    ex = _CrashIfSeven()
    results = list(Scheduler(ex, TaskRunner(lambda x: x), ((i, i) for i in range(64)),
                             retries=0, batch_size=64))
    assert sorted(r.key for r in results) == list(range(64))
    assert [r.key for r in results if not r.ok] == [7]
    assert ex.tasks_run <= 2 * 7 + 2  # halves: about 2 log2(64) tasks, not 64


class _Recording(_CrashIfSeven):
    """One slot; records the payloads in the order they are sent."""

    def __init__(self):
        super().__init__()
        self.sent = []

    def submit(self, task_id, payloads):
        self.sent += payloads
        super().submit(task_id, payloads)


@pytest.mark.parametrize("costed", [True, False])
def test_the_costliest_pending_item_goes_first_and_the_input_stays_lazy(costed):
    """Items that followed from others (a long video's frame ranges) run longest first when
    the job gives a cost; the input is not read ahead to find longer ones."""
    read = []

    def source():
        for key in ("video-a", "video-b"):
            read.append(key)
            yield key, ("plan", key)

    ex = _Recording()
    sched = Scheduler(ex, TaskRunner(lambda p: p), source(), batch_size=1,
                      cost=(lambda p: p[1] if p[0] == "cut" else 0) if costed else None)
    sizes = {"video-a": [120, 500, 60, 250, 500], "video-b": [40, 900]}
    for r in sched:
        if r.item[0] == "plan":
            assert read[-1] == r.key  # video-b is read only once video-a's ranges are all sent
            sched.add((f"{r.key}#{i}", ("cut", n)) for i, n in enumerate(sizes[r.key]))
    cuts = [p[1] for p in ex.sent if p[0] == "cut"]
    if costed:
        assert cuts == [500, 500, 250, 120, 60, 900, 40]
    else:
        assert cuts == sizes["video-a"] + sizes["video-b"]
    assert read == ["video-a", "video-b"]


def test_pending_ranks_by_cost_and_keeps_ties_in_order():
    from datamill.engine.scheduler import Pending
    from datamill.engine.task import WorkItem
    pending = Pending(cost=lambda p: p[0])
    pending.extend(WorkItem(k, (c, k)) for k, c in enumerate([3, 9, 3, 0, 9]))
    pending.append(WorkItem("late", (5, "late")))
    assert len(pending) == 6
    assert [pending.popleft().key for _ in range(6)] == [1, 4, "late", 0, 2, 3]
    assert not pending


# -- jobs --------------------------------------------------------------------------------------
def _tree(root: Path, contents: dict[str, str]) -> Path:
    for rel, text in contents.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def _manifest(dst: Path) -> list[dict]:
    return pq.read_table(dst / "manifest.parquet").to_pylist()


def test_job_records_every_outcome_and_goes_on(tmp_path):
    src = _tree(tmp_path / "src", {"a.txt": "hello", "sub/b.txt": "RAISE", "c.txt": "SKIP",
                                   "d.txt": "KILL", "e.bin": "not an item"})
    dst = tmp_path / "dst"
    report = run_job(UpperJob(src, dst), RunOptions(quiet=True, workers=2))
    assert report.exit_code == 1
    assert (dst / "a.txt.out").read_text() == "HELLO"
    rows = {r["key"]: r for r in _manifest(dst)}
    assert rows["a.txt"]["status"] == "ok" and rows["a.txt"]["output"].endswith("a.txt.out")
    assert rows["c.txt"]["status"] == "filtered" and rows["c.txt"]["reason"] == "skip_marker"
    assert rows["sub/b.txt"]["status"] == "failed" and rows["sub/b.txt"]["reason"] == "ValueError"
    assert rows["d.txt"]["reason"] == "worker_died"
    failures = [json.loads(line) for line in (dst / "failures.jsonl").read_text().splitlines()]
    by_key = {f["key"]: f for f in failures}
    assert set(by_key) == {"sub/b.txt", "d.txt"}
    assert "cannot handle b.txt" in by_key["sub/b.txt"]["message"]
    assert "Traceback" in by_key["sub/b.txt"]["traceback"] and by_key["d.txt"]["attempts"] == 2
    stats = json.loads((dst / "stats.json").read_text())
    assert stats["counts"] == {"ok": 1, "filtered": 1, "failed": 2}


def test_rerun_skips_done_items_and_redoes_a_changed_source(tmp_path):
    src = _tree(tmp_path / "src", {f"f{i}.txt": f"text {i}" for i in range(10)})
    dst = tmp_path / "dst"
    assert run_job(UpperJob(src, dst), RunOptions(quiet=True)).exit_code == 0
    (src / "f3.txt").write_text("changed and longer")
    report = run_job(UpperJob(src, dst), RunOptions(quiet=True))
    assert report.exit_code == 0
    assert report.stats["this_run"]["items"] == 1
    assert report.stats["this_run"]["skipped_done"] == 9
    assert (dst / "f3.txt.out").read_text() == "CHANGED AND LONGER"
    assert len(_manifest(dst)) == 10


def test_failed_items_are_retried_only_when_asked(tmp_path):
    src = _tree(tmp_path / "src", {"ok.txt": "fine", "bad.txt": "RAISE"})
    dst = tmp_path / "dst"
    assert run_job(UpperJob(src, dst), RunOptions(quiet=True)).exit_code == 1
    again = run_job(UpperJob(src, dst), RunOptions(quiet=True))
    assert again.exit_code == 1 and again.stats["this_run"]["items"] == 0
    assert again.stats["this_run"]["skipped_failed"] == 1
    bad = src / "bad.txt"
    st = bad.stat()
    bad.write_text("RAISE")  # same size: only --retry-failed brings it back
    os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns))
    retried = run_job(UpperJob(src, dst), RunOptions(quiet=True, retry_failed={"KeyError"}))
    assert retried.stats["this_run"]["items"] == 0
    retried = run_job(UpperJob(src, dst), RunOptions(quiet=True, retry_failed=True))
    assert retried.stats["this_run"]["items"] == 1 and retried.exit_code == 1


def test_changed_result_options_are_refused_without_overwrite(tmp_path):
    src = _tree(tmp_path / "src", {"a.txt": "x"})
    dst = tmp_path / "dst"
    run_job(UpperJob(src, dst), RunOptions(quiet=True))
    with pytest.raises(UsageError, match="--overwrite"):
        run_job(UpperJob(src, dst, suffix=".up"), RunOptions(quiet=True))
    # scheduling options never need it
    assert run_job(UpperJob(src, dst), RunOptions(quiet=True, workers=1, timeout=9)).exit_code == 0
    report = run_job(UpperJob(src, dst, suffix=".up"), RunOptions(quiet=True, overwrite=True))
    assert report.exit_code == 0 and (dst / "a.txt.up").exists()


def test_usage_errors(tmp_path):
    src = _tree(tmp_path / "src", {"a.txt": "x"})
    with pytest.raises(UsageError, match="does not exist"):
        run_job(UpperJob(tmp_path / "missing", tmp_path / "dst"))
    with pytest.raises(UsageError, match="inside SRC"):
        run_job(UpperJob(src, src / "out"))
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="not writable|not a folder"):
        run_job(UpperJob(src, tmp_path / "file" / "dst"))


def test_an_option_the_executor_does_not_take_is_a_usage_error_naming_it(tmp_path):
    src = _tree(tmp_path / "src", {"a.txt": "x"})
    for executor in ("serial", "local"):
        opts = RunOptions(executor=executor, executor_options={"colour": "red"}, quiet=True)
        with pytest.raises(UsageError, match=f"the {executor} executor takes no option 'colour'"):
            run_job(UpperJob(src, tmp_path / "dst"), opts)
    assert not (tmp_path / "dst" / "_datamill" / "state.sqlite").exists()
    with pytest.raises(UsageError, match="unknown executor 'spark'"):
        run_job(UpperJob(src, tmp_path / "dst"), RunOptions(executor="spark"))


def test_unwritable_dst_as_an_unprivileged_user(tmp_path):
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(UsageError, match="not writable"):
            run_job(UpperJob(_tree(tmp_path / "src", {"a.txt": "x"}), locked / "dst"))
        return
    import tempfile
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    os.chmod(base, 0o755)
    _tree(base / "src", {"a.txt": "x"})
    (base / "locked").mkdir(mode=0o555)
    os.chmod(base / "src", 0o755)
    code = (
        "import os, sys; sys.path[:0] = [%r, %r];"
        "from textjob import UpperJob; from datamill.engine.run import run_job, RunOptions;"
        "from datamill.errors import UsageError;"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n run_job(UpperJob(%r, %r), RunOptions(quiet=True))\n"
        "except UsageError as e:\n print('USAGE', e); sys.exit(2)\n"
    ) % (str(HERE), str(Path(__import__("datamill").__file__).parents[1]),
         str(base / "src"), str(base / "locked" / "dst"))
    # the interpreter may live where nobody can read it; copy nothing, run it as root then drop
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "not writable" in out.stdout


def test_nearly_everything_failing_stops_the_job_early(tmp_path):
    src = _tree(tmp_path / "src", {f"f{i:04d}.txt": "RAISE" for i in range(300)})
    dst = tmp_path / "dst"
    report = run_job(UpperJob(src, dst), RunOptions(quiet=True, failure_window=50, retries=0))
    assert report.exit_code == 1
    assert report.stats["this_run"]["status"] == "stopped"
    assert "50 of the last 50 items failed" in report.message and "ValueError" in report.message
    assert report.stats["this_run"]["items"] < 200
    # the failures of the window are not kept, so the next run tries them again
    assert report.counts["failed"] < report.stats["this_run"]["items"]


def test_a_full_disk_stops_the_job_at_once(tmp_path):
    src = _tree(tmp_path / "src", {f"f{i:03d}.txt": "FULL" if i == 5 else "x" for i in range(100)})
    report = run_job(UpperJob(src, tmp_path / "dst"), RunOptions(quiet=True, workers=1))
    assert report.stats["this_run"]["status"] == "stopped"
    assert "disk is full" in report.message
    assert report.stats["this_run"]["items"] < 100


def test_interrupt_then_rerun_completes_with_every_item_once(tmp_path):
    src = _tree(tmp_path / "src", {f"f{i:02d}.txt": "SLOW" for i in range(40)})
    dst = tmp_path / "dst"
    cmd = [sys.executable, str(HERE / "textjob.py"), str(src), str(dst)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60  # the run has started (a loaded machine imports slowly)
    while not list(dst.glob("*.out")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "run the same command again" in out
    done_first = len(list(dst.glob("*.out")))
    assert 0 < done_first < 40
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    keys = [r["key"] for r in _manifest(dst)]
    assert sorted(keys) == sorted(f"f{i:02d}.txt" for i in range(40))
    assert not [p for p in dst.rglob("*") if ".datamill-tmp-" in p.name]
    assert all(p.read_text() == "SLOW" for p in dst.glob("*.out"))


def test_src_disappearing_stops_the_job_with_the_cause(tmp_path):
    import shutil
    src = _tree(tmp_path / "src", {f"f{i:02d}.txt": "SLOW" for i in range(60)})
    timer = threading.Timer(1.0, shutil.rmtree, args=(src,))
    timer.start()
    try:
        report = run_job(UpperJob(src, tmp_path / "dst"), RunOptions(quiet=True, workers=2))
    finally:
        timer.join()
    assert report.stats["this_run"]["status"] == "stopped"
    assert "disappeared" in report.message
    assert report.counts["failed"] == 0  # nothing is recorded as failed: the next run resumes


def _shard_batch(task, payloads):
    from datamill.engine.task import failed, filtered, ok
    task_id = task.id
    out = []
    for p in payloads:
        task.advance()
        if p == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        out.append(failed("bad", "bad item") if p == "bad" else
                   filtered("small") if p == "small" else ok((task_id, p)))
    return out


def test_batch_runner_gets_whole_tasks_and_a_killer_is_isolated_by_halves():
    from datamill.engine.executors.local import LocalExecutor
    items = [f"i{n}" for n in range(40)] + ["bad", "small", "kill"]
    sched = Scheduler(LocalExecutor(2),
                      TaskRunner(batch_fn=_shard_batch), ((p, p) for p in items),
                      retries=0, batch_size=16, first_task_id=100)
    try:
        results = {r.key: r for r in sched}
    finally:
        sched.close()
    assert set(results) == set(items)
    assert results["kill"].reason == "worker_died"
    assert results["bad"].reason == "bad" and results["small"].status == "filtered"
    task_ids = {r.value[0] for r in results.values() if r.ok}
    assert min(task_ids) >= 100
    # items of one task share its id; the first tasks hold 16 items each
    assert results["i0"].value[0] == results["i15"].value[0] != results["i16"].value[0]
    assert sorted(k for k, r in results.items() if r.status == "failed") == ["bad", "kill"]


def _reporting_batch(task, payloads):
    from datamill.engine.task import failed, ok
    out = []
    for p in payloads:
        out.append(ok(p) if p % 4 else failed("bad", "every fourth"))
        task.advance(outcome=out[-1].status, nbytes=10)
    return out


def test_batch_runners_report_outcomes_as_they_happen():
    from datamill.engine.executors.local import LocalExecutor
    ex = LocalExecutor(2)
    assert list(Scheduler(ex, TaskRunner(batch_fn=_reporting_batch), ((i, i) for i in range(40)),
                          retries=0, batch_size=8))
    try:
        assert ex.outcomes_so_far() == (30, 10, 400)  # every task's items, finished or not
    finally:
        ex.shutdown()


def _naming_batch(log, task, payloads):
    from datamill.engine.task import ok
    with open(log, "a") as f:
        f.write(f"{len(payloads)}\n")
    out = []
    for i, p in enumerate(payloads):
        task.start(i)
        if p == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if p == "hang":
            time.sleep(3600)
        out.append(ok(p))
    return out


def test_batch_runner_naming_its_running_item_loses_only_that_item(tmp_path):
    """`task.start(i)` makes a batch runner's crash or deadline cost one item, found at
    once (not by halving the task), as with a per-item function."""
    import functools
    from datamill.engine.executors.local import LocalExecutor
    log = tmp_path / "calls.txt"
    items = [f"i{n}" for n in range(14)] + ["kill"] + [f"j{n}" for n in range(16)] + ["hang"]
    sched = Scheduler(LocalExecutor(2), TaskRunner(batch_fn=functools.partial(_naming_batch, log)),
                      ((p, p) for p in items), retries=0, batch_size=16, timeout=2.0)
    started = time.monotonic()
    try:
        results = {r.key: r for r in sched}
    finally:
        sched.close()
    assert time.monotonic() - started < 60
    assert set(results) == set(items)
    assert results["kill"].reason == "worker_died" and results["hang"].reason == "timeout"
    assert sorted(k for k, r in results.items() if not r.ok) == ["hang", "kill"]
    calls = [int(n) for n in log.read_text().split()]
    # two tasks of 16, then the items before and after each culprit once more (at most 4
    # tasks); halving would have run about 2 * log2(16) = 8 more
    assert len(calls) <= 6, calls
    assert sum(calls[2:]) == len(items) - 2, calls  # every other item ran once more, no culprit


def test_task_ids_continue_across_runs(tmp_path):
    from datamill.engine.ledger import Ledger
    src = _tree(tmp_path / "src", {f"f{i}.txt": "x" for i in range(5)})
    dst = tmp_path / "dst"
    run_job(UpperJob(src, dst), RunOptions(quiet=True))
    first = Ledger(dst / "_datamill" / "state.sqlite").next_task_id
    assert first >= 1
    (src / "new.txt").write_text("y")
    run_job(UpperJob(src, dst), RunOptions(quiet=True))
    assert Ledger(dst / "_datamill" / "state.sqlite").next_task_id > first


def test_jobs_learn_the_cores_each_worker_has(tmp_path, monkeypatch):
    """Video codecs size their threads by `job.cores_per_worker`: the machine's cores shared
    among the workers (one each when every core runs a worker), all of them for one worker."""
    from datamill.engine.executors.local import LocalExecutor
    from datamill.engine.executors.serial import SerialExecutor
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert LocalExecutor(2).cores_per_worker() == 4
    assert LocalExecutor(8).cores_per_worker() == 1 == LocalExecutor(16).cores_per_worker()
    assert SerialExecutor().cores_per_worker() == 8
    job, clips = _ran_and_clips(tmp_path, workers=2)
    assert job.cores_per_worker == 4
    clips.cores_per_worker = 3
    assert clips.runner().fn.keywords["threads"] == 3


def _ran_and_clips(tmp_path: Path, workers: int):
    """A small job run by `workers` local workers, and a clips job on the same SRC (not run)."""
    from datamill.jobs.clips import ClipsJob
    src = _tree(tmp_path / "src", {"a.txt": "x"})
    job = UpperJob(src, tmp_path / "dst")
    assert run_job(job, RunOptions(quiet=True, workers=workers)).exit_code == 0
    return job, ClipsJob(src, tmp_path / "clips")


def test_jobs_learn_the_worker_count_and_clips_plans_for_it(tmp_path):
    """clips plans a long video for the run's workers (tasks of about frames / (4 x workers))
    and ranks its cut tasks by the frames they decode."""
    job, clips = _ran_and_clips(tmp_path, workers=3)
    assert job.workers == 3
    clips.workers = 5
    assert clips.runner().fn.keywords["workers"] == 5 and clips.costed
    task = {"clips": [[0, 256, 64], [1, 320, 64]], "seek_frame": 250}
    assert clips.cost(("cut", "v.mp4", "v.mp4", task, {})) == 134
    assert clips.cost(("plan", "v.mp4")) == 0


def test_progress_lines_when_not_a_terminal_and_counts_inside_running_tasks():
    import io
    from datamill.engine.progress import Progress
    out = io.StringIO()
    p = Progress("datamill test", quiet=False, interval=0.0, stream=out)
    p.update("ok")
    p.update("failed", "timeout")
    p.tick(in_flight_done=7)
    text = out.getvalue()
    assert "datamill test: 2 items done" in text
    assert "failed 1 (timeout 1)" in text and "7 more in running tasks" in text
    assert "50.0% ok" in text
    p.tick(in_flight_done=7, live=(3, 1, 3_000_000))  # reported by batch runners as they happen
    assert "75.0% ok" in out.getvalue().splitlines()[-1] and " MB/s" in out.getvalue().splitlines()[-1]
    quiet = io.StringIO()
    q = Progress("x", quiet=True, interval=0.0, stream=quiet)
    q.update("ok")
    q.tick(3)
    assert quiet.getvalue() == ""


def test_many_more_workers_than_cores_are_warned_about(tmp_path, caplog):
    src = _tree(tmp_path / "src", {"a.txt": "a"})
    with caplog.at_level("WARNING", logger="datamill"):
        run_job(UpperJob(src, tmp_path / "dst"), RunOptions(quiet=True, workers=(os.cpu_count() or 1) * 3))
    assert "take turns on the cores" in caplog.text


class _CountedUpperJob(UpperJob):
    def count(self):
        return sum(1 for _ in self.items())


def test_progress_knows_the_total_and_shows_an_eta_counting_earlier_runs(tmp_path, capfd):
    src = _tree(tmp_path / "src", {f"f{i:02d}.txt": "SLOW" for i in range(20)})
    dst = tmp_path / "dst"
    assert run_job(_CountedUpperJob(src, dst), RunOptions(limit=8, quiet=True)).ok
    capfd.readouterr()
    report = run_job(_CountedUpperJob(src, dst), RunOptions(workers=1, progress_interval=0.3))
    assert report.ok
    lines = [x for x in capfd.readouterr().err.splitlines() if x.startswith("datamill upper:")]
    assert lines, "no progress line"
    assert any("/20 items done (8 by earlier runs)" in x and "ETA " in x for x in lines), lines


def test_the_summary_and_counts_speak_in_the_inputs_units(tmp_path):
    import datamill
    from datamill.testing.files import make_corrupt_file
    from datamill.testing.videos import make_video
    src = tmp_path / "src"
    make_video(src / "a.mp4", frames=40, size=(64, 48))
    make_video(src / "b.mp4", frames=40, size=(64, 48))
    make_corrupt_file(src / "c.mp4")
    report = datamill.clips(src, tmp_path / "dst", frames=8, quiet=True)
    assert report.counts == {"ok": 2, "filtered": 0, "failed": 1}  # videos, not clip ranges
    assert json.loads((tmp_path / "dst" / "stats.json").read_text())["counts"]["ok"] == 2


def test_filtered_and_failed_items_reach_the_ledger_with_their_message(tmp_path):
    from datamill.engine.ledger import Ledger
    src = _tree(tmp_path / "src", {"a.txt": "SKIP", "b.txt": "RAISE", "c.txt": "fine"})
    dst = tmp_path / "dst"
    run_job(UpperJob(src, dst), RunOptions(quiet=True, retries=0))
    ledger = Ledger(dst / "_datamill" / "state.sqlite", readonly=True)
    rows = {r["key"]: r for r in ledger.iter_items()}
    ledger.close()
    assert (rows["a.txt"]["status"], rows["a.txt"]["reason"]) == ("filtered", "skip_marker")
    assert rows["a.txt"]["message"] == "skip_marker"
    assert (rows["b.txt"]["status"], rows["b.txt"]["reason"]) == ("failed", "ValueError")
    assert rows["b.txt"]["message"] == "cannot handle b.txt" and "Traceback" in rows["b.txt"]["traceback"]


def _partly_failing(payload):
    from datamill.engine.task import failed
    if payload == "half":  # what a clip task does when a frame is damaged: keep what it wrote
        return failed("decode_error", "clip 1: damaged", records=[
            {"clip": 0, "status": "ok"}, {"clip": 1, "status": "failed", "reason": "decode_error"}])
    return [{"clip": 0, "status": "ok"}]


def test_a_worker_can_fail_an_item_and_keep_its_records_through_one_outcome():
    results = {r.item: r for r in pmap(_partly_failing, ["whole", "half"], workers=1)}
    assert results["whole"].ok and results["whole"].value == [{"clip": 0, "status": "ok"}]
    half = results["half"]
    assert (half.status, half.reason, half.error.message) == ("failed", "decode_error",
                                                              "clip 1: damaged")
    assert [r["status"] for r in half.outcome.records] == ["ok", "failed"]


def test_decode_records_decodes_a_batch_as_each_row_alone():
    from datamill.engine.ledger import decode_records
    texts = ['[{"a":1}]', None, "", '{"b":[1,2]}', '"x"', "[]"]
    assert decode_records(texts) == [[{"a": 1}], None, None, {"b": [1, 2]}, "x", []]
    assert decode_records([]) == []
    # a row that is not one JSON value cannot shift the others: each is then decoded alone
    with pytest.raises(json.JSONDecodeError):
        decode_records(['1,2', '3'])
    with pytest.raises(json.JSONDecodeError):
        decode_records(['{"a":', '1}'])
