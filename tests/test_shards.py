"""Shard writers and readers (datamill.io.shards): no processes, files under tmp_path."""
from __future__ import annotations

import json
import os
import tarfile
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from datamill.io.shards import (
    SHARD_FORMATS,
    FilesShardWriter,
    ParquetShardWriter,
    ShardRecord,
    WebDatasetShardWriter,
    iter_shard,
    next_shard_id,
    open_shard_writer,
)

RECORDS = [
    ShardRecord(
        "000000000",
        b"\xff\xd8\xff\xe0 fake jpeg \x00\x01",
        "jpg",
        {"url": "http://a.test/0.jpg", "caption": "un café ☕, 猫", "width": 4, "height": 3,
         "sha256": "ab" * 32, "status": "ok", "tags": ["x", {"n": 1}]},
        "un café ☕, 猫",
    ),
    ShardRecord(
        "000000001",
        bytes(range(256)) * 3,
        "png",
        {"url": "http://a.test/ü.png", "width": 16, "height": 16, "status": "ok"},
        None,
    ),
    # metadata only: a failed download keeps its row, no image
    ShardRecord(
        "000000002", None, None, {"url": "http://a.test/404", "status": "failed",
                                  "error": "http_404"}, "a caption without image"
    ),
    ShardRecord("000000003", b"RIFFwebp", "webp", {"status": "ok", "width": None}, ""),
]


def write_records(fmt, root, shard_id=0, records=RECORDS, **kw):
    with open_shard_writer(fmt, root, shard_id, **kw) as writer:
        names = [writer.add(*record) for record in records]
    return writer.info, names


@pytest.mark.parametrize("fmt", SHARD_FORMATS)
def test_round_trip(tmp_path, fmt):
    info, names = write_records(fmt, tmp_path, shard_id=7)
    suffix = {"files": "", "webdataset": ".tar", "parquet": ".parquet"}[fmt]
    assert info.path == str(tmp_path / f"00007{suffix}")
    assert (info.shard_id, info.count) == (7, len(RECORDS))
    assert list(iter_shard(info.path)) == RECORDS
    assert names[2] is None  # no image, no member
    expected_name = {
        "files": "00007/000000000.jpg",
        "webdataset": "000000000.jpg",
        "parquet": "000000000",
    }[fmt]
    assert names[0] == expected_name
    if fmt == "files":
        assert (tmp_path / names[0]).read_bytes() == RECORDS[0].data
        on_disk = sum(p.stat().st_size for p in (tmp_path / "00007").iterdir())
        assert info.bytes == on_disk
        assert sorted(os.listdir(tmp_path / "00007"))[:3] == [
            "000000000.jpg", "000000000.json", "000000000.txt"]
    else:
        assert info.bytes == os.path.getsize(info.path)
    assert os.listdir(tmp_path) == [os.path.basename(info.path)]  # no temporary left


def test_webdataset_readable_by_the_library(tmp_path):
    info, _ = write_records("webdataset", tmp_path)
    dataset = wds.WebDataset(info.path, shardshuffle=False).decode()
    samples = list(dataset)
    assert [s["__key__"] for s in samples] == [r.key for r in RECORDS]
    first, _, metadata_only, empty_caption = samples
    assert first["jpg"] == RECORDS[0].data  # no image decoder given: bytes
    assert first["json"] == RECORDS[0].meta
    assert first["txt"] == "un café ☕, 猫"
    assert "jpg" not in metadata_only and metadata_only["json"]["status"] == "failed"
    assert empty_caption["txt"] == ""
    assert samples[1]["png"] == RECORDS[1].data


def test_tar_bytes_are_deterministic(tmp_path):
    a, _ = write_records("webdataset", tmp_path / "a")
    b, _ = write_records("webdataset", tmp_path / "b", shard_id=0)
    assert open(a.path, "rb").read() == open(b.path, "rb").read()
    with tarfile.open(a.path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:3]] == ["000000000.jpg", "000000000.txt", "000000000.json"]
    assert {(m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname) for m in members} == {
        (0, 0o644, 0, 0, "", "")
    }


def test_tar_bytes_are_what_tarfile_writes(tmp_path):
    """The writer builds tar headers itself (tarfile's cost ~0.2 ms a member): the file is
    byte for byte what tarfile writes, short ASCII keys and long or non-ASCII keys (PAX)."""
    import io
    records = [("000000001", b"\xff\xd8jpeg" * 100, "jpg", "a cat"), ("k" * 120, b"x" * 511, "png", None),
               ("caf\u00e9-\u732b", b"", "webp", "\u732b"), ("000000002", b"y" * 512, "jpg", "")]
    with open_shard_writer("webdataset", tmp_path / "ours", 0) as w:
        for key, data, ext, caption in records:
            w.add(key, data, ext, {"n": len(data)}, caption=caption)
    with tarfile.open(tmp_path / "theirs.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for key, data, ext, caption in records:
            members = [(f"{key}.{ext}", data)] + ([(f"{key}.txt", caption.encode())] if caption is not None else [])
            for name, payload in members + [(f"{key}.json", json.dumps({"n": len(data)}).encode())]:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode, info.uid, info.gid = len(payload), 0, 0o644, 0, 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(payload))
    assert (tmp_path / "ours" / "00000.tar").read_bytes() == (tmp_path / "theirs.tar").read_bytes()


