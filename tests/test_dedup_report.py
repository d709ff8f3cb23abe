"""io.dedup_report: the dedup report page, checked as a file and as rendered by headless Chromium."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamill.atomic import temp_path_for
from datamill.io.dedup_report import ReportGroup, ReportMember, make_thumbnail, write_dedup_report

WEIRD_DIR = "odd</script><b>x"  # a real folder "odd<" holding "script><b>x"
WEIRD_NAME = f"{WEIRD_DIR}/naïve café 東京 \"q\" & 'a'.png"


# --- generated images ------------------------------------------------------------------


def gradient(width: int, height: int, seed: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                     np.full_like(x, seed * 37 % 256)], -1).astype(np.uint8)


@dataclass
class Images:
    root: Path
    plain: list[Path] = field(default_factory=list)  # readable JPEGs, each different
    weird: Path | None = None  # "</script>" and non-ASCII in its path
    alpha: Path | None = None  # RGBA PNG, left half transparent
    rotated: Path | None = None  # stored 80x40, EXIF orientation 6 (upright 40x80)
    broken: Path | None = None  # starts like a JPEG, is not one
    missing: Path | None = None  # no such file


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Images:
    root = tmp_path_factory.mktemp("report-images")
    imgs = Images(root)
    for i in range(4):
        path = root / f"photo_{i}.jpg"
        Image.fromarray(gradient(200 + 40 * i, 150, i)).save(path, quality=90)
        imgs.plain.append(path)
    imgs.weird = root / WEIRD_NAME
    imgs.weird.parent.mkdir(parents=True)
    Image.fromarray(gradient(120, 90, 9)).save(imgs.weird)
    rgba = np.zeros((60, 60, 4), np.uint8)
    rgba[:, 30:] = (200, 0, 0, 255)
    imgs.alpha = root / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(imgs.alpha)
    exif = Image.Exif()
    exif[0x0112] = 6
    imgs.rotated = root / "rotated.jpg"
    Image.fromarray(gradient(80, 40, 3)).save(imgs.rotated, exif=exif.tobytes())
    imgs.broken = root / "broken.jpg"
    imgs.broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    imgs.missing = root / "missing.jpg"
    return imgs


def member(imgs: Images, source: Path, kept: bool, distance: int) -> ReportMember:
    display = source.relative_to(imgs.root).as_posix()
    return ReportMember(display, source, kept, distance, 640, 480, 12_345 + distance, "c3a5f0e1d2b49687")


def make_groups(imgs: Images, n: int) -> list[ReportGroup]:
    """n groups of 2-4 members, ids 1001.. (not positions); the first member is kept.
    Group 1001 and group 1060 (on page 2) hold the weird name and the unreadable files."""
    groups = []
    for g in range(n):
        sources = [imgs.plain[(g + j) % len(imgs.plain)] for j in range(2 + g % 3)]
        if g in (0, 59):
            sources = [imgs.plain[0], imgs.weird, imgs.broken, imgs.missing]
        groups.append(ReportGroup(1001 + g, [member(imgs, s, j == 0, 2 * j) for j, s in enumerate(sources)]))
    return groups


# --- reading the page back ---------------------------------------------------------------


class PageParser(HTMLParser):
    """Scripts (with their text), attributes that load things, and the rendered groups."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[tuple[dict, str]] = []
        self.loading_attrs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: set[str] = set()
        self.groups: list[tuple[int, list[tuple[str, bool]]]] = []  # (id, [(data-path, kept)])
        self._script: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        for name in ("src", "href", "srcset", "poster", "action", "data"):
            if name in a and not (tag == "figure" and name == "data"):
                self.loading_attrs.append((tag, name, a[name] or ""))
        classes = (a.get("class") or "").split()
        if tag == "script":
            self._script = a
            self.scripts.append((a, ""))
        elif tag == "div" and "group" in classes:
            self.groups.append((int(a["data-group"]), []))
        elif tag == "figure" and "member" in classes:
            assert ("kept" in classes) != ("dup" in classes), classes
            self.groups[-1][1].append((a["data-path"], "kept" in classes))

    def handle_data(self, data):
        if self._script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None


