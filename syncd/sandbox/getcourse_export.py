"""The export API and the direct account calls (getcourse.md, "Export").

Start: ``GET /pl/api/account/{users | groups/{id}/users | deals | payments}?key=…&filters``
→ ``{"success": true, "info": {"export_id": N}}``. Collect:
``GET /pl/api/account/exports/{id}?key=…`` → 909 «Файл еще не создан» until ready, then
``{"success": true, "info": {"fields": [...], "items": [[...], ...]}}``, streamed in chunks
so a million-row export never sits in memory. Errors:
``{"success": false, "error": true, "error_code": N, "error_message": "…"}``.

Checks, in order: 901 bad key (not counted) → 903 «Слишком много запросов» when
``budget`` requests (starts and polls alike) were admitted within the last
``budget_window`` seconds of ``state.clock`` (a sliding window; the 903 answer itself is
not counted, so the account recovers once old requests age out) → the request is now
counted in ``state.export_requests`` → for a start: 913/918 unknown deal/payment status,
999 a filter date not ``YYYY-MM-DD`` (code and text chosen here), 908 no filter at all,
905 «Уже запущен один экспорт» while an earlier export has not yet been collected (nothing
is started); for a collect: 999 unknown export id (chosen here), 909 until the export has
answered 909 ``ready_after_polls`` times and ``ready_after_seconds`` passed. A ready
export can be collected again. Rows are computed when collected, from the data as it is
then. Unknown query parameters are ignored; an empty filter value counts as absent;
user status filters are not validated (the doc lists no user statuses).

Switches (``getcourse_state``): ``export_api = False`` answers 917 to every export
request (after the key check, uncounted); ``collect_errors[kind]`` answers a ready export
with that message (e.g. «Файл не создан»: the export is over); ``raw_answers[kind]`` sends
those bytes instead of a ready answer; ``extra_items[kind]`` puts raw JSON texts first
among the rows.

``POST /pl/api/account/fields`` and ``POST /pl/api/account/groups`` (``key`` in the form or
the query) answer ``info`` lists at once; the group list counts against the export budget
(``groups_cost_budget``, on by default: a public client counts it), the field list does
not; a bad key answers 901 in the export error shape.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import date
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from syncd.sandbox.getcourse_import import read_form
from syncd.sandbox.getcourse_rows import Row, export_table, stamp
from syncd.sandbox.getcourse_state import (
    DEAL_STATUSES,
    PAYMENT_STATUSES,
    ExportKind,
    ExportQuery,
    GcCall,
    GcExport,
    GetCourseState,
)

MESSAGES = {
    901: "Неверный ключ доступа",
    903: "Слишком много запросов",
    905: "Уже запущен один экспорт",
    908: "Не указан ни один фильтр",
    909: "Файл еще не создан",
    913: "Неверный статус заказа",
    914: "Неверный статус",
    917: "Функционал API недоступен на вашем тарифе",
    918: "Неверный статус платежа",
}
DATE_FILTERS: dict[ExportKind, tuple[str, ...]] = {
    "users": ("created_at",),
    "group_users": ("created_at", "added_at"),
    "deals": ("created_at", "payed_at", "finished_at", "status_changed_at"),
    "payments": ("created_at", "status_changed_at"),
}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_encode = json.JSONEncoder(ensure_ascii=False).encode
CHUNK_ROWS = 1000
_Work = Callable[[GetCourseState], Response]
_Info = Callable[[GetCourseState], list[dict[str, Any]]]


class _Refused(Exception):
    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.message = message or MESSAGES[code]


def start(kind: ExportKind) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint that starts one kind of export."""

    async def endpoint(request: Request) -> Response:
        group_id: int | None = request.path_params.get("group_id")
        return _answer(request, lambda state: _start(state, request.query_params, kind, group_id))

    return endpoint


async def collect(request: Request) -> Response:
    export_id: int = request.path_params["export_id"]
    return _answer(request, lambda state: _collect(state, export_id))


def _answer(request: Request, work: _Work) -> Response:
    state: GetCourseState = request.app.state.sandbox
    params = {k: v for k, v in request.query_params.items() if k != "key"}
    call = GcCall(request.method, request.url.path, None, params, "ok")
    state.calls.append(call)
    try:
        if request.query_params.get("key") != state.key:
            raise _Refused(901)
        if not state.export_api:
            raise _Refused(917)
        _spend_budget(state)
        return work(state)
    except _Refused as refused:
        call.outcome = f"error:{refused.code}"
        return _error(refused.code, refused.message)


