"""Job `dedup` end to end on generated collections with known duplicates and bad inputs."""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import imagehash
import pyarrow.parquet as pq
import pytest
from PIL import Image

import datamill
from datamill.jobs.dedup import DedupJob
from datamill.testing.images import make_bomb_png, make_image


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


def test_an_image_that_leaves_its_group_gets_a_plain_row_again(collection, tmp_path):
    """The global phase rewrites only the rows that change: an image grouped by a loose
    threshold and alone at the default one must lose every group field."""
    dst = tmp_path / "dst"
    datamill.dedup(collection, dst, quiet=True)
    first = manifest(dst)
    loose = datamill.dedup(collection, dst, quiet=True, threshold=32)  # distinct images join groups
    assert loose.stats["this_run"]["items"] == 0
    merged = manifest(dst)
    assert merged["other/distinct-a.jpg"]["group"] is not None
    assert merged != first
    datamill.dedup(collection, dst, quiet=True)  # the default threshold again
    assert manifest(dst) == first
    alone = manifest(dst)["other/distinct-a.jpg"]
    assert alone["status"] == "ok" and alone["group"] is None and alone["kept"] is None


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
        "import datamill.engine.executors.local, datamill.engine.run, datamill.io.dedup_report\n"
        "import numpy.random  # resample's plan uses it (scipy, no longer imported, imported it)\n"
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


# -- what dedup may touch: never the last copy of an image, never a file it did not write ---

def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() or p.is_symlink()} if folder.exists() else set()


def pair(src: Path) -> Path:
    """SRC holding one picture in two sizes (a near-duplicate pair) and an unrelated one."""
    src.mkdir(parents=True)
    make_image(src / "big.jpg", size=(640, 480), seed=7, quality=95)
    img = Image.open(src / "big.jpg").convert("RGB")
    (src / "small.jpg").write_bytes(jpeg_of(img.resize((320, 240), Image.LANCZOS)))
    make_image(src / "other.jpg", size=(640, 480), seed=8)
    return src


def test_a_rerun_with_another_keep_never_moves_the_kept_copies(collection, tmp_path, capsys):
    for n in range(3):  # half.jpg is the oldest of each group
        for age, name in enumerate(["half.jpg", "as.png", "recompressed.jpg", "original.jpg",
                                    "copy of original.jpg"]):
            os.utime(collection / f"set{n}" / name, (1_000_000 + age, 1_000_000 + age))
    moved, dst = tmp_path / "moved", tmp_path / "dst"
    datamill.dedup(collection, dst, quiet=True, action="move-duplicates", move_to=str(moved))
    assert all(files_under(collection / f"set{n}") == {"as.png"} for n in range(3))
    # --keep oldest keeps half.jpg, which the first run moved: nothing of its group moves
    again = datamill.dedup(collection, dst, action="move-duplicates", move_to=str(moved),
                           keep="oldest")
    assert again.exit_code == 0
    for n in range(3):
        assert files_under(collection / f"set{n}") == {"as.png"}  # still the one copy in SRC
        assert files_under(moved / f"set{n}") == {"half.jpg", "recompressed.jpg", "original.jpg",
                                                   "copy of original.jpg"}
    rows = {r["path"]: r for r in pq.read_table(dst / "groups.parquet").to_pylist()}
    assert rows["set0/half.jpg"]["kept"]
    assert rows["set0/half.jpg"]["moved_to"] == str(moved / "set0/half.jpg")
    assert rows["set0/as.png"]["moved_to"] is None and not rows["set0/as.png"]["kept"]
    out = capsys.readouterr().out
    assert "3 groups keep a copy that is in --move-to" in out
    assert "3 duplicates of them stay in SRC" in out
    assert "kept copy is in SRC" not in out
    assert "moved 0 duplicates" in out


