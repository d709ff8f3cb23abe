"""The dedup report: one self-contained HTML page showing duplicate groups as thumbnails.

The page needs nothing but itself: no network, no other file (a Content-Security-Policy
forbids both). Thumbnails are JPEG data URIs of the same upright, white-composited pixels
the dedup job hashes (`load_thumbnail`: a JPEG decoded at reduced scale). A member may bring
its thumbnail (`ReportMember.thumbnail`: the dedup job's workers made them, so the page is
written without opening an image); the others are made here, in threads. An image that
cannot be read is drawn as a grey box that says why.

Paged, so that 10,000 groups open fast: each page of groups is one
``<script type="application/json" class="dm-page">`` blob, which the browser keeps as text;
a little vanilla JS parses and renders only the current page (prev/next, a page number
field, the arrow keys, and the URL hash ``#page=K``). Page 1 is rendered as soon as its blob
has arrived, before the rest of a large file is parsed.

Streaming: `groups` is consumed one page at a time and each page is written before the next
is read, so memory holds one page of thumbnails however many groups there are. The file is
written under a temporary name and renamed into place when complete.

Hooks for tests and scripts, in the rendered DOM: ``<div class="group" data-group="ID">``
holds one ``<figure class="member kept|dup" data-path="PATH">`` per member. In the file,
``<script type="application/json" id="dm-meta">`` gives ``pages``, ``groups``,
``page_size`` and ``thumb_size``.

>>> write_dedup_report("report.html", groups, title="dedup photos/",            # doctest: +SKIP
...                    summary={"images": 120_000, "groups": 8_412, "duplicates": 9_977})
"""
from __future__ import annotations

import base64
import html
import io
import itertools
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, Iterable

from ..atomic import atomic_path
from ..errors import ItemError
from ..media.image import load_thumbnail

JPEG_QUALITY = 70
# Pillow decodes, resizes and encodes without the GIL, so threads make thumbnails in
# parallel; a page's worth are in flight at most.
_THREADS = min(8, os.cpu_count() or 1)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# JSON inside <script>: no "<" (so no "</script>" or "<!--"), no ">" or "&" either.
_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_UNSAFE = re.compile("[<>&\u2028\u2029]")


@dataclass
class ReportMember:
    """One image of a group. ``path`` is shown (relative to SRC); ``source_path`` is read."""

    path: str
    source_path: str | os.PathLike
    kept: bool
    distance: int  # Hamming distance to the kept image (0 for the kept one)
    width: int
    height: int
    bytes: int
    phash_hex: str
    moved_to: str | None = None  # where dedup moved the file (then ``source_path`` is there)
    # made already (`thumbnail_jpeg`'s result): the file is not opened
    thumbnail: tuple[bytes, int, int] | str | None = None


@dataclass
class ReportGroup:
    group_id: int
    members: list[ReportMember]


def write_dedup_report(path: str | os.PathLike, groups: Iterable[ReportGroup], *, title: str,
                       summary: dict[str, Any], thumb_size: int = 160, page_size: int = 50) -> None:
    """Write the report page for `groups` (any iterable, consumed once, page by page).

    summary: shown at the top as labelled counts, in the given order (``{"images": 1200,
    "duplicate_groups": 31}``); numbers get thousands separators.
    """
    if thumb_size < 16:
        raise ValueError(f"thumb_size must be >= 16, not {thumb_size}")
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, not {page_size}")
    groups = iter(groups)
    pages = n_groups = 0
    with atomic_path(path, replace=True) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as out, \
            ThreadPoolExecutor(_THREADS, thread_name_prefix="datamill-thumb") as threads:
        out.write(_head(title, summary, thumb_size))
        while page := list(itertools.islice(groups, page_size)):
            pages += 1
            n_groups += len(page)
            members = [m for g in page for m in g.members]
            # thumbnails brought along are only encoded; the others are made in the threads
            to_make = [m for m in members if m.thumbnail is None]
            made = dict(zip(map(id, to_make), threads.map(
                lambda m: make_thumbnail(m.source_path, thumb_size), to_make)))
            blob = {"page": pages, "groups": [
                {"id": g.group_id, "members": [_member_record(
                    m, made[id(m)] if m.thumbnail is None else _data_uri(m.thumbnail))
                    for m in g.members]}
                for g in page]}
            out.write(f'<script type="application/json" class="dm-page" id="dm-page-{pages}">')
            _write_json(out, blob)
            out.write(f"</script>\n<script>DM.arrived({pages})</script>\n")
        out.write('<script type="application/json" id="dm-meta">')
        _write_json(out, {"pages": pages, "groups": n_groups, "page_size": page_size, "thumb_size": thumb_size})
        out.write("</script>\n<script>DM.done()</script>\n</body>\n</html>\n")


