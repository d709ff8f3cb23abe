"""DST as an fsspec URL: a real S3 API (moto's server on 127.0.0.1) through s3fs.

Every job writes the same objects as it writes files into a local DST, never a temporary
object, and keeps its ledger in a local state folder; a rerun does nothing.  The Ray tests
carry the `ray` marker; the others need no Ray.
"""
from __future__ import annotations

import io
import json
import logging
import os
import socket
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import s3fs  # s3fs and moto[server] are in the dev extra
from click.testing import CliRunner
from moto.server import ThreadedMotoServer

import datamill
from datamill.cli import main
from datamill.atomic import TMP_MARK
from datamill.errors import UsageError
from datamill.engine.ledger import Ledger
from datamill.engine.status import describe
from datamill.engine.dst import Dst, default_state_dir, state_path
from datamill.io.http import FetchOptions
from datamill.media.image import ImageOptions
from datamill.testing.files import make_corrupt_file
from datamill.testing.images import make_image
from datamill.testing.server import ImageServer
from datamill.testing.videos import make_video


BUCKET = "datamill-test"
FETCH = FetchOptions(timeout=5, retries=1, backoff=0.05)
VOLATILE = {"seconds", "shard_seconds", "elapsed"}
REPORTS = {"manifest.parquet", "stats.json", "failures.jsonl", "failed_urls.txt", "report.html"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1", "no_proxy": "127.0.0.1,localhost",
          "NO_PROXY": "127.0.0.1,localhost"}


@pytest.fixture(scope="module")
def s3():
    """An S3 API on 127.0.0.1 with one bucket; workers (forked) reach it through the
    environment, as they would reach AWS."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    yield fs, env
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(s3, request, tmp_path, monkeypatch):
    """A fresh prefix per test, and a cache folder of its own (the default state folders)."""
    fs, _ = s3
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return fs, f"s3://{BUCKET}/{request.node.name.replace('[', '-').rstrip(']')}"


OWNER = "_datamill/owner.json"  # which ledger writes the DST (the ledger itself stays local)


def objects(fs, url: str) -> dict[str, bytes]:
    """Every object under `url`, by path relative to it."""
    root = url.removeprefix("s3://")
    fs.invalidate_cache()
    return {os.path.relpath(p, root): fs.cat_file(p) for p in fs.find(root)
            if os.path.relpath(p, root) != OWNER}


def local_files(dst: Path) -> dict[str, bytes]:
    return {p.relative_to(dst).as_posix(): p.read_bytes() for p in dst.rglob("*")
            if p.is_file() and "_datamill" not in p.relative_to(dst).parts}


def rows(parquet: bytes) -> list[dict]:
    table = pq.read_table(io.BytesIO(parquet)).to_pylist()
    return sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in table),
                  key=lambda r: (r["key"], repr(r)))


def content(name: str, data: bytes) -> object:
    """What an output holds: a shard's records whatever their order (workers add images as
    their downloads finish), any other file's bytes."""
    if name.endswith(".tar"):
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return sorted((m.name, tar.extractfile(m).read()) for m in tar)
    if name.endswith(".parquet") and name != "groups.parquet":
        return sorted(map(repr, pq.read_table(io.BytesIO(data)).to_pylist()))
    return data


def assert_same_outputs(remote: dict[str, bytes], local: dict[str, bytes]) -> None:
    """The same names; the job's own outputs alike; the same manifest rows; nothing else."""
    assert sorted(remote) == sorted(local)
    for name, data in local.items():
        if name not in REPORTS:
            assert content(name, remote[name]) == content(name, data), name
    assert rows(remote["manifest.parquet"]) == rows(local["manifest.parquet"])
    assert not [n for n in remote if TMP_MARK in n or "write-test" in n or "_datamill" in n]


# -- download --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def urls(tmp_path_factory):
    root = tmp_path_factory.mktemp("urls")
    with ImageServer() as server:
        lines = [server.url(f"img/{i}.jpg?w=320&h=240") for i in range(9)]
        lines += [server.url(p) for p in ("status/404", "tiny.jpg")]
        (root / "urls.txt").write_text("\n".join(lines) + "\n")
        yield root / "urls.txt"


def download(urls: Path, dst, fmt: str, **engine):
    return datamill.download(urls, dst, format=fmt, shard_size=4, fetch=FETCH,
                             image=ImageOptions(resize=64, min_size=20), quiet=True, **engine)