@pytest.mark.parametrize("fmt", SHARD_FORMATS)
def test_exception_in_with_leaves_nothing(tmp_path, fmt):
    with pytest.raises(RuntimeError, match="boom"):
        with open_shard_writer(fmt, tmp_path, 3) as writer:
            for record in RECORDS:
                writer.add(*record)
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []  # no final name, no temporary, no record files
    assert writer.info is None
    with pytest.raises(RuntimeError):
        writer.add("000000009", None, None, {})


@pytest.mark.parametrize("fmt", SHARD_FORMATS)
def test_temporary_name_until_close(tmp_path, fmt):
    writer = open_shard_writer(fmt, tmp_path, 0)
    writer.add(*RECORDS[0])
    if fmt == "files":  # record by record, each file complete
        assert sorted(os.listdir(tmp_path / "00000")) == [
            "000000000.jpg", "000000000.json", "000000000.txt"]
    else:
        (name,) = os.listdir(tmp_path)
        assert name.startswith(".") and ".datamill-tmp-" in name
        assert not os.path.exists(writer.path)
    info = writer.close()
    assert writer.close() is info  # idempotent
    writer.abort()  # no-op after close
    assert os.listdir(tmp_path) == [os.path.basename(info.path)]
    assert list(iter_shard(info.path)) == RECORDS[:1]


@pytest.mark.parametrize("fmt", SHARD_FORMATS)
def test_invalid_records_are_refused_before_writing(tmp_path, fmt):
    with open_shard_writer(fmt, tmp_path, 0) as writer:
        writer.add(*RECORDS[0])
        for key in ["", "a.b", "a/b", "..", None]:
            with pytest.raises(ValueError, match="bad shard key"):
                writer.add(key, b"x", "jpg", {})
        with pytest.raises(ValueError, match="duplicate key"):
            writer.add(RECORDS[0].key, b"x", "jpg", {})
        for ext in [None, "", "a/b", "json", "TXT"]:
            with pytest.raises(ValueError):
                writer.add("000000005", b"x", ext, {})
        with pytest.raises(TypeError):
            writer.add("000000005", b"x", "jpg", {"bad": object()})
        with pytest.raises(TypeError):
            writer.add("000000005", b"x", "jpg", {}, caption=b"bytes")
        assert writer.add("000000005", b"x", ".JPG", {}) is not None  # leading dot dropped
    assert [(r.key, r.ext) for r in iter_shard(writer.info.path)] == [
        (RECORDS[0].key, "jpg"), ("000000005", "JPG")]