def is_dedup_report(path: str | os.PathLike) -> bool:
    """Whether the file at `path` is a report this module wrote (so it may be rewritten)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"<!doctype html>") and _GENERATOR in head


def make_thumbnail(source: str | os.PathLike, size: int) -> tuple[str, int, int] | str:
    """A JPEG data URI of `source` fitted in size x size, with its width and height; or,
    when the image cannot be read, the reason (a short line for a person)."""
    return _data_uri(thumbnail_jpeg(source, size))


def thumbnail_jpeg(source: str | os.PathLike | bytes, size: int) -> tuple[bytes, int, int] | str:
    """The JPEG bytes of `source` fitted in size x size, with their width and height; or, when
    the image cannot be read, the reason (a short line for a person)."""
    try:
        img = load_thumbnail(source, size)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=JPEG_QUALITY)
    except ItemError as exc:
        return f"{exc.error_class}: {exc}"
    except OSError as exc:  # the file cannot be opened
        return f"cannot read: {exc.strerror or exc}"
    except Exception as exc:  # anything else Pillow raises: one image must not sink the report
        return f"{type(exc).__name__}: {exc}"
    return buf.getvalue(), img.width, img.height


def _data_uri(thumb: tuple[bytes, int, int] | str) -> tuple[str, int, int] | str:
    if isinstance(thumb, str):
        return thumb
    data, width, height = thumb
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii"), width, height


def _member_record(m: ReportMember, thumb: tuple[str, int, int] | str) -> dict[str, Any]:
    record: dict[str, Any] = {"path": _text(m.path), "kept": bool(m.kept), "distance": int(m.distance),
                              "width": int(m.width), "height": int(m.height), "bytes": int(m.bytes),
                              "phash": _text(m.phash_hex)}
    if m.moved_to is not None:
        record["moved_to"] = _text(m.moved_to)
    if isinstance(thumb, str):
        record["error"] = _text(thumb)
    else:
        record["thumb"], record["tw"], record["th"] = thumb
    return record


def _text(value: object) -> str:
    """`value` as text that encodes to UTF-8: a file name's undecodable bytes (surrogate
    escapes) become U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", str(value))


