"""Record codecs of the map job (datamill.io.records): no processes, generated data, files
under tmp_path. Every format round-trips what it allows, a part and a shard of the same
records are the same bytes, and the files open in pyarrow, pandas, `datasets`, webdataset."""
from __future__ import annotations

import copy
import json
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

import datamill.io.records.parquet as records_parquet
from datamill.io.records import (
    FORMATS,
    SUFFIX,
    FileInfo,
    RecordError,
    RecordWriter,
    Schema,
    encoded_size,
    normalize,
    read_records,
    read_shards,
    safe_key,
    write_shard,
)

ARRAY_FORMATS = ("parquet", "webdataset", "pickle")


def make_records(n: int = 7, with_arrays: bool = True) -> list[dict]:
    """Records with every kind of value, some of them None; arrays of several dtypes."""
    out = []
    for i in range(n):
        r = {
            "caption": f"un café ☕ {i}" if i != 3 else None,
            "score": 0.25 * i,
            "count": i - 2,
            "ok": i % 2 == 0,
            "nothing": None,
            "meta": {"tags": ["a", i], "nested": {"x": [1.5, None, True]}} if i != 4 else [i],
        }
        if with_arrays:
            r.update({
                "jpg": bytes([i]) * (i + 1),
                "blob": b"\x00\xff" * i,
                "emb": np.linspace(0, 1, i, dtype=np.float16),          # 1-D, any length
                "image": (np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) + i
                          if i != 2 else None),                        # 3-D uint8
                "mask": np.arange(6).reshape(2, 3) % (i + 2) == 0,   # 2-D bool
                "depth": np.full((i + 1, 2), i, np.float32),          # ragged
                "ids": np.arange(i, dtype=np.int64)[::-1],            # a view, not contiguous data
            })
        out.append(r)
    return out


def records_for(fmt: str, n: int = 7) -> list[dict]:
    return make_records(n, with_arrays=fmt != "jsonl")


def infer(fmt: str, records: list[dict]) -> Schema:
    return Schema.infer(records[0], fmt, ragged=["depth"])


def write(fmt: str, path, schema: Schema, records: list[dict], first: int = 0) -> FileInfo:
    with RecordWriter(fmt, path, schema) as w:
        for n, record in enumerate(records, first):
            w.add(safe_key("clips/a.mp4", n), schema.conform(record, fmt))
    return w.info


def assert_same_value(got, want, where):
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), where
        assert got.dtype == want.dtype and got.shape == want.shape, (where, got, want)
        np.testing.assert_array_equal(got, want, err_msg=str(where))
    else:
        assert got == want and type(got) is type(want), (where, got, want)


def sha256_of(path) -> str:
    import hashlib
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ---------------------------------------------------------------------------------------
# round trips, identity, determinism
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_every_kind(tmp_path, fmt):
    records = records_for(fmt)
    schema = infer(fmt, records)
    path = tmp_path / f"part{SUFFIX[fmt]}"
    info = write(fmt, path, schema, records)
    assert info == FileInfo(len(records), path.stat().st_size, sha256_of(path))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary left

    back = list(read_records(fmt, path, schema=schema))
    assert [k for k, _ in back] == [safe_key("clips/a.mp4", n) for n in range(len(records))]
    for n, ((_, got), want) in enumerate(zip(back, records)):
        assert list(got) == list(schema.fields)
        for name in schema.fields:
            assert_same_value(got[name], want[name], (fmt, n, name))
    # a slice
    middle = list(read_records(fmt, path, 2, 5, schema=schema))
    assert [k for k, _ in middle] == [k for k, _ in back[2:5]]


