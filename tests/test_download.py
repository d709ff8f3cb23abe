"""Job `download` end to end against a real HTTP server on 127.0.0.1 with every pathology."""
from __future__ import annotations

import gzip
import json
import os
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import datamill
from datamill.io.http import FetchOptions
from datamill.io.shards import iter_shard
from datamill.jobs.download import download
from datamill.media.image import ImageOptions
from datamill.testing.server import ImageServer

os.environ["no_proxy"] = "127.0.0.1,localhost"

PATHOLOGIES = {  # path -> (status, reason)
    "status/404": ("failed", "http_404"),
    "status/500": ("failed", "http_500"),
    "html": ("failed", "not_image"),
    "truncated.jpg": ("failed", "decode_error"),
    "bomb.png": ("failed", "too_large"),
    "redirect-loop": ("failed", "redirect_loop"),
    "redirect/2": ("ok", None),
    "tiny.jpg": ("filtered", "too_small"),
    "cmyk.jpg": ("ok", None),
    "palette.png": ("ok", None),
    "exif-rotated.jpg": ("ok", None),
    "robots/1.jpg": ("filtered", "robots"),
    "drip/1.jpg": ("failed", "timeout"),
    "endless.jpg": ("failed", "too_large"),
    "reset": ("failed", "connection"),
    "ratelimit/r1?after=1": ("ok", None),
    "flaky/f1": ("ok", None),
    "png/3.png?w=300&h=60": ("filtered", "too_large_aspect"),
}

FAST = FetchOptions(timeout=1.5, retries=1, backoff=0.05, max_bytes=1_000_000)


@pytest.fixture(scope="module")
def server():
    with ImageServer() as s:
        yield s


def manifest(dst: Path) -> dict[str, dict]:
    """Manifest rows by their row number in the URL list ("000000006")."""
    return {f"{r['row']:09d}": r for r in pq.read_table(dst / "manifest.parquet").to_pylist()}


def member_path(dst: Path, row: dict, ext: str) -> Path:
    """The file of a --format files record (its key is what the row holds, not its number)."""
    return dst / row["shard"] / f"{row['key']}.{ext}"


@pytest.fixture(scope="module")
def pathological_run(server, tmp_path_factory):
    root = tmp_path_factory.mktemp("dl")
    urls = [server.url(f"img/{i}.jpg?w=320&h=240") for i in range(20)]
    urls += [server.url(p) for p in PATHOLOGIES] + ["ftp://example.invalid/x.jpg", "not a url"]
    (root / "urls.txt").write_text("\n".join(urls) + "\n")
    report = download(root / "urls.txt", root / "out", shard_size=8, format="webdataset",
                      image=ImageOptions(resize=64, min_size=20, max_aspect=3.0), fetch=FAST,
                      workers=2, quiet=True)
    return report, root, urls


def test_every_url_gets_its_outcome(pathological_run):
    report, root, urls = pathological_run
    rows = manifest(root / "out")
    assert len(rows) == len(urls)
    for i, path in enumerate(PATHOLOGIES, start=20):
        row = rows[f"{i:09d}"]
        assert (row["status"], row["reason"]) == PATHOLOGIES[path], path
    assert rows[f"{20 + len(PATHOLOGIES):09d}"]["reason"] == "bad_url"
    assert rows[f"{21 + len(PATHOLOGIES):09d}"]["reason"] == "bad_url"
    assert report.exit_code == 1


def test_images_are_resized_and_stored_in_webdataset_shards(pathological_run):
    import webdataset as wds
    report, root, urls = pathological_run
    rows = manifest(root / "out")
    ok = [r for r in rows.values() if r["status"] == "ok"]
    for r in ok:
        assert min(r["width"], r["height"]) <= 64 and r["shard"] and r["member"]
        assert len(r["sha256"]) == 64
    rotated = rows[f"{20 + list(PATHOLOGIES).index('exif-rotated.jpg'):09d}"]
    assert (rotated["original_width"], rotated["original_height"]) == (200, 400)
    assert (rotated["width"], rotated["height"]) == (64, 128)
    shards = sorted((root / "out").glob("*.tar"))
    samples = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False).decode())
    assert len(samples) == len(ok)
    sample = samples[0]
    assert {"jpg", "json"} <= set(sample) and sample["json"]["url"].startswith("http://127.0.0.1")
    by_key = {r["key"]: r for r in ok}
    for s in samples:
        assert s["__key__"] in by_key and s["json"]["sha256"] == by_key[s["__key__"]]["sha256"]


