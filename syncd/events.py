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
from datetime import UTC, datetime
from typing import Any

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
    }
)  # fmt: skip

TECHAPI_KINDS = {
    "getcourse/dealCreated": "deal.created",
    "getcourse/dealPaid": "deal.paid",
    "getcourse/dealStatusChanged": "deal.status_changed",
}


@dataclass(frozen=True, slots=True)
class NewEvent:
    kind: str
    external_id: str
    source: str
    email: str | None = None
    gc_user_id: int | None = None
    occurred_at: datetime | None = None
    data: dict[str, Any] = field(default_factory=dict)


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


def from_techapi(body: Mapping[str, object]) -> NewEvent:
    """A Tech API webhook: ``{"json": {"eventType": …, "user": {…}, "deal": {…}}}``."""
    payload = body.get("json")
    if not isinstance(payload, Mapping):
        raise InvalidInput("invalid_body", 'a Tech API delivery is {"json": {...}}')
    event_type = payload.get("eventType")
    kind = TECHAPI_KINDS.get(str(event_type))
    if kind is None:
        raise InvalidInput("invalid_event", f"unsupported eventType {event_type!r}")
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
    occurred = None
    ts64 = payload.get("ts64")  # "ts" is local time with a Z appended: not trusted
    if isinstance(ts64, int | float) and not isinstance(ts64, bool) and ts64 > 0:
        occurred = datetime.fromtimestamp(ts64, UTC)
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


def truthy(value: object) -> bool:
    """GetCourse booleans: true/false, 1/0, "true"/"false", "1"/"0"."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)
