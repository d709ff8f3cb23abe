"""datamill.io.http against the local ImageServer (127.0.0.1 only, no proxy)."""
from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import struct
import time
import tracemalloc

import pytest
from PIL import Image

from datamill.io.http import (
    FetchOptions,
    FetchResult,
    fetch_all,
    fetch_many,
    parse_retry_after,
    robots_disallowed,
)
from datamill.testing.images import BOMB_SIDE
from datamill.testing.server import ImageServer

os.environ["no_proxy"] = "127.0.0.1,localhost"

FAST = dict(backoff=0.05, timeout=5.0)


@pytest.fixture(scope="module")
def server():
    with ImageServer(pool=32) as srv:
        yield srv


def fetch(url: str, **opts) -> FetchResult:
    (result,) = fetch_all([("k", url)], FetchOptions(**{**FAST, **opts}))
    return result


def test_ok_image(server):
    r = fetch(server.url("img/1.jpg?w=320&h=200"))
    assert (r.status, r.error_class, r.http_status, r.attempts) == ("ok", None, 200, 1)
    assert r.key == "k" and r.content_type == "image/jpeg"
    assert r.final_url == r.url == server.url("img/1.jpg?w=320&h=200")
    assert r.body == server.jpeg(1, 320, 200)
    assert Image.open(io.BytesIO(r.body)).size == (320, 200)
    assert server.count("/img/1.jpg") >= 1


def test_404_is_not_retried(server):
    r = fetch(server.url("status/404"), retries=3)
    assert (r.status, r.error_class, r.http_status, r.attempts) == ("failed", "http_404", 404, 1)
    assert r.body is None
    assert server.count("/status/404") == 1


def test_5xx_is_retried_then_fails(server):
    r = fetch(server.url("status/503"), retries=2)
    assert (r.error_class, r.http_status, r.attempts) == ("http_503", 503, 3)
    assert server.count("/status/503") == 3


def test_flaky_succeeds_on_second_attempt(server):
    r = fetch(server.url("flaky/first"))
    assert (r.status, r.attempts) == ("ok", 2)
    assert r.body[:2] == b"\xff\xd8"
    assert server.count("/flaky/first") == 2
    # without retries the same pathology is a failure
    r = fetch(server.url("flaky/second"), retries=0)
    assert (r.status, r.error_class, r.attempts) == ("failed", "http_500", 1)


def test_429_retry_after_is_honoured(server):
    t0 = time.monotonic()
    r = fetch(server.url("ratelimit/secs?after=1"), backoff=0.01)
    elapsed = time.monotonic() - t0
    assert (r.status, r.attempts) == ("ok", 2)
    assert elapsed >= 1.0 and r.seconds >= 1.0


def test_429_retry_after_http_date(server):
    t0 = time.monotonic()
    r = fetch(server.url("ratelimit/date?after=2&date=1"), backoff=0.01)
    # an HTTP date has one-second resolution: between 1 and 2 s from now
    assert (r.status, r.attempts) == ("ok", 2)
    assert time.monotonic() - t0 >= 0.9


def test_429_retry_after_beyond_limit_fails_at_once(server):
    t0 = time.monotonic()
    r = fetch(server.url("ratelimit/long?after=3600"), max_retry_after=30)
    assert (r.status, r.error_class, r.http_status, r.attempts) == ("failed", "http_429", 429, 1)
    assert "Retry-After" in r.message
    assert time.monotonic() - t0 < 2


def test_drip_is_cut_by_the_total_deadline(server):
    t0 = time.monotonic()
    r = fetch(server.url("drip/1.jpg"), timeout=1.5, retries=0)
    elapsed = time.monotonic() - t0
    assert (r.status, r.error_class, r.attempts) == ("failed", "timeout", 1)
    assert 1.4 <= elapsed < 3.0


def test_no_response_at_all_is_cut_by_the_deadline(server):
    t0 = time.monotonic()
    r = fetch(server.url("hang"), timeout=0.5, retries=1, backoff=0.01)
    assert (r.error_class, r.attempts) == ("timeout", 2)
    assert time.monotonic() - t0 < 2.5