def parse(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    parser.close()
    return parser


def json_blobs(parser: PageParser) -> tuple[dict, list[dict]]:
    """(meta, pages) from the application/json scripts."""
    meta, pages = None, []
    for attrs, text in parser.scripts:
        if attrs.get("type") == "application/json":
            value = json.loads(text)
            if attrs.get("id") == "dm-meta":
                meta = value
            else:
                assert attrs["id"] == f"dm-page-{value['page']}" and "dm-page" in attrs["class"].split()
                pages.append(value)
    assert meta is not None
    return meta, pages


def expected(groups: list[ReportGroup]) -> list[tuple[int, list[tuple[str, bool]]]]:
    return [(g.group_id, [(m.path, m.kept) for m in g.members]) for g in groups]


def decode_thumb(uri: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    img = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):])))
    assert img.format == "JPEG"
    return img.convert("RGB")


# --- the file ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(images, tmp_path_factory) -> tuple[Path, list[ReportGroup]]:
    groups = make_groups(images, 120)
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_dedup_report(path, iter(groups), title="dedup <photos> & co", thumb_size=96, page_size=50,
                       summary={"images": 12_345, "duplicate_groups": 120, "bytes_in_duplicates": "1.2 GB"})
    return path, groups


def test_page_is_self_contained(report):
    path, _ = report
    text = path.read_text("utf-8")
    assert not re.search(r"(?i)\b(https?|ftp|wss?|file):", text)
    assert not re.search(r"(?i)url\(|@import|<link\b|<iframe\b|<object\b|<embed\b", text)
    parser = parse(text)
    assert all(value.startswith("data:") for _, _, value in parser.loading_attrs), parser.loading_attrs
    assert not any(attrs.get("src") for attrs, _ in parser.scripts)
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert not list(path.parent.glob(".*datamill-tmp*"))  # written atomically, nothing left over


def test_pages_hold_every_group_and_member_with_kept_flags(report, images):
    path, groups = report
    meta, pages = json_blobs(parse(path.read_text("utf-8")))
    assert meta == {"pages": 3, "groups": 120, "page_size": 50, "thumb_size": 96}
    assert [p["page"] for p in pages] == [1, 2, 3]
    assert [len(p["groups"]) for p in pages] == [50, 50, 20]
    found = [(g["id"], [(m["path"], m["kept"]) for m in g["members"]]) for p in pages for g in p["groups"]]
    assert found == expected(groups)
    first = pages[0]["groups"][0]["members"]
    assert [m["path"] for m in first] == ["photo_0.jpg", WEIRD_NAME, "broken.jpg", "missing.jpg"]
    assert [m["distance"] for m in first] == [0, 2, 4, 6]
    assert first[0] | {"thumb": None} == {
        "path": "photo_0.jpg", "kept": True, "distance": 0, "width": 640, "height": 480, "bytes": 12_345,
        "phash": "c3a5f0e1d2b49687", "thumb": None, "tw": 96, "th": 72}
    for m in (first[0], first[1]):  # readable: a thumbnail fitted in 96x96
        thumb = decode_thumb(m["thumb"])
        assert thumb.size == (m["tw"], m["th"]) and max(thumb.size) == 96
        assert "error" not in m
    assert first[2]["error"].startswith("decode_error") and "thumb" not in first[2]
    assert first[3]["error"].startswith("cannot read") and "thumb" not in first[3]


def test_names_are_escaped_in_html_and_in_script(report):
    path, _ = report
    text = path.read_text("utf-8")
    assert text.count("</script>") == text.count("<script")  # no name ended a script early
    assert "<b>x" not in text and "<photos>" not in text
    assert "<title>dedup &lt;photos&gt; &amp; co</title>" in text
    assert "naïve café 東京" in text  # UTF-8 as is, not \\u escapes
    assert "odd\\u003c/script\\u003e\\u003cb\\u003ex" in text


def test_summary_at_the_top(report):
    text = report[0].read_text("utf-8")
    head = text[:text.index('<main id="groups">')]
    for label, value in (("images", "12,345"), ("duplicate groups", "120"), ("bytes in duplicates", "1.2 GB")):
        assert f"<dt>{label}</dt><dd>{value}</dd>" in head


def test_thumbnails_are_upright_and_on_white(images):
    uri, width, height = make_thumbnail(images.rotated, 160)
    assert (width, height) == (40, 80) == decode_thumb(uri).size  # EXIF orientation applied
    uri, width, height = make_thumbnail(images.alpha, 30)
    pixels = np.asarray(decode_thumb(uri), dtype=int)
    assert (width, height) == (30, 30)
    assert pixels[:, :12].min() > 235  # transparent half: white, not black
    assert abs(pixels[:, 18:, 0].mean() - 200) < 12 and pixels[:, 18:, 1].mean() < 30
    assert make_thumbnail(images.missing, 160).startswith("cannot read: No such file")
    assert make_thumbnail(images.broken, 160).startswith("decode_error: ")


