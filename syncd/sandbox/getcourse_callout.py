"""GetCourse calling out: a process's «Вызвать URL» and Tech API webhooks (getcourse.md).

``fire_process_call`` plays a process operation: it substitutes ``{object.…}``
placeholders from a plain dict (``{object.user.email}`` → ``obj["user"]["email"]``,
``None`` → empty, a list → comma-separated), leaves an unknown placeholder literally in
place (as the doc observes), and calls the URL with GET, or with POST and a form or JSON
body whose values are templates too. Substituted values are URL-encoded in the URL
(``quote=False`` sends them raw, as a careless school's template would; httpx still
percent-encodes what it must). ``fire_raw_get`` sends a request target byte for byte over
a plain socket: raw UTF-8 (whether GetCourse URL-encodes substituted values is not
documented). No signature, no retry: one call, its response returned.

``fire_techapi`` plays a ``set-uri`` webhook: one POST of ``{"json": {...}}`` in the doc's
shape (``envelope="bare"``: the same object unwrapped, as another client publishes it;
getcourse.md, "Added 2026-12-02"). ``ts`` and ``deal.createdAt`` are the deal's creation
time in account-local time with a ``Z`` appended (the doc's quirk); ``ts64`` is the true
epoch of the event: the local ``event_at`` (default: the payment time for ``dealPaid``,
the status change for ``dealStatusChanged``, the creation otherwise) shifted by
``utc_offset_hours`` (Moscow, +3, by default). ``isPayed`` is a boolean, or 0/1 with
``is_payed_as_int``. A ``dealPaid`` also fires ``dealStatusChanged`` right after it
(``paired=False`` sends one).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote as url_quote

import httpx

from syncd.sandbox.getcourse_state import GcDeal, GcUser

PLACEHOLDER = re.compile(r"\{object\.([A-Za-z0-9_.]+)\}")
TECHAPI_EVENTS = ("dealCreated", "dealStatusChanged", "dealPaid")
Envelope = Literal["json", "bare"]
_MISSING = object()


def substitute(template: str, obj: Mapping[str, Any], *, quote: bool = False) -> str:
    """Replace known ``{object.a.b}`` placeholders; unknown ones stay as they are."""

    def replace(match: re.Match[str]) -> str:
        value: Any = obj
        for part in match.group(1).split("."):
            value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
        if value is _MISSING:
            return match.group(0)
        text = _text(value)
        return url_quote(text, safe="") if quote else text

    return PLACEHOLDER.sub(replace, template)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list | tuple):
        return ", ".join(_text(item) for item in value)
    return str(value)


@contextlib.asynccontextmanager
async def _client(
    client: httpx.AsyncClient | None, http_timeout: float
) -> AsyncIterator[httpx.AsyncClient]:
    if client is not None:
        yield client
        return
    async with httpx.AsyncClient(timeout=http_timeout) as own:
        yield own


async def fire_process_call(
    url_template: str,
    obj: Mapping[str, Any],
    *,
    method: str = "GET",
    form: Mapping[str, str] | None = None,
    json_body: Mapping[str, str] | None = None,
    quote: bool = True,
    raw: bool = False,
    client: httpx.AsyncClient | None = None,
    http_timeout: float = 5.0,
) -> httpx.Response:
    """Call ``url_template`` as a GetCourse process would, placeholders filled from ``obj``.

    ``raw=True`` (GET only) substitutes values unencoded and sends the request target byte
    for byte (raw UTF-8, spaces and all) over a plain socket.
    """
    if raw:
        if method != "GET" or form is not None or json_body is not None:
            raise ValueError("raw=True sends a GET without a body")
        target = httpx.URL(url_template)
        base = f"{target.scheme}://{target.netloc.decode()}"
        return await fire_raw_get(
            base, substitute(url_template.removeprefix(base), obj), http_timeout=http_timeout
        )
    url = substitute(url_template, obj, quote=quote)
    extra: dict[str, Any] = {}
    if form is not None:
        extra["data"] = {name: substitute(value, obj) for name, value in form.items()}
    if json_body is not None:
        extra["json"] = {name: substitute(value, obj) for name, value in json_body.items()}
    async with _client(client, http_timeout) as http:
        return await http.request(method, url, **extra)


def _z(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def techapi_payload(
    event_type: str,
    user: GcUser,
    deal: GcDeal,
    *,
    account_id: int = 384201,
    is_payed_as_int: bool = False,
    utc_offset_hours: float = 3,
    event_at: datetime | None = None,
    envelope: Envelope = "json",
) -> dict[str, Any]:
    """The body of one Tech API delivery, ``{"json": {...}}`` (or bare)."""
    name = event_type.removeprefix("getcourse/")
    if name not in TECHAPI_EVENTS:
        raise ValueError(f"unknown Tech API event {event_type!r}")
    if event_at is None:
        candidates = {
            "dealPaid": (deal.payed_at,),
            "dealStatusChanged": (deal.status_changed_at, deal.payed_at),
        }.get(name, ())
        event_at = next((c for c in candidates if c is not None), deal.created_at)
    utc = (event_at - timedelta(hours=utc_offset_hours)).replace(tzinfo=UTC)
    paid = deal.status == "payed" or deal.payed_at is not None
    body = {
        "ts": _z(deal.created_at), "ts64": int(utc.timestamp()), "gcAccountId": account_id,
        "eventType": f"getcourse/{name}",
        "user": {"id": f"{account_id}:{user.id}", "gcId": user.id, "email": user.email,
                 "type": "Real"},
        "deal": {"id": str(deal.id), "number": deal.number, "status": deal.status,
                 "isPayed": int(paid) if is_payed_as_int else paid, "cost": _number(deal.cost),
                 "payedValue": _number(deal.paid), "currency": deal.currency,
                 "offerIds": list(deal.offer_ids), "createdAt": _z(deal.created_at)},
    }  # fmt: skip
    return body if envelope == "bare" else {"json": body}


async def fire_techapi(
    url: str,
    event_type: str,
    user: GcUser,
    deal: GcDeal,
    *,
    paired: bool = True,
    client: httpx.AsyncClient | None = None,
    http_timeout: float = 5.0,
    **payload_options: Any,
) -> list[httpx.Response]:
    """POST the event (and, for a paid deal, ``dealStatusChanged`` after it) to ``url``.

    ``payload_options`` go to :func:`techapi_payload` (``account_id``, ``is_payed_as_int``,
    ``utc_offset_hours``, ``event_at``, ``envelope``).
    """
    names = [event_type.removeprefix("getcourse/")]
    if names[0] == "dealPaid" and paired:
        names.append("dealStatusChanged")
    bodies = [techapi_payload(name, user, deal, **payload_options) for name in names]
    async with _client(client, http_timeout) as http:
        return [await http.post(url, json=body) for body in bodies]


async def fire_raw_get(
    base_url: str, target: str | bytes, *, http_timeout: float = 5.0
) -> httpx.Response:
    """GET ``target`` (path and query, e.g. ``/v1/…?name=Иван``) sent byte for byte (text as
    UTF-8), unencoded: what httpx never sends. Returns the answer (status, headers, body)."""
    url = httpx.URL(base_url)
    raw = target.encode("utf-8") if isinstance(target, str) else target
    head = (
        b"GET " + raw + b" HTTP/1.1\r\nHost: " + f"{url.host}:{url.port}".encode()
        + b"\r\nConnection: close\r\n\r\n"
    )  # fmt: skip
    return await send_raw(base_url, head, http_timeout=http_timeout)


async def send_raw(base_url: str, request: bytes, *, http_timeout: float = 5.0) -> httpx.Response:
    """Send ``request`` (a whole HTTP/1.1 request, any bytes) and read the one answer."""
    import h11

    url = httpx.URL(base_url)
    host = url.host
    async with asyncio.timeout(http_timeout):
        reader, writer = await asyncio.open_connection(host, url.port or 80)
        try:
            writer.write(request)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
    parser = h11.Connection(h11.CLIENT)
    parser.send(h11.Request(method="GET", target="/", headers=[("Host", host)]))
    parser.send(h11.EndOfMessage())
    parser.receive_data(raw)
    parser.receive_data(b"")
    status, headers, body = 0, [], b""
    while True:
        event = parser.next_event()
        if isinstance(event, h11.Response):
            status, headers = event.status_code, [(k, v) for k, v in event.headers]
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.NEED_DATA:
            break
    return httpx.Response(status, headers=headers, content=body)
