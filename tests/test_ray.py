"""Executor `ray` on one local Ray instance: the same results and files as `local`, and a
worker that dies or hangs costs only its item.  Deselect with `-m "not ray"`."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest

import datamill
from datamill import pmap
from datamill.errors import UsageError
from datamill.engine.executors import get_executor
from datamill.engine.scheduler import Scheduler
from datamill.engine.task import TaskRunner
from datamill.io.http import FetchOptions
from datamill.media.image import ImageOptions
from datamill.testing.files import make_corrupt_file
from datamill.testing.images import make_image
from datamill.testing.server import ImageServer
from datamill.testing.videos import make_video
import faults
from faults import hang_on_3, kill_on_7, ten_div

try:
    import ray
except ImportError:  # CI installs the ray extra: there a missing Ray is a failure
    if os.environ.get("CI"):
        raise
    pytest.skip("Ray is not installed: pip install -e '.[dev,ray]'", allow_module_level=True)
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    """One local instance for the module; every executor below reuses it and leaves it up.
    The functions below and those of tests/faults.py travel by value (Ray workers cannot
    import a test module), and the workers reach the image server directly, whatever proxy
    the environment names."""
    modules = [sys.modules[__name__], faults]
    for module in modules:
        ray.cloudpickle.register_pickle_by_value(module)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING,
             runtime_env={"env_vars": {"no_proxy": "127.0.0.1,localhost"}})
    yield
    ray.shutdown()
    for module in modules:
        ray.cloudpickle.unregister_pickle_by_value(module)



_INIT: dict = {}


def _init(tag):
    _INIT[tag] = _INIT.get(tag, 0) + 1


def _report_init(x):
    return os.getpid(), dict(_INIT)




# -- pmap and the executor ---------------------------------------------------------------------
def test_pmap_on_ray_gives_the_same_values_and_errors_as_local():
    items = [1, 2, 0, 5, 3, "x"]

    def outcome(r):
        error = (r.error.error_class, r.error.type, r.error.message) if r.error else None
        return repr(r.item), r.status, r.value, r.reason, error

    local = sorted(map(outcome, pmap(ten_div, items, workers=2)))
    on_ray = [*pmap(ten_div, items, workers=2, executor="ray")]
    assert sorted(map(outcome, on_ray)) == local
    assert "_div" in next(r for r in on_ray if r.item == 0).error.traceback
    assert ray.is_initialized()  # the executor left the instance it did not start


def test_the_initializer_runs_once_per_ray_worker_and_lambdas_travel():
    results = list(pmap(_report_init, range(40), executor="ray", initializer=_init,
                        initargs=("job-a",), batch_size=1))
    assert all(r.ok for r in results)
    assert {r.value[1]["job-a"] for r in results} == {1}
    assert 1 <= len({r.value[0] for r in results}) <= 2
    assert sorted(r.value for r in pmap(lambda x: x + 1, range(4), executor="ray")) == [1, 2, 3, 4]


def test_a_task_that_kills_its_worker_costs_only_its_item():
    start = time.monotonic()
    results = list(pmap(kill_on_7, range(40), executor="ray", batch_size=10, retries=1))
    assert time.monotonic() - start < 120
    failed = [r for r in results if not r.ok]
    assert [(r.item, r.reason) for r in failed] == [(7, "worker_died")]
    assert "WorkerCrashedError" in failed[0].error.message
    assert sorted(r.value for r in results if r.ok) == [2 * x for x in range(40) if x != 7]


def test_a_task_past_its_deadline_is_cancelled_and_split():
    ex = get_executor("ray", 2, slack=5.0)  # slack: time for Ray to start a new worker
    start = time.monotonic()
    results = list(Scheduler(ex, TaskRunner(hang_on_3), ((i, i) for i in range(4)), retries=0,
                             timeout=1.0, batch_size=2))
    assert time.monotonic() - start < 60
    failed = [r for r in results if not r.ok]
    assert [(r.key, r.reason) for r in failed] == [(3, "timeout")]
    assert "deadline of 6 s" in failed[0].error.message
    assert sorted(r.value for r in results if r.ok) == [0, 1, 2]


def test_without_ray_the_executor_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.delitem(sys.modules, "datamill.engine.executors.ray")
    with pytest.raises(ImportError, match=r"pip install 'datamill\[ray\]'"):
        get_executor("ray")


def test_the_ray_executor_refuses_an_option_it_does_not_take_naming_it():
    with pytest.raises(UsageError, match="the ray executor takes no option 'colour' "
                                         r"\(its options are address, cpus_per_task"):
        get_executor("ray", colour="red")
    with pytest.raises(UsageError, match="cpus_per_task must be more than 0"):
        get_executor("ray", cpus_per_task=0)


def test_importing_datamill_does_not_import_ray():
    code = "import sys, datamill; datamill.pmap; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- jobs: the same files as local -------------------------------------------------------------
VOLATILE = {"seconds", "shard_seconds", "elapsed"}  # timings, not results


def manifest(dst: Path) -> list[dict]:
    rows = pq.read_table(dst / "manifest.parquet").to_pylist()
    return sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in rows),
                  key=lambda r: (r["key"], repr(r)))


def files(dst: Path) -> dict[str, Path]:
    """The job's own outputs (not its manifest, stats and ledger)."""
    return {p.relative_to(dst).as_posix(): p for p in dst.rglob("*")
            if p.is_file() and "_datamill" not in p.parts
            and p.name not in {"manifest.parquet", "stats.json", "failures.jsonl", "report.html"}}