@pytest.mark.parametrize("fmt", ["files", "webdataset", "parquet"])
def test_download_into_s3_writes_the_local_outputs_and_resumes(bucket, urls, tmp_path, fmt):
    fs, url = bucket
    local = download(urls, tmp_path / "local", fmt, workers=2)
    state = tmp_path / "state"
    remote = download(urls, url, fmt, workers=2, state_dir=state)
    assert (remote.exit_code, remote.counts) == (local.exit_code, local.counts) == (
        1, {"ok": 9, "filtered": 1, "failed": 1})
    assert remote.dst == url
    first = objects(fs, url)
    assert_same_outputs(first, local_files(tmp_path / "local"))
    assert len([n for n in first if n.endswith(".jpg")]) == (9 if fmt == "files" else 0)
    assert json.loads(first["stats.json"])["dst"] == url
    assert (state / "state.sqlite").is_file()  # the ledger is local, in the state folder
    assert Ledger.open_existing(state / "state.sqlite").get_meta("dst") == url

    again = download(urls, url, fmt, workers=2, state_dir=state)  # resume: nothing to do
    assert again.stats["this_run"]["items"] == 0
    assert again.stats["this_run"]["skipped_done"] == 10
    second = objects(fs, url)
    assert {k: v for k, v in second.items() if k != "stats.json"} == {
        k: v for k, v in first.items() if k != "stats.json"}


def test_a_run_that_stops_before_commit_leaves_nothing_unrecorded_in_the_store(
        bucket, urls, tmp_path, monkeypatch):
    fs, url = bucket
    root = url.removeprefix("s3://")
    fs.pipe_file(f"{root}/00001.tar", b"the user's")  # named like a shard, not in the ledger
    with pytest.raises(UsageError, match="not a datamill folder"):
        download(urls, url, "webdataset", workers=1)
    monkeypatch.setenv("DATAMILL_FAULT", "commit:enospc")  # shards uploaded, never committed
    stopped = download(urls, url, "webdataset", workers=1, allow_existing=True)  # 00001 skipped
    assert stopped.exit_code == 1 and "disk is full" in stopped.message
    names = objects(fs, url)
    listed = {r["shard"] + ".tar" for r in pq.read_table(io.BytesIO(names["manifest.parquet"])).to_pylist()
              if r["status"] == "ok"}
    assert {n for n in names if n.endswith(".tar")} == listed | {"00001.tar"}  # none unrecorded
    assert names["00001.tar"] == b"the user's"
    monkeypatch.delenv("DATAMILL_FAULT")
    again = download(urls, url, "webdataset", workers=1)
    assert again.counts == {"ok": 9, "filtered": 1, "failed": 1}  # the list's 404 and tiny image
    names = objects(fs, url)
    assert names["00001.tar"] == b"the user's"
    keys = [m.name.split(".")[0] for n in names if n.endswith(".tar") and n != "00001.tar"
            for m in tarfile.open(fileobj=io.BytesIO(names[n])).getmembers()]
    ok = [r["key"] for r in pq.read_table(io.BytesIO(names["manifest.parquet"])).to_pylist()
          if r["status"] == "ok"]
    assert sorted(set(keys)) == sorted(ok) and len(keys) == 2 * len(ok)  # .jpg + .json each
    owner = json.loads(fs.cat_file(f"{root}/{OWNER}"))
    assert owner["host"] and owner["ledger"]


# -- clips -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    src = tmp_path_factory.mktemp("videos")
    make_video(src / "a.mp4", frames=48, size=(160, 120), gop=12, bframes=2)
    make_video(src / "sub/b.mkv", frames=32, size=(160, 120))
    make_corrupt_file(src / "corrupt.mp4")
    return src


def test_clips_into_s3_with_the_default_state_folder(bucket, videos, tmp_path):
    fs, url = bucket
    kw = dict(frames=16, size=(64, 48), quiet=True, workers=2)
    local = datamill.clips(videos, tmp_path / "local", **kw)
    remote = datamill.clips(videos, url, **kw)
    assert (remote.exit_code, remote.counts) == (local.exit_code, local.counts)
    assert remote.counts["failed"] == 1
    out = objects(fs, url)
    assert_same_outputs(out, local_files(tmp_path / "local"))
    assert len([n for n in out if n.endswith(".mp4")]) == 5
    ledger = state_path(url)
    assert ledger == default_state_dir(Dst(url)) / "state.sqlite"
    assert ledger.is_relative_to(tmp_path / "cache" / "datamill")
    assert ledger.is_file()
    assert f"ok {remote.counts['ok']}, filtered 0, failed 1" in describe(url)

    again = datamill.clips(videos, url, **kw)
    assert again.stats["this_run"]["items"] == 0
    assert {k: v for k, v in objects(fs, url).items() if k != "stats.json"} == {
        k: v for k, v in out.items() if k != "stats.json"}


