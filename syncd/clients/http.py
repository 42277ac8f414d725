"""What every client shares: one request with failures classified, no URL in any message.

Both APIs put secrets in the URL (Salebot: the key in the path; GetCourse exports: the
key in the query string), so error messages are built here from the method, the
*action* name the caller gives and the status — never from ``str(exc)`` of httpx, which
may quote the URL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from syncd.errors import PermanentError, TransientError

#: Explicit per-phase timeouts for every outgoing call (seconds).
TIMEOUT = httpx.Timeout(connect=5.0, read=15.0, write=10.0, pool=10.0)
LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=32)


def new_http_client() -> httpx.AsyncClient:
    """The daemon's one outgoing client: explicit timeouts and limits, no redirects."""
    return httpx.AsyncClient(timeout=TIMEOUT, limits=LIMITS, follow_redirects=False)


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
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