def both(run, tmp_path: Path) -> tuple[Path, Path]:
    """Run `run(dst, executor)` with each executor; check the run ended alike; the folders."""
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    a, b = run(local, "local"), run(on_ray, "ray")
    assert (a.exit_code, a.counts) == (b.exit_code, b.counts)
    assert manifest(on_ray) == manifest(local)
    assert sorted(files(on_ray)) == sorted(files(local))
    return local, on_ray


def frame_count(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_clips_on_ray_writes_the_same_clips(tmp_path):
    src = tmp_path / "src"
    make_video(src / "a.mp4", frames=64, size=(160, 120), gop=12, bframes=2)
    make_video(src / "sub/b.mkv", frames=32, size=(160, 120))
    make_corrupt_file(src / "corrupt.mp4")
    local, on_ray = both(lambda dst, ex: datamill.clips(src, dst, frames=16, size=(64, 48),
                                                        quiet=True, workers=2, executor=ex),
                         tmp_path)
    clips = files(local)
    assert len(clips) == 6
    for rel, path in clips.items():
        assert frame_count(on_ray / rel) == frame_count(path) == 16


def test_download_on_ray_writes_the_same_images(tmp_path):
    with ImageServer() as server:
        urls = [server.url(f"img/{i}.jpg?w=320&h=240") for i in range(10)]
        urls += [server.url(p) for p in ("status/404", "html", "tiny.jpg")]
        (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
        fetch = FetchOptions(timeout=5, retries=1, backoff=0.05)
        local, on_ray = both(lambda dst, ex: datamill.download(
            tmp_path / "urls.txt", dst, shard_size=4, image=ImageOptions(resize=64, min_size=20),
            fetch=fetch, quiet=True, workers=2, executor=ex), tmp_path)
    images = {rel: p for rel, p in files(local).items() if rel.endswith(".jpg")}
    assert len(images) == 10
    for rel, path in images.items():
        assert (on_ray / rel).read_bytes() == path.read_bytes()


def map_record(n):
    import numpy as np
    if n == 7:
        raise ValueError("seven")
    return {"n": n, "vec": np.arange(8, dtype=np.int16) + n}


def test_map_on_ray_writes_the_same_ordered_shards(tmp_path):
    """The function travels to Ray's workers; ordered shards are the same bytes."""
    local, on_ray = both(lambda dst, ex: datamill.map(
        map_record, range(300), dst, shard_size=64, ordered=True, retries=0, quiet=True,
        workers=2, executor=ex), tmp_path)
    shards = sorted(p.name for p in local.iterdir() if p.name[:1].isdigit())
    assert shards == [f"{i:05d}.parquet" for i in range(5)]
    for name in shards:
        assert (on_ray / name).read_bytes() == (local / name).read_bytes()
    recs = list(datamill.read_shards(on_ray))
    assert [r["n"] for r in recs] == [n for n in range(300) if n != 7]


def test_dedup_on_ray_finds_the_same_groups(tmp_path):
    src = tmp_path / "src"
    for n in range(2):
        make_image(src / f"set{n}/a.jpg", size=(320, 240), seed=n, quality=95)
        (src / f"set{n}/copy.jpg").write_bytes((src / f"set{n}/a.jpg").read_bytes())
        make_image(src / f"set{n}/b.png", size=(200, 200), seed=10 + n, fmt="PNG")
    (src / "broken.jpg").write_bytes(b"not an image")
    local, on_ray = both(lambda dst, ex: datamill.dedup(src, dst, quiet=True, workers=2,
                                                        executor=ex), tmp_path)
    groups = pq.read_table(local / "groups.parquet").to_pylist()
    assert len(groups) == 4
    assert pq.read_table(on_ray / "groups.parquet").to_pylist() == groups


def test_a_local_dst_on_a_cluster_of_several_nodes_is_warned_about_once(tmp_path, monkeypatch,
                                                                      caplog):
    src = tmp_path / "src"
    make_image(src / "a.jpg", size=(64, 64), seed=1)
    make_image(src / "b.jpg", size=(64, 64), seed=2)
    fake = [{"NodeID": "head", "Alive": True}, {"NodeID": "w1", "Alive": True},
            {"NodeID": "gone", "Alive": False}]
    monkeypatch.setattr(ray, "nodes", lambda: fake)
    with caplog.at_level(logging.WARNING, logger="datamill"):
        report = datamill.dedup(src, tmp_path / "out", quiet=True, executor="ray")
    assert report.ok
    warnings = [r.getMessage() for r in caplog.records if "nodes" in r.getMessage()]
    assert len(warnings) == 1
    assert "2 nodes" in warnings[0] and str(tmp_path / "out") in warnings[0]
    assert "shared filesystem" in warnings[0] and "s3://" in warnings[0]

    caplog.clear()
    monkeypatch.setattr(ray, "nodes", lambda: fake[:1])
    with caplog.at_level(logging.WARNING, logger="datamill"):
        datamill.dedup(src, tmp_path / "out2", quiet=True, executor="ray")
    assert not [r for r in caplog.records if "nodes" in r.getMessage()]