def test_cli_clips_into_s3_with_state_dir_and_status(bucket, videos, tmp_path):
    fs, url = bucket
    state = tmp_path / "state"
    args = ["clips", str(videos), url, "--frames", "16", "--size", "64x48", "--state-dir",
            str(state), "--workers", "2", "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output  # the corrupt video
    assert (state / "state.sqlite").is_file()
    assert not default_state_dir(Dst(url)).exists()
    assert {"a/a_0000.mp4", "sub/b/b_0001.mp4", "manifest.parquet"} <= set(objects(fs, url))
    status = CliRunner().invoke(main, ["status", url, "--state-dir", str(state)])
    assert status.exit_code == 0 and "datamill clips job" in status.output
    missing = CliRunner().invoke(main, ["status", url])
    assert missing.exit_code == 2 and "--state-dir" in missing.output


def test_a_state_folder_belongs_to_one_dst(bucket, videos, tmp_path):
    fs, url = bucket
    state = tmp_path / "state"
    datamill.clips(videos, url + "/one", frames=16, quiet=True, workers=1, state_dir=state,
                   limit=1)
    with pytest.raises(UsageError, match=r"holds the ledger of DST s3://.*/one, not .*/two"):
        datamill.clips(videos, url + "/two", frames=16, quiet=True, workers=1, state_dir=state)


# -- dedup -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    src = tmp_path_factory.mktemp("images")
    make_image(src / "a.jpg", size=(320, 240), seed=1, quality=95)
    (src / "copy.jpg").write_bytes((src / "a.jpg").read_bytes())
    make_image(src / "sub/b.png", size=(200, 200), seed=2, fmt="PNG")
    return src


def test_dedup_into_s3_copies_survivors_groups_and_report(bucket, images, tmp_path):
    fs, url = bucket
    local = datamill.dedup(images, tmp_path / "local", action="copy", quiet=True, workers=2)
    remote = datamill.dedup(images, url, action="copy", quiet=True, workers=2)
    assert remote.counts == local.counts == {"ok": 2, "filtered": 1, "failed": 0}  # 1 duplicate
    out = objects(fs, url)
    assert_same_outputs(out, local_files(tmp_path / "local"))
    assert {"groups.parquet", "report.html", "sub/b.png"} <= set(out)
    assert pq.read_table(io.BytesIO(out["groups.parquet"])).num_rows == 2
    assert out["sub/b.png"] == (images / "sub/b.png").read_bytes()
    # a regroup keeps the copies already there, and writes nothing else to the store
    datamill.dedup(images, url, action="copy", quiet=True, workers=2, threshold=4)
    assert sorted(objects(fs, url)) == sorted(out)


@pytest.mark.parametrize("action", ["hardlink", "symlink", "move-duplicates"])
def test_dedup_actions_an_object_store_cannot_do_are_refused(bucket, images, tmp_path, action):
    fs, url = bucket
    move_to = str(tmp_path / "dups") if action == "move-duplicates" else None
    with pytest.raises(UsageError, match=f"--action {action} needs a local DST"):
        datamill.dedup(images, url, action=action, move_to=move_to, quiet=True)
    assert objects(fs, url) == {}


# -- bad DSTs --------------------------------------------------------------------------------
def test_a_missing_bucket_is_a_usage_error_naming_dst(s3, images, tmp_path):
    with pytest.raises(UsageError, match=r"DST is not writable: s3://no-such-bucket/x"):
        datamill.dedup(images, "s3://no-such-bucket/x", quiet=True, state_dir=tmp_path)


def test_an_unknown_protocol_is_a_usage_error(images, tmp_path):
    with pytest.raises(UsageError, match=r"DST nope://x/y: .*nope"):
        datamill.dedup(images, "nope://x/y", quiet=True, state_dir=tmp_path)


def test_without_fsspec_a_url_dst_says_what_to_install(images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if fsspec were not installed
    with pytest.raises(UsageError, match=r"needs fsspec \(pip install 'datamill\[remote\]'"):
        datamill.dedup(images, "s3://bucket/x", quiet=True, state_dir=tmp_path)


def test_cli_exits_2_on_an_unwritable_state_dir(s3, images, tmp_path):
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(main, ["dedup", str(images), f"s3://{BUCKET}/state-dir-test",
                                       "--state-dir", str(tmp_path / "file" / "state")])
    assert result.exit_code == 2
    assert "the state folder" in result.output and "--state-dir" in result.output


# -- Dst, without S3 ---------------------------------------------------------------------------
def test_staged_uploads_only_complete_work_metadata_last(monkeypatch):
    import fsspec
    dst = Dst("memory://staged-test/out")
    fs = fsspec.filesystem("memory")
    with pytest.raises(RuntimeError):
        with dst.staged() as root:
            (root / "half.mp4").write_bytes(b"x")
            raise RuntimeError("the task failed")
    assert not fs.exists("/staged-test/out/half.mp4")
    with pytest.raises(RuntimeError):
        with dst.atomic_path("stats.json") as tmp:
            tmp.write_text("{")
            raise RuntimeError("killed")
    assert not fs.exists("/staged-test/out/stats.json")

    waves = []
    monkeypatch.setattr(Dst, "upload_many", lambda self, files: waves.append(
        sorted(rel for _, rel in files)))
    with dst.staged(last=lambda name: name.endswith(".json")) as root:
        (root / "00001").mkdir()
        for name in ("k1.json", "k1.jpg", "k2.txt", "k2.json", "k2.webp"):
            (root / "00001" / name).write_bytes(b"x")
        staging = root
    assert waves == [["00001/k1.jpg", "00001/k2.txt", "00001/k2.webp"],
                     ["00001/k1.json", "00001/k2.json"]]
    assert not staging.exists()


def test_a_local_dst_is_written_in_place():
    dst = Dst("out/clips")
    assert not dst.is_remote and dst.path == Path("out/clips") and dst.location == dst.path
    with dst.staged() as root:
        assert root == Path("out/clips")
    assert Dst("file:///data/out").path == Path("/data/out")
    assert Dst("s3://b/p/").url == "s3://b/p" and Dst("s3://b/p").location == "s3://b/p"


# -- on Ray ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_with_s3(s3):
    """A local Ray instance whose workers reach the S3 API through their environment."""
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("Ray is not installed: pip install -e '.[dev,ray]'")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, runtime_env={"env_vars": s3[1]})
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_download_and_clips_on_ray_into_s3(ray_with_s3, bucket, urls, videos, tmp_path, caplog,
                                           monkeypatch):
    fs, url = bucket
    # as on a cluster of two machines: a URL DST needs no shared filesystem, so no warning
    monkeypatch.setattr(ray_with_s3, "nodes", lambda: [{"Alive": True}, {"Alive": True}])
    local = download(urls, tmp_path / "dl", "webdataset", workers=2)
    with caplog.at_level(logging.WARNING, logger="datamill"):
        remote = download(urls, url + "/dl", "webdataset", executor="ray",
                          state_dir=tmp_path / "s1")
    assert (remote.exit_code, remote.counts) == (local.exit_code, local.counts)
    assert_same_outputs(objects(fs, url + "/dl"), local_files(tmp_path / "dl"))
    assert (tmp_path / "s1" / "state.sqlite").is_file()
    again = download(urls, url + "/dl", "webdataset", executor="ray", state_dir=tmp_path / "s1")
    assert again.stats["this_run"]["items"] == 0

    kw = dict(frames=16, size=(64, 48), quiet=True)
    local = datamill.clips(videos, tmp_path / "clips", workers=2, **kw)
    remote = datamill.clips(videos, url + "/clips", executor="ray", state_dir=tmp_path / "s2",
                            **kw)
    assert (remote.exit_code, remote.counts) == (local.exit_code, local.counts)
    assert_same_outputs(objects(fs, url + "/clips"), local_files(tmp_path / "clips"))
    assert not [r for r in caplog.records if "nodes" in r.getMessage()]


def test_a_second_state_folder_for_the_same_store_is_refused(bucket, urls, tmp_path):
    fs, url = bucket
    first = download(urls, url, "webdataset", workers=1, state_dir=tmp_path / "state-a")
    assert first.counts["ok"] == 9
    before = objects(fs, url)
    with pytest.raises(UsageError, match="is written by the ledger of host"):
        download(urls, url, "webdataset", workers=1, state_dir=tmp_path / "state-b",
                 allow_existing=True)
    assert objects(fs, url) == before  # nothing written, nothing removed