def test_failures_are_listed_and_reusable_as_input(pathological_run):
    report, root, urls = pathological_run
    failed = [json.loads(line) for line in (root / "out" / "failures.jsonl").read_text().splitlines()]
    classes = {f["error_class"] for f in failed}
    assert {"http_404", "timeout", "not_image", "bad_url"} <= classes
    listed = (root / "out" / "failed_urls.txt").read_text().split("\n")
    assert server_url_for(listed, "status/404")
    assert len([u for u in listed if u]) == len(failed)


def server_url_for(lines: list[str], path: str) -> bool:
    return any(line.endswith("/" + path) for line in lines)


def test_rerun_skips_everything_done(pathological_run):
    report, root, urls = pathological_run
    again = download(root / "urls.txt", root / "out", shard_size=8, format="webdataset",
                     image=ImageOptions(resize=64, min_size=20, max_aspect=3.0), fetch=FAST,
                     workers=2, quiet=True)
    assert again.stats["this_run"]["items"] == 0 and again.exit_code == 1


def test_retry_failed_recovers_into_new_shards_keeping_keys(server, tmp_path):
    urls = [server.url(f"img/{i}.jpg") for i in range(6)] + [server.url("flaky/retry1?fail=2")]
    (tmp_path / "urls.txt").write_text("\n".join(urls))
    no_retry = FetchOptions(timeout=2, retries=0)
    first = download(tmp_path / "urls.txt", tmp_path / "out", shard_size=4, fetch=no_retry, quiet=True)
    assert first.counts == {"ok": 6, "filtered": 0, "failed": 1}
    assert manifest(tmp_path / "out")["000000006"]["reason"] == "http_500"
    shards_before = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name[0].isdigit())
    assert shards_before == ["00000", "00001"]
    only_timeouts = download(tmp_path / "urls.txt", tmp_path / "out", shard_size=4, fetch=no_retry,
                             quiet=True, retry_failed={"timeout"})
    assert only_timeouts.stats["this_run"]["items"] == 0
    still = download(tmp_path / "urls.txt", tmp_path / "out", shard_size=4, fetch=no_retry,
                     quiet=True, retry_failed={"http_5xx"})  # fails again: 2 failures asked
    assert still.stats["this_run"]["items"] == 1
    retried = download(tmp_path / "urls.txt", tmp_path / "out", shard_size=4, fetch=no_retry,
                       quiet=True, retry_failed=True)
    assert retried.exit_code == 0
    row = manifest(tmp_path / "out")["000000006"]
    assert row["status"] == "ok" and int(row["shard"]) >= 2
    assert member_path(tmp_path / "out", row, "jpg").exists()
    assert not (tmp_path / "out" / "failed_urls.txt").read_text().strip()


def test_retry_failed_http_5xx_retries_every_server_error_and_no_other(server, tmp_path):
    (tmp_path / "urls.txt").write_text(server.url("status/503") + "\n" + server.url("status/404"))
    no_retry = FetchOptions(timeout=2, retries=0)
    download(tmp_path / "urls.txt", tmp_path / "out", fetch=no_retry, quiet=True)
    assert sorted(r["reason"] for r in manifest(tmp_path / "out").values()) == ["http_404", "http_503"]
    before = server.count("/status/503"), server.count("/status/404")
    again = download(tmp_path / "urls.txt", tmp_path / "out", fetch=no_retry, quiet=True,
                     retry_failed={"http_5xx"})
    assert again.stats["this_run"]["items"] == 1
    assert (server.count("/status/503"), server.count("/status/404")) == (before[0] + 1, before[1])