def test_undecodable_file_names_are_shown_with_a_replacement_character(tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"bad\xff name.png")  # not UTF-8: "bad\udcff name.png"
    with open(raw, "wb") as f:
        Image.fromarray(gradient(40, 30, 1)).save(f, "PNG")
    source = os.fsdecode(raw)
    members = [ReportMember(os.path.basename(source), source, True, 0, 40, 30, 99, "0" * 16),
               ReportMember("plain.png", source, False, 1, 40, 30, 99, "0" * 16)]
    path = tmp_path / "report.html"
    write_dedup_report(path, [ReportGroup(7, members)], title=f"in {source}", summary={})
    meta, pages = json_blobs(parse(path.read_text("utf-8")))
    first = pages[0]["groups"][0]["members"][0]
    assert first["path"] == "bad\ufffd name.png" and first["tw"] == 40  # read through its real name


def test_no_groups_gives_a_page_that_says_so(tmp_path):
    path = tmp_path / "empty.html"
    write_dedup_report(path, [], title="nothing", summary={"images": 3})
    meta, pages = json_blobs(parse(path.read_text("utf-8")))
    assert meta["pages"] == 0 and meta["groups"] == 0 and pages == []


def test_groups_are_streamed_page_by_page(images, tmp_path):
    """2,000 groups from a generator: never all in memory, the file grows as they come."""
    path = tmp_path / "big.html"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    sources = []
    for i in range(2):
        sources.append(tmp_path / f"noise_{i}.jpg")
        Image.fromarray(np.roll(noise, i, axis=0)).save(sources[-1], quality=95)
    seen_on_disk = []

    def groups():
        for g in range(2000):
            if g % 500 == 499:  # the file on disk already holds all but the last page or so
                seen_on_disk.append((g, temp_path_for(path).stat().st_size, path.exists()))
            yield ReportGroup(g, [ReportMember(f"g{g}/a.jpg", sources[0], True, 0, 64, 64, 1, "0" * 16),
                                  ReportMember(f"g{g}/b.jpg", sources[1], False, 3, 64, 64, 1, "0" * 16)])

    tracemalloc.start()
    try:
        write_dedup_report(path, groups(), title="big", summary={}, thumb_size=64, page_size=50)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = path.stat().st_size
    per_group = size / 2000
    assert size > 10_000_000  # noise does not compress: about 2 x 6 KB of base64 per group
    assert peak < 60 * per_group + 2_000_000, (peak, size)  # about one page, not 2,000 groups
    for g, on_disk, final_exists in seen_on_disk:
        assert not final_exists  # only renamed into place when complete
        assert on_disk > (g - 2 * 50) * per_group, (g, on_disk)
    meta, pages = json_blobs(parse(path.read_text("utf-8")))
    assert meta["pages"] == 40 and meta["groups"] == 2000 and len(pages) == 40


# --- in a browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed: .ci/run installs Debian's chromium package before the tests")
    pytest.skip("chromium is not installed (Debian: apt-get install chromium); the report is not rendered")


def run_chromium(exe: str, tmp_path: Path, url: str, *args: str) -> str:
    profile = tmp_path / "chromium-profile"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={profile}", *args, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_browser_renders_the_requested_page(chromium, report, tmp_path):
    path, groups = report
    url = path.resolve().as_uri()
    page1 = parse(run_chromium(chromium, tmp_path, url, "--dump-dom"))
    assert page1.groups == expected(groups[:50])  # rendered in order, with kept flags; not all 120
    assert (WEIRD_NAME, False) in page1.groups[0][1]
    assert all(sum(kept for _, kept in members) == 1 for _, members in page1.groups)

    page2 = parse(run_chromium(chromium, tmp_path, url + "#page=2", "--dump-dom"))
    assert page2.groups == expected(groups[50:100])
    page3 = parse(run_chromium(chromium, tmp_path, url + "#page=3", "--dump-dom"))
    assert page3.groups == expected(groups[100:])


def test_browser_shows_the_page_state(chromium, report, tmp_path):
    path, groups = report
    dom = run_chromium(chromium, tmp_path, path.resolve().as_uri() + "#page=2", "--dump-dom")
    assert re.search(r'<span id="page-count">3</span>', dom)
    assert re.search(r'<span class="range" id="range">groups 51–100 of 120</span>', dom)
    assert 'id="prev" type="button"' in dom and 'data-page="2"' in dom
    members = sum(len(g.members) for g in groups[50:100])
    assert dom.count("<img ") == members - 2  # group 1060 has two unreadable members
    assert dom.count('class="thumb missing"') == 2