def _error(code: int, message: str) -> Response:
    return JSONResponse(
        {"success": False, "error": True, "error_code": code, "error_message": message}
    )


def _spend_budget(state: GetCourseState) -> None:
    now = state.clock()
    window = state.export_times
    while window and window[0] <= now - state.budget_window:
        window.popleft()
    if len(window) >= state.budget:
        raise _Refused(903)
    window.append(now)
    state.export_requests += 1


def _start(
    state: GetCourseState, query: QueryParams, kind: ExportKind, group_id: int | None
) -> Response:
    status = query.get("status") or None
    if kind == "deals" and status is not None and status not in DEAL_STATUSES:
        raise _Refused(913)
    if kind == "payments" and status is not None and status not in PAYMENT_STATUSES:
        raise _Refused(918)
    ranges: dict[str, tuple[date | None, date | None]] = {}
    for name in DATE_FILTERS[kind]:
        low, high = _day(query, f"{name}[from]"), _day(query, f"{name}[to]")
        if low is not None or high is not None:
            ranges[name] = (low, high)
    if not ranges and status is None:
        raise _Refused(908)
    if any(export.collected == 0 for export in state.exports.values()):
        raise _Refused(905)
    export = GcExport(state.next_id(70_000), ExportQuery(kind, ranges, status, group_id),
                      state.clock())  # fmt: skip
    state.exports[export.id] = export
    return JSONResponse({"success": True, "info": {"export_id": export.id}})


def _day(query: QueryParams, name: str) -> date | None:
    raw = query.get(name) or ""
    if not raw:
        return None
    try:
        if not _DATE.fullmatch(raw):
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise _Refused(999, f"Неверная дата в фильтре {name}: {raw}") from None


def _collect(state: GetCourseState, export_id: int) -> Response:
    export = state.exports.get(export_id)
    if export is None:
        raise _Refused(999, f"Экспорт {export_id} не найден")
    waited = state.clock() - export.started_at
    if export.polls < state.ready_after_polls or waited < state.ready_after_seconds:
        export.polls += 1
        raise _Refused(909)
    export.collected += 1
    kind = export.query.kind
    if kind in state.collect_errors:
        return JSONResponse(
            {"success": False, "error": True, "error_message": state.collect_errors[kind]}
        )
    if kind in state.raw_answers:
        return Response(state.raw_answers[kind], media_type="application/json")
    header, rows = export_table(state, export.query)
    extra = state.extra_items.get(kind, [])
    return StreamingResponse(_stream(header, rows, extra), media_type="application/json")


async def _stream(
    header: list[str], rows: Iterable[Row], extra: Sequence[str] = ()
) -> AsyncIterator[bytes]:
    yield f'{{"success": true, "info": {{"fields": {_encode(header)}, "items": ['.encode()
    batch: list[Row] = []
    separator = ""
    for item in extra:
        yield (separator + item).encode()
        separator = ", "
    for row in rows:
        batch.append(row)
        if len(batch) == CHUNK_ROWS:
            yield (separator + _encode(batch)[1:-1]).encode()  # one encoder call per chunk
            separator, batch = ", ", []
            await asyncio.sleep(0)  # let other requests in between chunks
    if batch:
        yield (separator + _encode(batch)[1:-1]).encode()
    yield b"]}}"


async def list_fields(request: Request) -> Response:
    return await _direct(request, lambda state: [
        {"id": f.id, "type": f.type, "title": f.title, "required": False} for f in state.fields
    ])  # fmt: skip


async def list_groups(request: Request) -> Response:
    state: GetCourseState = request.app.state.sandbox
    return await _direct(request, lambda state: [
        {"id": g.id, "name": g.name, "last_added_at": stamp(g.last_added_at) or None}
        for g in state.groups.values()
    ], budget=state.groups_cost_budget)  # fmt: skip


async def _direct(request: Request, info: _Info, *, budget: bool = False) -> Response:
    state: GetCourseState = request.app.state.sandbox
    ok = (await read_form(request)).get("key") == state.key
    call = GcCall(request.method, request.url.path, None, None, "ok" if ok else "error:901")
    state.calls.append(call)
    if not ok:
        return _error(901, MESSAGES[901])
    if budget:
        try:
            _spend_budget(state)
        except _Refused as refused:
            call.outcome = f"error:{refused.code}"
            return _error(refused.code, refused.message)
    return JSONResponse({"success": True, "info": info(state)})
