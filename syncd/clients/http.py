"""What every client shares: one request with failures classified, no URL in any message.

Both APIs put secrets in the URL (Salebot: the key in the path; GetCourse exports: the
key in the query string), so error messages are built here from the method, the
*action* name the caller gives and the status — never from ``str(exc)`` of httpx, which
may quote the URL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream
from yarl import URL

from syncd.errors import PermanentError, TransientError

#: Explicit per-phase timeouts for every outgoing call (seconds).
TIMEOUT = httpx.Timeout(connect=5.0, read=15.0, write=10.0, pool=10.0)
LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=32)


def new_http_client(timeout: httpx.Timeout = TIMEOUT) -> HttpClient:
    """The daemon's one outgoing client: explicit timeouts and limits, no redirects.

    An ``httpx.AsyncClient`` whose transport is aiohttp's connection pool and C parser
    (``httpx-aiohttp``): 5× the calls per second of httpx's own transport on this
    machine kind, which capped the outbox below 600 deliveries/s
    (``docs/performance.md``). Everything above the transport — the client API,
    timeouts, ``MockTransport`` in tests — is httpx's, except :func:`post_json`, which
    goes to the same aiohttp pool directly (:class:`HttpClient`).
    """
    return HttpClient(timeout)


class HttpClient(httpx.AsyncClient):
    """httpx's client over :class:`FastTransport`, plus a direct path for JSON POSTs.

    httpx's request and response models cost ~160 µs of CPU per call on top of aiohttp's
    own ~70 (``docs/performance.md``, Dispatch): three quarters of a delivery. The
    outbox's calls are all small JSON POSTs, so :meth:`post_json` hands them to the same
    aiohttp session (one pool, one connection limit) with headers, timeouts and URLs
    prepared once. Same wire behaviour: httpx's ``User-Agent``, no redirects followed,
    the same per-phase timeouts, failures named as :class:`FastTransport` names them.
    """

    def __init__(self, timeout: httpx.Timeout = TIMEOUT) -> None:
        self.fast = FastTransport(limits=LIMITS)
        super().__init__(timeout=timeout, follow_redirects=False, transport=self.fast)
        self._fast_timeout = aiohttp.ClientTimeout(
            sock_connect=timeout.connect, sock_read=timeout.read, connect=timeout.pool
        )
        # what httpx would send, minus the encodings aiohttp cannot decode itself
        self._json_headers = {
            "User-Agent": self.headers["user-agent"],
            "Accept": "*/*",
            "Accept-Encoding": "gzip, deflate",
            "Content-Type": "application/json",
        }

    async def post_json(self, url: str, body: bytes) -> Answer:
        """POST ``body`` (JSON bytes) and read the whole answer; aiohttp's errors raised."""
        async with self.fast.session().request(
            "POST",
            _url(url),
            data=body,
            headers=self._json_headers,
            allow_redirects=False,
            timeout=self._fast_timeout,
        ) as response:
            return Answer(response.status, response.headers, await response.read())


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer read in full: what the clients classify (status, headers, body)."""

    status: int
    headers: Mapping[str, str]  # case-insensitive (aiohttp's or httpx's)
    content: bytes

    def json(self) -> Any:
        """The body as JSON, as ``httpx.Response.json`` decodes it; ValueError if not.

        orjson first (a tenth of the CPU); what it refuses (NaN, integers beyond 64 bits,
        UTF-16…) goes to ``json.loads``, which then decides as httpx would.
        """
        try:
            return orjson.loads(self.content)
        except orjson.JSONDecodeError:
            return json.loads(self.content)


@lru_cache(maxsize=256)
def _url(text: str) -> URL:
    """A URL parsed once: the outbox calls the same few URLs (one per action)."""
    return URL(text)


# The adapter reads response bodies in 16 KiB pieces, each passing up four generators;
# an export is hundreds of megabytes, read in 64 KiB chunks (getcourse_export.CHUNK).
AiohttpResponseStream.CHUNK_SIZE = 64 * 1024

#: What the aiohttp transport may raise, in its requests and its response bodies.
_FAILURES = (TimeoutError, httpx.TransportError, aiohttp.ClientError)


class FastTransport(AiohttpTransport):
    """``httpx_aiohttp.AiohttpTransport`` with failures named for what happened.

    The library maps any aiohttp connection error to ``httpx.ConnectTimeout`` (so a
    server that hangs up would be logged as "timed out") and lets some through unmapped.
    Here every aiohttp failure becomes the httpx error of its kind, with a message that
    holds no URL — aiohttp's own messages may quote it, and Salebot's key is in the path.
    """

    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False, client=self._session)

    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session, made on first use (inside the running loop)."""
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self._session()
        return self.client

    def _session(self) -> aiohttp.ClientSession:
        # made on the first request, inside the running loop; no cookie jar: syncd keeps
        # no session with either API
        connector = aiohttp.TCPConnector(
            limit=self.limits.max_connections or 0,
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
        )
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except _FAILURES as exc:
            raise _named(exc, request) from None
        response.stream = _NamedErrors(response.stream, request)
        return response


