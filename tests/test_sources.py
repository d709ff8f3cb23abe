"""Tests for datamill.io.sources: the folder walk and the list readers."""
from __future__ import annotations

import gzip
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
import zlib
from pathlib import Path

import pytest

from datamill.io import sources
from datamill.io.sources import (FileEntry, Row, SourceError, WalkStats, read_rows, sniff_format,
                                 walk_files)


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rels(root: Path, **kw) -> list[str]:
    return [e.rel for e in walk_files(root, **kw)]


# --------------------------------------------------------------------------- walk_files


def test_walk_order_is_depth_first_and_sorted(tmp_path: Path) -> None:
    # Created in a scrambled order so that directory order (creation order) differs.
    for name in ["b/z.mp4", "a.mp4", "c.mp4", "b/a.mp4", "b/sub/m.mp4", "ab/x.mp4", "B.mp4"]:
        touch(tmp_path / name, b"12345")
    got = list(walk_files(tmp_path))
    expected = ["B.mp4", "a.mp4", "ab/x.mp4", "b/a.mp4", "b/sub/m.mp4", "b/z.mp4", "c.mp4"]
    assert [e.rel for e in got] == expected
    assert [e.rel for e in walk_files(tmp_path)] == expected  # repeatable
    first = got[0]
    assert isinstance(first, FileEntry)
    assert first.path == os.path.join(str(tmp_path), "B.mp4")
    assert os.path.isabs(first.path)
    assert first.size == 5
    assert first.mtime == pytest.approx(os.stat(first.path).st_mtime)


def test_extensions_case_insensitive_and_other_files_counted(tmp_path: Path) -> None:
    touch(tmp_path / "A.MP4")
    touch(tmp_path / "b.mp4")
    touch(tmp_path / "c.Avi")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / "sub" / "d.jpg")
    touch(tmp_path / "sub" / "mp4")  # no extension, only a name ending in "mp4"
    stats = WalkStats()
    assert rels(tmp_path, extensions=("mp4", ".AVI"), stats=stats) == ["A.MP4", "b.mp4", "c.Avi"]
    assert stats.matched == 3
    assert stats.other_files == 3
    assert stats.errors == [] and stats.error_count == 0
    assert rels(tmp_path, extensions="MP4") == ["A.MP4", "b.mp4"]
    with pytest.raises(ValueError):
        list(walk_files(tmp_path, extensions=[""]))


def test_no_extensions_means_all_files(tmp_path: Path) -> None:
    touch(tmp_path / "a.bin")
    touch(tmp_path / "x" / "b")
    stats = WalkStats()
    assert rels(tmp_path, stats=stats) == ["a.bin", "x/b"]
    assert (stats.matched, stats.other_files) == (2, 0)


def test_temp_files_skipped_silently(tmp_path: Path) -> None:
    from datamill.atomic import TMP_MARK

    assert sources._TMP_MARK == TMP_MARK
    touch(tmp_path / "clip.mp4")
    touch(tmp_path / f".clip{TMP_MARK}123.mp4")
    stats = WalkStats()
    assert rels(tmp_path, extensions=["mp4"], stats=stats) == ["clip.mp4"]
    assert stats.other_files == 0 and stats.error_count == 0


def test_symlink_loop_terminates_and_is_reported(tmp_path: Path) -> None:
    touch(tmp_path / "dir" / "a.mp4")
    touch(tmp_path / "dir" / "inner" / "b.mp4")
    os.symlink("..", tmp_path / "dir" / "link")  # dir/link -> tmp_path (an ancestor)
    os.symlink("../..", tmp_path / "dir" / "inner" / "up")  # also an ancestor
    stats = WalkStats()
    assert rels(tmp_path, stats=stats) == ["dir/a.mp4", "dir/inner/b.mp4"]
    assert sorted(stats.errors) == [
        (str(tmp_path / "dir" / "inner" / "up"), "symlink loop"),
        (str(tmp_path / "dir" / "link"), "symlink loop"),
    ]
    assert stats.error_count == 2


