"""GetCourse events in one canonical shape (SPEC §6), from every way they come in.

Whatever the source — a process «Вызвать URL» call, a Tech API webhook, an export row —
an event becomes a :class:`NewEvent` with a canonical ``kind``, ``external_id`` and data
fields (``email``, ``user_id``, ``deal_id``, ``number``, ``status``, ``cost``, …), so one
order seen three ways is one event per kind. Values that arrived as unsubstituted
placeholders (``{object.user.email}``) are treated as absent. No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from syncd.clients.protocol import truthy
from syncd.errors import InvalidInput
from syncd.identity import is_placeholder, normalise_email, normalise_id

KIND = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")
MAX_KIND, MAX_EXTERNAL_ID = 64, 128

#: The fields rule templates may always use (SPEC §6), plus the event's own.
CANONICAL_FIELDS = frozenset(
    {
        "email", "user_id", "deal_id", "number", "status", "cost", "paid_amount",
        "currency", "title", "created_at", "paid_at", "group_id", "group_name",
        "utm_source", "utm_medium", "utm_campaign",
        "kind", "external_id", "event_id",
        # bot events (SPEC §10)
        "telegram_id", "client_id", "project_id", "start", "utm_content", "utm_term",
        "step", "tag",
    }
)  # fmt: skip

TECHAPI_KINDS = {
    "getcourse/dealCreated": "deal.created",
    "getcourse/dealPaid": "deal.paid",
    "getcourse/dealStatusChanged": "deal.status_changed",
}


#: Not frozen: a frozen dataclass sets each field through ``object.__setattr__``, which
#: made building the 1.7 M events of a million-row export 4x dearer. Nothing mutates one.
@dataclass(slots=True)
class NewEvent:
    kind: str
    external_id: str
    source: str
    email: str | None = None
    gc_user_id: int | None = None
    occurred_at: datetime | None = None
    data: dict[str, Any] = field(default_factory=dict)
    #: a bot event's Salebot keys (SPEC §10)
    telegram_id: int | None = None
    client_id: int | None = None
    project_id: int | None = None


def _value(value: object) -> object | None:
    """Absent when missing, empty or an unsubstituted placeholder."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        return None if not text or is_placeholder(text) else text
    return value


def check_kind(kind: str) -> str:
    if len(kind) > MAX_KIND or not KIND.match(kind):
        raise InvalidInput(
            "invalid_event", "the event name must be lowercase letters, digits, '.' and '_'"
        )
    return kind


def external_id_for(kind: str, object_id: str, status: str | None) -> str:
    """``deal.status_changed`` is one event per status a deal reaches: ``{id}:{status}``."""
    if kind == "deal.status_changed":
        if not status:
            raise InvalidInput("missing_status", "deal.status_changed needs the status")
        return f"{object_id}:{status}"
    return object_id


def _object_id(value: object, name: str) -> str:
    text = str(value).strip()
    if len(text) > MAX_EXTERNAL_ID - 40 or not re.fullmatch(r"[0-9A-Za-z_:.\-]+", text):
        raise InvalidInput(f"invalid_{name}", f"{name} must be an id (digits, letters, -_.:)")
    return text


def from_process(kind: str, params: Mapping[str, object]) -> NewEvent:
    """A process «Вызвать URL» call: ``email`` and/or ``user_id``, ``id``, anything else."""
    check_kind(kind)
    data = {name: v for name, raw in params.items() if (v := _value(raw)) is not None}
    email = normalise_email(data["email"]) if "email" in data else None
    user_id = normalise_id(data["user_id"], "user_id") if "user_id" in data else None
    if email is None and user_id is None:
        raise InvalidInput("missing_key", "email or user_id is required")
    if "id" not in data:
        raise InvalidInput("missing_id", "id (the GetCourse object's id) is required")
    object_id = _object_id(data["id"], "id")
    if email is not None:
        data["email"] = email
    if user_id is not None:
        data["user_id"] = user_id
    if kind.startswith("deal."):
        data.setdefault("deal_id", object_id)
    status = data.get("status")
    return NewEvent(
        kind=kind,
        external_id=external_id_for(kind, object_id, str(status) if status else None),
        source="webhook",
        email=email,
        gc_user_id=user_id,
        data=data,
    )