def test_deleting_a_kept_image_never_moves_its_last_copy(tmp_path, capsys):
    src, moved, dst = pair(tmp_path / "src"), tmp_path / "moved", tmp_path / "dst"
    datamill.dedup(src, dst, quiet=True)  # hashes; big.jpg is kept
    assert manifest(dst)["small.jpg"]["duplicate_of"] == "big.jpg"
    (src / "big.jpg").unlink()
    report = datamill.dedup(src, dst, action="move-duplicates", move_to=str(moved))
    assert report.exit_code == 0
    assert files_under(src) == {"small.jpg", "other.jpg"}  # the last copy stays
    assert files_under(moved) == set()
    assert manifest(dst)["small.jpg"]["status"] == "ok"
    out = capsys.readouterr().out
    assert "1 hashed before are no longer there" in out and "moved 0 duplicates" in out
    # after a move, the kept image deleted: its duplicate is in --move-to, nothing moves
    make_image(src / "big.jpg", size=(640, 480), seed=7, quality=95)
    datamill.dedup(src, dst, quiet=True, action="move-duplicates", move_to=str(moved))
    assert files_under(src) == {"big.jpg", "other.jpg"} and files_under(moved) == {"small.jpg"}
    (src / "big.jpg").unlink()
    datamill.dedup(src, dst, quiet=True, action="move-duplicates", move_to=str(moved))
    assert files_under(src) == {"other.jpg"} and files_under(moved) == {"small.jpg"}


def test_against_src_its_own_dst_or_a_dedup_of_src_is_refused(collection, tmp_path):
    before = {p: p.read_bytes() for p in collection.rglob("*") if p.is_file()}
    dst, moved = tmp_path / "dst", tmp_path / "moved"
    datamill.dedup(collection, dst, quiet=True)
    for against in (collection, collection / "set0", tmp_path, dst):
        with pytest.raises(datamill.UsageError, match="--against"):
            datamill.dedup(collection, dst, quiet=True, action="move-duplicates",
                           move_to=str(moved), against=str(against))
    # a dedup DST of SRC itself (another DST): every image would duplicate itself
    other = tmp_path / "other-dst"
    datamill.dedup(collection, other, quiet=True)
    with pytest.raises(datamill.UsageError, match="lists images of SRC"):
        datamill.dedup(collection, dst, quiet=True, action="move-duplicates",
                       move_to=str(moved), against=str(other))
    assert files_under(moved) == set()
    assert {p: p.read_bytes() for p in collection.rglob("*") if p.is_file()} == before
    out = subprocess.run([sys.executable, "-m", "datamill", "dedup", str(collection), str(dst),
                          "--against", str(collection)], capture_output=True, text=True)
    assert out.returncode == 2 and "--against" in out.stderr and "Traceback" not in out.stderr


def test_a_name_taken_in_move_to_is_never_overwritten(collection, tmp_path):
    moved, dst = tmp_path / "moved", tmp_path / "dst"
    (moved / "set0").mkdir(parents=True)
    (moved / "set0" / "half.jpg").write_bytes(b"the user's own file")
    half = (collection / "set0" / "half.jpg").read_bytes()
    datamill.dedup(collection, dst, quiet=True, action="move-duplicates", move_to=str(moved))
    assert (moved / "set0" / "half.jpg").read_bytes() == b"the user's own file"
    assert (moved / "set0" / "half.1.jpg").read_bytes() == half
    log = [json.loads(x) for x in (dst / "moved.jsonl").read_text().splitlines()]
    assert {"from": str(collection / "set0/half.jpg"), "to": str(moved / "set0/half.1.jpg")}.items() \
        <= next(e for e in log if e["from"].endswith("set0/half.jpg")).items()
    assert manifest(dst)["set0/half.jpg"]["moved_to"] == str(moved / "set0/half.1.jpg")


def test_a_report_inside_src_or_on_a_file_of_the_user_is_refused(collection, tmp_path):
    dst = tmp_path / "dst"
    original = (collection / "set0/original.jpg").read_bytes()
    for report in (str(collection / "set0/original.jpg"), "../src/set0/original.jpg",
                   str(collection / "new-report.html")):
        with pytest.raises(datamill.UsageError, match="inside SRC"):
            datamill.dedup(collection, dst, quiet=True, report=report)
    assert (collection / "set0/original.jpg").read_bytes() == original
    assert not (collection / "new-report.html").exists()
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(datamill.UsageError, match="not a datamill report"):
        datamill.dedup(collection, dst, quiet=True, report=str(notes))
    assert notes.read_text() == "mine"
    elsewhere = tmp_path / "elsewhere.html"  # outside DST: written, then rewritten
    for _ in range(2):
        assert datamill.dedup(collection, dst, quiet=True, report=str(elsewhere)).exit_code == 0
    assert elsewhere.stat().st_size > 1000