def test_self_referencing_file_symlink_reported(tmp_path: Path) -> None:
    os.symlink("self", tmp_path / "self")
    touch(tmp_path / "ok.txt")
    stats = WalkStats()
    assert rels(tmp_path, stats=stats) == ["ok.txt"]
    assert stats.errors == [(str(tmp_path / "self"), "symlink loop")]


def test_symlinked_dir_walked_once(tmp_path: Path) -> None:
    touch(tmp_path / "real" / "a.mp4")
    touch(tmp_path / "real" / "b.mp4")
    os.symlink("real", tmp_path / "alias")  # "alias" sorts first, so it is walked first
    stats = WalkStats()
    got = list(walk_files(tmp_path, stats=stats))
    assert [e.rel for e in got] == ["alias/a.mp4", "alias/b.mp4"]
    assert got[0].path == str(tmp_path / "alias" / "a.mp4")  # as walked, not resolved
    assert stats.errors == [(str(tmp_path / "real"), "already visited through a symlink")]
    assert stats.matched == 2


def test_same_file_through_symlinked_dir_yielded_once(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "clip.mp4")
    touch(tmp_path / "b" / "own.mp4")
    os.symlink("../a/clip.mp4", tmp_path / "b" / "clip_link.mp4")
    os.symlink("../b", tmp_path / "a" / "z_to_b")  # the same files again through a dir link
    stats = WalkStats()
    got = rels(tmp_path, stats=stats)
    assert got == ["a/clip.mp4", "a/z_to_b/own.mp4"]
    assert len(got) == len(set(got))
    assert sorted(stats.errors) == [
        (str(tmp_path / "a" / "z_to_b" / "clip_link.mp4"), "already visited through a symlink"),
        (str(tmp_path / "b"), "already visited through a symlink"),
    ]


def test_file_symlink_to_already_walked_folder_skipped(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "x.mp4")
    touch(tmp_path / "c" / "y.mp4")
    os.symlink("../a/x.mp4", tmp_path / "c" / "x_link.mp4")  # "a" is walked completely by then
    os.symlink("y.mp4", tmp_path / "c" / "z_link.mp4")  # y.mp4 sorts before z_link.mp4
    stats = WalkStats()
    assert rels(tmp_path, extensions=["mp4"], stats=stats) == ["a/x.mp4", "c/y.mp4"]
    assert stats.errors == [
        (str(tmp_path / "c" / "x_link.mp4"), "already visited through a symlink"),
        (str(tmp_path / "c" / "z_link.mp4"), "already visited through a symlink"),
    ]


def test_symlink_to_unmatched_file_is_yielded(tmp_path: Path) -> None:
    touch(tmp_path / "a.bin")
    os.symlink("a.bin", tmp_path / "b.mp4")
    stats = WalkStats()
    assert rels(tmp_path, extensions=["mp4"], stats=stats) == ["b.mp4"]
    assert (stats.matched, stats.other_files, stats.error_count) == (1, 1, 0)


def test_file_symlink_before_its_target_yields_first_seen(tmp_path: Path) -> None:
    touch(tmp_path / "z_real.mp4")
    os.symlink("z_real.mp4", tmp_path / "a_link.mp4")
    os.symlink("z_real.mp4", tmp_path / "b_link.mp4")
    stats = WalkStats()
    assert rels(tmp_path, stats=stats) == ["a_link.mp4"]
    assert sorted(p for p, _ in stats.errors) == [
        str(tmp_path / "b_link.mp4"),
        str(tmp_path / "z_real.mp4"),
    ]


def test_file_symlink_to_outside_is_followed(tmp_path: Path) -> None:
    outside = touch(tmp_path / "outside" / "v.mp4", b"abc")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "v.mp4")
    got = list(walk_files(root))
    assert [(e.rel, e.size) for e in got] == [("v.mp4", 3)]