def test_parquet_columns_are_typed(tmp_path):
    info, _ = write_records("parquet", tmp_path)
    table = pq.read_table(info.path)
    assert table.schema.names == [
        "key", "image", "ext", "caption", "meta", "url", "status", "width", "height", "sha256"]
    assert table.schema.field("image").type == pa.struct(  # as Hugging Face's Image feature
        [pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
    assert table.column("image").to_pylist()[0] == {"bytes": RECORDS[0].data,
                                                    "path": "000000000.jpg"}
    assert json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["image"] == {
        "_type": "Image"}
    assert table.schema.field("width").type == pa.int64()
    assert table.column("width").to_pylist() == [4, 16, None, None]
    assert table.column("url").to_pylist()[1] == "http://a.test/ü.png"
    assert table.column("image").to_pylist()[2] is None

    fields = {"score": pa.float32(), "status": pa.string()}
    with ParquetShardWriter(tmp_path, 1, fields=fields) as writer:
        writer.add("a", None, None, {"score": 0.5, "status": "ok", "url": "u"})
        with pytest.raises(TypeError, match="score"):
            writer.add("b", None, None, {"score": "high"})
    table = pq.read_table(writer.info.path)
    assert table.schema.names[5:] == ["score", "status"]
    assert table.column("score").to_pylist() == [0.5]
    assert next(iter_shard(writer.info.path)).meta["url"] == "u"  # kept in meta
    with pytest.raises(ValueError, match="clash"):
        ParquetShardWriter(tmp_path, 2, fields={"key": pa.string()})
    with pytest.raises(TypeError, match="width"):
        with ParquetShardWriter(tmp_path, 3) as writer:
            writer.add("a", b"x", "jpg", {"width": "wide"})
    assert sorted(os.listdir(tmp_path)) == ["00000.parquet", "00001.parquet"]


def test_parquet_shards_with_a_binary_image_column_still_read(tmp_path):
    """Shards written before the image column became Hugging Face's struct of bytes and path."""
    rows = [{"key": r.key, "image": r.data, "ext": r.ext, "caption": r.caption,
             "meta": json.dumps(r.meta)} for r in RECORDS]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "00000.parquet")
    assert list(iter_shard(tmp_path / "00000.parquet")) == RECORDS


def test_parquet_row_groups_are_capped_by_bytes(tmp_path):
    with ParquetShardWriter(tmp_path, 0, rows_per_group=1000, max_group_bytes=250_000) as w:
        for i in range(10):
            w.add(f"{i:03d}", bytes(100_000), "bin", {})
    metadata = pq.ParquetFile(w.info.path).metadata
    groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert groups == [3, 3, 3, 1]


def test_parquet_memory_is_bounded(tmp_path):
    """2,000 records of 100 KB (200 MB): the writer holds about one row group at a time.

    tracemalloc sees the Python objects the writer keeps (buffered bytes); Arrow's own
    allocations (tables, encoder buffers) are measured with pa.total_allocated_bytes().
    """
    n, size, per_group = 2000, 100_000, 64
    arrow_base = pa.total_allocated_bytes()
    arrow_peak = 0
    tracemalloc.start()
    try:
        with ParquetShardWriter(tmp_path, 0, rows_per_group=per_group) as writer:
            for i in range(n):
                data = bytes([i % 251]) * size  # a new object each time
                writer.add(f"{i:09d}", data, "jpg", {"url": f"http://a.test/{i}"})
                arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - arrow_base)
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    budget = 4 * per_group * size  # ~26 MB, against 200 MB written
    assert python_peak < budget, python_peak
    assert arrow_peak < budget, arrow_peak
    metadata = pq.ParquetFile(writer.info.path).metadata
    assert (metadata.num_rows, metadata.num_row_groups) == (n, n // per_group + 1)
    assert writer.info.bytes > n * size


@pytest.mark.parametrize("fmt", SHARD_FORMATS)
def test_next_shard_id(tmp_path, fmt):
    assert next_shard_id(tmp_path / "missing", fmt) == 0
    assert next_shard_id(tmp_path, fmt) == 0
    write_records(fmt, tmp_path, shard_id=0, records=RECORDS[:1])
    write_records(fmt, tmp_path, shard_id=12, records=RECORDS[:1])
    # other formats' shards, temporaries and unrelated names do not count
    for other in SHARD_FORMATS:
        if other != fmt:
            write_records(other, tmp_path, shard_id=40, records=RECORDS[:1])
    (tmp_path / ".00099.datamill-tmp-1.tar").write_bytes(b"")
    (tmp_path / ".00099.datamill-tmp-1.parquet").write_bytes(b"")
    (tmp_path / "manifest.parquet").write_bytes(b"")
    (tmp_path / "_datamill").mkdir()
    (tmp_path / "00077").write_bytes(b"")  # a file where a files shard would be a folder
    (tmp_path / "00078.tar").mkdir()  # folders where tar/parquet shards would be files
    (tmp_path / "00078.parquet").mkdir()
    assert next_shard_id(tmp_path, fmt) == 13


def test_open_shard_writer_classes(tmp_path):
    assert isinstance(open_shard_writer("files", tmp_path, 0), FilesShardWriter)
    tar = open_shard_writer("webdataset", tmp_path, 1)
    assert isinstance(tar, WebDatasetShardWriter)
    tar.abort()
    pq_writer = open_shard_writer("parquet", tmp_path, 2, rows_per_group=5)
    assert isinstance(pq_writer, ParquetShardWriter) and pq_writer.rows_per_group == 5
    pq_writer.abort()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="unknown shard format"):
        open_shard_writer("zip", tmp_path, 0)
    with pytest.raises(ValueError, match="shard_id"):
        open_shard_writer("files", tmp_path, -1)
    with pytest.raises(ValueError, match="not a shard"):
        iter_shard(tmp_path / "x.zip")


def test_files_reader_skips_incomplete_records(tmp_path):
    info, _ = write_records("files", tmp_path, records=RECORDS[:2])
    folder = tmp_path / "00000"
    (folder / "000000009.jpg").write_bytes(b"cut short before its sidecar")
    (folder / ".000000010.datamill-tmp-1.jpg").write_bytes(b"temporary")
    assert list(iter_shard(info.path)) == RECORDS[:2]


def test_files_abort_keeps_files_it_did_not_write(tmp_path):
    (tmp_path / "00000").mkdir()
    (tmp_path / "00000" / "other.txt").write_text("not ours")
    writer = FilesShardWriter(tmp_path, 0)
    writer.add(*RECORDS[0])
    writer.abort()
    assert os.listdir(tmp_path / "00000") == ["other.txt"]