#: ``ts64`` must fall in these years (epoch seconds): milliseconds, 1e20 or 1e300 are not
#: a time, and a time that cannot be stored must not become a 500.
TS64_RANGE = (946_684_800, 4_102_444_800)  # 2000-01-01 .. 2100-01-01 UTC


def techapi_payload(body: Mapping[str, object]) -> Mapping[str, object]:
    """The delivery inside ``{"json": {...}}``, or a bare one (an object with ``eventType``).

    Both forms are seen (getcourse.md, "Added 2026-12-02"). A body with its own
    ``eventType`` is bare even if it also has a ``json`` field; otherwise a ``json`` object
    is unwrapped (other names beside it come from the query string, merged by the HTTP layer).
    """
    if "eventType" in body:
        return body
    payload = body.get("json")
    if isinstance(payload, Mapping):
        return payload
    raise InvalidInput(
        "invalid_body", 'a Tech API delivery is {"json": {...}} or an object with eventType'
    )


def _ts64(value: object) -> datetime | None:
    """``ts64`` (epoch seconds, a number or digits) → UTC; absent → None; else 400."""
    if value is None or value == "":
        return None
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 12:
        number = float(value.strip())
    low, high = TS64_RANGE
    if number is None or not low <= number < high:  # NaN compares false: refused too
        raise InvalidInput(
            "invalid_body", "ts64 must be the event's time in seconds since 1970 (2000..2099)"
        )
    return datetime.fromtimestamp(number, UTC)


def from_techapi(body: Mapping[str, object]) -> NewEvent:
    """A Tech API webhook, wrapped ``{"json": {"eventType": …}}`` or bare: the same event."""
    payload = techapi_payload(body)
    event_type = payload.get("eventType")
    kind = TECHAPI_KINDS.get(str(event_type))
    if kind is None:
        raise InvalidInput("invalid_event", f"unsupported eventType {str(event_type)[:64]!r}")
    user = payload.get("user") if isinstance(payload.get("user"), Mapping) else {}
    deal = payload.get("deal") if isinstance(payload.get("deal"), Mapping) else {}
    assert isinstance(user, Mapping) and isinstance(deal, Mapping)
    if _value(deal.get("id")) is None:
        raise InvalidInput("missing_id", "deal.id is required")
    deal_id = _object_id(deal["id"], "deal_id")
    email = normalise_email(user["email"]) if _value(user.get("email")) is not None else None
    raw_user_id = _value(user.get("gcId"))
    user_id = normalise_id(raw_user_id, "user_id") if raw_user_id is not None else None
    if email is None and user_id is None:
        raise InvalidInput("missing_key", "user.email or user.gcId is required")
    status = _value(deal.get("status"))
    # "ts" is local time with a Z appended: not trusted
    occurred = _ts64(payload.get("ts64"))
    data: dict[str, Any] = {
        "email": email,
        "user_id": user_id,
        "deal_id": deal_id,
        "number": _value(deal.get("number")),
        "status": status,
        "cost": _value(deal.get("cost")),
        "paid_amount": _value(deal.get("payedValue")),
        "currency": _value(deal.get("currency")),
        "created_at": _value(deal.get("createdAt")),
        "is_paid": truthy(deal.get("isPayed")),
        "event_type": event_type,
    }
    return NewEvent(
        kind=kind,
        external_id=external_id_for(kind, deal_id, str(status) if status else None),
        source="techapi",
        email=email,
        gc_user_id=user_id,
        occurred_at=occurred,
        data={k: v for k, v in data.items() if v is not None},
    )