def test_csv_gz_input_with_captions_and_kept_columns_to_files_and_parquet(server, tmp_path):
    lines = ["url,text,license,id"] + [f"{server.url(f'img/{i}.jpg')},caption {i} é,cc-by,{i}"
                                       for i in range(5)]
    with gzip.open(tmp_path / "urls.csv.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    files = download(tmp_path / "urls.csv.gz", tmp_path / "files", caption_col="text",
                     keep_cols=("license",), quiet=True, image=ImageOptions(encode="webp"))
    assert files.exit_code == 0
    row2 = manifest(tmp_path / "files")["000000002"]
    meta = json.loads(member_path(tmp_path / "files", row2, "json").read_text())
    assert meta["caption"] == "caption 2 é" and meta["license"] == "cc-by" and meta["width"] == 400
    assert meta["key"] == row2["key"] and meta["row"] == 2
    assert member_path(tmp_path / "files", row2, "txt").read_text() == "caption 2 é"
    assert member_path(tmp_path / "files", row2, "webp").exists()
    assert json.loads(row2["kept"]) == {"license": "cc-by"}
    pq_run = download(tmp_path / "urls.csv.gz", tmp_path / "pq", caption_col="text", format="parquet",
                      quiet=True)
    assert pq_run.exit_code == 0
    records = {r.key: r for r in iter_shard(tmp_path / "pq" / "00000.parquet")}
    assert len(records) == 5  # in the order they arrived
    first = records[manifest(tmp_path / "pq")["000000000"]["key"]]
    assert first.data[:2] == b"\xff\xd8" and first.caption == "caption 0 é"


def test_options_that_change_images_need_overwrite(server, tmp_path):
    (tmp_path / "urls.txt").write_text(server.url("img/1.jpg") + "\n")
    download(tmp_path / "urls.txt", tmp_path / "out", quiet=True, image=ImageOptions(resize=64))
    with pytest.raises(datamill.UsageError, match="--overwrite"):
        download(tmp_path / "urls.txt", tmp_path / "out", quiet=True, image=ImageOptions(resize=128))
    # concurrency and deadlines are scheduling: no refusal
    assert download(tmp_path / "urls.txt", tmp_path / "out", quiet=True, image=ImageOptions(resize=64),
                    fetch=FetchOptions(concurrency=8, timeout=3)).exit_code == 0


def test_cli_download_to_files(server, tmp_path):
    import subprocess
    import sys
    (tmp_path / "urls.txt").write_text("\n".join(server.url(f"img/{i}.jpg") for i in range(3)))
    out = subprocess.run([sys.executable, "-m", "datamill", "download", str(tmp_path / "urls.txt"),
                          str(tmp_path / "out"), "--resize", "100", "--timeout", "5"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "no_proxy": "127.0.0.1,localhost"})
    assert out.returncode == 0, out.stderr
    assert "whole job (urls): ok 3" in out.stdout
    keys = sorted(r["key"] for r in manifest(tmp_path / "out").values())
    assert sorted(p.name for p in (tmp_path / "out" / "00000").iterdir()) == sorted(
        f"{k}.{ext}" for k in keys for ext in ("jpg", "json"))


def test_files_in_dst_that_datamill_did_not_write_are_never_touched(server, tmp_path):
    (tmp_path / "urls.txt").write_text("\n".join(server.url(f"img/{i}.jpg") for i in range(3)))
    download(tmp_path / "urls.txt", tmp_path / "out", shard_size=2, format="webdataset", quiet=True)
    out = tmp_path / "out"
    (out / "00007.tar").write_bytes(b"the user's")  # named like a shard, but not in the ledger
    (out / "2019").mkdir()
    (out / "2019" / "photo.jpg").write_bytes(b"the user's")
    (tmp_path / "urls.txt").write_text("\n".join(server.url(f"img/{i}.jpg") for i in range(5)))
    report = download(tmp_path / "urls.txt", out, shard_size=2, format="webdataset", quiet=True)
    assert report.exit_code == 0
    assert sorted(p.name for p in out.glob("*.tar*")) == ["00000.tar", "00001.tar", "00002.tar",
                                                         "00007.tar"]
    assert (out / "00007.tar").read_bytes() == b"the user's"
    assert (out / "2019" / "photo.jpg").read_bytes() == b"the user's"


def test_a_task_without_any_image_leaves_no_shard_and_fails_nothing_else(server, tmp_path):
    (tmp_path / "urls.txt").write_text("\n".join([server.url("status/404"), server.url("html"),
                                                  server.url("img/1.jpg")]))
    report = download(tmp_path / "urls.txt", tmp_path / "out", shard_size=2, format="webdataset",
                      quiet=True)
    rows = manifest(tmp_path / "out")
    assert [rows[k]["reason"] for k in sorted(rows)] == ["http_404", "not_image", None]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == ["00001.tar"]
    assert report.counts == {"ok": 1, "filtered": 0, "failed": 2}


