"""A local HTTP server of generated images and every download pathology.

Used by the tests, the download benchmark and ``datamill demo``. It listens on 127.0.0.1
only, on a free port unless one is given, and runs `aiohttp.web` on its own event loop in a
background thread, so a slow drip or an endless body never blocks other requests::

    with ImageServer() as server:
        fetch(server.url("img/7.jpg?w=640&h=480"))
        server.count("/img/7.jpg")   # -> 1

or in its own process: ``python -m datamill.testing.server --port 8000``.

Routes (``<n>`` any non-negative integer, ``w``/``h`` in 1..4096):

=============================  =============================================================
``/img/<n>.jpg?w=&h=&q=``      a deterministic JPEG (default 400x300, quality 90); bodies are
                               cached and image ``n`` is picture ``n % pool``, so a long
                               benchmark costs at most ``pool`` encodes per size
``/png/<n>.png?w=&h=&alpha=1`` a PNG, RGB (RGBA with ``alpha=1``)
``/latency/<ms>/<n>.jpg``      ``/img/<n>.jpg`` after ``ms`` milliseconds (same query)
``/status/<code>``             that status with a short text body (404, 500, 403, 503...)
``/flaky/<id>?fail=1``         500 for the first ``fail`` requests of each id, then a JPEG
``/ratelimit/<id>?after=1``    429 with ``Retry-After: <after>`` on the first request of each
                               id (``&date=1``: as an HTTP date; ``&times=k``: k times), then
                               a JPEG
``/drip/<n>.jpg``              a JPEG content type, then 16 bytes every 0.5 s, for ever
``/endless.jpg``               an endless body at full speed (no Content-Length)
``/hang``                      accepts the request and never answers
``/html``                      an HTML page (``text/html``)
``/truncated.jpg``             the first half of a JPEG
``/bomb.png``                  a ~1 KB PNG whose header claims 100000x100000 pixels
``/redirect/<k>``              ``k`` redirects (302), then a JPEG
``/redirect-loop``             redirects to itself
``/reset``                     closes the connection abruptly (TCP RST), no response
``/cmyk.jpg``                  a CMYK JPEG
``/palette.png``               a palette (P mode) PNG with a transparent colour
``/exif-rotated.jpg``          a 400x200 JPEG with EXIF orientation 6 (shows as 200x400)
``/tiny.jpg``                  an 8x8 JPEG
``/robots/<n>.jpg?tag=noai``   a JPEG with ``X-Robots-Tag: <tag>``
=============================  =============================================================

`ImageServer.count(path)` and `counts()` give the requests seen per path (query
excluded); `max_active` the most requests handled at once since the last `reset_counts()`.
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys
import threading
import time
import zlib
from collections import Counter, OrderedDict
from email.utils import formatdate
from typing import Callable

from aiohttp import web

from .images import make_bomb_png, make_image

__all__ = ["ImageServer", "make_jpeg", "make_png", "main"]

DEFAULT_SIZE = (400, 300)
MAX_SIDE = 4096
_CACHE_BYTES = 256 * 1024 * 1024


# Grain per picture n (n % 4): from smooth to busy, so JPEG sizes vary as photos' do
# (at 640x480 quality 90: 50 to 230 KB, 155 KB on average).
_NOISE = (6.0, 16.0, 28.0, 52.0)


def make_jpeg(n: int, w: int = DEFAULT_SIZE[0], h: int = DEFAULT_SIZE[1], quality: int = 90) -> bytes:
    """The JPEG bytes of picture `n` at w x h (``/img/<n>.jpg``): `make_image`'s picture of
    seed `n`, with grain."""
    return make_image(None, (w, h), seed=n, quality=quality, noise=_NOISE[n % len(_NOISE)])


def make_png(n: int, w: int = DEFAULT_SIZE[0], h: int = DEFAULT_SIZE[1], alpha: bool = False) -> bytes:
    """The PNG bytes of picture `n` at w x h, RGBA (`make_image`'s transparent block and
    half-transparent band) if `alpha`."""
    return make_image(None, (w, h), mode="RGBA" if alpha else "RGB", fmt="PNG", seed=n,
                      noise=_NOISE[n % len(_NOISE)])


def _cmyk_jpeg() -> bytes:
    return make_image(None, (320, 240), mode="CMYK", seed=1)


def _palette_png() -> bytes:
    return make_image(None, (320, 240), mode="P", fmt="PNG", seed=2)


def _exif_rotated_jpeg() -> bytes:
    """Stored 400x200 with orientation 6 (rotate 90 CW to display): upright it is 200x400."""
    return make_image(None, (400, 200), exif_orientation=6, seed=3)


def _html() -> bytes:
    return (b"<!doctype html><html><head><title>not an image</title></head>"
            b"<body><p>This page is HTML, not an image.</p></body></html>")


class ImageServer:
    """A threaded aiohttp server of generated images and pathologies on 127.0.0.1.

    Use as a context manager (or `start()` / `stop()`); `base_url` and `url(path)` give its
    addresses. `pool` distinct pictures are generated per size and reused (``n % pool``).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, pool: int = 256):
        self.host = host
        self.port = port
        self.pool = pool
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._hits: Counter[str] = Counter()  # per-id state of /flaky and /ratelimit
        self._active = 0
        self._busy_transports: set[asyncio.BaseTransport] = set()  # of requests in progress
        self._max_active = 0
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # -- addresses and counters -------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._thread is None:
            raise RuntimeError("ImageServer is not started")
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        """The absolute URL of `path` (``"img/1.jpg"`` or ``"/img/1.jpg?w=64"``)."""
        return f"{self.base_url}/{path.lstrip('/')}"

    def count(self, path: str) -> int:
        """Requests seen for `path` (without query), e.g. ``count("/flaky/a")``."""
        with self._lock:
            return self._counts["/" + path.lstrip("/").split("?", 1)[0]]

    def counts(self) -> dict[str, int]:
        """A snapshot of requests per path."""
        with self._lock:
            return dict(self._counts)

    @property
    def max_active(self) -> int:
        """The most requests being handled at once since start or `reset_counts()`."""
        with self._lock:
            return self._max_active

    def reset_counts(self) -> None:
        """Forget request counts, per-id state (flaky, ratelimit) and `max_active`."""
        with self._lock:
            self._counts.clear()
            self._hits.clear()
            self._max_active = self._active

    # -- cached bodies ----------------------------------------------------------------

    def _cached(self, key: tuple, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            body = self._cache.get(key)
            if body is not None:
                self._cache.move_to_end(key)
                return body
        body = make()
        with self._lock:
            if key not in self._cache:
                self._cache[key] = body
                self._cache_bytes += len(body)
                while self._cache_bytes > _CACHE_BYTES and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._cache_bytes -= len(old)
        return body

    def jpeg(self, n: int, w: int = DEFAULT_SIZE[0], h: int = DEFAULT_SIZE[1], quality: int = 90) -> bytes:
        """The body served for ``/img/<n>.jpg?w=&h=&q=``."""
        n %= self.pool
        return self._cached(("jpg", n, w, h, quality), lambda: make_jpeg(n, w, h, quality))

    def png(self, n: int, w: int = DEFAULT_SIZE[0], h: int = DEFAULT_SIZE[1], alpha: bool = False) -> bytes:
        """The body served for ``/png/<n>.png?w=&h=&alpha=``."""
        n %= self.pool
        return self._cached(("png", n, w, h, alpha), lambda: make_png(n, w, h, alpha))

    def warm(self, w: int = DEFAULT_SIZE[0], h: int = DEFAULT_SIZE[1], quality: int = 90) -> None:
        """Generate every JPEG of the pool at w x h now (before a benchmark is timed)."""
        for n in range(self.pool):
            self.jpeg(n, w, h, quality)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> "ImageServer":
        """Bind, start the server thread and return once it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("ImageServer already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        errors: list[BaseException] = []
        self._stopped.clear()
        self._thread = threading.Thread(target=self._serve, args=(sock, ready, errors),
                                        name=f"datamill-imageserver-{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        if errors:
            self._thread.join()
            self._thread = None
            raise errors[0]
        return self

    def stop(self) -> None:
        """Stop serving (cutting endless responses) and join the thread."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> "ImageServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, sock: socket.socket, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5,
                               handler_cancellation=True)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock, backlog=2048).start())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            errors.append(exc)
            sock.close()
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            # a client that stops reading an endless body would keep its socket open for
            # ever (close() waits to flush): cut the requests in progress first
            for transport in list(self._busy_transports):
                transport.abort()
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(asyncio.sleep(0))  # let the aborted sockets close
            loop.close()
            self._stopped.set()

    # -- the application --------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._track], client_max_size=1024)
        r = app.router
        r.add_get(r"/img/{n:\d+}.jpg", self._img)
        r.add_get(r"/png/{n:\d+}.png", self._png)
        r.add_get(r"/latency/{ms:\d+}/{n:\d+}.jpg", self._latency)
        r.add_get(r"/status/{code:\d+}", self._status)
        r.add_get("/flaky/{id}", self._flaky)
        r.add_get("/ratelimit/{id}", self._ratelimit)
        r.add_get(r"/drip/{n:\d+}.jpg", self._drip)
        r.add_get("/endless.jpg", self._endless)
        r.add_get("/hang", self._hang)
        r.add_get("/html", self._fixed(_html, "text/html"))
        r.add_get("/truncated.jpg", self._truncated)
        r.add_get("/bomb.png", self._fixed(make_bomb_png, "image/png"))
        r.add_get(r"/redirect/{k:\d+}", self._redirect)
        r.add_get("/redirect-loop", self._redirect_loop)
        r.add_get("/reset", self._reset)
        r.add_get("/cmyk.jpg", self._fixed(_cmyk_jpeg, "image/jpeg"))
        r.add_get("/palette.png", self._fixed(_palette_png, "image/png"))
        r.add_get("/exif-rotated.jpg", self._fixed(_exif_rotated_jpeg, "image/jpeg"))
        r.add_get("/tiny.jpg", self._fixed(lambda: make_jpeg(4, 8, 8), "image/jpeg"))
        r.add_get(r"/robots/{n:\d+}.jpg", self._robots)
        return app

    @web.middleware
    async def _track(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        with self._lock:
            self._counts[request.path] += 1
            self._active += 1
            self._max_active = max(self._max_active, self._active)
        transport = request.transport
        if transport is not None:
            self._busy_transports.add(transport)
        try:
            return await handler(request)
        finally:
            self._busy_transports.discard(transport)  # type: ignore[arg-type]
            with self._lock:
                self._active -= 1

    def _next_hit(self, kind: str, ident: str) -> int:
        with self._lock:
            self._hits[f"{kind}/{ident}"] += 1
            return self._hits[f"{kind}/{ident}"]

    @staticmethod
    def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise web.HTTPBadRequest(text=f"{name} must be an integer") from None
        if not lo <= value <= hi:
            raise web.HTTPBadRequest(text=f"{name} must be in {lo}..{hi}")
        return value

    def _jpeg_response(self, request: web.Request, n: int, headers: dict | None = None) -> web.Response:
        w = self._int(request, "w", DEFAULT_SIZE[0], 1, MAX_SIDE)
        h = self._int(request, "h", DEFAULT_SIZE[1], 1, MAX_SIDE)
        q = self._int(request, "q", 90, 1, 100)
        return web.Response(body=self.jpeg(n, w, h, q), content_type="image/jpeg", headers=headers)

    def _fixed(self, make: Callable[[], bytes], content_type: str) -> Callable:
        key = ("fixed", make)

        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=self._cached(key, make), content_type=content_type)

        return handler

    async def _img(self, request: web.Request) -> web.Response:
        return self._jpeg_response(request, int(request.match_info["n"]))

    async def _png(self, request: web.Request) -> web.Response:
        w = self._int(request, "w", DEFAULT_SIZE[0], 1, MAX_SIDE)
        h = self._int(request, "h", DEFAULT_SIZE[1], 1, MAX_SIDE)
        alpha = request.query.get("alpha", "0") not in ("0", "", "false")
        body = self.png(int(request.match_info["n"]), w, h, alpha)
        return web.Response(body=body, content_type="image/png")

    async def _latency(self, request: web.Request) -> web.Response:
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return self._jpeg_response(request, int(request.match_info["n"]))

    async def _status(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        if not 200 <= code <= 599:
            raise web.HTTPBadRequest(text="status must be in 200..599")
        if code in (204, 304):
            return web.Response(status=code)
        return web.Response(status=code, text=f"status {code}\n")

    async def _flaky(self, request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        fail = self._int(request, "fail", 1, 0, 1000)
        if self._next_hit("flaky", ident) <= fail:
            return web.Response(status=500, text="flaky: failing this time\n")
        return self._jpeg_response(request, zlib.crc32(ident.encode()))

    async def _ratelimit(self, request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        after = self._int(request, "after", 1, 0, 86400)
        times = self._int(request, "times", 1, 0, 1000)
        if self._next_hit("ratelimit", ident) <= times:
            if request.query.get("date", "0") not in ("0", "", "false"):
                retry_after = formatdate(time.time() + after, usegmt=True)
            else:
                retry_after = str(after)
            return web.Response(status=429, text="slow down\n", headers={"Retry-After": retry_after})
        return self._jpeg_response(request, zlib.crc32(ident.encode()))

    async def _drip(self, request: web.Request) -> web.StreamResponse:
        data = self.jpeg(int(request.match_info["n"]))
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for i in range(0, 10**9, 16):
                await resp.write(data[i % len(data):i % len(data) + 16] or b"\0")
                await asyncio.sleep(0.5)
        except (ConnectionError, RuntimeError):  # the client went away
            pass
        return resp

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        block = b"\xff\xd8\xff\xe0" + bytes(65532)
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            while True:
                await resp.write(block)
        except (ConnectionError, RuntimeError):  # the client went away
            pass
        return resp

    async def _hang(self, request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response(text="too late\n")

    async def _truncated(self, request: web.Request) -> web.Response:
        data = self.jpeg(5)
        return web.Response(body=data[: len(data) // 2], content_type="image/jpeg")

    async def _redirect(self, request: web.Request) -> web.Response:
        k = int(request.match_info["k"])
        if k <= 0:
            return self._jpeg_response(request, 6)
        raise web.HTTPFound(location=f"/redirect/{k - 1}")

    async def _redirect_loop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(location="/redirect-loop")

    async def _reset(self, request: web.Request) -> web.Response:
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:  # linger 0: close sends RST, not FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError

    async def _robots(self, request: web.Request) -> web.Response:
        tag = request.query.get("tag", "noai")
        return self._jpeg_response(request, int(request.match_info["n"]), headers={"X-Robots-Tag": tag})


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted: ``python -m datamill.testing.server [--port N] [--warm WxH]``."""
    parser = argparse.ArgumentParser(prog="python -m datamill.testing.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pool", type=int, default=256, help="distinct pictures per size")
    parser.add_argument("--warm", action="append", default=[], metavar="WxH",
                        help="generate the JPEG pool at this size before serving")
    args = parser.parse_args(argv)
    server = ImageServer(args.host, args.port, pool=args.pool)
    for size in args.warm:
        w, h = (int(v) for v in size.lower().split("x"))
        server.warm(w, h)
    with server:
        print(server.base_url, flush=True)
        try:
            server._stopped.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
