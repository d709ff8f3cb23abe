"""Fetch many URLs from one process: asyncio + aiohttp, hundreds of connections, a total
deadline per URL.

Pure: no processes, no global state; one `aiohttp.ClientSession` per `Fetcher` (a
`fetch_many` call, or a download worker's life, shared by its shards).

Every URL ends as one `FetchResult` with a status:

- ``ok``: the body (at most `FetchOptions.max_bytes`), its content type and final URL;
- ``filtered`` with ``error_class="robots"``: the response carried an ``X-Robots-Tag``
  opting out (``noai``, ``noimageai``, ``noindex``, ``noimageindex``; img2dataset's rule);
  the body is not read;
- ``failed`` with a short, stable error class: ``timeout``, ``dns``, ``connection``
  (refused, reset, disconnected, malformed response), ``ssl``, ``http_<code>``
  (``http_404``, ``http_500``...), ``too_large``, ``bad_url`` (not http/https, malformed,
  empty) or ``redirect_loop`` (more than `max_redirects` redirects, as in a cycle).

`FetchOptions.timeout` is a **total** deadline for one attempt: connect, headers, redirects
and every read of the body. A per-read socket timeout lets a server that drips a byte
every few seconds hold a worker forever (img2dataset issue #437); this one cannot.

Example::

    opts = FetchOptions(timeout=5, concurrency=128)
    async for r in fetch_many(enumerate(urls), opts):
        if r.status == "ok":
            save(r.key, r.body)

or, from synchronous code, ``results = fetch_all(enumerate(urls), opts)``.
"""
from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import socket
import ssl
import sys
import time
from dataclasses import dataclass, field
from datetime import timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any, AsyncIterable, AsyncIterator, Callable, Iterable, Union

import aiohttp
import aiohttp.connector
from yarl import URL

from ..options import Options, option

if sys.version_info >= (3, 11):
    from asyncio import timeout as _deadline
else:  # pragma: no cover - aiohttp depends on async-timeout before 3.11
    from async_timeout import timeout as _deadline

__all__ = [
    "FetchOptions",
    "FetchResult",
    "Fetcher",
    "fetch_many",
    "fetch_all",
    "parse_retry_after",
    "robots_disallowed",
    "DEFAULT_USER_AGENT",
    "ROBOTS_DIRECTIVES",
]

try:
    _VERSION = version("datamill")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    _VERSION = "0.0.0"

DEFAULT_USER_AGENT = f"datamill/{_VERSION} (+https://github.com/datamill/datamill)"

#: X-Robots-Tag directives that opt an image out (img2dataset's defaults).
ROBOTS_DIRECTIVES: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex")

# Robots directives that take a value after a colon ("unavailable_after: <date>"): the
# word before their colon is not a user-agent token.
_VALUED_DIRECTIVES = frozenset(
    {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})

# 501 Not Implemented and 505 HTTP Version Not Supported will not change on a retry.
_PERMANENT_5XX = frozenset({501, 505})

# aiohttp warns when asked to clean up closed SSL transports on Pythons that no longer need it.
_CLEANUP_CLOSED = getattr(aiohttp.connector, "NEEDS_CLEANUP_CLOSED", True)

Request = tuple[Any, str]
Requests = Union[Iterable[Request], AsyncIterable[Request]]