def test_bad_input_lines_each_get_an_outcome(server, tmp_path):
    good = server.url("img/5.jpg")
    lines = [
        '{"url": "%s", "text": "a"}' % good,             # 0 ok
        '{"url": "%s", "text": "same url again"}' % good,  # 1 duplicate: its own key, same bytes
        "{not json",                                       # 2 malformed
        "",                                                # (empty line: skipped)
        '{"url": "file:///etc/passwd"}',                   # 3 bad_url
        '{"url": "ftp://example.invalid/a.jpg"}',          # 4 bad_url
        '{"url": "http://nonexistent.invalid/a.jpg"}',     # 5 dns
        '{"text": "no url column"}',                       # 6 missing column
        '{"url": "%s"}' % server.url("img/7.jpg?caption=été-日本"),  # 7 non-ASCII
        '["a", "list"]',                                   # 8 not an object
    ]
    (tmp_path / "urls.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = download(tmp_path / "urls.jsonl", tmp_path / "out", caption_col="text", quiet=True,
                      fetch=FetchOptions(timeout=5, retries=0))
    rows = manifest(tmp_path / "out")
    got = {k: (r["status"], r["reason"]) for k, r in rows.items()}
    assert got == {
        "000000000": ("ok", None), "000000001": ("ok", None),
        "000000002": ("failed", "bad_row"), "000000003": ("failed", "bad_url"),
        "000000004": ("failed", "bad_url"), "000000005": ("failed", "dns"),
        "000000006": ("failed", "bad_row"), "000000007": ("ok", None),
        "000000008": ("failed", "bad_row"),
    }
    assert rows["000000000"]["sha256"] == rows["000000001"]["sha256"]
    failures = {json.loads(x)["key"]: x for x in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()}
    assert "no URL in column 'url'" in failures[rows["000000006"]["key"]]
    assert report.exit_code == 1


def test_an_empty_input_file_is_a_job_with_nothing_to_do(tmp_path):
    (tmp_path / "urls.txt").write_text("")
    report = download(tmp_path / "urls.txt", tmp_path / "out", quiet=True)
    assert report.exit_code == 0 and report.counts == {"ok": 0, "filtered": 0, "failed": 0}
    assert pq.read_table(tmp_path / "out" / "manifest.parquet").num_rows == 0


def test_a_kept_column_named_like_a_record_field_is_refused(tmp_path):
    (tmp_path / "urls.csv").write_text("url,key\nhttp://127.0.0.1:9/a.jpg,mine\n")
    with pytest.raises(datamill.UsageError, match="--keep-cols key"):
        download(tmp_path / "urls.csv", tmp_path / "out", keep_cols=("key",), quiet=True)
    assert not (tmp_path / "out").exists()


# -- a worker's shards overlap: the next one runs beside the last URLs of the current one ----
def overlap_list(server, path: Path, n: int = 30, drip_rows: tuple[int, ...] = (9,)) -> Path:
    """Fast images, and a never-ending response at each of `drip_rows` (shards of 10: the end of
    the first shard)."""
    path.write_text("\n".join(server.url(f"drip/{i}.jpg") if i in drip_rows
                              else server.url(f"latency/20/{i}.jpg?w=64&h=48") for i in range(n)) + "\n")
    return path


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_the_next_shard_runs_beside_a_never_ending_url_and_every_shard_is_complete(server, tmp_path, fmt):
    urls = overlap_list(server, tmp_path / "urls.txt")
    dst = tmp_path / "out"
    # one worker, 4 URLs in flight (fewer than a shard's 10), a 2 s deadline for the drip
    report = download(urls, dst, shard_size=10, format=fmt, workers=1, quiet=True,
                      fetch=FetchOptions(timeout=2, retries=0, concurrency=4))
    rows = manifest(dst)
    assert len(rows) == 30 and report.counts == {"ok": 29, "filtered": 0, "failed": 1}
    assert (rows["000000009"]["status"], rows["000000009"]["reason"]) == ("failed", "timeout")
    suffix = ".tar" if fmt == "webdataset" else ".parquet"
    shards = sorted(dst.glob(f"0*{suffix}"))
    assert [p.name for p in shards] == [f"0000{i}{suffix}" for i in range(3)]
    # shard 1 was written while shard 0 still waited for its drip: the worker did not idle
    assert shards[1].stat().st_mtime_ns < shards[0].stat().st_mtime_ns
    if fmt == "webdataset":
        import webdataset as wds
        samples = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False))
        stored = [s["__key__"] for s in samples]
        assert all("jpg" in s and "json" in s for s in samples)
    else:
        stored = [k for s in shards for k in pq.read_table(s).column("key").to_pylist()]
    ok = {r["key"] for r in rows.values() if r["status"] == "ok"}
    assert sorted(stored) == sorted(ok) and len(stored) == 29
    by_shard = {int(r["shard"]) for r in rows.values() if r["status"] == "ok"}
    assert by_shard == {0, 1, 2}
    assert not [p for p in dst.rglob("*") if ".datamill-tmp-" in p.name]


