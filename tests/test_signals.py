"""How a run ends when it is killed or interrupted: workers die with their driver (kill -9),
and Ctrl-C at any moment exits 130 (or death by SIGINT before datamill's code runs), never
"Aborted!", never a traceback, and the next run completes every item exactly once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from datamill.testing.server import ImageServer

HERE = Path(__file__).parent
PROC = Path("/proc/self/task")
pytestmark = pytest.mark.skipif(not PROC.exists() or not (PROC / str(os.getpid()) / "children").exists(),
                                reason="needs Linux /proc/PID/task/TID/children")


def _tree(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def _children(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids |= {int(x) for x in (task / "children").read_text().split()}
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return kids


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie is dead, unreaped


def _session(sid: int) -> list[int]:
    """Live processes of session `sid` (a run started with start_new_session)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (f := _stat(int(d.name))) and f[3] == str(sid) and f[0] not in "ZX":
            out.append(int(d.name))
    return out


def _wait_for(condition, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(step)
    return condition()


# -- kill -9 of the driver --------------------------------------------------------------------
def _kill_driver_and_watch(proc: subprocess.Popen, ready, settle: float = 0.0) -> None:
    """Once `ready()` and `settle` seconds later, kill -9 the driver; its workers must be
    gone within 3 s."""
    workers: set[int] = set()
    try:
        assert _wait_for(lambda: ready() and len(_children(proc.pid)) >= 2, 30), \
            proc.stderr.read() if proc.poll() is not None else "the job did not start"
        time.sleep(settle)
        workers = _children(proc.pid)
        proc.kill()
        proc.wait(10)
        start = time.monotonic()
        assert _wait_for(lambda: not any(_alive(p) for p in workers), 3.0), \
            f"workers alive 3 s after the driver died: {[p for p in workers if _alive(p)]}"
        print(f"workers {sorted(workers)} gone {time.monotonic() - start:.2f} s after the driver")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_workers_die_with_a_killed_driver_idle_or_in_a_long_item(tmp_path):
    # one worker is stuck in an item of an hour (a task may wait behind it); the others
    # finish the rest and wait for tasks on their pipes
    src = _tree(tmp_path / "src", {"a.txt": "SLEEP"} | {f"b{i}.txt": "hi" for i in range(4)})
    dst = tmp_path / "dst"
    proc = subprocess.Popen([sys.executable, str(HERE / "textjob.py"), str(src), str(dst)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _kill_driver_and_watch(proc, lambda: len(list(dst.glob("b*.out"))) >= 2, settle=0.5)


def test_workers_die_with_a_killed_driver_mid_job(tmp_path):
    src = _tree(tmp_path / "src", {f"f{i:02d}.txt": "SLOW" for i in range(60)})
    dst = tmp_path / "dst"
    proc = subprocess.Popen([sys.executable, str(HERE / "textjob.py"), str(src), str(dst)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _kill_driver_and_watch(proc, lambda: len(list(dst.glob("*.out"))) >= 4)


PMAP_FROM_A_THREAD = textwrap.dedent("""
    import sys, threading, time
    from datamill import pmap

    def slow(x):
        time.sleep(3600 if x == 0 else 0.05)
        return x

    def drive():
        for r in pmap(slow, range(10_000), workers=2):
            print(r.item, flush=True)

    t = threading.Thread(target=drive)
    t.start()
    t.join()
""")


def test_workers_forked_from_a_thread_die_with_a_killed_driver(tmp_path):
    # The parent-death signal follows the thread that forked: from a thread other than the
    # main one it is not used, and the workers' watch of their parent must do the job.
    proc = subprocess.Popen([sys.executable, "-c", PMAP_FROM_A_THREAD], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _kill_driver_and_watch(proc, lambda: bool(proc.stdout.readline()))


# -- Ctrl-C at any moment -----------------------------------------------------------------------
N_URLS = 64  # 250 ms each, 2 workers x 2 connections: the job lasts about 4 s after start-up
DELAYS = [round(3.0 * i / 19, 3) for i in range(20)]
RERUN_AFTER = {DELAYS[0], DELAYS[3], DELAYS[10], DELAYS[19]}


@pytest.fixture(scope="module")
def url_list(tmp_path_factory):
    with ImageServer() as server:
        path = tmp_path_factory.mktemp("urls") / "urls.txt"
        path.write_text("".join(server.url(f"latency/250/{i}.jpg?w=64&h=48") + "\n"
                                for i in range(N_URLS)))
        yield path


def _datamill_command() -> list[str]:
    script = Path(sys.executable).with_name("datamill")  # the console script, as users run it
    return [str(script)] if script.exists() else [sys.executable, "-m", "datamill"]


def _as_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _download(entry: list[str], urls: Path, dst: Path) -> list[str]:
    return [*entry, "download", str(urls), str(dst), "--workers", "2", "--concurrency", "2",
            "--shard-size", "4", "--format", "files"]


def _interrupt_after(cmd: list[str], delay: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, no_proxy="127.0.0.1,localhost")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_as_a_terminal, start_new_session=True)
    try:
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert _wait_for(lambda: not _session(proc.pid), 3.0), \
        f"processes of the run alive after it ended: {_session(proc.pid)}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _check_interrupted(r: subprocess.CompletedProcess, delay: float) -> None:
    what = f"after {delay} s: exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Aborted!" not in r.stderr, what
    assert "Traceback" not in r.stderr, what
    assert "Exception ignored" not in r.stderr, what  # an interrupt swallowed
    # Death by SIGINT: before datamill's code runs (the interpreter's start-up), or when the
    # KeyboardInterrupt that datamill caught was raised inside exec'd code (a dataclass being
    # made while the modules load): CPython then re-raises SIGINT at exit.
    assert r.returncode in (130, -signal.SIGINT), what


def _check_complete(dst: Path) -> None:
    rows = pq.read_table(dst / "manifest.parquet").to_pylist()
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == N_URLS, f"{len(keys)} rows, {len(set(keys))} keys"
    assert {r["status"] for r in rows} == {"ok"}
    images = [p for p in dst.rglob("*.jpg") if "_datamill" not in p.parts]
    assert len(images) == N_URLS, f"{len(images)} image files for {N_URLS} URLs"
    assert not [p for p in dst.rglob("*") if ".datamill-tmp-" in p.name]


@pytest.mark.parametrize("delay", DELAYS)
def test_ctrl_c_at_any_moment_exits_130_and_the_rerun_completes(url_list, tmp_path, delay):
    dst = tmp_path / "dst"
    cmd = _download(_datamill_command(), url_list, dst)
    _check_interrupted(_interrupt_after(cmd, delay), delay)
    if delay in RERUN_AFTER:
        env = dict(os.environ, no_proxy="127.0.0.1,localhost")
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert again.returncode == 0, f"stdout:\n{again.stdout}\nstderr:\n{again.stderr}"
        _check_complete(dst)


@pytest.mark.parametrize("delay", [0.05, 0.3, 1.5])
def test_ctrl_c_with_python_m_datamill(url_list, tmp_path, delay):
    cmd = _download([sys.executable, "-m", "datamill"], url_list, tmp_path / "dst")
    _check_interrupted(_interrupt_after(cmd, delay), delay)


# -- the entry, deterministically -----------------------------------------------------------------
def _entry(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60)


def test_interrupt_while_importing_the_commands_exits_130():
    r = _entry("""
        import sys
        class Interrupt:  # Ctrl-C while the command modules load
            def find_spec(self, name, path, target=None):
                if name == "datamill.cli":
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, Interrupt())
        from datamill.__main__ import run
        sys.exit(run(["--version"]))
    """)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip() == "interrupted"


def test_interrupt_in_a_command_exits_130_not_aborted(tmp_path):
    r = _entry(f"""
        import sys
        import datamill.job_commands
        def interrupted(job, opts):  # Ctrl-C before the run loop handles it itself
            raise KeyboardInterrupt
        datamill.job_commands.run_job = interrupted
        from datamill.__main__ import run
        sys.exit(run(["clips", {str(tmp_path)!r}, {str(tmp_path / "out")!r}]))
    """)
    assert r.returncode == 130, r.stderr
    assert "interrupted" in r.stderr and "Aborted!" not in r.stderr and "Traceback" not in r.stderr


def test_entry_keeps_the_commands_statuses(tmp_path):
    assert _entry("import sys; from datamill.__main__ import run; sys.exit(run(['--version']))"
                  ).returncode == 0
    usage = _entry("import sys; from datamill.__main__ import run; sys.exit(run(['clips']))")
    assert usage.returncode == 2 and "Missing argument 'SRC'" in usage.stderr
    missing = _entry(f"import sys; from datamill.__main__ import run; "
                     f"sys.exit(run(['status', {str(tmp_path)!r}]))")
    assert missing.returncode == 2 and "error:" in missing.stderr