@dataclass(frozen=True)
class FetchOptions(Options):
    """How to fetch: deadlines, retries, limits and politeness.

    Attributes:
        timeout: total seconds for one attempt (connect + redirects + the whole body).
            A URL takes at most (retries + 1) x timeout plus the waits between attempts.
        retries: extra attempts after a timeout, connection error, 5xx, 408 or 429.
        backoff: first retry delay in seconds; doubles per retry, jittered (x0.5..1),
            capped at `max_backoff`.
        max_backoff: cap of the retry delay (a Retry-After may ask for longer).
        max_retry_after: a 429/503 ``Retry-After`` (seconds or HTTP date) up to this is
            waited for before retrying; a longer one fails the URL at once.
        max_bytes: a body longer than this fails ``too_large`` (Content-Length is checked
            first; reading stops as soon as the limit is passed).
        concurrency: URLs in flight at once (and the connection pool size).
        per_host: URLs in flight at once per host name.
        max_redirects: redirects followed; one more fails ``redirect_loop``.
        user_agent: the User-Agent header.
        honor_robots: filter responses whose ``X-Robots-Tag`` opts out (``robots``).
        robots_directives: the directives that opt out.
        robots_token: a user-agent token in ``X-Robots-Tag: <token>: noai`` that applies
            to us; directives for other tokens are ignored.
        dns_cache_ttl: seconds a DNS answer is reused.
    """

    timeout: float = option(10.0, "Total seconds per URL attempt (connect and every read).",
                            min=0, min_open=True, fingerprint=False)
    retries: int = option(2, "Further attempts for a URL after a timeout, connection error, "
                          "5xx or 429 (Retry-After honoured).", min=0, fingerprint=False)
    backoff: float = option(0.5, "First retry delay in seconds.", min=0, cli=False,
                            fingerprint=False)
    max_backoff: float = option(10.0, "Cap of the retry delay.", min=0, cli=False,
                                fingerprint=False)
    max_retry_after: float = option(30.0, "Longest Retry-After waited for.", min=0, cli=False,
                                    fingerprint=False)
    max_bytes: int = option(20_000_000, "Largest body accepted.", min=1)
    concurrency: int = option(256, "Connections per worker.", min=1, fingerprint=False)
    per_host: int = option(16, "Connections per host per worker.", min=1, fingerprint=False)
    max_redirects: int = option(5, "Redirects followed.", min=0, cli=False, fingerprint=False)
    user_agent: str = option(DEFAULT_USER_AGENT, "User-Agent header.", show_default=False,
                             fingerprint=False)
    honor_robots: bool = option(True, "Do not honour X-Robots-Tag: noai / noimageai.",
                                flag="--no-robots")
    robots_directives: tuple[str, ...] = option(ROBOTS_DIRECTIVES, "Directives that opt out.",
                                                cli=False, fingerprint=False)
    robots_token: str = option("datamill", "Our user-agent token in X-Robots-Tag.", cli=False,
                               fingerprint=False)
    dns_cache_ttl: int = option(300, "Seconds a DNS answer is reused.", min=0, cli=False,
                                fingerprint=False)

    def __post_init__(self) -> None:
        self.validate()  # here already: fetch_many is called without a job to validate it


@dataclass
class FetchResult:
    """The outcome of one URL.

    `status` is ``ok``, ``filtered`` or ``failed``; `error_class` is the filter reason
    (``robots``) or the failure class, None when ok. `attempts` counts HTTP attempts (0
    for a URL rejected before any request); `seconds` is the wall time spent on the URL,
    retries and their waits included.
    """

    key: Any
    url: str
    status: str
    body: bytes | None = None
    error_class: str | None = None
    message: str | None = None
    http_status: int | None = None
    content_type: str | None = None
    final_url: str | None = None
    attempts: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(eq=False)
class _AttemptFailed(Exception):
    """One attempt ended without a body: why, and whether (and when) to try again."""

    error_class: str
    message: str
    retryable: bool = field(default=False, kw_only=True)
    http_status: int | None = field(default=None, kw_only=True)
    retry_after: float | None = field(default=None, kw_only=True)
    content_type: str | None = field(default=None, kw_only=True)
    final_url: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        super().__init__(self.message)