def test_copy_after_sources_were_deleted_fails_only_those_images(collection, tmp_path, monkeypatch,
                                                                 capsys):
    dst = tmp_path / "dst"
    datamill.dedup(collection, dst, quiet=True)
    (collection / "set0/as.png").unlink()  # a kept image, deleted before the run
    real_copy2 = shutil.copy2

    def copy2_racing_a_delete(source, dest, **kw):  # deleted between hashing and copying
        if str(source).endswith("distinct-a.jpg"):
            os.unlink(source)
        return real_copy2(source, dest, **kw)

    monkeypatch.setattr(shutil, "copy2", copy2_racing_a_delete)
    report = datamill.dedup(collection, dst, action="copy")
    assert report.exit_code == 1  # one image failed, the others are there
    out = capsys.readouterr().out
    assert "Traceback" not in out and "1 images could not be placed (copy)" in out
    assert files_under(dst) - files_under(dst / "_datamill") >= {
        "set0/copy of original.jpg", "set1/as.png", "set2/as.png", "other/distinct-b.png"}
    assert not (dst / "other/distinct-a.jpg").exists()
    m = manifest(dst)
    assert (m["other/distinct-a.jpg"]["status"], m["other/distinct-a.jpg"]["reason"]) == \
        ("failed", "not_found")
    failures = [json.loads(x) for x in (dst / "failures.jsonl").read_text().splitlines()]
    assert [f["key"] for f in failures] == ["other/distinct-a.jpg"]
    assert m["set0/half.jpg"]["duplicate_of"] == "set0/copy of original.jpg"
    monkeypatch.undo()
    again = datamill.dedup(collection, dst, quiet=True, action="copy")  # rerun: no traceback
    assert again.exit_code == 0 and not (dst / "failures.jsonl").read_text()
    # a file of the user's where a survivor goes fails that one image and is left alone
    make_image(collection / "other/new.jpg", size=(640, 480), seed=400)
    (dst / "other/new.jpg").write_bytes(b"mine")
    taken = datamill.dedup(collection, dst, quiet=True, action="copy")
    assert taken.exit_code == 1 and (dst / "other/new.jpg").read_bytes() == b"mine"
    assert manifest(dst)["other/new.jpg"]["reason"] == "dst_exists"


def test_hardlink_across_file_systems_falls_back_to_a_copy(tmp_path, monkeypatch, capsys):
    shm = Path("/dev/shm")
    other_fs = shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev
    base = Path(tempfile.mkdtemp(dir=shm)) if other_fs else tmp_path
    try:
        if not other_fs:  # no second file system here: the kernel's answer, simulated
            def link(*a, **kw):
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
            monkeypatch.setattr(os, "link", link)
        src, dst = pair(base / "src"), tmp_path / "dst"
        report = datamill.dedup(src, dst, action="hardlink")
        assert report.exit_code == 0
        assert files_under(dst) - files_under(dst / "_datamill") >= {"big.jpg", "other.jpg"}
        assert not (dst / "small.jpg").exists()
        assert (dst / "big.jpg").read_bytes() == (src / "big.jpg").read_bytes()
        assert not os.path.samefile(dst / "big.jpg", src / "big.jpg")
        assert "2 survivors are on another file system than DST: copied instead" in capsys.readouterr().out
        again = datamill.dedup(src, dst, action="hardlink")  # the copies count as placed
        assert again.exit_code == 0
        assert "0 survivors placed in DST this run, 2 already there" in capsys.readouterr().out
    finally:
        if other_fs:
            shutil.rmtree(base)


