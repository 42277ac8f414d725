"""The import API: ``POST /pl/api/users`` and ``POST /pl/api/deals`` (getcourse.md, "Import").

Form fields ``key``, ``action``, ``params`` (base64 of UTF-8 JSON), also read from the query
string; a GET carries only the query string, so a POST turned into a GET by a redirect
answers «Пустой параметр action», as the doc describes. Checks, in order:
1. ``import_mode == "no_api"``: HTTP 200, empty body, nothing written;
2. no ``action`` → «Пустой параметр action»; wrong ``key`` → «Неавторизованное
   API-обращение»; ``import_mode`` «Действие запрещено» / «Функционал недоступен»;
   an action other than ``add`` → «Неизвестное действие» (text chosen here);
3. ``params`` not base64 / not UTF-8 / not a JSON object → «Не указаны параметры».
These are call-level failures: ``{"success": false, "error": "<message>"}``.

Then the two-level answer ``{"success": true, "action": "add", "result": {...}}``:
- the user is found by email (case-insensitive), or by phone when no email is given;
  neither → ``result.error`` «Не указан ни эл. адрес, ни телефон»;
- unknown → created (``user_status: "added"``); known with ``system.refresh_if_exists``
  truthy → updated (``"updated"``: names, phone, custom fields, groups); known without it
  → left as is (``"exists"``, a status name chosen here);
- ``addfields`` are matched by custom field title; an unknown title is ignored silently
  (the plausible GetCourse behaviour, and the dangerous one: a typo in a title writes
  nothing and still answers success) and noted in ``state.ignored_addfields``;
- ``group_name`` (a list or one name) adds groups, creating unknown group names;
  ``session.utm_*`` are kept on a created user only;
- creating beyond ``create_limit`` → ``result.error`` «Достигнут лимит».
``/pl/api/deals`` ("Import: create a deal") does the same for ``user`` and then creates a
deal from ``deal.offer_code`` (+ ``deal_cost``), ``deal.offer_id``, or
``deal.product_title`` (+ ``deal_cost``) — none of them → «Не указано предложение»; a code
or title without a cost → «Не указана стоимость заказа» (text chosen here) —, or updates
the deal with the same ``deal.deal_number``; ``deal_status`` must be a known deal status,
``deal_is_paid`` marks it paid. ``result`` carries ``deal_id``, ``deal_number`` and, with
``system.return_payment_link``, ``payment_link``. ``group_name`` items may be
``[name, "YYYY-MM-DD"]`` pairs. All booleans follow ``state.bool_style``.
"""

from __future__ import annotations

import base64
import binascii
import json
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from syncd.sandbox.getcourse_state import DEAL_STATUSES, GcCall, GcUser, GetCourseState, local_now

NO_CONTACT = "Не указан ни эл. адрес, ни телефон"
Result = dict[str, Any]


async def import_users(request: Request) -> Response:
    return await _import(request, deals=False)


async def import_deals(request: Request) -> Response:
    return await _import(request, deals=True)


async def read_form(request: Request) -> dict[str, str]:
    """The query string, overlaid by an urlencoded POST body."""
    form = dict(request.query_params)
    if request.method == "POST":
        body = (await request.body()).decode("utf-8", "replace")
        form.update(parse_qsl(body, keep_blank_values=True))
    return form


async def _import(request: Request, *, deals: bool) -> Response:
    state: GetCourseState = request.app.state.sandbox
    form = await read_form(request)
    action = form.get("action", "")
    call = GcCall(request.method, request.url.path, action or None, None, "ok")
    state.calls.append(call)
    if state.import_mode == "no_api":
        call.outcome = "no_api"
        return Response(b"", 200)
    failure = _call_failure(state, form, action)
    params = _decode(form.get("params", "")) if failure is None else None
    if params is None:
        failure = failure or "Не указаны параметры"
        call.outcome = f"failed: {failure}"
        return JSONResponse(_render(state, {"success": False, "error": failure}))
    call.params = params
    result = _import_deal(state, params) if deals else _import_user(state, params)[0]
    call.outcome = "ok" if not result["error"] else f"rejected: {result['error_message']}"
    answer = {"success": True, "action": action, "result": _render(state, result)}
    return JSONResponse(_render(state, answer))


def _call_failure(state: GetCourseState, form: dict[str, str], action: str) -> str | None:
    if not action:
        return "Пустой параметр action"
    if form.get("key") != state.key:
        return "Неавторизованное API-обращение"
    if state.import_mode == "forbidden":
        return "Действие запрещено"
    if state.import_mode == "unavailable":
        return "Функционал недоступен"
    if action != "add":
        return "Неизвестное действие"
    return None


