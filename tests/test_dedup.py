"""Job `dedup` end to end on generated collections with known duplicates and bad inputs."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import imagehash
import pyarrow.parquet as pq
import pytest
from PIL import Image

import datamill
from datamill.media.synthetic import make_bomb_png, make_image


def jpeg_of(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def manifest(dst: Path) -> dict[str, dict]:
    return {r["key"]: r for r in pq.read_table(dst / "manifest.parquet").to_pylist()}


def groups(dst: Path) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for r in pq.read_table(dst / "groups.parquet").to_pylist():
        out.setdefault(r["group"], set()).add(r["path"])
    return out


@pytest.fixture()
def collection(tmp_path) -> Path:
    """Three base photos, each with known copies, plus two distinct images."""
    src = tmp_path / "src"
    for n in range(3):
        base = src / f"set{n}"
        base.mkdir(parents=True)
        make_image(base / "original.jpg", size=(640, 480), seed=n, quality=95)
        img = Image.open(base / "original.jpg").convert("RGB")
        (base / "half.jpg").write_bytes(jpeg_of(img.resize((320, 240), Image.LANCZOS)))
        (base / "recompressed.jpg").write_bytes(jpeg_of(img, quality=60))
        img.save(base / "as.png")
        (base / "copy of original.jpg").write_bytes((base / "original.jpg").read_bytes())
    make_image(src / "other/distinct-a.jpg", size=(640, 480), seed=100)
    make_image(src / "other/distinct-b.png", size=(400, 400), seed=200, fmt="PNG")
    return src


def test_near_and_exact_duplicates_are_grouped_and_the_largest_kept(collection, tmp_path):
    dst = tmp_path / "dst"
    report = datamill.dedup(collection, dst, quiet=True)
    assert report.exit_code == 0
    g = groups(dst)
    expected = [{f"set{n}/{f}" for f in ("original.jpg", "half.jpg", "recompressed.jpg", "as.png",
                                          "copy of original.jpg")} for n in range(3)]
    assert sorted(map(sorted, g.values())) == sorted(map(sorted, expected))
    rows = pq.read_table(dst / "groups.parquet").to_pylist()
    kept = {r["path"] for r in rows if r["kept"]}
    # largest: most pixels, then most bytes: the PNG of the full-size picture
    assert kept == {f"set{n}/as.png" for n in range(3)}
    m = manifest(dst)
    assert m["set0/half.jpg"]["status"] == "filtered" and m["set0/half.jpg"]["reason"] == "duplicate"
    assert m["set0/half.jpg"]["duplicate_of"] == "set0/as.png"
    assert m["other/distinct-a.jpg"]["status"] == "ok" and m["other/distinct-a.jpg"]["group"] is None
    assert m["set1/copy of original.jpg"]["distance"] == m["set1/original.jpg"]["distance"]
    assert (dst / "report.html").stat().st_size > 1000


def test_hashes_equal_imagehash_phash(collection, tmp_path):
    dst = tmp_path / "dst"
    datamill.dedup(collection, dst, quiet=True)
    for key, row in manifest(dst).items():
        expected = str(imagehash.phash(Image.open(collection / key)))
        assert row["hash"] == expected, key


def test_changing_threshold_keep_and_action_regroups_without_rehashing(collection, tmp_path):
    dst = tmp_path / "dst"
    datamill.dedup(collection, dst, quiet=True)
    strict = datamill.dedup(collection, dst, quiet=True, threshold=0, keep="first")
    assert strict.exit_code == 0 and strict.stats["this_run"]["items"] == 0  # nothing rehashed
    g = groups(dst)
    rows = pq.read_table(dst / "groups.parquet").to_pylist()
    assert rows and all(r["distance"] == 0 for r in rows)  # only identical hashes group now
    for members in g.values():
        first = min(members)
        assert {r["path"] for r in rows if r["kept"] and r["path"] in members} == {first}
    # adding an image hashes only the new one
    make_image(collection / "set0/new.jpg", size=(640, 480), seed=0, quality=80)
    again = datamill.dedup(collection, dst, quiet=True)
    assert again.stats["this_run"]["items"] == 1
    assert any("set0/new.jpg" in members for members in groups(dst).values())
    with pytest.raises(datamill.UsageError, match="--overwrite"):
        datamill.dedup(collection, dst, quiet=True, hash="dhash")


def test_actions_copy_survivors_and_move_duplicates(collection, tmp_path):
    copy = tmp_path / "copy"
    datamill.dedup(collection, copy, quiet=True, action="copy")
    copied = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.suffix in (".jpg", ".png"))
    assert copied == ["other/distinct-a.jpg", "other/distinct-b.png", "set0/as.png", "set1/as.png",
                      "set2/as.png"]
    links = tmp_path / "links"
    datamill.dedup(collection, links, quiet=True, action="symlink")
    assert (links / "set0/as.png").is_symlink()
    moved_to = tmp_path / "moved"
    datamill.dedup(collection, tmp_path / "mv", quiet=True, action="move-duplicates",
                   move_to=str(moved_to))
    assert sorted(p.name for p in (collection / "set0").iterdir()) == ["as.png"]
    assert (moved_to / "set0/half.jpg").exists()
    log = [json.loads(x) for x in (tmp_path / "mv" / "moved.jsonl").read_text().splitlines()]
    assert len(log) == 12
    # every group still has its kept copy in SRC: nothing was lost
    assert all((collection / f"set{n}/as.png").exists() for n in range(3))


def test_against_a_reference_collection(collection, tmp_path):
    ref = tmp_path / "testset"
    ref.mkdir()
    (ref / "leak.jpg").write_bytes(jpeg_of(Image.open(collection / "set2/original.jpg").convert("RGB"), 70))
    dst = tmp_path / "dst"
    datamill.dedup(collection, dst, quiet=True, against=str(ref))
    m = manifest(dst)
    leaked = {k for k, r in m.items() if r["reason"] == "duplicate_of_reference"}
    assert leaked == {f"set2/{f}" for f in ("original.jpg", "half.jpg", "recompressed.jpg", "as.png",
                                           "copy of original.jpg")}
    assert m["set2/as.png"]["duplicate_of"].endswith("leak.jpg")


def test_bad_inputs_each_get_an_outcome(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    good = make_image(src / "good.jpg", size=(320, 240), seed=1)
    (src / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (src / "zero.jpg").write_bytes(b"")
    (src / "text.jpg").write_text("this is not an image")
    make_image(src / "cmyk.jpg", mode="CMYK", seed=2)
    make_image(src / "palette.png", mode="P", fmt="PNG", seed=3)
    make_image(src / "deep.png", mode="I;16", fmt="PNG", seed=4)
    make_image(src / "anim.gif", fmt="GIF", frames=3, seed=5)
    (src / "bomb.png").write_bytes(make_bomb_png())
    (src / "loop").symlink_to(src, target_is_directory=True)
    (src / "again").mkdir()
    (src / "again" / "good-link.jpg").symlink_to(src / "good.jpg")
    dst = tmp_path / "dst"
    report = datamill.dedup(src, dst, quiet=True)
    m = manifest(dst)
    both = {"good.jpg", "again/good-link.jpg"}
    assert len(set(m) & both) == 1  # one file reached through two paths is hashed once
    assert set(m) - both == {"truncated.jpg", "zero.jpg", "text.jpg", "cmyk.jpg", "palette.png",
                             "deep.png", "anim.gif", "bomb.png"}  # and the loop is not followed
    assert m["truncated.jpg"]["reason"] == "decode_error"
    assert m["zero.jpg"]["reason"] in ("not_image", "decode_error")
    assert m["text.jpg"]["reason"] == "not_image"
    assert m["bomb.png"]["reason"] == "too_large"
    for ok in ("cmyk.jpg", "palette.png", "deep.png", "anim.gif"):
        assert m[ok]["status"] == "ok" and len(m[ok]["hash"]) == 16, ok
    assert report.exit_code == 1


def test_an_unreadable_file_fails_with_its_reason(tmp_path):
    if os.geteuid() != 0:  # chmod 000 stops an ordinary user: no need to drop privileges
        make_image(tmp_path / "src" / "ok.jpg", seed=1)
        make_image(tmp_path / "src" / "secret.jpg", seed=2)
        os.chmod(tmp_path / "src" / "secret.jpg", 0o000)
        datamill.dedup(tmp_path / "src", tmp_path / "dst", quiet=True)
        assert manifest(tmp_path / "dst")["secret.jpg"]["reason"] == "permission_denied"
        return
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    os.chmod(base, 0o777)
    src = base / "src"
    src.mkdir()
    make_image(src / "ok.jpg", seed=1)
    make_image(src / "secret.jpg", seed=2)
    os.chmod(src / "secret.jpg", 0o000)
    os.chmod(src, 0o755)
    code = (
        "import os, sys, datamill\n"
        "from datamill.jobs.dedup import dedup\n"
        "import datamill.engine.local, datamill.engine.run, datamill.io.report\n"
        "from datamill.media.hashes import hash_image\n"
        f"hash_image({str(src / 'ok.jpg')!r})  # loads Pillow's plugins while they are readable\n"
        "os.setgid(65534); os.setuid(65534)\n"
        # serial: the interpreter's lazily imported modules are unreadable once unprivileged
        f"r = dedup({str(src)!r}, {str(base / 'dst')!r}, quiet=True, executor='serial')\n"
        "sys.exit(r.exit_code)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    m = manifest(base / "dst")
    assert m["secret.jpg"]["reason"] == "permission_denied"
    assert m["ok.jpg"]["status"] == "ok"


def test_size_filters_and_time_based_keep_policies(collection, tmp_path):
    small = collection / "other" / "thumb.jpg"
    make_image(small, size=(60, 40), seed=300)
    dst = tmp_path / "dst"
    datamill.dedup(collection, dst, quiet=True, min_size=100, min_bytes=10)
    m = manifest(dst)
    assert (m["other/thumb.jpg"]["status"], m["other/thumb.jpg"]["reason"]) == ("filtered", "too_small")
    assert m["set0/half.jpg"]["reason"] == "duplicate"  # 320x240 passes --min-size 100
    by_bytes = datamill.dedup(collection, tmp_path / "b", quiet=True, min_bytes=10**9)
    assert by_bytes.counts["filtered"] == len(m) and by_bytes.counts["ok"] == 0
    # oldest / newest follow modification times
    for n in range(3):
        for age, name in enumerate(["half.jpg", "as.png", "recompressed.jpg", "original.jpg",
                                    "copy of original.jpg"]):
            os.utime(collection / f"set{n}" / name, (1_000_000 + age, 1_000_000 + age))
    for policy, expected in (("oldest", "half.jpg"), ("newest", "copy of original.jpg")):
        out = tmp_path / policy
        datamill.dedup(collection, out, quiet=True, keep=policy)
        kept = {r["path"] for r in pq.read_table(out / "groups.parquet").to_pylist() if r["kept"]}
        assert kept == {f"set{n}/{expected}" for n in range(3)}, policy