class _NamedErrors(httpx.AsyncByteStream):
    """A response body whose read failures are named as :class:`FastTransport` names them."""

    def __init__(self, inner: Any, request: httpx.Request) -> None:
        self._inner = inner
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except _FAILURES as exc:
            raise _named(exc, self._request) from None

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        except _FAILURES as exc:
            raise _named(exc, self._request) from None


def _named(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx error for a failure of the aiohttp transport (no URL in the message)."""
    kind, cause = _kind(exc)
    return kind(f"{request.method} failed: {type(cause).__name__}", request=request)


def _kind(exc: BaseException) -> tuple[type[httpx.TransportError], BaseException]:
    """The httpx error class for a failure of the aiohttp transport, and its cause."""
    cause = exc.__cause__ if isinstance(exc, httpx.TransportError) else exc
    if cause is None:  # raised by httpx-aiohttp itself, not mapped from aiohttp
        cause = exc
    kind: type[httpx.TransportError]
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(cause, aiohttp.ServerTimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(cause, TimeoutError):  # waiting for a free connection
        kind = httpx.PoolTimeout
    elif isinstance(cause, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    elif isinstance(cause, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError):
        kind = httpx.RemoteProtocolError
    elif isinstance(cause, aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        kind = httpx.ReadError
    elif isinstance(cause, httpx.TransportError):
        kind = type(cause)
    else:
        kind = httpx.NetworkError
    return kind, cause


def retry_after(answer: httpx.Response | Mapping[str, str]) -> float | None:
    """``Retry-After`` of a response (or its headers) as seconds (delta-seconds or an HTTP
    date), or None.

    Not capped here: :class:`~syncd.retry.BackoffPolicy` caps it at ``delivery.max_backoff``.
    """
    headers = answer.headers if isinstance(answer, httpx.Response) else answer
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is true too
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


async def send(
    http: httpx.AsyncClient, what: str, method: str, url: str, **kwargs: Any
) -> httpx.Response:
    """Send; raise classified errors for transport failures and HTTP statuses ≥ 300.

    ``what`` names the call in messages (``salebot callback``), since the URL cannot.
    """
    try:
        response = await http.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        raise _failed(what, type(exc)) from None
    classify_status(response, what)
    return response


async def post_json(http: httpx.AsyncClient, what: str, url: str, body: Any) -> Answer:
    """POST ``body`` as JSON and read the answer; errors classified as :func:`send` does.

    Through :meth:`HttpClient.post_json` (aiohttp directly) when ``http`` is the daemon's
    client, through httpx otherwise (e.g. a ``MockTransport`` in tests). The body is
    encoded as httpx encodes ``json=`` (compact, UTF-8, no NaN).
    """
    if not isinstance(http, HttpClient):
        response = await send(http, what, "POST", url, json=body)
        return Answer(response.status_code, response.headers, response.content)
    try:
        answer = await http.post_json(url, json_body(body))
    except _FAILURES as exc:
        raise _failed(what, _kind(exc)[0]) from None
    classify(answer.status, answer.headers, what)
    return answer


def json_body(body: Any) -> bytes:
    """``body`` as JSON, compact UTF-8 as httpx's ``json=`` sends it.

    orjson (a tenth of ``json.dumps``'s CPU); what it refuses (integers beyond 64 bits,
    keys that are not strings) goes to ``json.dumps`` with httpx's arguments. One
    difference: orjson writes NaN and infinities as ``null`` where httpx refuses them;
    outbox payloads come from JSON columns, which cannot hold them.
    """
    try:
        return orjson.dumps(body)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode()


def _failed(what: str, kind: type[httpx.TransportError]) -> TransientError:
    if issubclass(kind, httpx.TimeoutException):
        return TransientError(f"{what}: timed out ({kind.__name__})")
    return TransientError(f"{what}: connection failed ({kind.__name__})")


def classify_status(response: httpx.Response, what: str) -> None:
    """Raise for an HTTP status ≥ 300: 429 and 5xx transient, the rest permanent."""
    classify(response.status_code, response.headers, what)


def classify(status: int, headers: Mapping[str, str], what: str) -> None:
    """:func:`classify_status` of a status and its headers."""
    if status == 429 or status >= 500:
        raise TransientError(f"{what}: HTTP {status}", retry_after=retry_after(headers))
    if 300 <= status < 400:
        host = httpx.URL(headers.get("location", "")).host
        raise PermanentError(
            f"{what}: HTTP {status} redirect to {host or 'another address'}"
            " — set the base URL to the domain the account redirects to"
        )
    if status >= 400:
        raise PermanentError(f"{what}: HTTP {status}")