def test_endless_body_stops_at_max_bytes_in_small_memory(server):
    limit = 1_000_000
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        r = fetch(server.url("endless.jpg"), max_bytes=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not tracing:
            tracemalloc.stop()
    assert (r.status, r.error_class, r.attempts) == ("failed", "too_large", 1)
    assert r.body is None
    assert peak - before < 6 * limit


def test_content_length_over_max_bytes_fails_before_reading(server):
    r = fetch(server.url("img/2.jpg"), max_bytes=1000)
    assert (r.error_class, r.attempts) == ("too_large", 1)
    assert "Content-Length" in r.message


def test_redirects_followed_up_to_the_limit(server):
    r = fetch(server.url("redirect/3"))
    assert r.status == "ok" and r.final_url == server.url("redirect/0")
    assert fetch(server.url("redirect/5"), max_redirects=5).status == "ok"
    r = fetch(server.url("redirect/6"), max_redirects=5)
    assert (r.status, r.error_class, r.attempts) == ("failed", "redirect_loop", 1)
    r = fetch(server.url("redirect/1"), max_redirects=0)
    assert r.error_class == "redirect_loop"


def test_redirect_loop(server):
    before = server.count("/redirect-loop")
    r = fetch(server.url("redirect-loop"), max_redirects=5)
    assert (r.status, r.error_class, r.attempts) == ("failed", "redirect_loop", 1)
    assert server.count("/redirect-loop") - before == 6


def test_connection_reset_is_retried(server):
    before = server.count("/reset")
    r = fetch(server.url("reset"), retries=2)
    assert (r.status, r.error_class, r.attempts) == ("failed", "connection", 3)
    # aiohttp itself may retry a reset keep-alive connection once per attempt
    assert server.count("/reset") - before >= 3


def test_connection_refused():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = fetch(f"http://127.0.0.1:{port}/x.jpg", retries=1, backoff=0.01)
    assert (r.error_class, r.attempts) == ("connection", 2)


def test_tls_to_a_plain_http_port_is_ssl(server):
    r = fetch(server.base_url.replace("http://", "https://") + "/img/1.jpg")
    assert (r.error_class, r.attempts) == ("ssl", 1)


@pytest.mark.parametrize("url", ["ftp://x", "not a url", "", "   ", "file:///etc/passwd",
                                 "http://", "http://[::1", "javascript:alert(1)"])
def test_bad_urls_make_no_request(url):
    r = fetch(url)
    assert (r.status, r.error_class, r.attempts, r.url) == ("failed", "bad_url", 0, url)


def test_unresolvable_host_is_cut_in_time():
    t0 = time.monotonic()
    r = fetch("http://nonexistent.invalid/a.jpg", timeout=3.0, retries=0)
    assert r.status == "failed" and r.error_class in ("dns", "timeout")
    assert time.monotonic() - t0 < 5


def test_robots_header_filters(server):
    r = fetch(server.url("robots/1.jpg"))
    assert (r.status, r.error_class, r.body) == ("filtered", "robots", None)
    assert "noai" in r.message
    assert fetch(server.url("robots/1.jpg"), honor_robots=False).status == "ok"
    assert fetch(server.url("robots/1.jpg?tag=datamill: noimageai")).status == "filtered"
    assert fetch(server.url("robots/1.jpg?tag=otherbot: noai")).status == "ok"
    assert fetch(server.url("robots/1.jpg?tag=nofollow")).status == "ok"


def test_robots_rule():
    assert robots_disallowed(["noindex, nofollow"])
    assert robots_disallowed(["NoAI"])
    assert robots_disallowed(["googlebot: nofollow", "noimageindex"])
    assert not robots_disallowed(["otherbot: noai"])
    assert robots_disallowed(["datamill: noai"])
    assert not robots_disallowed(["unavailable_after: 25 Jun 2010 15:00:00 PST"])
    assert robots_disallowed(["noai"], directives=("noai",))
    assert not robots_disallowed(["noindex"], directives=("noai",))


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


def test_concurrency(server):
    urls = [(i, server.url(f"latency/200/{i}.jpg?w=64&h=64")) for i in range(200)]
    t0 = time.monotonic()
    results = fetch_all(urls, FetchOptions(concurrency=100, per_host=100, **FAST))
    elapsed = time.monotonic() - t0
    assert sorted(r.key for r in results) == list(range(200))
    assert all(r.status == "ok" for r in results)
    assert elapsed < 5, elapsed  # one at a time would take 40 s


def test_per_host_limit(server):
    server.reset_counts()
    urls = [(i, server.url(f"latency/100/{i}.jpg?w=32&h=32")) for i in range(32)]
    t0 = time.monotonic()
    results = fetch_all(urls, FetchOptions(concurrency=64, per_host=4, **FAST))
    assert all(r.status == "ok" for r in results)
    assert server.max_active <= 4
    assert time.monotonic() - t0 >= 32 / 4 * 0.1 * 0.9


def test_requests_are_consumed_lazily(server):
    concurrency = 8
    pulled = 0

    def requests():
        nonlocal pulled
        for i in range(100):
            pulled += 1
            yield i, server.url(f"latency/10/{i}.jpg?w=16&h=16")

    async def run() -> int:
        yielded = 0
        ahead = 0
        async for r in fetch_many(requests(), FetchOptions(concurrency=concurrency, **FAST)):
            assert r.status == "ok"
            yielded += 1
            ahead = max(ahead, pulled - yielded + 1)
        assert yielded == 100
        return ahead

    ahead = asyncio.run(run())
    assert 1 < ahead <= concurrency


def test_closing_early_stops_pulling_and_cancels(server):
    pulled = 0

    async def requests():  # an async iterable of a million requests
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield i, server.url(f"latency/50/{i}.jpg?w=16&h=16")

    async def run() -> list[FetchResult]:
        got = []
        async with contextlib.aclosing(fetch_many(requests(), FetchOptions(concurrency=16, **FAST))) as results:
            async for r in results:
                got.append(r)
                if len(got) == 5:
                    break
        return got

    got = asyncio.run(run())
    assert len(got) == 5 and all(r.ok for r in got)
    assert pulled <= 5 + 16


def test_mixed_batch_keeps_keys(server):
    reqs = [("a", server.url("img/3.jpg")), ("b", "ftp://x"), ("c", server.url("status/403")),
            ("d", server.url("html"))]
    by_key = {r.key: r for r in fetch_all(reqs, FetchOptions(**FAST))}
    assert by_key["a"].status == "ok"
    assert by_key["b"].error_class == "bad_url"
    assert by_key["c"].error_class == "http_403"
    # HTML is fetched fine; deciding it is not an image is the decoder's job
    assert (by_key["d"].status, by_key["d"].content_type) == ("ok", "text/html")


def test_options_are_validated():
    with pytest.raises(ValueError, match="timeout"):
        FetchOptions(timeout=0)
    with pytest.raises(ValueError, match="concurrency"):
        FetchOptions(concurrency=0)


def test_server_pathology_bodies(server):
    ok = {p: fetch(server.url(p)) for p in ["cmyk.jpg", "palette.png", "exif-rotated.jpg",
                                            "tiny.jpg", "bomb.png", "truncated.jpg",
                                            "png/1.png?alpha=1&w=50&h=40"]}
    assert all(r.status == "ok" for r in ok.values())
    assert Image.open(io.BytesIO(ok["cmyk.jpg"].body)).mode == "CMYK"
    palette = Image.open(io.BytesIO(ok["palette.png"].body))
    assert palette.mode == "P" and "transparency" in palette.info
    exif = Image.open(io.BytesIO(ok["exif-rotated.jpg"].body))
    assert exif.size == (400, 200) and exif.getexif()[0x0112] == 6
    assert Image.open(io.BytesIO(ok["tiny.jpg"].body)).size == (8, 8)
    png = Image.open(io.BytesIO(ok["png/1.png?alpha=1&w=50&h=40"].body))
    assert (png.mode, png.size) == ("RGBA", (50, 40))
    bomb = ok["bomb.png"].body
    assert len(bomb) < 20_000
    assert struct.unpack(">II", bomb[16:24]) == (BOMB_SIDE, BOMB_SIDE)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb))
    truncated = ok["truncated.jpg"].body
    assert truncated == server.jpeg(5)[: len(server.jpeg(5)) // 2]
    with pytest.raises(OSError):
        Image.open(io.BytesIO(truncated)).load()


def test_server_stops_cleanly_with_endless_responses_open():
    srv = ImageServer(pool=2).start()
    clients = []
    for path in ("drip/1.jpg", "endless.jpg", "hang"):
        c = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        c.sendall(f"GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        clients.append(c)
    assert clients[0].recv(4096).startswith(b"HTTP/1.1 200")
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 5
    for c in clients:
        c.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
