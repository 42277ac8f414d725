"""The GetCourse export API (``api/getcourse.md``, "Export"): start, then collect.

Start: ``GET {base}/pl/api/account/{what}?key=…&filters`` → ``info.export_id``.
Collect: ``GET {base}/pl/api/account/exports/{id}?key=…`` → ``info.fields`` (titles) and
``info.items`` (rows of strings) when ready; error 909 «Файл еще не создан» until then.

A ready answer can be hundreds of megabytes (a million deals), so :func:`collect` parses
it as it arrives (``ijson``): memory holds one chunk and the rows not yet consumed, never
the document. The key is in the query string: no URL is ever put in a message.

Errors are classified by :func:`syncd.clients.protocol.raise_for_error`: 909, 905 and 903
are transient; 901, 908, 913/914/918, 917 and «Файл не создан» are final
(:class:`ExportFailed`, with a reason).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import ijson

from syncd.clients.http import classify_status
from syncd.clients.protocol import (
    BudgetSpent,
    ExportBusy,
    ExportFailed,
    ExportNotReady,
    raise_for_error,
    truthy,
)
from syncd.errors import PermanentError, TransientError

CHUNK = 64 * 1024
__all__ = [
    "BudgetSpent",
    "ExportBusy",
    "ExportFailed",
    "ExportNotReady",
    "ExportRows",
    "collect",
    "raise_for_error",
    "start",
]


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
        raise _unreadable(label, f"not valid JSON ({exc})") from None


def _unreadable(label: str, why: str) -> ExportFailed:
    """An answer that cannot be read at all: final for that export, never polled again."""
    return ExportFailed(
        f"{label}: the answer cannot be read: {why}", None, f"the answer cannot be read: {why}"
    )


#: Deeper nesting than this is no export (a ready answer nests 4 deep: the document, info,
#: items, a row); ijson's memory grows with the square of the depth (20,000 deep: ~1 GB,
#: 512 deep: a few MB). High enough that brackets inside cell text never reach it.
MAX_DEPTH = 512
SLICE = 8192
_STEP = bytes(2 if c in b"[{" else 0 if c in b"]}" else 1 for c in range(256))


class _Depth:
    """Refuses an answer nested deeper than :data:`MAX_DEPTH` before ijson sees it.

    Per 8 KiB slice, ``depth + openers`` bounds the depth reached inside it (brackets
    within strings count too: the bound only errs high); only a slice whose bound is over
    the limit is walked byte by byte. A usual slice (some forty rows) costs four
    ``bytes.count`` calls.
    """

    __slots__ = ("depth", "label")

    def __init__(self, label: str) -> None:
        self.depth = 0
        self.label = label

    def check(self, chunk: bytes) -> None:
        depth = self.depth
        for at in range(0, len(chunk), SLICE):
            part = chunk[at : at + SLICE]
            opens = part.count(b"[") + part.count(b"{")
            if depth + opens > MAX_DEPTH:
                deepest = depth
                for step in part.translate(_STEP):
                    depth += step - 1
                    deepest = max(deepest, depth)
                if deepest > MAX_DEPTH:
                    raise _unreadable(self.label, f"nested deeper than {MAX_DEPTH}")
            else:
                depth += opens - part.count(b"]") - part.count(b"}")
        self.depth = depth


@dataclass
class _Header:
    fields: list[str]
    pending_rows: list[list[Any]]
    items: Any  # the ijson items coroutine, already fed the header's chunks
    found: Any  # its sendable list
    depth: _Depth
    parser: Any  # the ijson event parser, fed until ``info.items`` is known to be a list
    events: Any  # its sendable list
    items_seen: bool  # ``info.items`` opened a list
    label: str


def _items_seen(events: list[tuple[str, str, Any]], label: str) -> bool:
    for prefix, event, _ in events:
        if prefix == "info.items":
            if event != "start_array":
                raise _unreadable(label, "info.items is not a list")
            return True
    return False


async def _header(chunks: AsyncIterator[bytes], label: str) -> _Header:
    """Feed chunks until ``success`` and the field titles are known."""
    top: dict[str, Any] = {}
    fields: list[str] = []
    fields_done = items_seen = False
    depth = _Depth(label)
    events = ijson.sendable_list()
    parser = ijson.parse_coro(events)
    found = ijson.sendable_list()
    items = ijson.items_coro(found, "info.items.item")
    async for chunk in chunks:
        depth.check(chunk)
        parser.send(chunk)
        items.send(chunk)
        for prefix, event, value in events:
            if prefix in ("success", "error", "error_code", "error_message") and event not in (
                "start_map", "end_map", "map_key"
            ):  # fmt: skip
                top[prefix] = value
            elif prefix == "info.fields.item":
                if event != "string":
                    raise _unreadable(label, "a column title is not a string")
                fields.append(value)
            elif prefix == "info.fields" and event == "end_array":
                fields_done = True
        items_seen = items_seen or _items_seen(events, label)
        del events[:]
        failed = "success" in top and not truthy(top["success"])
        if failed and ("error_code" in top or "error_message" in top or "error" in top):
            raise_for_error(top, label)
        if "success" in top and fields_done:
            pending = list(found)
            del found[:]
            return _Header(fields, pending, items, found, depth, parser, events, items_seen, label)
    parser.close()
    if top:
        raise_for_error(top, label)
    raise _unreadable(label, "it has no column titles (info.fields)")


async def _rows(header: _Header, chunks: AsyncIterator[bytes]) -> AsyncIterator[list[Any]]:
    for row in header.pending_rows:
        yield row
    async for chunk in chunks:
        header.depth.check(chunk)
        if not header.items_seen:  # the parser runs only until the rows begin
            header.parser.send(chunk)
            header.items_seen = _items_seen(header.events, header.label)
            del header.events[:]
        header.items.send(chunk)
        for row in header.found:
            yield row
        del header.found[:]
    header.items.close()
    for row in header.found:
        yield row
    if not header.items_seen:
        raise _unreadable(header.label, "it has no rows list (info.items)")