def test_a_shard_that_cannot_be_stored_fails_alone_while_the_next_one_overlaps(server, tmp_path, monkeypatch):
    """store_image raising in the middle of shard 1 (while shard 0 waits for its drip and shard
    2 may already run) fails shard 1's items and leaves no half shard; the rerun with
    --retry-failed stores them once, in a new shard."""
    from datamill.jobs import download as job
    urls = overlap_list(server, tmp_path / "urls.txt")
    dst = tmp_path / "out"
    real = job.store_image

    def broken(opts, writer, shard, payload, fetched):
        if "/15.jpg" in payload[2]:
            raise RuntimeError("cannot store (test)")
        return real(opts, writer, shard, payload, fetched)

    monkeypatch.setattr(job, "store_image", broken)  # workers are forked: they have it too
    options = dict(shard_size=10, format="webdataset", workers=1, quiet=True,
                   fetch=FetchOptions(timeout=2, retries=0, concurrency=4))
    report = download(urls, dst, **options)
    rows = manifest(dst)
    failed = {k: r["reason"] for k, r in rows.items() if r["status"] == "failed"}
    assert failed == {"000000009": "timeout", **{f"{i:09d}": "RuntimeError" for i in range(10, 20)}}, failed
    assert report.counts["ok"] == 19

    def stored() -> list[str]:
        return [r.key for p in sorted(dst.glob("0*.tar")) for r in iter_shard(p)]

    ok = {r["key"] for r in rows.values() if r["status"] == "ok"}
    assert sorted(stored()) == sorted(ok) and len(ok) == 19  # no part of shard 1 anywhere
    assert not [p for p in dst.rglob("*") if ".datamill-tmp-" in p.name]
    monkeypatch.setattr(job, "store_image", real)
    download(urls, dst, retry_failed={"RuntimeError"}, **options)
    rows = manifest(dst)
    assert {k for k, r in rows.items() if r["status"] == "failed"} == {"000000009"}
    ok = {r["key"] for r in rows.values() if r["status"] == "ok"}
    assert sorted(stored()) == sorted(ok) and len(stored()) == len(set(stored())) == 29


@pytest.mark.parametrize("fault", ["commit:kill", "task-end:kill"])
def test_kill_9_while_shards_overlap_then_the_same_command_stores_every_url_once(server, tmp_path, fault):
    """The driver killed when the first shard is reported (the one beside a never-ending URL),
    or a worker killed holding two shards (both are run again)."""
    from test_crash import assert_exactly_once, datamill
    urls = overlap_list(server, tmp_path / "urls.txt", n=40, drip_rows=(9, 29))
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")  # the user's, there before the killed run
    args = ["download", urls, dst, "--format", "webdataset", "--shard-size", 10, "--workers", 1,
            "--concurrency", 4, "--timeout", 2, "--retries", 0, "--allow-existing"]
    first = datamill(*args, fault=fault, once=tmp_path / "killed-once")
    assert (tmp_path / "killed-once").exists()
    if fault.startswith("commit"):
        assert first.returncode == -signal.SIGKILL, first.stderr
        first = datamill(*args)
    assert first.returncode == 1, first.stdout + first.stderr  # the two drips failed
    assert_exactly_once(dst, n=40)
    reasons = {r["reason"] for r in manifest(dst).values() if r["status"] == "failed"}
    assert reasons == {"timeout"}
    assert (dst / "notes.txt").read_text() == "mine"
    # and the same command once more touches none of it
    assert datamill(*args).returncode == 1
    assert_exactly_once(dst, n=40)
    assert (dst / "notes.txt").read_text() == "mine"
