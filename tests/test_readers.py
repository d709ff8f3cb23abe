"""Our parquet outputs open in the tools a user already has: pyarrow, pandas, Hugging Face
`datasets` and DuckDB (when installed). Every job's manifest.parquet, and download's parquet
shards, whose image column `datasets` decodes to a PIL image. No network: local files only."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import datamill
from datamill.io.shards import iter_shard
from datamill.testing.images import make_image
from datamill.testing.server import ImageServer
from datamill.testing.videos import make_video

pd = pytest.importorskip("pandas")

os.environ["no_proxy"] = "127.0.0.1,localhost"


def plain(value):
    """A value pandas gives back, as pyarrow's to_pylist gives it (NaN, NA -> None, numpy
    scalars -> Python)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_everywhere(path: Path, hf) -> list[dict]:
    """The rows of `path` as pyarrow reads them, after checking that pandas, `datasets` and
    DuckDB read the same columns and values."""
    rows = pq.read_table(path).to_pylist()
    columns = pq.read_schema(path).names

    frame = pd.read_parquet(path)
    assert list(frame.columns) == columns
    assert [{c: plain(v) for c, v in r.items()} for r in frame.to_dict("records")] == rows

    dataset = hf(path)
    assert dataset.column_names == columns
    assert dataset.to_list() == rows

    try:
        import duckdb
    except ImportError:
        pass
    else:
        relation = duckdb.sql(f"SELECT * FROM read_parquet('{path}')")
        assert relation.columns == columns
        assert [dict(zip(columns, r)) for r in relation.fetchall()] == rows
    return rows


@pytest.fixture(scope="module")
def server():
    with ImageServer() as s:
        yield s


def test_download_manifest_and_parquet_shards(server, tmp_path, hf):
    lines = ["url,text,license"] + [f"{server.url(f'img/{i}.jpg')},caption {i},cc-by-{i}"
                                    for i in range(3)]
    lines.append(f"{server.url('status/404')},gone,none")
    (tmp_path / "urls.csv").write_text("\n".join(lines) + "\n")
    dst = tmp_path / "out"
    report = datamill.download(tmp_path / "urls.csv", dst, caption_col="text",
                               keep_cols=("license",), format="parquet", quiet=True)
    assert report.exit_code in (0, 1)

    rows = {r["row"]: r for r in read_everywhere(dst / "manifest.parquet", hf)}
    assert sorted(rows) == [0, 1, 2, 3]
    assert {r["status"] for r in rows.values()} == {"ok", "failed"}
    assert json.loads(rows[1]["kept"]) == {"license": "cc-by-1"}  # one JSON object
    assert rows[3]["status"] == "failed" and rows[3]["width"] is None
    kept = pd.read_parquet(dst / "manifest.parquet").set_index("row")["kept"].dropna()
    assert kept.map(json.loads).to_dict() == {i: {"license": f"cc-by-{i}"} for i in range(3)}

    shard = dst / f"{rows[0]['shard']}.parquet"
    shard_rows = {r["key"]: r for r in read_everywhere(shard, hf)}
    assert shard_rows[rows[2]["key"]]["image"]["path"] == f"{rows[2]['key']}.jpg"
    dataset = hf(shard)
    first = dataset[0]
    assert isinstance(first["image"], Image.Image)  # declared as the Image feature: decoded
    manifest_row = next(r for r in rows.values() if r["key"] == first["key"])
    assert first["image"].size == (manifest_row["width"], manifest_row["height"])
    assert first["caption"] == manifest_row["caption"]
    assert json.loads(first["meta"])["license"] == json.loads(manifest_row["kept"])["license"]
    records = list(iter_shard(shard))  # datamill's own reader still reads it
    assert [r.key for r in records] == dataset["key"]
    assert records[0].data == shard_rows[first["key"]]["image"]["bytes"]


def test_clips_manifest(tmp_path, hf):
    make_video(tmp_path / "src" / "a.mp4", frames=20, size=(64, 48))
    (tmp_path / "src" / "broken.mp4").write_bytes(b"not a video")
    report = datamill.clips(tmp_path / "src", tmp_path / "out", frames=8, quiet=True, workers=1)
    assert report.exit_code in (0, 1)
    rows = read_everywhere(tmp_path / "out" / "manifest.parquet", hf)
    ok = sorted((r["clip_index"], r["frame_count"]) for r in rows if r["status"] == "ok")
    assert ok == [(0, 8), (1, 8), (2, 4)]
    assert [r["status"] for r in rows if r["source"].endswith("broken.mp4")] == ["failed"]


def test_dedup_manifest(tmp_path, hf):
    src = tmp_path / "src"
    src.mkdir()
    picture = make_image(None, size=(96, 72), seed=1)
    (src / "a.jpg").write_bytes(picture)
    (src / "copy.jpg").write_bytes(picture)
    (src / "other.jpg").write_bytes(make_image(None, size=(96, 72), seed=2))
    (src / "broken.jpg").write_bytes(b"not an image")
    report = datamill.dedup(src, tmp_path / "out", quiet=True, workers=1, report=None)
    assert report.exit_code in (0, 1)
    rows = {r["key"]: r for r in read_everywhere(tmp_path / "out" / "manifest.parquet", hf)}
    kept, dropped = sorted(("a.jpg", "copy.jpg"), key=lambda name: not rows[name]["kept"])
    assert (rows[kept]["kept"], rows[dropped]["kept"]) == (True, False)  # a bool column
    assert rows[dropped]["duplicate_of"] == kept and rows[dropped]["status"] == "filtered"
    assert rows["other.jpg"]["status"] == "ok" and rows["other.jpg"]["group"] is None
    assert rows["broken.jpg"]["status"] == "failed" and rows["broken.jpg"]["kept"] is None


def test_manifest_refuses_types_datasets_cannot_read():
    from datamill.engine.job_reports import manifest_schema
    with pytest.raises(TypeError, match="kept"):
        manifest_schema([pa.field("kept", pa.map_(pa.string(), pa.string()))])
    with pytest.raises(TypeError, match="nested"):
        manifest_schema([pa.field("nested", pa.list_(pa.map_(pa.string(), pa.int64())))])
    assert manifest_schema([pa.field("ok", pa.list_(pa.struct([("a", pa.int32())])))])


def test_a_record_of_an_earlier_version_becomes_json():
    """A ledger written before `kept` was a JSON string holds it as a dict."""
    from datamill.engine.job_reports import _table, manifest_schema
    schema = manifest_schema([pa.field("kept", pa.string())])
    table = _table([{"key": "a", "kept": {"license": "cc-by", "é": None}}, {"key": "b"}], schema)
    assert table.column("kept").to_pylist() == ['{"license": "cc-by", "é": null}', None]