# Export rows (the poller) ----------------------------------------------------------
#: Column titles → canonical names, per export. Titles are compared without a BOM and
#: case-insensitively; every other column (custom fields…) is kept under its title.
#: The deal's title is «Title» in some accounts, «Состав заказа» in others.
COLUMNS: dict[str, dict[str, str]] = {
    "users": {
        "id": "user_id", "email": "email", "создан": "created_at", "имя": "first_name",
        "фамилия": "last_name", "телефон": "phone", "город": "city",
        "utm_source": "utm_source", "utm_medium": "utm_medium", "utm_campaign": "utm_campaign",
        "добавлен в группу": "added_at",
    },
    "deals": {
        "id заказа": "deal_id", "номер": "number", "id пользователя": "user_id",
        "пользователь": "user_name", "email": "email", "телефон": "phone",
        "дата создания": "created_at", "дата оплаты": "paid_at", "title": "title",
        "состав заказа": "title", "статус": "status", "оплачено": "paid_amount",
        "дата изменения статуса": "status_changed_at", "дата завершения": "finished_at",
    },
    "payments": {
        "номер": "payment_id", "id пользователя": "user_id", "пользователь": "user_name",
        "email": "email", "id заказа": "deal_id", "заказ": "number", "дата создания": "created_at",
        "дата изменения статуса": "status_changed_at", "тип": "payment_type", "статус": "status",
        "сумма": "paid_amount", "комиссии": "fee", "получено": "received",
    },
}  # fmt: skip
MONEY_FIELDS = frozenset({"cost", "paid_amount", "fee", "received"})
DATE_FIELDS = frozenset({"created_at", "paid_at", "status_changed_at", "finished_at", "added_at"})
#: Deal statuses as the interface labels them (getcourse.md, "Added 2026-12-02"), compared
#: lowercase with «ё» as «е»; a cell may carry the code or the label, the code is stored.
DEAL_STATUS_LABELS = {
    "новый": "new", "оплачен": "payed", "отменен": "cancelled", "ложный": "false",
    "в работе": "in_work", "ожидаем оплаты": "payment_waiting",
    "частично оплачен": "part_payed", "ожидаем возврата": "waiting_for_return",
    "не подтвержден": "not_confirmed", "отложен": "pending",
}  # fmt: skip
_STATUS_CODE = re.compile(r"[a-z_]{1,32}")
#: GetCourse exports dates in the account's local time; Moscow unless told otherwise.
ACCOUNT_UTC_OFFSET_HOURS = 3
_ACCOUNT_OFFSET = timedelta(hours=ACCOUNT_UTC_OFFSET_HOURS)


#: Every whitespace character (what ``\s`` matches; U+3000 is the highest), removed.
_NO_SPACES = {code: None for code in range(0x3001) if chr(code).isspace()}
_AMOUNT = re.compile(r"-?\d+(\.\d+)?")
#: ``300 руб.``, ``12 000,00 RUB``, ``₽ 99``, ``1,200.50 USD``: a number and a currency word.
_WITH_WORD = re.compile(r"[^\d\-]*?(-?[\d.,]+)[^\d]*")


@lru_cache(maxsize=4096)  # a school sells a few dozen prices: an export repeats them
def money(text: str) -> str:
    """An amount as GetCourse writes it → its number: ``"12 000,00"`` → ``"12000"``.

    Spaces may be non-breaking; ``"99,50"`` → ``"99.50"``; a currency word around the
    number is dropped (``"300 руб."`` → ``"300"``); with both separators the last one is
    the decimal point (``"1,200.50"`` → ``"1200.50"``). InvalidInput when no number is left.
    """
    cleaned = text.translate(_NO_SPACES).replace(",", ".")
    if not _AMOUNT.fullmatch(cleaned):
        return _money_slow(text)
    whole, _, fraction = cleaned.partition(".")
    return whole if not fraction.strip("0") else f"{whole}.{fraction.ljust(2, '0')}"


def _money_slow(text: str) -> str:
    found = _WITH_WORD.fullmatch(text.translate(_NO_SPACES))
    number = found.group(1).strip(".,") if found else ""
    if "." in number and "," in number:  # the last separator is the decimal point
        point = max(number.rfind("."), number.rfind(","))
        number = number[:point].replace(".", "").replace(",", "") + "." + number[point + 1 :]
    number = number.replace(",", ".")
    if not number or not _AMOUNT.fullmatch(number):
        raise InvalidInput("invalid_row", f"not an amount of money: {text[:40]!r}")
    return money(number)