def test_browser_screenshot_is_not_blank(chromium, report, tmp_path):
    path, _ = report
    png = tmp_path / "report.png"
    run_chromium(chromium, tmp_path, path.resolve().as_uri(), f"--screenshot={png}", "--window-size=1280,900")
    shot = np.asarray(Image.open(png).convert("RGB"))
    assert shot.shape == (900, 1280, 3)
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 200  # text, cards and thumbnails
    kept_outline = np.all(np.abs(shot.astype(int) - (0x1A, 0x7F, 0x4B)) <= 6, axis=-1)
    assert kept_outline.sum() > 500  # the first group's kept member is highlighted


# --- the dedup job's report: thumbnails made by its workers after the hashing pass -------


@pytest.fixture()
def dup_collection(tmp_path) -> Path:
    """Two groups (one with a byte-identical copy and an EXIF-rotated copy) and two loners."""
    from datamill.testing.images import make_scene
    src = tmp_path / "src"
    src.mkdir()
    for n in range(2):
        data = make_scene(src / f"g{n}/original.jpg", seed=n)
        (src / f"g{n}/copy.jpg").write_bytes(data)
        Image.open(io.BytesIO(data)).resize((320, 240)).save(src / f"g{n}/half.jpg", quality=80)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned, upright like the original
    Image.open(src / "g0/original.jpg").transpose(Image.Transpose.ROTATE_90).save(
        src / "g0/turned.jpg", quality=90, exif=exif.tobytes())
    make_scene(src / "alone/a.jpg", seed=100)
    make_scene(src / "alone/b.jpg", seed=200)
    return src


def spool_rows(dst: Path) -> dict[str, tuple[int, int]]:
    import sqlite3
    db = sqlite3.connect(dst / "_datamill/thumbs.sqlite")
    try:
        return {sha: (w, h) for sha, w, h in db.execute("SELECT sha256, width, height FROM thumbs")}
    finally:
        db.close()


def report_members(path: Path) -> dict[str, dict]:
    _, pages = json_blobs(parse(path.read_text("utf-8")))
    return {m["path"]: m for p in pages for g in p["groups"] for m in g["members"]}


def watch_thumbnails(monkeypatch, log: Path) -> list[str]:
    """Record every image the driver process opens with Pillow (returned list), and append
    to `log` the pid and image count of every thumbnail task (workers are forked: they inherit
    the wrappers and write to the file)."""
    import datamill.jobs.dedup.job as job_module
    driver, opened, real_open, real_make = os.getpid(), [], Image.open, job_module.make_thumbs

    def open_(fp, *args, **kwargs):
        if os.getpid() == driver:
            opened.append(str(getattr(fp, "name", fp)))
        return real_open(fp, *args, **kwargs)

    def make_thumbs(task):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {len(task.images)}\n")
        return real_make(task)

    monkeypatch.setattr(Image, "open", open_)
    monkeypatch.setattr(job_module, "make_thumbs", make_thumbs)
    return opened