def test_move_to_with_another_action_names_move_to(collection, tmp_path):
    with pytest.raises(datamill.UsageError, match="^--move-to goes only with --action move-duplicates"):
        datamill.dedup(collection, tmp_path / "dst", quiet=True, action="copy",
                       move_to=str(tmp_path / "m"))
    out = subprocess.run([sys.executable, "-m", "datamill", "dedup", str(collection),
                          str(tmp_path / "dst"), "--action", "copy", "--move-to", str(tmp_path / "m")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "--move-to goes only with" in out.stderr
    assert not (tmp_path / "dst" / "set0").exists() and not (tmp_path / "m").exists()


def test_the_summary_and_ledger_count_duplicates_as_filtered(collection, tmp_path, capsys):
    dst = tmp_path / "dst"
    report = datamill.dedup(collection, dst, action="move-duplicates", move_to=str(tmp_path / "m"))
    out = capsys.readouterr().out
    assert report.counts == {"ok": 5, "filtered": 12, "failed": 0}
    assert json.loads((dst / "stats.json").read_text())["counts"]["filtered"] == 12
    assert "ok 5, filtered 12, failed 0" in out
    assert "12 duplicates filtered, 5 kept" in out
    assert "moved 12 duplicates" in out and "every group's kept copy is in SRC" in out
    assert len(files_under(tmp_path / "m")) == 12 and len(files_under(collection)) == 5


def test_a_move_a_killed_run_never_recorded_is_undone_and_redone(collection, tmp_path):
    moved, dst = tmp_path / "moved", tmp_path / "dst"
    originals = {p.relative_to(collection).as_posix(): p.read_bytes()
                 for p in collection.rglob("*") if p.is_file()}
    # kill -9 of the driver just after its third move, before the ledger says it is done
    code = ("import os, signal, sys\n"
            "from datamill.engine.ledger import Ledger\n"
            "import datamill\n"
            "done, n = Ledger.done_move, [0]\n"
            "def killed(self, source):\n"
            "    n[0] += 1\n"
            "    if n[0] == 3:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    done(self, source)\n"
            "Ledger.done_move = killed\n"
            f"datamill.dedup({str(collection)!r}, {str(dst)!r}, quiet=True, executor='serial',\n"
            f"               action='move-duplicates', move_to={str(moved)!r})\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == -9, out.stderr
    assert len(files_under(moved)) == 3 and len(files_under(collection)) == 14
    report = datamill.dedup(collection, dst, quiet=True, action="move-duplicates",
                            move_to=str(moved))
    assert report.exit_code == 0
    assert files_under(collection) == {f"set{n}/as.png" for n in range(3)} | {
        "other/distinct-a.jpg", "other/distinct-b.png"}
    assert len(files_under(moved)) == 12  # each duplicate once: none lost, none twice
    now = {**{k: (collection / k).read_bytes() for k in files_under(collection)},
           **{k: (moved / k).read_bytes() for k in files_under(moved)}}
    assert now == originals
    log = [json.loads(x) for x in (dst / "moved.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in log].count("put back: a run stopped before recording it") == 1


def test_overwrite_puts_moved_files_back(collection, tmp_path, caplog):
    moved, dst = tmp_path / "moved", tmp_path / "dst"
    everything = files_under(collection)
    datamill.dedup(collection, dst, quiet=True, action="move-duplicates", move_to=str(moved))
    assert len(files_under(moved)) == 12
    (collection / "set1/half.jpg").write_bytes(b"a new file of the user's, same name")
    datamill.dedup(collection, dst, quiet=True, overwrite=True)
    assert files_under(collection) == everything  # back where they came from
    assert (collection / "set1/half.jpg").read_bytes() == b"a new file of the user's, same name"
    assert files_under(moved) == {"set1/half.jpg"}  # its place was taken: left there
    assert "1 moved files stay in --move-to: their place in SRC is taken" in caplog.text
    assert not (dst / "set0").exists()
    assert set(DedupJob(collection, dst).report_names()) == {"groups.parquet", "report.html",
                                                            "moved.jsonl"}