#: Status cells already read → their code (a few distinct ones repeat on every row).
_STATUS_SEEN: dict[str, str] = {}


def status_code(text: str) -> str | None:
    """A status cell (a code or an interface label) → the code; None when unreadable."""
    code = DEAL_STATUS_LABELS.get(text.lower().replace("ё", "е"))
    if code is None and _STATUS_CODE.fullmatch(text):
        code = text
    if code is not None and len(_STATUS_SEEN) < 256:
        _STATUS_SEEN[text] = code
    return code


def local_time(text: str) -> datetime | None:
    """``YYYY-MM-DD HH:MM:SS`` in the account's local time → UTC (None when empty)."""
    if not text:
        return None
    try:
        if len(text) != 19:
            raise ValueError
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput("invalid_row", f"not a date: {text[:40]!r}") from None
    return moment.replace(tzinfo=UTC) - _ACCOUNT_OFFSET


@dataclass(slots=True)
class Unreadable:
    """The cells of one export that could not be read (each left empty), by field.

    ``first`` keeps one example per field, only for fields that hold no personal data
    (amounts, statuses, dates), so a report of it may be logged.
    """

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, cell: object) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        if name not in self.first and (
            name in MONEY_FIELDS or name in DATE_FIELDS or name == "status"
        ):
            self.first[name] = repr(cell)[:40]

    def __bool__(self) -> bool:
        return bool(self.counts)

    def summary(self) -> str:
        """``"paid_amount: 3 cells (e.g. 'много'), email: 1 cell"``."""
        parts = []
        for name, count in sorted(self.counts.items()):
            text = f"{name}: {count} cell{'s' if count > 1 else ''}"
            if name in self.first:
                text += f" (e.g. {self.first[name]})"
            parts.append(text)
        return ", ".join(parts)


class _NotNoted(Unreadable):
    """For callers that do not ask what was unreadable: notes nothing."""

    def add(self, name: str, cell: object) -> None:
        return None


_NOT_NOTED = _NotNoted()


@dataclass(frozen=True, slots=True)
class _Plan:
    """How the cells of one export header become data fields."""

    names: tuple[str, ...]  # per column: its canonical name, or its clean title
    money: tuple[str, ...]  # the names whose cells are amounts of money
    currency: str | None  # «Стоимость, RUB» → ``RUB``
    status: bool  # a «Статус» column


@lru_cache(maxsize=64)
def column_plan(export: str, fields: tuple[str, ...]) -> _Plan:
    """What each column of a header is called in an event's data, and which hold money."""
    known = COLUMNS["users" if export == "groups" else export]
    names: list[str] = []
    currency = None
    for title in fields:
        clean = title.lstrip("\ufeff").strip()
        lowered = clean.lower()
        if lowered.startswith("стоимость"):
            names.append(known.get(lowered, "cost"))
            if currency is None and "," in clean:
                currency = clean.rsplit(",", 1)[1].strip() or None
        else:
            names.append(known.get(lowered) or clean)
    money_names = tuple(n for n in names if n in MONEY_FIELDS)
    return _Plan(tuple(names), money_names, currency, "status" in names)


