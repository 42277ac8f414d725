"""What every client shares: one request with failures classified, no URL in any message.

Both APIs put secrets in the URL (Salebot: the key in the path; GetCourse exports: the
key in the query string), so error messages are built here from the method, the
*action* name the caller gives and the status — never from ``str(exc)`` of httpx, which
may quote the URL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream

from syncd.errors import PermanentError, TransientError

#: Explicit per-phase timeouts for every outgoing call (seconds).
TIMEOUT = httpx.Timeout(connect=5.0, read=15.0, write=10.0, pool=10.0)
LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=32)


def new_http_client(timeout: httpx.Timeout = TIMEOUT) -> httpx.AsyncClient:
    """The daemon's one outgoing client: explicit timeouts and limits, no redirects.

    An ``httpx.AsyncClient`` whose transport is aiohttp's connection pool and C parser
    (``httpx-aiohttp``): 5× the calls per second of httpx's own transport on this
    machine kind, which capped the outbox below 600 deliveries/s
    (``docs/performance.md``). Everything above the transport — the client API,
    timeouts, ``MockTransport`` in tests — is httpx's.
    """
    return httpx.AsyncClient(
        timeout=timeout, follow_redirects=False, transport=FastTransport(limits=LIMITS)
    )


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
    return kind(f"{request.method} failed: {type(cause).__name__}", request=request)


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), or None.

    Not capped here: :class:`~syncd.retry.BackoffPolicy` caps it at ``delivery.max_backoff``.
    """
    value = response.headers.get("retry-after")
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
    except httpx.TimeoutException as exc:
        raise TransientError(f"{what}: timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise TransientError(f"{what}: connection failed ({type(exc).__name__})") from None
    classify_status(response, what)
    return response


def classify_status(response: httpx.Response, what: str) -> None:
    """Raise for an HTTP status ≥ 300: 429 and 5xx transient, the rest permanent."""
    status = response.status_code
    if status == 429 or status >= 500:
        raise TransientError(f"{what}: HTTP {status}", retry_after=retry_after(response))
    if 300 <= status < 400:
        host = httpx.URL(response.headers.get("location", "")).host
        raise PermanentError(
            f"{what}: HTTP {status} redirect to {host or 'another address'}"
            " — set the base URL to the domain the account redirects to"
        )
    if status >= 400:
        raise PermanentError(f"{what}: HTTP {status}")