@dataclass
class _Response:
    status: str  # ok | filtered
    body: bytes | None
    http_status: int
    content_type: str | None
    final_url: str
    message: str | None = None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date).

    Returns None when the header is absent or unreadable; never a negative number.

    >>> parse_retry_after("120")
    120.0
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0)
    10.0
    """
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:  # pragma: no cover - Python < 3.10 returned None for bad dates
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def robots_disallowed(values: Iterable[str], token: str = "datamill",
                      directives: Iterable[str] = ROBOTS_DIRECTIVES) -> bool:
    """Whether ``X-Robots-Tag`` header values opt out for user-agent `token`.

    img2dataset's rule: each header value is ``[<ua-token>:] directive, directive...``;
    it applies when it names no token or names ours, and opts out when one of its
    directives is in `directives`. Unlike img2dataset, a valued directive
    (``unavailable_after: <date>``) is not mistaken for a token.

    >>> robots_disallowed(["noindex, nofollow"])
    True
    >>> robots_disallowed(["otherbot: noai"])
    False
    """
    wanted = {d.lower() for d in directives}
    token = token.lower()
    for value in values:
        head, colon, tail = value.partition(":")
        ua = head.strip().lower()
        if colon and "," not in head and ua and " " not in ua and ua not in _VALUED_DIRECTIVES:
            if ua != token:
                continue
            value = tail
        names = {part.partition(":")[0].strip().lower() for part in value.split(",")}
        if names & wanted:
            return True
    return False


def _parse_url(raw: Any) -> URL:
    """The URL to request, or `_AttemptFailed('bad_url')`."""
    if not isinstance(raw, str) or not raw.strip():
        raise _AttemptFailed("bad_url", "empty URL")
    try:
        url = URL(raw.strip())
        scheme, host = url.scheme.lower(), url.host
    except (ValueError, TypeError) as exc:
        raise _AttemptFailed("bad_url", f"malformed URL: {exc}") from None
    if scheme not in ("http", "https"):
        raise _AttemptFailed("bad_url", f"not an http(s) URL: {raw[:200]!r}")
    if not host:
        raise _AttemptFailed("bad_url", f"URL without a host: {raw[:200]!r}")
    return url


def _mime(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def _is_retryable_status(status: int) -> bool:
    return status in (408, 429) or (500 <= status < 600 and status not in _PERMANENT_5XX)


def _classify(exc: BaseException) -> _AttemptFailed:
    """Map a client exception to an error class (order matters: subclasses first)."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.TooManyRedirects):
        return _AttemptFailed("redirect_loop", "too many redirects")
    redirect_errors = tuple(getattr(aiohttp, name) for name in
                            ("NonHttpUrlRedirectClientError", "InvalidUrlRedirectClientError")
                            if hasattr(aiohttp, name))
    if redirect_errors and isinstance(exc, redirect_errors):
        return _AttemptFailed("bad_url", f"redirect to an unusable URL: {message}")
    if isinstance(exc, aiohttp.InvalidURL):
        return _AttemptFailed("bad_url", f"malformed URL: {message}")
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, socket.gaierror) or isinstance(exc, socket.gaierror):
        gai = os_error if isinstance(os_error, socket.gaierror) else exc
        # EAI_AGAIN is a resolver hiccup; "no such name" will not change on a retry
        return _AttemptFailed("dns", message, retryable=gai.errno == socket.EAI_AGAIN)
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)) or isinstance(os_error, ssl.SSLError):
        return _AttemptFailed("ssl", message)
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return _AttemptFailed("connection", message, retryable=True)
    return _AttemptFailed(type(exc).__name__, message)