def read_row(
    export: str, fields: list[str], row: list[Any], unreadable: Unreadable = _NOT_NOTED
) -> dict[str, Any]:
    """A row zipped with its titles, canonical names where known, empty cells dropped.

    A cell that cannot be read (not text or a number, an amount or a status that is none)
    leaves its field empty and is counted in ``unreadable``; a row that is not a list of
    one cell per column is InvalidInput.
    """
    if type(row) is not list or len(row) != len(fields):
        if not isinstance(row, list):
            raise InvalidInput("invalid_row", f"the row is a {type(row).__name__}, not a list")
        raise InvalidInput("invalid_row", f"{len(row)} cells for {len(fields)} columns")
    plan = column_plan(export, tuple(fields))
    try:  # the usual row: every cell a string
        data: dict[str, Any] = {
            name: text for name, cell in zip(plan.names, row, strict=True) if (text := cell.strip())
        }
    except AttributeError:  # numbers, nulls or worse among the cells
        data = {}
        for name, cell in zip(plan.names, row, strict=True):
            if cell is None:
                continue
            if type(cell) is str or (type(cell) in (int, float) and cell == cell):
                if text := str(cell).strip():
                    data[name] = text
            else:  # a list, an object, a boolean, NaN: no cell of an export
                unreadable.add(name, type(cell).__name__)
    for name in plan.money:
        if name in data:
            try:
                data[name] = money(data[name])
            except InvalidInput:
                unreadable.add(name, data.pop(name))
    if plan.status and "status" in data:
        code = _STATUS_SEEN.get(data["status"]) or status_code(data["status"])
        if code is None:
            unreadable.add("status", data.pop("status"))
        else:
            data["status"] = code
    if plan.currency and "cost" in data:
        data["currency"] = plan.currency
    return data


_UNSEEN: Any = object()


def from_export_row(
    export: str, fields: list[str], row: list[Any], *, group_id: int | None = None,
    group_name: str | None = None, source: str = "poller", unreadable: Unreadable = _NOT_NOTED,
) -> list[NewEvent]:  # fmt: skip
    """The canonical events of one export row (SPEC §6 table); InvalidInput if malformed.

    A cell that cannot be read empties that field and is counted in ``unreadable``; the
    row is refused only when what identifies its event is missing (no email and no user
    id, no deal or payment id, no payment status).
    """
    data = read_row(export, fields, row, unreadable)
    email = user_id = None
    if data.get("email"):
        try:
            email = data["email"] = normalise_email(data["email"])
        except InvalidInput:
            unreadable.add("email", data.pop("email"))
    if data.get("user_id"):
        try:
            user_id = data["user_id"] = normalise_id(data["user_id"], "user_id")
        except InvalidInput:
            unreadable.add("user_id", data.pop("user_id"))
    if email is None and user_id is None:
        raise InvalidInput("invalid_row", "the row has neither Email nor a user id")

    moments: dict[str, datetime | None] = {}  # a row's dates often repeat (paid = changed)

    def event(kind: str, external_id: str, occurred: str | None) -> NewEvent:
        text = occurred or ""
        moment = moments.get(text, _UNSEEN)
        if moment is _UNSEEN:
            try:
                moment = local_time(text)
            except InvalidInput:
                moment = None
                for name in [n for n in DATE_FIELDS if data.get(n) == text]:
                    unreadable.add(name, data.pop(name))
            moments[text] = moment
        # the events of a row share its data and, where equal, its moment (each converted
        # once for the database by the event store)
        return NewEvent(kind, external_id, source, email, user_id, moment, data)

    if export == "users":
        return [
            event("user.created", str(user_id or _need(data, "user_id")), data.get("created_at"))
        ]
    if export == "groups":
        if group_id is None or user_id is None:
            raise InvalidInput("invalid_row", "a group member row needs the group and user id")
        data["group_id"] = group_id
        if group_name:
            data["group_name"] = group_name
        return [event("group.joined", f"{group_id}:{user_id}", data.get("added_at"))]
    if export == "payments":
        payment_id = _object_id(_need(data, "payment_id"), "payment_id")
        status = _need(data, "status")
        return [
            event(
                f"payment.{status}",
                payment_id,
                data.get("status_changed_at") or data.get("created_at"),
            )
        ]
    deal_id = _object_id(_need(data, "deal_id"), "deal_id")
    status = data.get("status", "")
    events = [event("deal.created", deal_id, data.get("created_at"))]
    if status == "payed" or data.get("paid_at"):
        events.append(event("deal.paid", deal_id, data.get("paid_at")))
    if status and status != "new":  # one event per status a deal reaches
        events.append(
            event("deal.status_changed", f"{deal_id}:{status}", data.get("status_changed_at"))
        )
    return events


def _need(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not value:
        raise InvalidInput("invalid_row", f"the row has no {name}")
    return str(value)