@pytest.mark.parametrize("fmt", ("parquet", "pickle", "webdataset"))
def test_arrays_keep_dtype_and_shape(tmp_path, fmt):
    dtypes = ["bool", "uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
              "float16", "float32", "float64"]
    rng = np.random.default_rng(0)
    records = []
    for i in range(3):
        r = {}
        for dt in dtypes:
            r[f"v_{dt}"] = (rng.random(5 + i) * 100).astype(dt)
            r[f"m_{dt}"] = (rng.random((2, 3)) * 100).astype(dt)
        r["vol"] = rng.integers(0, 255, (2, 2, 2, 3), dtype=np.uint8)  # 4-D
        r["vol5"] = rng.random((1, 2, 1, 2, 2)).astype(np.float32)      # 5-D
        r["vol6"] = rng.random((1, 2, 1, 2, 1, 2))                       # 6-D: beyond ArrayND
        r["empty"] = np.zeros((0, 3), np.int16)
        r["big_endian"] = np.arange(4, dtype=">i4")
        r["fortran"] = np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))
        r["scalar"] = np.float32(1.5)
        r["zero_d"] = np.array(7, np.int16)
        records.append(r)
    schema = Schema.infer(records[0], fmt)
    assert schema.fields["scalar"] == {"kind": "float"}
    assert schema.fields["zero_d"] == {"kind": "int"}
    assert schema.fields["big_endian"] == {"kind": "list", "dtype": "int32"}
    path = tmp_path / f"p{SUFFIX[fmt]}"
    write(fmt, path, schema, records)
    for (_, got), want in zip(read_records(fmt, path), records):
        for name, value in want.items():
            if isinstance(value, np.ndarray) and value.ndim:
                value = value.astype(value.dtype.newbyteorder("="))
            elif isinstance(value, (np.generic, np.ndarray)):
                value = value.item()
            assert_same_value(got[name], value, (fmt, name))


@pytest.mark.parametrize("fmt", FORMATS)
def test_part_and_shard_are_the_same_bytes(tmp_path, fmt, monkeypatch):
    monkeypatch.setattr(records_parquet, "ROW_GROUP_ROWS", 3)  # several row groups
    records = records_for(fmt, 10)
    schema = infer(fmt, records)
    part = tmp_path / f"part{SUFFIX[fmt]}"
    part_info = write(fmt, part, schema, records)
    shard = tmp_path / f"00000{SUFFIX[fmt]}"
    info = write_shard(fmt, shard, schema, [(str(part), 0, 4), (str(part), 4, 10)])
    assert info == part_info
    assert shard.read_bytes() == part.read_bytes()
    if fmt == "parquet":
        assert pq.ParquetFile(shard).num_row_groups == 4


@pytest.mark.parametrize("fmt", FORMATS)
def test_shard_from_three_parts_with_a_narrower_schema(tmp_path, fmt, monkeypatch):
    monkeypatch.setattr(records_parquet, "ROW_GROUP_ROWS", 4)
    records = records_for(fmt, 12)
    schema = infer(fmt, records)
    # the part schema: without "caption" (missing), with "count" (and the arrays, the JSON)
    # None throughout
    nulls = ("count", "meta", "image", "emb", "depth")
    narrow_records = [{k: (None if k in nulls else v) for k, v in r.items() if k != "caption"}
                      for r in records[4:8]]
    narrow = infer(fmt, narrow_records)
    assert narrow.fields["count"] == {"kind": "null"} and "caption" not in narrow.fields
    assert schema.covers(narrow) and not narrow.covers(schema)

    parts = [tmp_path / f"p{i}{SUFFIX[fmt]}" for i in range(3)]
    write(fmt, parts[0], schema, records[:4])
    write(fmt, parts[1], narrow, narrow_records, first=4)
    write(fmt, parts[2], schema, records[8:], first=8)
    shard = tmp_path / f"00000{SUFFIX[fmt]}"
    info = write_shard(fmt, shard, schema,
                       [(str(parts[0]), 1, 4), (str(parts[1]), 0, 4), (str(parts[2]), 0, 3)])
    assert info.records == 10

    expected = [dict(r) for r in records[1:11]]
    for r in expected[3:7]:
        r.update({k: None for k in ("caption", *nulls) if k in r})
    direct = tmp_path / f"direct{SUFFIX[fmt]}"
    assert write(fmt, direct, schema, expected, first=1) == info
    assert direct.read_bytes() == shard.read_bytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_records_same_bytes(tmp_path, fmt):
    records = records_for(fmt)
    shared = "a string shared by every record"
    for r in records:
        r["text"] = shared  # the same object everywhere
    copies = copy.deepcopy(records)
    for r in copies:
        r["text"] = "".join(shared)  # equal values, distinct objects
    for r in copies[::2]:  # NumPy scalars and tuples count as Python scalars and lists
        r["score"] = np.float64(r["score"])
        r["count"] = np.int32(r["count"])
        r["ok"] = np.bool_(r["ok"])
        if isinstance(r["meta"], dict):
            r["meta"]["tags"] = tuple(r["meta"]["tags"])
    schema = infer(fmt, records)
    a = write(fmt, tmp_path / f"a{SUFFIX[fmt]}", schema, records)
    b = write(fmt, tmp_path / f"b{SUFFIX[fmt]}", schema, copies)
    assert a.sha256 == b.sha256


