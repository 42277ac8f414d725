"""The GetCourse export API (``api/getcourse.md``, "Export"): start, then collect.

Start: ``GET {base}/pl/api/account/{what}?key=…&filters`` → ``info.export_id``.
Collect: ``GET {base}/pl/api/account/exports/{id}?key=…`` → ``info.fields`` (titles) and
``info.items`` (rows of strings) when ready; error 909 «Файл еще не создан» until then.

A ready answer can be hundreds of megabytes (a million deals), so :func:`collect` parses
it as it arrives (``ijson``): memory holds one chunk and the rows not yet consumed, never
the document. The key is in the query string: no URL is ever put in a message.

Errors: 909 → :class:`ExportNotReady`, 905 → :class:`ExportBusy` (one export at a time;
nothing was started), 903 → :class:`BudgetSpent` — all transient; 901 (bad key), 908 (no
filter), 913/918 (bad status filter) and anything else → :class:`PermanentError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import ijson

from syncd.clients.http import classify_status
from syncd.errors import PermanentError, TransientError
from syncd.events import truthy

CHUNK = 64 * 1024


class ExportNotReady(TransientError):
    """909: the file is not made yet; ask again later."""


class ExportBusy(TransientError):
    """905: another export of the account runs; nothing was started."""


class BudgetSpent(TransientError):
    """903: the account's export budget (100 requests per 2 hours) is spent."""


def raise_for_error(data: Mapping[str, Any], what: str) -> None:
    if truthy(data.get("success")):
        return
    message = str(data.get("error_message") or data.get("error") or "unknown error")
    code = data.get("error_code")
    try:
        code = int(code) if code is not None else None
    except (TypeError, ValueError):
        code = None
    if code == 909 or "еще не создан" in message.lower() or "ещё не создан" in message.lower():
        raise ExportNotReady(f"{what}: {message}")
    if code == 905:
        raise ExportBusy(f"{what}: {message}")
    if code == 903 or "слишком много запросов" in message.lower():
        raise BudgetSpent(f"{what}: {message}")
    raise PermanentError(f"{what}: error {code}: {message}" if code else f"{what}: {message}")


async def start(
    http: httpx.AsyncClient, base: str, key: str, what: str, filters: Mapping[str, str]
) -> int:
    """Start an export of ``what`` (``deals``, ``groups/7/users``, …); its ``export_id``."""
    label = f"getcourse export {what}"
    try:
        response = await http.get(f"{base}/pl/api/account/{what}", params={"key": key, **filters})
    except httpx.TimeoutException:
        raise TransientError(f"{label}: timed out") from None
    except httpx.TransportError as exc:
        raise TransientError(f"{label}: connection failed ({type(exc).__name__})") from None
    classify_status(response, label)
    try:
        data = response.json()
    except ValueError:
        raise TransientError(f"{label}: the answer is not JSON") from None
    if not isinstance(data, dict):
        raise PermanentError(f"{label}: unexpected answer shape")
    raise_for_error(data, label)
    info = data.get("info")
    export_id = info.get("export_id") if isinstance(info, dict) else None
    try:
        return int(export_id)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PermanentError(f"{label}: the answer has no export_id") from None


@dataclass
class ExportRows:
    """A ready export: column titles and an async iterator of rows (lists of strings)."""

    fields: list[str]
    rows: AsyncIterator[list[Any]]


@asynccontextmanager
async def collect(
    http: httpx.AsyncClient, base: str, key: str, export_id: int
) -> AsyncIterator[ExportRows]:
    """The rows of a ready export, streamed; raises :class:`ExportNotReady` (909) etc."""
    label = f"getcourse export {export_id}"
    url = f"{base}/pl/api/account/exports/{export_id}"
    try:
        async with http.stream("GET", url, params={"key": key}) as response:
            classify_status(response, label)
            chunks = response.aiter_bytes(CHUNK)
            header = await _header(chunks, label)
            yield ExportRows(header.fields, _rows(header, chunks))
    except httpx.TimeoutException:
        raise TransientError(f"{label}: timed out") from None
    except httpx.TransportError as exc:
        raise TransientError(f"{label}: connection failed ({type(exc).__name__})") from None
    except ijson.JSONError as exc:
        raise TransientError(f"{label}: the answer is not valid JSON ({exc})") from None


@dataclass
class _Header:
    fields: list[str]
    pending_rows: list[list[Any]]
    items: Any  # the ijson items coroutine, already fed the header's chunks
    found: Any  # its sendable list


async def _header(chunks: AsyncIterator[bytes], label: str) -> _Header:
    """Feed chunks until ``success`` and the field titles are known."""
    top: dict[str, Any] = {}
    fields: list[str] = []
    fields_done = False
    events = ijson.sendable_list()
    parser = ijson.parse_coro(events)
    found = ijson.sendable_list()
    items = ijson.items_coro(found, "info.items.item")
    async for chunk in chunks:
        parser.send(chunk)
        items.send(chunk)
        for prefix, event, value in events:
            if prefix in ("success", "error", "error_code", "error_message") and event not in (
                "start_map", "end_map", "map_key"
            ):  # fmt: skip
                top[prefix] = value
            elif prefix == "info.fields.item" and event == "string":
                fields.append(value)
            elif prefix == "info.fields" and event == "end_array":
                fields_done = True
        del events[:]
        failed = "success" in top and not truthy(top["success"])
        if failed and ("error_code" in top or "error_message" in top or "error" in top):
            raise_for_error(top, label)
        if "success" in top and fields_done:
            pending = list(found)
            del found[:]
            return _Header(fields, pending, items, found)
    parser.close()
    if top:
        raise_for_error(top, label)
    raise PermanentError(f"{label}: the answer has no fields")


async def _rows(header: _Header, chunks: AsyncIterator[bytes]) -> AsyncIterator[list[Any]]:
    for row in header.pending_rows:
        yield row
    async for chunk in chunks:
        header.items.send(chunk)
        for row in header.found:
            yield row
        del header.found[:]
    header.items.close()
    for row in header.found:
        yield row