def _decode(raw: str) -> dict[str, Any] | None:
    try:
        decoded = json.loads(base64.b64decode(raw, validate=True).decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return decoded if isinstance(decoded, dict) and decoded else None


def _render(state: GetCourseState, answer: dict[str, Any]) -> dict[str, Any]:
    if state.bool_style == "json":
        return answer
    styled = {True: 1, False: 0} if state.bool_style == "int" else {True: "true", False: "false"}
    return {k: styled[v] if isinstance(v, bool) else v for k, v in answer.items()}


def _rejected(message: str, **extra: Any) -> Result:
    return {"success": False, **extra, "error": True, "error_message": message}


def _accepted(user: GcUser, status: str, **extra: Any) -> Result:
    return {"success": True, "user_id": user.id, "user_status": status, **extra,
            "error": False, "error_message": ""}  # fmt: skip


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _import_user(state: GetCourseState, params: dict[str, Any]) -> tuple[Result, GcUser | None]:
    data = _obj(params.get("user"))
    email = str(data.get("email") or "").strip().lower()
    phone = str(data.get("phone") or "").strip()
    if not email and not phone:
        return _rejected(NO_CONTACT, user_id=None), None
    user = state.user_by_email(email) if email else state.user_by_phone(phone)
    if user is not None:
        if not _truthy(_obj(params.get("system")).get("refresh_if_exists")):
            return _accepted(user, "exists"), user
        _apply(state, user, data)
        return _accepted(user, "updated"), user
    if state.create_limit is not None and state.created_count >= state.create_limit:
        return _rejected("Достигнут лимит", user_id=None), None
    state.created_count += 1
    session = _obj(params.get("session"))
    utm = {k: str(v) for k, v in session.items() if k.startswith("utm_") and v is not None}
    user = state.add_user(email or None, reg_type="Импорт", utm=utm)
    _apply(state, user, data)
    return _accepted(user, "added"), user


def _apply(state: GetCourseState, user: GcUser, data: dict[str, Any]) -> None:
    for attr in ("phone", "first_name", "last_name", "city"):
        if data.get(attr):
            setattr(user, attr, str(data[attr]).strip())
    known = {f.title for f in state.fields}
    for title, value in _obj(data.get("addfields")).items():
        if title in known:
            user.fields[title] = "" if value is None else str(value)
        else:
            state.ignored_addfields.append((user.email or user.phone, title))
    names = data.get("group_name") or []
    for item in [names] if isinstance(names, str) else names:
        # a name, or a [name, "YYYY-MM-DD"] pair: access until that date (api/getcourse.md)
        name = item[0] if isinstance(item, list) and item else item
        group = state.group_by_name(str(name)) or state.add_group(str(name))
        state.add_member(group, user)


#: Where the simulator's payment links point (a real account's own domain).
PAYMENT_LINK_BASE = "https://sandbox-school.getcourse.ru"


def _import_deal(state: GetCourseState, params: dict[str, Any]) -> Result:
    data = _obj(params.get("deal"))
    # an offer code (+ cost), an offer id, or a product title (+ cost): api/getcourse.md
    offer_id = str(data.get("offer_id") or "")
    title = str(data.get("product_title") or data.get("offer_code") or "")
    if not title and offer_id:
        title = f"Предложение {offer_id}"
    status = str(data.get("deal_status") or "new")
    if not title:
        return _rejected("Не указано предложение", user_id=None)
    if not offer_id and data.get("deal_cost") in (None, ""):
        return _rejected("Не указана стоимость заказа", user_id=None)  # the simulator's words
    try:
        cost = Decimal(str(data.get("deal_cost") or 0))
    except InvalidOperation:
        return _rejected("Неверная стоимость заказа", user_id=None)
    if status not in DEAL_STATUSES:
        return _rejected(f"Неизвестный статус заказа: {status}", user_id=None)
    user_result, user = _import_user(state, params)
    if user is None:
        return user_result
    number = str(data.get("deal_number") or "")
    deal = next((d for d in state.deals.values() if number and str(d.number) == number), None)
    if deal is None:
        deal = state.add_deal(user, cost, status=status, title=title)
        if number.isdigit():
            deal.number = int(number)
    else:
        deal.title, deal.cost, deal.status = title, cost, status
        deal.status_changed_at = local_now()
    if _truthy(data.get("deal_is_paid")):
        deal.status, deal.paid, deal.payed_at = "payed", deal.cost, local_now()
    answer = {**user_result, "deal_id": deal.id, "deal_number": deal.number,
              "deal_status": deal.status}  # fmt: skip
    if _truthy(_obj(params.get("system")).get("return_payment_link")):
        answer["payment_link"] = (
            f"{PAYMENT_LINK_BASE}/sales/shop/dealPay/id/{deal.id}/hash/{deal.number:x}"
        )
    return answer