def test_broken_symlink_reported(tmp_path: Path) -> None:
    touch(tmp_path / "a.mp4")
    os.symlink("missing.mp4", tmp_path / "broken.mp4")
    os.symlink("nowhere", tmp_path / "broken_dir")
    stats = WalkStats()
    assert rels(tmp_path, stats=stats) == ["a.mp4"]
    assert stats.errors == [
        (str(tmp_path / "broken.mp4"), "broken symlink"),
        (str(tmp_path / "broken_dir"), "broken symlink"),
    ]


def test_errors_list_is_capped_but_counted(tmp_path: Path) -> None:
    n = sources.MAX_RECORDED_ERRORS + 5
    for i in range(n):
        os.symlink(f"missing{i}", tmp_path / f"l{i:05d}")
    stats = WalkStats()
    assert list(walk_files(tmp_path, stats=stats)) == []
    assert len(stats.errors) == sources.MAX_RECORDED_ERRORS
    assert stats.error_count == n


def test_root_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        walk_files(tmp_path / "nope")  # raised at call time, not on first next()
    f = touch(tmp_path / "file.mp4")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        walk_files(f)


_CHILD = textwrap.dedent(
    """
    import importlib.util, json, logging, os, sys
    spec = importlib.util.spec_from_file_location("sources_copy", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sources_copy"] = mod
    spec.loader.exec_module(mod)
    logging.basicConfig(stream=sys.stderr)
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    stats = mod.WalkStats()
    got = [e.rel for e in mod.walk_files(sys.argv[2], stats=stats)]
    print(json.dumps({"rels": got, "errors": stats.errors, "uid": os.getuid()}))
    """
)


def test_unreadable_directory_skipped_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    # Not under tmp_path: pytest's base temp dir is private to its user (0700).
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        root = base / "tree"
        touch(root / "a.mp4")
        touch(root / "locked" / "b.mp4")
        touch(root / "z" / "c.mp4")
        for p in (root, root / "z"):
            os.chmod(p, 0o755)
        for p in (root / "a.mp4", root / "z" / "c.mp4"):
            os.chmod(p, 0o644)
        os.chmod(root / "locked", 0o000)
        locked = str(root / "locked")
        if os.geteuid() == 0:
            # root reads through mode 000: walk in a child that drops to "nobody" first.
            # The module is loaded before dropping privileges (the interpreter and the repo
            # may not be readable by nobody); the walk itself needs only the stdlib.
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, sources.__file__, str(root)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, proc.stderr
            out = json.loads(proc.stdout)
            assert out["uid"] == 65534
            assert out["rels"] == ["a.mp4", "z/c.mp4"]
            assert [tuple(e) for e in out["errors"]] == [(locked, "permission denied")]
            assert "permission denied" in proc.stderr and locked in proc.stderr
        else:
            try:
                os.listdir(locked)
            except PermissionError:
                pass
            else:
                pytest.skip("this user can read a mode-000 directory")
            stats = WalkStats()
            with caplog.at_level("WARNING", logger="datamill"):
                assert rels(root, stats=stats) == ["a.mp4", "z/c.mp4"]
            assert stats.errors == [(locked, "permission denied")]
            assert locked in caplog.text
    finally:
        os.chmod(base / "tree" / "locked", 0o755)
        shutil.rmtree(base)


def test_walk_is_lazy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for d in range(40):
        for f in range(50):
            touch(tmp_path / f"d{d:02d}" / f"f{f:02d}.mp4")
    listed: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path):  # type: ignore[no-untyped-def]
        listed.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    stats = WalkStats()
    it = walk_files(tmp_path, stats=stats)
    first = next(it)
    assert first.rel == "d00/f00.mp4"
    assert listed == [str(tmp_path), str(tmp_path / "d00")]  # 2 of 41 directories listed
    assert stats.matched == 1
    rest = list(it)
    assert len(rest) == 1999 and stats.matched == 2000
    assert len(listed) == 41


