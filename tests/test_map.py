"""The `map` job end to end: exact shards in every format, read back by the tools users read
them with; ordered output byte for byte; every bad input; kill -9 at every point."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import datamill
from datamill.io.records import read_records

HERE = Path(__file__).parent
FNS = HERE / "mapfns.py"
sys.path.insert(0, str(HERE))
import mapfns  # noqa: E402


def cli(*args, fault: str | None = None, env: dict | None = None, timeout: float = 180):
    e = {**os.environ, **(env or {})}
    e.pop("DATAMILL_FAULT", None)
    if fault:
        e["DATAMILL_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "datamill", "map", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=e)


def numbers(path: Path, n: int) -> Path:
    path.write_text("".join(f"{i}\n" for i in range(n)))
    return path


def index(dst: Path) -> dict:
    return json.loads((dst / "index.json").read_text())


def temp_files(dst: Path) -> list[Path]:
    return [p for p in dst.rglob("*") if ".datamill-tmp-" in p.name]


def check_shards(dst: Path, size: int) -> list[dict]:
    """The index lists shards 00000.. without gaps, every one but the last holds exactly
    `size` records, each file's sha256 and count are right; no temporary file is left.
    Returns every record (read_shards), each key exactly once."""
    idx = index(dst)
    shards = idx["shards"]
    suffix = Path(shards[0]["name"]).suffix if shards else ""
    assert [s["name"] for s in shards] == [f"{i:05d}{suffix}" for i in range(len(shards))]
    assert all(s["records"] == size for s in shards[:-1]), [s["records"] for s in shards]
    on_disk = sorted(p.name for p in dst.iterdir() if p.name[:1].isdigit())
    assert on_disk == [s["name"] for s in shards]
    import hashlib
    for s in shards:
        data = (dst / s["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
        assert sum(1 for _ in read_records(idx["format"], dst / s["name"])) == s["records"]
    recs = list(datamill.read_shards(dst))
    keys = Counter(r["__key__"] for r in recs)
    assert not [k for k, c in keys.items() if c > 1]
    assert len(recs) == idx["records"] == sum(s["records"] for s in shards)
    assert not temp_files(dst)
    return recs


# -- the happy paths ---------------------------------------------------------------------------

def test_an_iterable_into_parquet_shards_of_exactly_the_size_read_by_every_reader(tmp_path, hf):
    dst = tmp_path / "out"
    report = datamill.map(mapfns.record, range(2500), dst, shard_size=1000, workers=2,
                          quiet=True)
    assert report.exit_code == 0 and report.counts["ok"] == 2500
    recs = check_shards(dst, 1000)
    assert [s["records"] for s in index(dst)["shards"]] == [1000, 1000, 500]
    by_n = {r["n"]: r for r in recs}
    assert sorted(by_n) == list(range(2500))
    r = by_n[1234]
    assert r["__key__"] == "0000001234_0" and r["text"] == "item 1234"
    assert r["vec"].dtype == np.float32 and r["vec"].shape == (64,) and r["vec"][0] == 1234
    assert r["img"].dtype == np.uint8 and r["img"].shape == (4, 3) and r["img"][0, 0] == 1234 % 256
    shards = [str(dst / s["name"]) for s in index(dst)["shards"]]
    table = pads.dataset(shards, format="parquet").to_table()
    assert table.num_rows == 2500
    import pandas as pd
    assert len(pd.read_parquet(dst / "00001.parquet")) == 1000
    ds = hf(shards)
    assert len(ds) == 2500
    row = ds.with_format("numpy")[0]
    assert row["img"].shape == (4, 3) and row["vec"].shape == (64,)
    manifest = pq.read_table(dst / "manifest.parquet").to_pylist()
    assert len(manifest) == 2500 and {m["status"] for m in manifest} == {"ok"}


@pytest.mark.parametrize("fmt", ["webdataset", "jsonl", "pickle"])
def test_every_format_holds_exact_shards_and_reads_back(tmp_path, fmt):
    dst = tmp_path / "out"
    fn = mapfns.record if fmt != "jsonl" else mapfns.fail_if_flag
    report = datamill.map(fn, range(250), dst, format=fmt, shard_size=100, workers=2,
                          quiet=True)
    assert report.exit_code == 0
    recs = check_shards(dst, 100)
    assert sorted(r["n"] for r in recs) == list(range(250))
    if fmt == "webdataset":
        import webdataset as wds
        samples = list(wds.WebDataset(str(dst / "00000.tar"), shardshuffle=False))
        assert len(samples) == 100
        s = samples[0]
        assert {"vec.npy", "img.npy", "text.txt", "n.json"} <= set(s)
        with tarfile.open(dst / "00000.tar") as tar:
            assert all(m.mtime == 0 for m in tar.getmembers())
    elif fmt == "jsonl":
        lines = (dst / "00002.jsonl").read_text().splitlines()
        assert len(lines) == 50 and "__key__" in json.loads(lines[0])
    else:
        import pickle
        with open(dst / "00001.pickle" if (dst / "00001.pickle").exists() else dst / "00001.pkl", "rb") as f:
            shard = pickle.load(f)
        assert isinstance(shard, list) and len(shard) == 100 and "vec" in shard[0]


def test_a_generator_keeps_all_or_none_of_an_items_records(tmp_path):
    dst = tmp_path / "out"
    report = datamill.map(mapfns.half_way, range(100), dst, shard_size=30, workers=2,
                          quiet=True, retries=0)
    assert report.exit_code == 1 and report.counts == {"ok": 80, "filtered": 0, "failed": 20}
    recs = check_shards(dst, 30)
    got = Counter(r["n"] for r in recs)
    assert set(got) == {n for n in range(100) if n % 5} and set(got.values()) == {3}
    assert {r["__key__"] for r in recs if r["n"] == 1} == {"0000000001_0", "0000000001_1",
                                                            "0000000001_2"}
    failures = [json.loads(x) for x in (dst / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 20 and "half way through" in failures[0]["message"]


def test_zero_or_many_records_per_item(tmp_path):
    dst = tmp_path / "out"
    report = datamill.map(mapfns.several, range(40), dst, shard_size=7, workers=2, quiet=True)
    assert report.exit_code == 0 and report.counts["filtered"] == 10  # yielded nothing
    recs = check_shards(dst, 7)
    assert len(recs) == sum(n % 4 for n in range(40))


def test_shard_bytes_ends_a_shard_at_the_first_record_that_reaches_it(tmp_path):
    dst = tmp_path / "out"
    # each record holds a 64-float32 vector (256 bytes) and a little more
    report = datamill.map(mapfns.record, range(300), dst, shard_size=1000, shard_bytes=10_000,
                          workers=2, quiet=True)
    assert report.exit_code == 0
    from datamill.io.records import encoded_size
    shards = index(dst)["shards"]
    assert sum(s["records"] for s in shards) == 300 and len(shards) > 5
    for s in shards[:-1]:
        sizes = [encoded_size({k: v for k, v in r.items() if k != "__key__"})
                 for _, r in read_records("parquet", dst / s["name"])]
        assert sum(sizes) >= 10_000 > sum(sizes[:-1]), (s["name"], sizes)


# -- ordered ---------------------------------------------------------------------------------

def shard_bytes_of(dst: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dst.iterdir()) if p.name[:1].isdigit()}


@pytest.mark.parametrize("fmt", ["parquet", "webdataset", "pickle"])
def test_ordered_shards_are_the_same_bytes_for_any_worker_count(tmp_path, fmt):
    outs = []
    for workers in (1, 2):
        dst = tmp_path / f"w{workers}"
        r = datamill.map(mapfns.several, range(300), dst, format=fmt, shard_size=50,
                         ordered=True, workers=workers, quiet=True)
        assert r.exit_code == 0
        outs.append(shard_bytes_of(dst))
    assert outs[0] == outs[1] and len(outs[0]) == 9
    recs = list(datamill.read_shards(tmp_path / "w2"))
    assert [(r["n"], r["k"]) for r in recs] == [(n, k) for n in range(300) for k in range(n % 4)]


# -- sources ---------------------------------------------------------------------------------

def test_cli_over_a_folder_with_init_and_ext(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(12):
        (src / ("sub" if i % 2 else "") / f"f{i}.txt").write_bytes(b"x" * i)
    (src / "skip.bin").write_bytes(b"no")
    dst = tmp_path / "out"
    p = cli(src, dst, "--fn", f"{FNS}:path_size", "--ext", "txt", "--format", "webdataset",
            "--shard-size", "5", "--workers", "2")
    assert p.returncode == 0, p.stderr
    assert "12 records in 3 webdataset shards" in p.stdout
    recs = check_shards(dst, 5)
    assert sorted(r["size"] for r in recs) == list(range(12))
    assert all(isinstance(r["data"], bytes) for r in recs)
    p = cli(tmp_path / "list.txt", tmp_path / "o2", "--fn", f"{FNS}:with_state",
            "--init", f"{FNS}:load_model", "--workers", "2")
    assert p.returncode == 2 and "does not exist" in p.stderr
    numbers(tmp_path / "list.txt", 200)
    p = cli(tmp_path / "list.txt", tmp_path / "o2", "--fn", f"{FNS}:with_state",
            "--init", f"{FNS}:load_model", "--workers", "2", "--shard-size", "64")
    assert p.returncode == 0, p.stderr
    recs = check_shards(tmp_path / "o2", 64)
    assert {r["model"] for r in recs} == {"loaded once"} and len({r["pid"] for r in recs}) <= 2


def test_jsonl_rows_are_dicts(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps({"n": i, "other": "x"}) + "\n" for i in range(30)))
    dst = tmp_path / "out"
    p = cli(src, dst, "--fn", f"{FNS}:fail_if_flag", "--format", "jsonl", "--shard-size", "8")
    assert p.returncode == 0, p.stderr
    assert sorted(r["n"] for r in check_shards(dst, 8)) == list(range(30))


def test_an_empty_src_makes_no_shard(tmp_path):
    (tmp_path / "empty").mkdir()
    p = cli(tmp_path / "empty", tmp_path / "out", "--fn", f"{FNS}:path_size")
    assert p.returncode == 0, p.stderr
    assert index(tmp_path / "out")["shards"] == []


# -- bad inputs --------------------------------------------------------------------------------

def test_every_kind_of_bad_item_fails_alone_naming_the_item_and_field(tmp_path):
    dst = tmp_path / "out"
    report = datamill.map(mapfns.bad, range(60), dst, shard_size=10, workers=2, quiet=True,
                          retries=0)
    assert report.exit_code == 1
    failures = {f["key"]: f for f in map(json.loads,
                                          (dst / "failures.jsonl").read_text().splitlines())}
    def fail(n):
        return failures[f"{n:010d}"]
    assert fail(11)["error_class"] == "RuntimeError" and "no luck with 11" in fail(11)["message"]
    assert fail(12)["error_class"] == "bad_record" and "list" in fail(12)["message"]
    assert fail(13)["error_class"] == "unsupported_type" and "'text'" in fail(13)["message"]
    assert fail(24)["error_class"] == "schema_mismatch" and "'n'" in fail(24)["message"]
    assert fail(15)["error_class"] == "schema_mismatch" and "'extra'" in fail(15)["message"]
    assert fail(16)["error_class"] == "unsupported_type" and "'text'" in fail(16)["message"]
    ok = {n for n in range(60) if n % 10 in (0, 7, 8, 9) or (n % 10 == 4 and n <= 20)}
    recs = check_shards(dst, 10)
    assert {r["n"] for r in recs} == ok and report.counts["ok"] == len(ok)


def test_a_worker_killed_by_one_item_costs_that_item_alone(tmp_path):
    dst = tmp_path / "out"
    report = datamill.map(mapfns.kill_on_13, range(200), dst, shard_size=50, workers=2,
                          quiet=True)
    assert report.counts == {"ok": 199, "filtered": 0, "failed": 1}
    assert {r["n"] for r in check_shards(dst, 50)} == set(range(200)) - {13}


def test_an_item_that_never_returns_fails_at_its_deadline(tmp_path):
    dst = tmp_path / "out"
    t0 = time.monotonic()
    report = datamill.map(mapfns.hang_on_7, range(40), dst, shard_size=10, workers=2,
                          timeout=2, retries=0, quiet=True)
    assert time.monotonic() - t0 < 60
    assert report.counts == {"ok": 39, "filtered": 0, "failed": 1}
    failures = [json.loads(x) for x in (dst / "failures.jsonl").read_text().splitlines()]
    assert failures[0]["key"] == "0000000007" and failures[0]["error_class"] == "timeout"
    check_shards(dst, 10)


@pytest.mark.parametrize("fn, says", [
    (None, "--fn is required"),
    ("{fns}:no_such_fn", "has no function 'no_such_fn'"),
    ("{fns}", "expected FILE.py:NAME"),
    ("{tmp}/missing.py:f", "no such file"),
    ("{tmp}/broken.py:f", "syntax error in"),
    ("no_such_module_xyz:f", "importing no_such_module_xyz failed"),
])
def test_a_missing_or_broken_fn_is_a_usage_error(tmp_path, fn, says):
    (tmp_path / "broken.py").write_text("def f(x):\n    return {\n")
    numbers(tmp_path / "list.txt", 3)
    args = [] if fn is None else ["--fn", fn.format(fns=FNS, tmp=tmp_path)]
    p = cli(tmp_path / "list.txt", tmp_path / "out", *args)
    assert p.returncode == 2 and says in p.stderr, p.stderr
    assert not (tmp_path / "out" / "00000.parquet").exists()


def test_jsonl_refuses_arrays_naming_the_field(tmp_path):
    dst = tmp_path / "out"
    report = datamill.map(mapfns.record, range(5), dst, format="jsonl", quiet=True, retries=0)
    assert report.exit_code == 1
    f = json.loads((dst / "failures.jsonl").read_text().splitlines()[0])
    assert f["error_class"] == "unsupported_type" and "'vec'" in f["message"]


# -- resume ------------------------------------------------------------------------------------

def test_rerun_skips_what_is_done_and_a_changed_option_is_refused(tmp_path):
    src, dst = numbers(tmp_path / "list.txt", 500), tmp_path / "out"
    args = [src, dst, "--fn", f"{FNS}:record", "--shard-size", "200"]
    assert cli(*args).returncode == 0
    before = shard_bytes_of(dst)
    p = cli(*args)
    assert p.returncode == 0 and "500 already done" in p.stdout
    assert shard_bytes_of(dst) == before
    p = cli(*args[:-1], "300")
    assert p.returncode == 2 and "shard_size" in p.stderr
    p = cli(*args[:-1], "300", "--overwrite")
    assert p.returncode == 0
    assert [s["records"] for s in index(dst)["shards"]] == [300, 200]
    check_shards(dst, 300)


def test_a_source_file_changed_after_its_records_were_written_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}.txt").write_text("x" * i)
    dst = tmp_path / "out"
    assert cli(src, dst, "--fn", f"{FNS}:path_size").returncode == 0
    (src / "f3.txt").write_text("changed!")
    p = cli(src, dst, "--fn", f"{FNS}:path_size")
    assert p.returncode == 2 and "f3.txt" in p.stderr and "--overwrite" in p.stderr
    p = cli(src, dst, "--fn", f"{FNS}:path_size", "--overwrite")
    assert p.returncode == 0
    assert {r["name"]: r["size"] for r in check_shards(dst, 10_000)}["f3.txt"] == 8


def test_items_retried_later_go_into_shards_after_the_existing_ones(tmp_path):
    src, dst = numbers(tmp_path / "list.txt", 90), tmp_path / "out"
    flag = tmp_path / "flag"
    flag.write_text("up")
    env = {"MAPFNS_FLAG": str(flag)}
    args = [src, dst, "--fn", f"{FNS}:fail_if_flag", "--shard-size", "20", "--retries", "0"]
    p = cli(*args, "--ordered", env=env)
    assert p.returncode == 1
    assert sum(s["records"] for s in index(dst)["shards"]) == 60
    first = shard_bytes_of(dst)
    flag.unlink()
    p = cli(*args, "--ordered", "--retry-failed", env=env)
    assert p.returncode == 0, p.stderr
    recs = check_shards(dst, 20)
    assert sorted(r["n"] for r in recs) == list(range(90))
    now = shard_bytes_of(dst)
    assert all(now[name] == data for name, data in first.items() if name != "00002.parquet")
    assert [r["n"] for r in recs[:40]] == [n for n in range(90) if n % 3][:40]


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("fault", ["startup:kill", "submitted:kill:4", "commit:kill:3",
                                   "ledger:kill:5", "shard:kill", "shard:kill:3",
                                   "reports:kill"])
def test_driver_killed_at_any_point_then_rerun_writes_every_record_once(tmp_path, fault, ordered):
    src = numbers(tmp_path / "list.txt", 3000)
    ref = tmp_path / "ref"
    dst = tmp_path / "out"
    flags = ["--fn", f"{FNS}:several", "--shard-size", "300", "--workers", "2"] + (
        ["--ordered"] if ordered else [])
    p = cli(src, dst, *flags, fault=fault)
    assert p.returncode != 0 or "reports" in fault
    assert dst.exists()
    (dst / "mine.txt").write_text("the user's")  # beside the outputs: never touched
    p = cli(src, dst, *flags)
    assert p.returncode == 0, p.stderr
    recs = check_shards(dst, 300)
    assert len(recs) == sum(n % 4 for n in range(3000))
    assert not list((dst / "_datamill" / "parts").glob("*.datamill-tmp-*"))
    assert (dst / "mine.txt").read_text() == "the user's"
    if ordered:
        assert cli(src, ref, *flags).returncode == 0
        assert shard_bytes_of(dst) == shard_bytes_of(ref)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert str(dst).encode() not in cmd or int(proc.name) == os.getpid()


def test_a_key_function_names_the_records_and_a_repeated_key_fails_that_item(tmp_path):
    dst = tmp_path / "out"
    words = ["apple", "pear", "fig", "pear", "kiwi"]
    report = datamill.map(lambda w: {"w": w}, words, dst, key=lambda w: f"fruit/{w}",
                          quiet=True, workers=1)
    assert report.counts == {"ok": 4, "filtered": 0, "failed": 1}
    keys = sorted(r["__key__"] for r in check_shards(dst, 10_000))
    assert keys == ["fruit%2Fapple_0", "fruit%2Ffig_0", "fruit%2Fkiwi_0", "fruit%2Fpear_0"]
    failure = json.loads((dst / "failures.jsonl").read_text())
    assert failure["error_class"] == "duplicate_key" and "fruit/pear" in failure["message"]


def test_kill_9_of_the_driver_at_a_random_moment_then_the_same_command(tmp_path):
    src = numbers(tmp_path / "list.txt", 40_000)
    dst = tmp_path / "out"
    args = [sys.executable, "-m", "datamill", "map", str(src), str(dst), "--fn",
            f"{FNS}:several", "--shard-size", "1000", "--workers", "2", "--ordered"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(dst.glob("0*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    p = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    recs = check_shards(dst, 1000)
    assert [(r["n"], r["k"]) for r in recs] == [(n, k) for n in range(40_000) for k in range(n % 4)]