# ---------------------------------------------------------------------------------------
# the tools a user reads them with
# ---------------------------------------------------------------------------------------


def write_dataset(tmp_path, fmt: str, shards: int = 3, per_shard: int = 4) -> tuple:
    records = records_for(fmt, shards * per_shard)
    schema = infer(fmt, records)
    dst = tmp_path / "dst"
    entries = []
    for s in range(shards):
        name = f"{s:05d}{SUFFIX[fmt]}"
        info = write(fmt, dst / name, schema, records[s * per_shard:(s + 1) * per_shard],
                     first=s * per_shard)
        entries.append({"name": name, "records": info.records, "bytes": info.bytes,
                        "sha256": info.sha256})
    index = {"format": fmt, "schema": schema.to_json(), "shards": entries}
    (dst / "index.json").write_text(json.dumps(index))
    return dst, schema, records


def test_parquet_shards_open_in_pyarrow_dataset_and_pandas(tmp_path):
    pd = pytest.importorskip("pandas")
    dst, schema, records = write_dataset(tmp_path, "parquet")
    shards = sorted(str(p) for p in dst.glob("*.parquet"))
    assert len(shards) == 3
    table = pds.dataset(shards, format="parquet").to_table()
    assert table.num_rows == len(records)
    assert table.column_names == ["__key__", *schema.fields]
    assert table.column("image").to_pylist()[0] == records[0]["image"].tolist()
    assert table.column("meta").to_pylist()[1] == json.dumps(records[1]["meta"],
                                                             separators=(",", ":"))
    frame = pd.read_parquet(dst / "00000.parquet")
    assert list(frame.columns) == ["__key__", *schema.fields]
    assert frame["caption"].tolist()[:3] == [r["caption"] for r in records[:3]]
    assert np.array([np.stack(list(rows)) for rows in frame["image"][0]]).shape == (2, 3, 4)
    assert list(frame["emb"][3]) == list(records[3]["emb"])


def test_parquet_opens_in_hugging_face_datasets(tmp_path, hf):
    import datasets
    dst, schema, records = write_dataset(tmp_path, "parquet", shards=2)
    ds = hf(sorted(dst.glob("*.parquet")))
    features = ds.features
    assert isinstance(features["image"], datasets.Array3D)
    assert features["image"].shape == (2, 3, 4) and features["image"].dtype == "uint8"
    assert isinstance(features["mask"], datasets.Array2D) and features["mask"].dtype == "bool"
    assert features["emb"] == datasets.List(datasets.Value("float16"))
    assert features["caption"] == datasets.Value("string")
    assert len(ds) == len(records)
    row = ds.with_format("numpy")[1]
    assert row["image"].shape == (2, 3, 4)
    np.testing.assert_array_equal(row["image"], records[1]["image"])
    assert ds[1]["image"] == records[1]["image"].tolist()
    assert ds[2]["image"] is None
    assert ds[0]["depth"]["shape"] == [1, 2]
    # with `datasets` imported, ArrayND columns read as its extension type: pyarrow, pandas
    # and our own reader still read them
    shards = sorted(str(p) for p in dst.glob("*.parquet"))
    assert pds.dataset(shards, format="parquet").to_table().num_rows == len(records)
    pd = pytest.importorskip("pandas")
    assert len(pd.read_parquet(shards[0])["image"][0]) == 2
    got = [r for _, r in read_records("parquet", shards[0])]
    assert_same_value(got[1]["image"], records[1]["image"], "image")