def test_name_not_utf8_is_flagged_with_its_path_escaped(tmp_path: Path) -> None:
    """Issue 10, item 12: such a name cannot be a ledger key or be printed; the walk says
    so and gives a readable, escaped form, and the file still opens by `path`."""
    root = os.fsencode(tmp_path)
    os.makedirs(root + b"/caf\xe9")
    for name in (b"/\xff.mp4", b"/caf\xe9/clip.mp4", b"/ok \xc3\xa9t\xc3\xa9.mp4"):
        with open(root + name, "wb") as f:
            f.write(b"data")
    os.symlink(b"nowhere", root + b"/broken\xfe.mp4")
    stats = WalkStats()
    got = {e.rel: e for e in walk_files(tmp_path, stats=stats)}
    assert sorted(got) == ["\\xff.mp4", "caf\\xe9/clip.mp4", "ok été.mp4"]
    bad = got["\\xff.mp4"]
    assert bad.bad_name == f"{tmp_path}/\\xff.mp4"
    assert open(bad.path, "rb").read() == b"data"
    assert got["caf\\xe9/clip.mp4"].bad_name == f"{tmp_path}/caf\\xe9/clip.mp4"
    assert got["ok été.mp4"].bad_name is None  # valid UTF-8, just not ASCII
    for e in got.values():
        e.rel.encode("utf-8")  # every key can be stored
    assert stats.errors == [(f"{tmp_path}/broken\\xfe.mp4", "broken symlink")]


# --------------------------------------------------------------------------- list readers


URLS = ["http://a/1.jpg", "http://b/2.jpg", "http://c/3.jpg"]


def _write(path: Path, text: str) -> Path:
    data = text.encode()
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def _write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(records)
    if path.name.lower().endswith(".gz"):
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        path.write_bytes(gzip.compress(buf.getvalue().to_pybytes()))
    else:
        pq.write_table(table, path)
    return path


@pytest.mark.parametrize("gz", ["", ".gz", ".GZ"])
def test_read_txt(tmp_path: Path, gz: str) -> None:
    p = _write(tmp_path / f"urls.txt{gz}", "  http://a/1.jpg \n\n   \nhttp://b/2.jpg\r\nhttp://c/3.jpg")
    rows = list(read_rows(p))
    assert rows == [Row(i, {"url": u}, None) for i, u in enumerate(URLS)]
    rows = list(read_rows(p, text_column="link"))
    assert rows[1].fields == {"link": URLS[1]}


@pytest.mark.parametrize("name", ["list.csv", "list.csv.gz", "LIST.CSV"])
def test_read_csv(tmp_path: Path, name: str) -> None:
    text = 'url,caption\nhttp://a/1.jpg,"a, quoted caption"\n\nhttp://b/2.jpg,"two\nlines"\nhttp://c/3.jpg,\n'
    p = _write(tmp_path / name, text)
    rows = list(read_rows(p))
    assert [r.index for r in rows] == [0, 1, 2]
    assert all(r.error is None for r in rows)
    assert [r.fields for r in rows] == [
        {"url": URLS[0], "caption": "a, quoted caption"},
        {"url": URLS[1], "caption": "two\nlines"},
        {"url": URLS[2], "caption": ""},
    ]


@pytest.mark.parametrize("gz", ["", ".gz"])
def test_read_tsv(tmp_path: Path, gz: str) -> None:
    p = _write(tmp_path / f"list.tsv{gz}", "caption\turl\nhello, world\thttp://a/1.jpg\n")
    assert list(read_rows(p)) == [Row(0, {"caption": "hello, world", "url": URLS[0]}, None)]


@pytest.mark.parametrize("name", ["list.jsonl", "list.jsonl.gz", "list.json", "list.JSON.gz"])
def test_read_jsonl(tmp_path: Path, name: str) -> None:
    lines = [json.dumps({"url": u, "n": i}) for i, u in enumerate(URLS)]
    p = _write(tmp_path / name, lines[0] + "\n\n" + lines[1] + "\n" + lines[2])
    rows = list(read_rows(p))
    assert rows == [Row(i, {"url": u, "n": i}, None) for i, u in enumerate(URLS)]