async def _read_body(stream: aiohttp.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in stream.iter_any():
        total += len(chunk)
        if total > limit:
            raise _AttemptFailed("too_large", f"body longer than max_bytes={limit}")
        chunks.append(chunk)
    return b"".join(chunks)


async def _attempt(session: aiohttp.ClientSession, url: URL, opts: FetchOptions) -> _Response:
    """One GET with redirects; raises `_AttemptFailed` or a client exception."""
    # aiohttp counts the redirect that hits its limit as too many: allow one more.
    follow = opts.max_redirects > 0
    async with session.get(url, allow_redirects=follow,
                           max_redirects=opts.max_redirects + 1) as resp:
        content_type = _mime(resp.headers.get("Content-Type"))
        final_url = str(resp.url)
        if not 200 <= resp.status < 300:
            if not follow and resp.status in (301, 302, 303, 307, 308):
                raise _AttemptFailed("redirect_loop", "redirect with max_redirects=0",
                                     http_status=resp.status, final_url=final_url)
            retry_after = None
            if resp.status in (429, 503):
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            raise _AttemptFailed(
                f"http_{resp.status}", f"HTTP {resp.status} {resp.reason or ''}".strip(),
                retryable=_is_retryable_status(resp.status), http_status=resp.status,
                retry_after=retry_after, content_type=content_type, final_url=final_url)
        if opts.honor_robots:
            tags = resp.headers.getall("X-Robots-Tag", [])
            if tags and robots_disallowed(tags, opts.robots_token, opts.robots_directives):
                return _Response("filtered", None, resp.status, content_type, final_url,
                                 message=f"X-Robots-Tag: {'; '.join(tags)}"[:500])
        length = resp.content_length
        if length is not None and length > opts.max_bytes:
            raise _AttemptFailed("too_large",
                                 f"Content-Length {length} > max_bytes={opts.max_bytes}",
                                 http_status=resp.status, content_type=content_type,
                                 final_url=final_url)
        try:
            body = await _read_body(resp.content, opts.max_bytes)
        except _AttemptFailed as exc:
            exc.http_status, exc.content_type, exc.final_url = resp.status, content_type, final_url
            raise
        return _Response("ok", body, resp.status, content_type, final_url)


class _HostLimiter:
    """At most `per_host` attempts at once per host; forgets hosts nobody waits for."""

    def __init__(self, per_host: int):
        self._per_host = per_host
        self._slots: dict[str, list[Any]] = {}  # host -> [semaphore, users]

    @contextlib.asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        entry = self._slots.get(host)
        if entry is None:
            entry = self._slots[host] = [asyncio.Semaphore(self._per_host), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._slots[host]


def _retry_delay(opts: FetchOptions, attempt: int, rng: random.Random) -> float:
    base = min(opts.max_backoff, opts.backoff * 2 ** (attempt - 1))
    return base * (0.5 + rng.random() / 2)


async def _fetch_one(session: aiohttp.ClientSession, limiter: _HostLimiter, key: Any,
                     raw_url: str, opts: FetchOptions, rng: random.Random) -> FetchResult:
    start = time.monotonic()

    def finish(**fields: Any) -> FetchResult:
        return FetchResult(key=key, url=raw_url, seconds=time.monotonic() - start, **fields)

    try:
        url = _parse_url(raw_url)
    except _AttemptFailed as exc:
        return finish(status="failed", error_class=exc.error_class, message=exc.message)

    attempts = 0
    while True:
        attempts += 1
        async with limiter.slot(url.host or ""):
            try:
                # a deadline, not a socket timeout: it covers the whole attempt (asyncio.timeout
                # cancels the attempt in its own task, where wait_for would start one more)
                async with _deadline(opts.timeout):
                    resp = await _attempt(session, url, opts)
            except _AttemptFailed as exc:
                failure = exc
            except asyncio.TimeoutError:
                failure = _AttemptFailed(
                    "timeout", f"no complete response within {opts.timeout:g} s",
                    retryable=True)
            except Exception as exc:  # noqa: BLE001 - every failure becomes data
                failure = _classify(exc)
            else:
                error_class = "robots" if resp.status == "filtered" else None
                return finish(status=resp.status, body=resp.body, error_class=error_class,
                              message=resp.message, http_status=resp.http_status,
                              content_type=resp.content_type, final_url=resp.final_url,
                              attempts=attempts)

        def failed(message: str) -> FetchResult:
            return finish(status="failed", error_class=failure.error_class, message=message,
                          http_status=failure.http_status,
                          content_type=failure.content_type, final_url=failure.final_url,
                          attempts=attempts)

        if not failure.retryable or attempts > opts.retries:
            return failed(failure.message)
        delay = _retry_delay(opts, attempts, rng)
        if failure.retry_after is not None:
            if failure.retry_after > opts.max_retry_after:
                return failed(f"{failure.message}; Retry-After {failure.retry_after:g} s "
                              f"exceeds max_retry_after={opts.max_retry_after:g}")
            delay = max(delay, failure.retry_after)
        await asyncio.sleep(delay)


def _session(opts: FetchOptions) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=opts.concurrency,
        limit_per_host=opts.per_host,
        ttl_dns_cache=opts.dns_cache_ttl,
        enable_cleanup_closed=_CLEANUP_CLOSED,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # the deadline is ours (asyncio.timeout around each attempt); none inside aiohttp
        timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None),
        headers={
            "User-Agent": opts.user_agent,
            "Accept": "image/avif,image/webp,image/*,*/*;q=0.8",
            # images are compressed already; identity keeps max_bytes a bound on the wire
            "Accept-Encoding": "identity",
        },
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


class Fetcher:
    """One session (keep-alive connections, DNS cache), host limiter and retry jitter for
    any number of URLs, started one by one: a caller that fetches for several batches at
    once (a download worker's shards) shares one connection pool between them.

    `start(key, url, on_done)` begins a fetch and calls ``on_done(result)`` in the event
    loop when it ends; the caller bounds how many run at once (`concurrency`).  Leaving
    the ``async with`` block cancels the fetches still running and closes the session.

    Example::

        async with Fetcher(FetchOptions(timeout=5)) as fetcher:
            fetcher.start(0, "http://127.0.0.1:8000/a.jpg", print)
            print(await fetcher.fetch(1, "http://127.0.0.1:8000/b.jpg"))
    """

    def __init__(self, opts: FetchOptions | None = None):
        self.opts = opts or FetchOptions()
        self._session: aiohttp.ClientSession | None = None
        self._limiter = _HostLimiter(self.opts.per_host)
        self._rng = random.Random()
        self._running: set[asyncio.Task[FetchResult]] = set()

    async def __aenter__(self) -> "Fetcher":
        self._session = _session(self.opts)
        return self

    async def __aexit__(self, *exc: object) -> None:
        running, self._running = self._running, set()
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def start(self, key: Any, url: str, on_done: Callable[[FetchResult], None]) -> None:
        """Fetch `url` in the background; `on_done(result)` runs when it ends (not when
        it is cancelled)."""
        assert self._session is not None, "use Fetcher in `async with`"
        task = asyncio.get_running_loop().create_task(
            _fetch_one(self._session, self._limiter, key, url, self.opts, self._rng))
        self._running.add(task)

        def finished(t: asyncio.Task[FetchResult]) -> None:
            self._running.discard(t)
            if not t.cancelled():
                on_done(t.result())

        task.add_done_callback(finished)

    async def fetch(self, key: Any, url: str) -> FetchResult:
        """Fetch one URL and return its result."""
        future: asyncio.Future[FetchResult] = asyncio.get_running_loop().create_future()
        self.start(key, url, future.set_result)
        return await future


async def fetch_many(requests: Requests, opts: FetchOptions | None = None) -> AsyncIterator[FetchResult]:
    """Fetch ``(key, url)`` pairs concurrently, yielding results as they complete.

    `requests` (a plain or async iterable) is consumed lazily: at most
    ``opts.concurrency`` requests are taken and not yet yielded at any time, so any number
    of URLs runs in constant memory. Results come in completion order; match them by key.
    One session with keep-alive connections and a DNS cache serves the whole call.

    Closing the generator early (``break`` inside ``contextlib.aclosing``) cancels the
    URLs in flight and closes the session.

    Example::

        async with contextlib.aclosing(fetch_many(pairs, FetchOptions(timeout=5))) as results:
            async for r in results:
                print(r.key, r.status, r.error_class)
    """
    opts = opts or FetchOptions()
    if isinstance(requests, AsyncIterable):
        async_source = requests.__aiter__()
        sync_source = None
    else:
        async_source = None
        sync_source = iter(requests)
    finished: asyncio.Queue[FetchResult] = asyncio.Queue()
    in_flight = 0
    exhausted = False
    async with Fetcher(opts) as fetcher:
        while True:
            while not exhausted and in_flight < opts.concurrency:
                try:
                    if async_source is not None:
                        key, url = await async_source.__anext__()
                    else:
                        key, url = next(sync_source)  # type: ignore[arg-type]
                except (StopIteration, StopAsyncIteration):
                    exhausted = True
                    break
                fetcher.start(key, url, finished.put_nowait)
                in_flight += 1
            if not in_flight:
                return
            result = await finished.get()
            in_flight -= 1
            yield result


def fetch_all(requests: Requests, opts: FetchOptions | None = None) -> list[FetchResult]:
    """Fetch everything in a new event loop and return the results (completion order).

    For synchronous callers; inside a running event loop use `fetch_many`.
    """

    async def collect() -> list[FetchResult]:
        return [result async for result in fetch_many(requests, opts)]

    return asyncio.run(collect())