def test_job_report_thumbnails_are_made_by_the_workers_for_grouped_images_only(
        dup_collection, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    import datamill
    log = tmp_path / "thumb-tasks.log"
    opened = watch_thumbnails(monkeypatch, log)
    dst = tmp_path / "dst"
    assert datamill.dedup(dup_collection, dst, workers=2, quiet=True).exit_code == 0
    assert opened == []  # the driver never decoded an image: not to hash, not for the report
    tasks = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    assert tasks and all(pid != os.getpid() for pid, _ in tasks)  # made in the workers

    grouped = pq.read_table(dst / "groups.parquet").to_pylist()
    assert {r["path"] for r in grouped} == {f"g{n}/{name}" for n in range(2)
                                            for name in ("original.jpg", "copy.jpg", "half.jpg")} | {"g0/turned.jpg"}
    # one thumbnail per distinct content in a group: the byte-identical copies share one
    shas = {r["sha256"] for r in grouped}
    assert len(shas) == len(grouped) - 2
    assert set(spool_rows(dst)) == shas and sum(n for _, n in tasks) == len(shas)

    members = report_members(dst / "report.html")
    assert set(members) == {r["path"] for r in grouped}
    for path, m in members.items():
        thumb = decode_thumb(m["thumb"])
        assert thumb.size == (m["tw"], m["th"]) == (160, 120), path  # upright, fitted in 160
        source = Image.open(dup_collection / path).convert("RGB")
        if path.startswith("g0/turned"):
            source = source.transpose(Image.Transpose.ROTATE_270)
        expect = np.asarray(source.resize((160, 120), Image.Resampling.BOX), dtype=float)
        assert np.abs(np.asarray(thumb, dtype=float) - expect).mean() < 12, path  # the picture


def test_job_report_rerun_makes_only_the_missing_thumbnails(dup_collection, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    import datamill
    dst, log = tmp_path / "dst", tmp_path / "thumb-tasks.log"
    assert datamill.dedup(dup_collection, dst, workers=2, quiet=True, threshold=0).exit_code == 0
    first = set(spool_rows(dst))
    watch_thumbnails(monkeypatch, log)
    assert datamill.dedup(dup_collection, dst, workers=2, quiet=True, threshold=8).exit_code == 0
    shas = {r["sha256"] for r in pq.read_table(dst / "groups.parquet").to_pylist()}
    made = sum(int(line.split()[1]) for line in log.read_text().splitlines())
    assert first < shas and made == len(shas - first)  # the new members only
    assert set(spool_rows(dst)) == shas
    (dup_collection / "g1/half.jpg").unlink()  # its group shrinks to byte-identical copies
    assert datamill.dedup(dup_collection, dst, workers=2, quiet=True, threshold=8).exit_code == 0
    shas = {r["sha256"] for r in pq.read_table(dst / "groups.parquet").to_pylist()}
    assert set(spool_rows(dst)) == shas  # those of images in no group are dropped
    assert all("thumb" in m for m in report_members(dst / "report.html").values())


def test_a_file_changed_after_hashing_gets_no_thumbnail_of_other_content(dup_collection):
    from datamill.jobs.dedup.thumbs import ThumbTask, make_thumbs
    path = dup_collection / "alone/a.jpg"
    import hashlib
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    made = make_thumbs(ThumbTask(64, [(str(path), sha), (str(path), "0" * 64),
                                      (str(dup_collection / "gone.jpg"), sha)]))
    assert made[0][0] == sha and Image.open(io.BytesIO(made[0][1][0])).size == made[0][1][1:] == (64, 48)
    assert "changed since it was hashed" in made[1][1]
    assert made[2][1].startswith("cannot read")


@pytest.mark.parametrize("kill_at", [1, 2])
def test_driver_killed_while_thumbnails_are_made_then_rerun(dup_collection, tmp_path, kill_at):
    import pyarrow.parquet as pq
    from test_crash import live_processes, temp_files
    dst = tmp_path / "dst"
    # kill -9 of the driver when the kill_at-th thumbnail task's result arrives
    code = ("import os, signal\n"
            "import datamill\n"
            "from datamill.jobs.dedup import thumbs\n"
            "put, n = thumbs.ThumbSpool.put, [0]\n"
            "def killed(self, made):\n"
            "    n[0] += 1\n"
            f"    if n[0] == {kill_at}:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    put(self, made)\n"
            "thumbs.ThumbSpool.put = killed\n"
            "thumbs.TASK_IMAGES = 2\n"
            f"datamill.dedup({str(dup_collection)!r}, {str(dst)!r}, quiet=True, workers=2)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == -9, out.stderr
    assert not (dst / "report.html").exists()
    (dst / "notes.txt").write_text("mine")  # the user's, beside datamill's outputs
    import datamill
    assert datamill.dedup(dup_collection, dst, quiet=True, workers=2).exit_code == 0
    assert (dst / "notes.txt").read_text() == "mine"
    manifest = pq.read_table(dst / "manifest.parquet").to_pylist()
    assert sorted(r["key"] for r in manifest) == sorted(
        p.relative_to(dup_collection).as_posix() for p in dup_collection.rglob("*.jpg"))  # each once
    members = report_members(dst / "report.html")
    assert len(members) == 7 and all("thumb" in m for m in members.values())
    assert not temp_files(dst)
    deadline = time.monotonic() + 5
    while live_processes(str(dst)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not live_processes(str(dst))


def test_browser_renders_the_job_report_with_its_thumbnails(chromium, dup_collection, tmp_path):
    import datamill
    dst = tmp_path / "dst"
    assert datamill.dedup(dup_collection, dst, workers=2, quiet=True).exit_code == 0
    dom = run_chromium(chromium, tmp_path, (dst / "report.html").resolve().as_uri(), "--dump-dom")
    page = parse(dom)
    assert sorted(len(m) for _, m in page.groups) == [3, 4]
    assert dom.count("<img ") == 7 and 'class="thumb missing"' not in dom
