"""Inputs that used to stop a whole job or fail it with a meaningless message (issue 10,
items 12, 13 and 17): a file name that is not UTF-8, a truncated or mislabelled URL list,
an output size no encoder makes."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest

import datamill
from datamill.errors import UsageError
from datamill.io.http import FetchOptions
from datamill.jobs.clips import ClipOptions
from datamill.media.video import cut_clips, plan_clip_tasks, probe_video
from datamill.testing.images import make_image
from datamill.testing.server import ImageServer
from datamill.testing.videos import make_video

SMALL = (64, 48)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datamill", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def failures(dst: Path) -> dict[str, dict]:
    lines = (dst / "failures.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["key"]: row for row in map(json.loads, lines)}


def rename_to_bytes(path: Path, name: bytes) -> bytes:
    """Give `path` a file name that is not UTF-8; returns the new path as bytes."""
    new = os.path.join(os.fsencode(path.parent), name)
    os.rename(os.fsencode(path), new)
    return new


# --------------------------------------------------------------------------- item 12


@pytest.fixture(scope="module")
def videos_with_a_bad_name(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("videos")
    make_video(src / "good.mp4", frames=20, size=SMALL)
    make_video(src / "sub" / "also good.mp4", frames=20, size=SMALL)
    rename_to_bytes(make_video(src / "bad.mp4", frames=20, size=SMALL), b"\xff.mp4")
    (src / "sub" / "bad.mp4").write_bytes((src / "good.mp4").read_bytes())
    rename_to_bytes(src / "sub" / "bad.mp4", b"caf\xe9.mp4")
    return src


def test_clips_a_name_not_utf8_fails_only_that_video_with_its_path(videos_with_a_bad_name,
                                                                   tmp_path):
    src = videos_with_a_bad_name
    dst = tmp_path / "clips"
    out = cli("clips", str(src), str(dst), "--frames", "10", "--size", "32x24")
    assert out.returncode == 1, out.stderr  # failed items, not a usage error
    assert "Traceback" not in out.stderr
    failed = failures(dst)
    assert set(failed) == {"\\xff.mp4", "sub/caf\\xe9.mp4"}
    row = failed["\\xff.mp4"]
    assert row["error_class"] == "bad_file_name"
    assert f"{src}/\\xff.mp4" in row["message"]
    assert row["source"] == f"{src}/\\xff.mp4"
    rows = pq.read_table(dst / "manifest.parquet").to_pylist()
    ok = sorted(r["path"] for r in rows if r["status"] == "ok")
    assert ok == ["good/good_0000.mp4", "good/good_0001.mp4",
                  "sub/also good/also good_0000.mp4", "sub/also good/also good_0001.mp4"]
    assert {r["key"] for r in rows if r["status"] == "failed"} == set(failed)
    # status reads the same ledger, and a rerun skips what is recorded
    assert "bad_file_name 2" in cli("status", str(dst)).stdout
    again = cli("clips", str(src), str(dst), "--frames", "10", "--size", "32x24")
    assert again.returncode == 1 and set(failures(dst)) == set(failed)


def test_dedup_a_name_not_utf8_fails_only_that_image(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.jpg").write_bytes(make_image(None, size=(96, 64), seed=i))
    (src / "copy.jpg").write_bytes((src / "0.jpg").read_bytes())
    rename_to_bytes(src / "copy.jpg", b"copy\xfe.jpg")
    dst = tmp_path / "dedup"
    report = datamill.dedup(src, dst, quiet=True)
    assert report.exit_code == 1
    assert report.counts["ok"] + report.counts["filtered"] == 3
    [(key, row)] = failures(dst).items()
    assert key == "copy\\xfe.jpg" and row["error_class"] == "bad_file_name"
    assert f"{src}/copy\\xfe.jpg" in row["message"]
    assert (dst / "report.html").is_file()


def test_src_whose_own_path_is_not_utf8_is_refused(tmp_path):
    src = os.path.join(os.fsencode(tmp_path), b"vid\xe9os")
    os.mkdir(src)
    out = cli("clips", os.fsdecode(src), str(tmp_path / "dst"))
    assert out.returncode == 2
    assert "vid\\xe9os" in out.stderr and "not valid UTF-8" in out.stderr
    assert "Traceback" not in out.stderr


# --------------------------------------------------------------------------- items 13, 17


@pytest.fixture(scope="module")
def server():
    with ImageServer() as s:
        yield s


def test_truncated_gz_list_stops_naming_the_file_and_cause_with_reports(server, tmp_path):
    urls = tmp_path / "urls.txt.gz"
    data = gzip.compress("".join(server.url(f"img/{i}.jpg?w=32&h=32") + "\n"
                                 for i in range(2000)).encode())
    urls.write_bytes(data[: len(data) * 2 // 3])
    dst = tmp_path / "dl"
    report = datamill.download(urls, dst, shard_size=50, quiet=True,
                               fetch=FetchOptions(timeout=5, retries=0))
    assert report.exit_code == 1
    assert str(urls) in report.message and "truncated" in report.message
    assert "after row" in report.message
    for name in ("manifest.parquet", "stats.json"):
        assert (dst / name).is_file()
    read = int(report.message.split("after row ")[1].split()[0].rstrip(";)"))
    assert report.counts["ok"] >= read > 1000  # every row read before the damage is done
    urls.write_bytes(data)  # the whole list: the rerun does the rest, each row once
    again = datamill.download(urls, dst, shard_size=50, quiet=True,
                              fetch=FetchOptions(timeout=5, retries=0))
    assert again.exit_code == 0 and again.counts["ok"] == 2000
    keys = pq.read_table(dst / "manifest.parquet").column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 2000


@pytest.mark.parametrize("name", ["urls.parquet", "urls.parquet.gz"])
def test_parquet_list_that_is_not_parquet_is_named(tmp_path, name):
    urls = tmp_path / name
    text = b"url\nhttp://127.0.0.1:9/a.jpg\n"
    urls.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    out = cli("download", str(urls), str(tmp_path / "dl"))
    assert out.returncode in (1, 2)
    assert str(urls) in out.stderr + out.stdout
    assert "parquet" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


def test_an_absurd_size_is_refused_naming_the_option_and_the_limit(videos_with_a_bad_name,
                                                                   tmp_path):
    out = cli("clips", str(videos_with_a_bad_name), str(tmp_path / "dst"), "--size",
              "100000x100000")
    assert out.returncode == 2
    assert "--size" in out.stderr and "16384" in out.stderr
    assert "KeyError" not in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(UsageError, match=r"--size: 16384x16384 is too large: FFmpeg makes no "
                                         r"frame .* 16384x16128 is the largest"):
        ClipOptions(size=(16384, 16384)).validate()
    with pytest.raises(UsageError, match="--size: 16386x16 is too large: .* 16384 pixels a side"):
        ClipOptions(size=(16386, 16)).validate()
    with pytest.raises(UsageError, match="the mpeg4 encoder takes at most 8190"):
        ClipOptions(size=(8192, 64), codec="mpeg4").validate()
    with pytest.raises(UsageError, match="the av1 encoder takes at most 16384 pixels wide and "
                                         "8704 high"):
        ClipOptions(size=(64, 8706), codec="av1").validate()
    with pytest.raises(UsageError, match="--short-side"):
        ClipOptions(short_side=20000).validate()
    ClipOptions(size=(16384, 16128)).validate()
    ClipOptions(max_side=100000).validate()  # only ever shrinks


def test_a_large_valid_size_is_made(tmp_path):
    src = tmp_path / "src"
    make_video(src / "v.mp4", frames=4, size=SMALL)
    dst = tmp_path / "dst"
    report = datamill.clips(src, dst, frames=2, size=(16384, 16), quiet=True)
    assert report.exit_code == 0
    with av.open(str(dst / "v" / "v_0000.mp4")) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 2 and (frames[0].width, frames[0].height) == (16384, 16)


def test_a_long_side_too_large_for_one_video_fails_that_video_as_size_too_large(tmp_path):
    src = tmp_path / "src"
    make_video(src / "wide.mp4", frames=4, size=(160, 90))
    report = datamill.clips(src, tmp_path / "dst", frames=2, short_side=10000, quiet=True)
    assert report.exit_code == 1
    [row] = failures(tmp_path / "dst").values()
    assert row["error_class"] == "size_too_large"
    assert "17778x10000 is too large" in row["message"]


def test_an_unmakeable_size_past_validation_fails_each_clip_not_with_key_error(tmp_path):
    """The cut itself, given a frame size FFmpeg cannot allocate: every clip is accounted
    for as an encode_error (it used to lose the first clip and raise KeyError: 0)."""
    path = make_video(tmp_path / "v.mp4", frames=12, size=SMALL)
    [task] = plan_clip_tasks(probe_video(path), frames=4)
    results = cut_clips(path, task, out_paths=lambda spec: tmp_path / f"c{spec.index}.mp4",
                        size=(100000, 100000))
    assert [r.index for r in results] == [0, 1, 2]
    assert results[0].status == "failed" and results[0].error_class == "encode_error"
    assert all(r.status == "failed" for r in results)
    assert not list(tmp_path.glob("c*"))