@pytest.mark.parametrize("name", ["list.parquet", "list.parquet.gz"])
def test_read_parquet(tmp_path: Path, name: str) -> None:
    records = [{"url": f"http://x/{i}.jpg", "w": i} for i in range(25_003)]  # > 2 batches
    p = _write_parquet(tmp_path / name, records)
    rows = list(read_rows(p))
    assert len(rows) == len(records)
    assert [r.index for r in rows] == list(range(len(records)))
    assert [r.fields for r in rows] == records
    assert all(r.error is None for r in rows)


def test_explicit_format_and_gzip_magic(tmp_path: Path) -> None:
    p = tmp_path / "urls.lst"
    p.write_bytes(gzip.compress("\n".join(URLS).encode()))
    assert [r.fields for r in read_rows(p, fmt="txt")] == [{"url": u} for u in URLS]
    q = _write(tmp_path / "data.dat", '{"url": "http://a/1.jpg"}\n')
    assert list(read_rows(q, fmt="jsonl")) == [Row(0, {"url": URLS[0]}, None)]
    with pytest.raises(ValueError, match="unknown list format"):
        read_rows(q, fmt="xml")


def test_bad_jsonl_lines_yield_errors_and_reading_goes_on(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "list.jsonl",
        '{"url": "http://a/1.jpg"}\n{not json\n\n[1, 2]\n"str"\n{"url": "http://b/2.jpg"}\n',
    )
    rows = list(read_rows(p))
    assert [r.index for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0].fields == {"url": URLS[0]} and rows[0].error is None
    assert rows[1].fields is None and rows[1].error.startswith("line 2: invalid JSON")
    assert rows[2].fields is None and rows[2].error == "line 4: expected a JSON object, got list"
    assert rows[3].error == "line 5: expected a JSON object, got str"
    assert rows[4] == Row(4, {"url": URLS[1]}, None)


def test_bad_csv_row_yields_error_and_reading_goes_on(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "list.csv",
        "url,caption\nhttp://a/1.jpg,one\nhttp://x,too,many\nonly_one\nhttp://b/2.jpg,two\n",
    )
    rows = list(read_rows(p))
    assert [r.index for r in rows] == [0, 1, 2, 3]
    assert rows[0].fields == {"url": URLS[0], "caption": "one"}
    assert rows[1] == Row(1, None, "line 3: expected 2 fields, got 3")
    assert rows[2] == Row(2, None, "line 4: expected 2 fields, got 1")
    assert rows[3] == Row(3, {"url": URLS[1], "caption": "two"}, None)


def test_invalid_utf8_replaced(tmp_path: Path) -> None:
    p = tmp_path / "urls.txt"
    p.write_bytes(b"http://a/\xff\xfe.jpg\nhttp://b/2.jpg\n")
    rows = list(read_rows(p))
    assert rows[0].fields == {"url": "http://a/\ufffd\ufffd.jpg"}
    assert rows[1].fields == {"url": URLS[1]}