def _write_json(out: IO[str], value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # A page is megabytes of base64 thumbnails, where no unsafe character can be: look for
    # each with str's own search (fast) before a regular expression walks the whole text.
    if any(c in text for c in _SCRIPT_UNSAFE):
        text = _UNSAFE.sub(lambda m: _SCRIPT_UNSAFE[m.group()], text)
    out.write(text)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _head(title: str, summary: dict[str, Any], thumb_size: int) -> str:
    stats = "".join(
        f'<div class="stat"><dt>{html.escape(_text(key).replace("_", " "))}</dt>'
        f'<dd>{html.escape(_text(_format_value(value)))}</dd></div>'
        for key, value in summary.items())
    fields = {"TITLE": html.escape(_text(title)), "THUMB": str(int(thumb_size)), "SUMMARY": stats}
    return re.sub("%(TITLE|THUMB|SUMMARY)%", lambda m: fields[m.group(1)], _PAGE_HEAD)


_GENERATOR = b'<meta name="generator" content="datamill">'
_PAGE_HEAD = """<!doctype html>
<html lang="en" style="--thumb: %THUMB%px">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="referrer" content="no-referrer">
<meta name="generator" content="datamill">
<title>%TITLE%</title>
<style>
:root {
  --bg: #f5f6f8; --card: #fff; --ink: #1d2330; --muted: #5d6677; --line: #dde1e8;
  --kept: #1a7f4b; --kept-bg: #e7f6ee; --dup: #b4531c; --dup-bg: #fdf0e7; --accent: #2f5bd3;
  color-scheme: light;
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif; }
header { padding: 20px 28px 8px; }
h1 { font-size: 22px; margin: 0 0 2px; font-weight: 650; overflow-wrap: anywhere; }
.legend { color: var(--muted); margin: 0 0 14px; }
.legend b.kept { color: var(--kept); } .legend b.dup { color: var(--dup); }
.summary { display: flex; flex-wrap: wrap; gap: 10px; margin: 0; }
.stat { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 120px; }
.stat dt { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.stat dd { margin: 0; font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.pager { position: sticky; top: 0; z-index: 1; display: flex; align-items: center; gap: 10px; flex-wrap: wrap;
  padding: 10px 28px; background: rgba(245, 246, 248, .95); border-bottom: 1px solid var(--line); }
.pager button { font: inherit; padding: 4px 12px; border: 1px solid var(--line); border-radius: 6px;
  background: var(--card); color: var(--ink); cursor: pointer; }
.pager button:hover:not(:disabled) { border-color: var(--accent); color: var(--accent); }
.pager button:disabled { opacity: .45; cursor: default; }
.pager input { width: 5.5em; font: inherit; padding: 3px 6px; border: 1px solid var(--line); border-radius: 6px; text-align: right; }
.pager .range { color: var(--muted); margin-left: auto; }
main { padding: 14px 28px 40px; display: grid; gap: 14px; }
.empty { color: var(--muted); font-size: 16px; padding: 30px 0; }
.group { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 10px 14px 12px; }
.group > h2 { font-size: 14px; font-weight: 600; margin: 0 0 8px; }
.group > h2 span { color: var(--muted); font-weight: 400; }
.members { display: flex; flex-wrap: wrap; gap: 12px; }
.member { margin: 0; width: calc(var(--thumb) + 14px); padding: 6px; border-radius: 8px; border: 2px solid var(--line); }
.member.kept { border-color: var(--kept); background: var(--kept-bg); }
.thumb { position: relative; width: var(--thumb); height: var(--thumb); display: flex; align-items: center;
  justify-content: center; background: #eceef2; border-radius: 4px; overflow: hidden; }
.thumb img { display: block; max-width: 100%; max-height: 100%; }
.thumb.missing { background: #c9ccd2; color: #2c313a; font-size: 12px; padding: 8px; text-align: center; overflow-wrap: anywhere; }
.badge { position: absolute; top: 4px; left: 4px; font-size: 11px; font-weight: 700; padding: 1px 7px; border-radius: 10px;
  color: #fff; background: var(--dup); letter-spacing: .03em; }
.kept .badge { background: var(--kept); }
figcaption { margin-top: 5px; font-size: 12px; }
figcaption .name, figcaption .dir { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
figcaption .name { font-weight: 600; }
figcaption .dir { color: var(--muted); direction: rtl; text-align: left; }
figcaption .meta { color: var(--muted); font-variant-numeric: tabular-nums; }
</style>
<script>
"use strict";
var DM = (function () {
  var loaded = 0, finished = false, current = 0, meta = null;
  function $(id) { return document.getElementById(id); }
  function wanted() {
    var m = /^#page=(\\d+)$/.exec(location.hash);
    return m ? Math.max(1, parseInt(m[1], 10)) : 1;
  }
  function num(n) { return n.toLocaleString("en-US"); }
  function size(n) {
    var units = ["B", "KB", "MB", "GB", "TB"], i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(n < 10 ? 1 : 0) : n) + " " + units[i];
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function member(m) {
    var fig = el("figure", "member " + (m.kept ? "kept" : "dup"));
    fig.setAttribute("data-path", m.path);
    var box = el("div", "thumb");
    if (m.thumb) {
      var img = el("img");
      img.src = m.thumb; img.width = m.tw; img.height = m.th; img.alt = m.path; img.decoding = "async";
      box.appendChild(img);
    } else {
      box.className = "thumb missing";
      box.appendChild(el("span", "", m.error));
    }
    box.appendChild(el("span", "badge", m.kept ? "KEPT" : "d = " + m.distance));
    fig.appendChild(box);
    var cap = el("figcaption");
    cap.title = m.path;
    var slash = m.path.lastIndexOf("/");
    cap.appendChild(el("div", "name", m.path.slice(slash + 1)));
    var dir = el("div", "dir");  // right-to-left so that a long folder loses its start, not its end
    dir.appendChild(el("bdi", "", slash >= 0 ? m.path.slice(0, slash + 1) : "\u00a0"));
    cap.appendChild(dir);
    var info = el("div", "meta", m.width + "\u00d7" + m.height + " \u00b7 " + size(m.bytes));
    info.title = num(m.bytes) + " bytes \u00b7 phash " + m.phash;
    cap.appendChild(info);
    if (m.moved_to) {
      var moved = el("div", "dir moved");
      moved.title = "moved to " + m.moved_to;
      moved.appendChild(el("bdi", "", "moved to " + m.moved_to));
      cap.appendChild(moved);
    }
    fig.appendChild(cap);
    return fig;
  }
  function group(g) {
    var div = el("div", "group");
    div.setAttribute("data-group", String(g.id));
    var dups = g.members.filter(function (m) { return !m.kept; });
    var saved = dups.reduce(function (s, m) { return s + m.bytes; }, 0);
    var h = el("h2", "", "Group " + g.id + " ");
    h.appendChild(el("span", "", "\\u00b7 " + g.members.length + " images \\u00b7 " + dups.length +
                     (dups.length === 1 ? " duplicate" : " duplicates") + " \\u00b7 " + size(saved)));
    div.appendChild(h);
    var row = el("div", "members");
    g.members.forEach(function (m) { row.appendChild(member(m)); });
    div.appendChild(row);
    return div;
  }
  function show(k) {
    k = Math.min(Math.max(1, k), loaded);
    var main = $("groups");
    var data = JSON.parse($("dm-page-" + k).textContent);
    var frag = document.createDocumentFragment();
    data.groups.forEach(function (g) { frag.appendChild(group(g)); });
    main.replaceChildren(frag);
    main.setAttribute("data-page", String(k));
    if (current && current !== k) window.scrollTo(0, 0);
    current = k;
    pager();
  }
  function total() { return finished ? meta.pages : loaded; }
  function pager() {
    $("page-input").value = current || "";
    $("page-input").max = total();
    $("page-count").textContent = finished ? num(total()) : num(loaded) + "+ (loading\u2026)";
    $("prev").disabled = current <= 1;
    $("next").disabled = current >= total();
    if (finished && current) {
      var first = (current - 1) * meta.page_size + 1;
      var last = Math.min(current * meta.page_size, meta.groups);
      $("range").textContent = "groups " + num(first) + "\u2013" + num(last) + " of " + num(meta.groups);
    }
  }
  function go(k) {
    k = Math.min(Math.max(1, k), total());
    if (k !== current) location.hash = "#page=" + k;
  }
  function bind() {
    window.addEventListener("hashchange", function () { show(wanted()); });
    $("prev").addEventListener("click", function () { go(current - 1); });
    $("next").addEventListener("click", function () { go(current + 1); });
    $("page-input").addEventListener("change", function (e) {
      var k = parseInt(e.target.value, 10);
      if (k >= 1) go(k); else pager();
    });
    document.addEventListener("keydown", function (e) {
      if (e.target.tagName === "INPUT" || e.altKey || e.ctrlKey || e.metaKey) return;
      if (e.key === "ArrowLeft") go(current - 1);
      if (e.key === "ArrowRight") go(current + 1);
    });
  }
  function arrived(k) {
    if (!loaded) bind();
    loaded = k;
    if (!current && wanted() <= k) show(wanted()); else pager();
  }
  function done() {
    finished = true;
    meta = JSON.parse($("dm-meta").textContent);
    if (!meta.pages) {
      $("groups").replaceChildren(el("p", "empty", "No duplicate groups."));
      $("pager").hidden = true;
    } else if (!current) {
      show(wanted());
    } else {
      pager();
    }
  }
  return { arrived: arrived, done: done };
})();
</script>
</head>
<body>
<header>
<h1>%TITLE%</h1>
<p class="legend">Each row is one group of duplicates: the <b class="kept">kept</b> image is outlined,
each <b class="dup">duplicate</b> shows its Hamming distance to it (d).</p>
<dl class="summary">%SUMMARY%</dl>
</header>
<nav class="pager" id="pager">
<button id="prev" type="button" title="previous page (\u2190)">\u2190 Prev</button>
<label>page <input id="page-input" type="number" min="1" value="1" aria-label="page number"></label>
<span>of <span id="page-count">\u2026</span></span>
<button id="next" type="button" title="next page (\u2192)">Next \u2192</button>
<span class="range" id="range"></span>
</nav>
<main id="groups"></main>
"""