def test_webdataset_reads_the_tar(tmp_path):
    wds = pytest.importorskip("webdataset")
    dst, schema, records = write_dataset(tmp_path, "webdataset", shards=2)
    samples = list(wds.WebDataset([str(dst / "00000.tar"), str(dst / "00001.tar")],
                                  shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == [safe_key("clips/a.mp4", n) for n in range(8)]
    s = samples[1]
    assert s["caption.txt"] == records[1]["caption"]
    assert s["jpg"] == records[1]["jpg"]  # a field named as a media extension: KEY.jpg
    assert s["blob.bin"] == records[1]["blob"]
    assert s["count.json"] == records[1]["count"] and s["meta.json"] == records[1]["meta"]
    assert s["nothing.json"] in (None, b"null")  # webdataset keeps what decodes to None raw
    np.testing.assert_array_equal(s["image.npy"], records[1]["image"])
    assert s["mask.npy"].dtype == bool and s["emb.npy"].dtype == np.float16
    assert "image.npy" not in samples[2] and "caption.txt" not in samples[3]  # None: no member


def test_read_shards_all_and_a_subset(tmp_path):
    dst, schema, records = write_dataset(tmp_path, "webdataset")
    every = list(read_shards(dst))
    assert [r["__key__"] for r in every] == [safe_key("clips/a.mp4", n) for n in range(12)]
    for got, want in zip(every, records):
        assert list(got) == ["__key__", *schema.fields]
        for name in schema.fields:
            assert_same_value(got[name], want[name], name)
    subset = list(read_shards(dst, shards=[0, 2]))
    assert [r["__key__"] for r in subset] == [r["__key__"] for r in every[:4] + every[8:]]
    assert [r["__key__"] for r in read_shards(dst, shards=["00001.tar"])] == \
        [r["__key__"] for r in every[4:8]]
    with pytest.raises(ValueError, match="00009.tar"):
        list(read_shards(dst, shards=["00009.tar"]))


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_shards_every_format(tmp_path, fmt):
    dst, schema, records = write_dataset(tmp_path, fmt, shards=2, per_shard=3)
    index = json.loads((dst / "index.json").read_text())
    del index["schema"]  # without the schema: webdataset's missing members are missing fields
    (dst / "index.json").write_text(json.dumps(index))
    got = list(read_shards(dst, shards=[1]))
    assert [r["__key__"] for r in got] == [safe_key("clips/a.mp4", n) for n in range(3, 6)]
    assert_same_value(got[1]["meta"], records[4]["meta"], "meta")
    if fmt in ARRAY_FORMATS:
        assert_same_value(got[2]["depth"], records[5]["depth"], "depth")


def test_pickle_file_is_one_list(tmp_path):
    records = records_for("pickle", 3)
    schema = infer("pickle", records)
    write("pickle", tmp_path / "p.pkl", schema, records)
    rows = pickle.loads((tmp_path / "p.pkl").read_bytes())
    assert isinstance(rows, list) and list(rows[0]) == ["__key__", *schema.fields]


def test_jsonl_is_one_object_a_line(tmp_path):
    records = records_for("jsonl", 3)
    schema = infer("jsonl", records)
    write("jsonl", tmp_path / "p.jsonl", schema, records)
    lines = (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert json.loads(lines[0]) == {"__key__": safe_key("clips/a.mp4", 0), **records[0]}
    assert "☕" in lines[0] and ", " not in lines[0].replace("café ☕", "")


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------


def error_of(fn) -> RecordError:
    with pytest.raises(RecordError) as e:
        fn()
    return e.value


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("record, field", [
    (["not", "a", "dict"], "list"),
    ({1: "x"}, "1"),
    ({"__key__": "x"}, "__key__"),
    ({"": 1}, "empty"),
])
def test_bad_record(fmt, record, field):
    e = error_of(lambda: Schema.infer(record, fmt))
    assert e.error_class == "bad_record" and field in str(e)


def test_bad_field_name_in_webdataset():
    e = error_of(lambda: Schema.infer({"a.b": 1}, "webdataset"))
    assert e.error_class == "bad_record" and "'a.b'" in str(e)
    assert Schema.infer({"a.b": 1}, "parquet").fields == {"a.b": {"kind": "int"}}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("value, words", [
    ({1, 2}, "set"),
    (object(), "object"),
    (np.array(["a", "b"]), "<U1"),
    (np.array([object()]), "object"),
    (np.array(["2020-01-01"], dtype="datetime64[D]"), "datetime64"),
    ([1, np.zeros(3)], "inside a list"),
    ({"k": {2: "x"}}, "dict key 2"),
    ([b"x"], "bytes"),
    ("\ud800", "surrogate"),
    (1 + 2j, "complex"),
])
def test_unsupported_type(fmt, value, words):
    e = error_of(lambda: normalize({"field_x": value}, fmt))
    assert e.error_class == "unsupported_type"
    assert "'field_x'" in str(e) and words in str(e)


@pytest.mark.parametrize("value, words", [(np.zeros(3), "float64 array"), (b"x", "bytes")])
def test_jsonl_refuses_arrays_and_bytes(value, words):
    e = error_of(lambda: normalize({"field_x": value}, "jsonl"))
    assert e.error_class == "unsupported_type"
    assert "'field_x'" in str(e) and words in str(e) and "parquet" in str(e)


def test_parquet_refuses_what_it_has_no_type_for():
    e = error_of(lambda: Schema.infer({"n": 1 << 70}, "parquet"))
    assert e.error_class == "unsupported_type" and "'n'" in str(e) and "int64" in str(e)
    e = error_of(lambda: Schema.infer({"c": np.zeros(2, np.complex64)}, "parquet"))
    assert e.error_class == "unsupported_type" and "'c'" in str(e) and "ragged" in str(e)
    assert Schema.infer({"c": np.zeros(2, np.complex64)}, "parquet", ragged=["c"])
    assert Schema.infer({"c": np.zeros(2, np.complex64)}, "pickle")


@pytest.mark.parametrize("fmt", ARRAY_FORMATS)
def test_schema_mismatch(fmt):
    first = {"score": 1.5, "emb": np.zeros(4, np.float32), "img": np.zeros((2, 3), np.uint8),
             "depth": np.zeros((2, 2)), "tag": "x", "extra": None}
    schema = Schema.infer(first, fmt, ragged=["depth"])
    cases = [
        ({"score": 1}, "'score': int here, float in the job's schema"),
        ({"new": 1}, "'new' is not in the job's schema"),
        ({"emb": np.zeros(4, np.float64)}, "'emb': 1-D float64 array here, 1-D float32 array"),
        ({"emb": np.zeros((4, 1), np.float32)}, "'emb': float32 array of shape (4, 1) here"),
        ({"img": np.zeros((3, 3), np.uint8)}, "'img': array of shape (3, 3) here, (2, 3)"),
        ({"img": np.zeros((2, 3), np.int8)}, "'img': int8 array of shape (2, 3) here, uint8"),
        ({"tag": ["x"]}, "'tag': list here, str in the job's schema"),
        ({"extra": 3}, "'extra': int here, None in the job's schema"),
        ({"depth": 3.0}, "'depth': float here"),
    ]
    for record, words in cases:
        e = error_of(lambda: schema.conform(record, fmt))
        assert e.error_class == "schema_mismatch", words
        assert words in str(e), (str(e), words)
    e = error_of(lambda: schema.conform({"img": np.zeros((3, 3), np.uint8)}, fmt))
    assert "--ragged img" in str(e)
    # what does fit: ragged shapes and dtypes, None anywhere, missing fields
    ok = schema.conform({"depth": np.zeros((5,), np.int8), "img": None, "score": np.float32(2)},
                        fmt)
    assert list(ok) == list(schema.fields)
    assert ok["score"] == 2.0 and type(ok["score"]) is float and ok["tag"] is None


# ---------------------------------------------------------------------------------------
# schema, keys, sizes, files
# ---------------------------------------------------------------------------------------


def test_schema_json_merge_covers():
    schema = Schema.infer({"a": 1, "b": None, "c": np.zeros((2, 2), np.uint8), "d": "x"},
                          "parquet", ragged=["d2"])
    again = Schema.from_json(json.loads(json.dumps(schema.to_json())))
    assert again == schema and list(again.fields) == ["a", "b", "c", "d"]
    assert Schema({"b": {"kind": "null"}, "a": {"kind": "int"}}) != \
        Schema({"a": {"kind": "int"}, "b": {"kind": "null"}})  # order counts

    later = Schema.infer({"b": 2.5, "a": None, "c": np.ones((2, 2), np.uint8)}, "parquet")
    merged = schema.merge(later)
    assert list(merged.fields) == ["a", "b", "c", "d"]
    assert merged.fields["a"] == {"kind": "int"} and merged.fields["b"] == {"kind": "float"}
    assert merged.covers(schema) and merged.covers(later) and not schema.covers(later)
    e = error_of(lambda: schema.merge(Schema.infer({"z": 1}, "parquet")))
    assert e.error_class == "schema_mismatch" and "'z'" in str(e)
    e = error_of(lambda: schema.merge(Schema.infer({"a": "1"}, "parquet")))
    assert e.error_class == "schema_mismatch" and "'a'" in str(e)
    e = error_of(lambda: Schema.infer({}, "parquet"))
    assert e.error_class == "bad_record"


def test_safe_key():
    keys = {safe_key(k, n) for k in ["a", "a.b", "a_b", "a%2Eb", "a/b", "a b", "é", "a_1", ""]
            for n in (0, 1, 12)}
    assert len(keys) == 27  # injective
    for key in keys:
        assert not set(key) & set("./\\\x00 \t\n")
    assert safe_key("clips/a b.mp4", 3) == "clips%2Fa%20b%2Emp4_3"
    assert safe_key("x-y_z", 0) == "x-y_z_0"


def test_encoded_size():
    record = normalize({"s": "é", "b": b"123", "i": 1, "f": 2.0, "t": True, "n": None,
                        "j": [1, "a"], "a": np.zeros((2, 3), np.float32)}, "parquet")
    # names: 8 chars; values: 2 + 3 + 8 + 8 + 8 + 0 + len('[1,"a"]') + 24
    assert encoded_size(record) == 8 + 2 + 3 + 8 + 8 + 8 + 0 + 7 + 24


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_never_replaces_and_cleans_up(tmp_path, fmt):
    records = records_for(fmt, 2)
    schema = infer(fmt, records)
    path = tmp_path / f"x{SUFFIX[fmt]}"
    path.write_bytes(b"the user's")
    with pytest.raises(FileExistsError):
        write(fmt, path, schema, records)
    assert path.read_bytes() == b"the user's"
    assert os.listdir(tmp_path) == [path.name]

    other = tmp_path / f"y{SUFFIX[fmt]}"
    with pytest.raises(RuntimeError, match="boom"):
        with RecordWriter(fmt, other, schema) as w:
            w.add("k_0", schema.conform(records[0], fmt))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == [path.name]
    with pytest.raises(ValueError, match="bad record key"):
        RecordWriter(fmt, other, schema).add("a.b", {})


def test_all_none_record_keeps_a_member_in_the_tar(tmp_path):
    schema = Schema.infer({"caption": "x", "img": np.zeros(2)}, "webdataset")
    path = tmp_path / "a.tar"
    write("webdataset", path, schema, [{"caption": None}, {"caption": "y"}])
    back = list(read_records("webdataset", path, schema=schema))
    assert [r for _, r in back] == [{"caption": None, "img": None},
                                    {"caption": "y", "img": None}]


def test_shard_slice_beyond_the_part_fails(tmp_path):
    records = records_for("jsonl", 3)
    schema = infer("jsonl", records)
    write("jsonl", tmp_path / "p.jsonl", schema, records)
    with pytest.raises(ValueError, match="fewer"):
        write_shard("jsonl", tmp_path / "s.jsonl", schema, [(str(tmp_path / "p.jsonl"), 1, 5)])
    assert not (tmp_path / "s.jsonl").exists()
    assert os.listdir(tmp_path) == ["p.jsonl"]


def test_parquet_row_groups_follow_the_byte_rule(tmp_path, monkeypatch):
    monkeypatch.setattr(records_parquet, "ROW_GROUP_BYTES", 200)
    records = [{"b": bytes(90)} for _ in range(5)]
    schema = Schema.infer(records[0], "parquet")
    write("parquet", tmp_path / "p.parquet", schema, records)
    f = pq.ParquetFile(tmp_path / "p.parquet")
    assert [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)] == [3, 2]
    assert pa.types.is_binary(f.schema_arrow.field("b").type)


def test_long_keys_in_a_tar(tmp_path):
    wds = pytest.importorskip("webdataset")
    schema = Schema.infer({"txt": "a", "v": np.arange(3)}, "webdataset")
    key = safe_key("é/" * 60, 0)  # > 100 bytes: a PAX header
    path = tmp_path / "a.tar"
    with RecordWriter("webdataset", path, schema) as w:
        w.add(key, schema.conform({"txt": "a", "v": np.arange(3)}, "webdataset"))
    [(got_key, record)] = list(read_records("webdataset", path))
    assert got_key == key and record["txt"] == "a"
    [sample] = list(wds.WebDataset(str(path), shardshuffle=False).decode())
    assert sample["__key__"] == key and sample["txt"] == "a"


def test_doctests():
    import doctest

    import datamill.io.records.schema as schema_module
    assert doctest.testmod(schema_module).failed == 0


def test_a_corrupt_tar_header_is_refused(tmp_path):
    schema = Schema.infer({"txt": "a"}, "webdataset")
    path = tmp_path / "a.tar"
    write("webdataset", path, schema, [{"txt": "a"}, {"txt": "b"}])
    data = bytearray(path.read_bytes())
    data[1024] ^= 1  # the second record's header
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        list(read_records("webdataset", path))