def test_truncated_gz_raises_source_error_naming_file_cause_and_row(tmp_path: Path) -> None:
    """Issue 10, item 13: not a bare EOFError but the file, the cause and how far it got."""
    p = tmp_path / "urls.txt.gz"
    data = gzip.compress("".join(f"http://example.com/{i}.jpg\n" for i in range(5000)).encode())
    p.write_bytes(data[: len(data) // 2])
    complete = zlib.decompressobj(31).decompress(p.read_bytes()).count(b"\n")
    rows = []
    with pytest.raises(SourceError) as exc:
        for row in read_rows(p):
            rows.append(row)
    assert len(rows) == complete > 0  # every whole line before the cut, no half line
    assert str(exc.value) == (f"{p}: the compressed file ends early (truncated) after row "
                              f"{complete}")


def test_damaged_gz_raises_source_error(tmp_path: Path) -> None:
    data = bytearray(gzip.compress("".join(f"http://e.com/{i}.jpg\n" for i in range(500)).encode()))
    data[-6] ^= 1  # the CRC: every row reads, the end does not check
    p = tmp_path / "crc.txt.gz"
    p.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"crc\.txt\.gz: damaged gzip data \(CRC check failed"
                                          r".*\) after row 500$"):
        list(read_rows(p))
    (tmp_path / "zero.txt.gz").write_bytes(bytes(data[:30]) + b"\xff" * 200)
    with pytest.raises(SourceError, match=r"zero\.txt\.gz: damaged compressed data .* before its first row"):
        list(read_rows(tmp_path / "zero.txt.gz"))


def test_gz_name_that_is_not_gzip_is_refused_at_call_time(tmp_path: Path) -> None:
    p = tmp_path / "urls.txt.gz"
    p.write_text("http://a/1.jpg\n")
    with pytest.raises(SourceError, match=r"urls\.txt\.gz: not gzip-compressed"):
        read_rows(p)


@pytest.mark.parametrize("content", [b"url\nhttp://a/1.jpg\n", b"", b"PAR1 but cut off"])
def test_parquet_that_is_not_parquet_is_refused_naming_the_file(tmp_path: Path, content: bytes) -> None:
    """Issue 10, item 17: the message names the file (at call time, before any row)."""
    p = tmp_path / "urls.parquet"
    p.write_bytes(content)
    with pytest.raises(SourceError, match=r"urls\.parquet: not a parquet file"):
        read_rows(p)
    gz = tmp_path / "urls.parquet.gz"
    gz.write_bytes(gzip.compress(content))
    rows = read_rows(gz)  # compressed: found when reading starts
    with pytest.raises(SourceError, match=r"urls\.parquet\.gz: not a readable parquet file"):
        next(rows)


def test_truncated_parquet_is_refused(tmp_path: Path) -> None:
    p = _write_parquet(tmp_path / "urls.parquet", [{"url": u} for u in URLS])
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(SourceError, match="urls.parquet: not a parquet file"):
        read_rows(p)


def test_unknown_extension(tmp_path: Path) -> None:
    p = _write(tmp_path / "urls.xml", "<a/>")
    with pytest.raises(ValueError) as exc:
        read_rows(p)
    msg = str(exc.value)
    assert "urls.xml" in msg and ".jsonl" in msg and ".parquet" in msg
    with pytest.raises(ValueError):
        sniff_format(tmp_path / "urls.gz")


@pytest.mark.parametrize(
    "name,fmt",
    [
        ("a.txt", "txt"),
        ("a.TXT.GZ", "txt"),
        ("a.csv", "csv"),
        ("dir.v2/a.tsv.gz", "tsv"),
        ("a.jsonl", "jsonl"),
        ("a.json", "jsonl"),
        ("a.Parquet", "parquet"),
        ("a.parquet.gz", "parquet"),
    ],
)
def test_sniff_format(name: str, fmt: str) -> None:
    assert sniff_format(name) == fmt
    assert sniff_format(Path(name)) == fmt


def test_large_gz_txt_is_read_lazily(tmp_path: Path) -> None:
    p = tmp_path / "big.txt.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        for i in range(200_000):
            f.write(f"http://example.com/images/{i:09d}/a-fairly-long-file-name.jpg\n")
    assert p.stat().st_size > 0
    tracemalloc.start()
    try:
        rows = list(itertools.islice(read_rows(p), 5))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.index for r in rows] == [0, 1, 2, 3, 4]
    assert rows[4].fields == {"url": "http://example.com/images/000000004/a-fairly-long-file-name.jpg"}
    # The decompressed text is ~12 MB; reading 5 rows must not load it.
    assert peak < 2 * 1024 * 1024, peak
