"""Bot events (SPEC §10): what a Salebot block tells syncd, as one canonical event.

``GET``/``POST /v1/salebot/events/{event}`` carries ``client_id`` and/or ``telegram_id``
(at least one), ``project_id`` (default ``salebot.project_id``), an optional ``email``,
an optional ``id`` (de-duplicates, like a GetCourse event id) and anything else as event
data. Salebot sends strings; numbers are kept as their text. A value that is still a
Salebot variable (``#{name}``: the bot had no value for it) is absent. The event is
``bot.{event}`` from source ``salebot``; without an ``id`` every call is a new event.
No I/O here.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from syncd.errors import InvalidInput
from syncd.events import MAX_KIND, NewEvent, _object_id, _value, check_kind
from syncd.identity import normalise_email, normalise_id

PREFIX = "bot."
#: The keys of a bot event, kept in its own columns as well as in ``data``.
KEYS = ("telegram_id", "client_id", "project_id")


def _as_text(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str | int | float):
        return str(value).strip()
    raise InvalidInput("invalid_body", f"{name} must be a string or a number")


def from_salebot(event: str, params: Mapping[str, object], default_project: int) -> NewEvent:
    """One bot event; :class:`InvalidInput` (a stable ``error`` code) when malformed."""
    if len(event) > MAX_KIND - len(PREFIX):
        raise InvalidInput("invalid_event", f"the event name is longer than {MAX_KIND - 4}")
    kind = PREFIX + check_kind(event)
    data: dict[str, Any] = {}
    for name, raw in params.items():
        value = _value(raw)
        if value is not None:
            text = _as_text(name, value)
            if text:
                data[name] = text
    telegram_id = (
        normalise_id(data["telegram_id"], "telegram_id") if "telegram_id" in data else None
    )
    if "client_id" not in data and "sb_id" in data:  # older bots' name, as in /v1/links
        data["client_id"] = data.pop("sb_id")
    client_id = normalise_id(data["client_id"], "client_id") if "client_id" in data else None
    if telegram_id is None and client_id is None:
        raise InvalidInput("missing_key", "telegram_id or client_id is required")
    project_id = (
        normalise_id(data["project_id"], "project_id") if "project_id" in data else default_project
    )
    email = normalise_email(data["email"]) if "email" in data else None
    if email is not None:
        data["email"] = email
    data["project_id"] = str(project_id)
    external_id = _object_id(data["id"], "id") if "id" in data else f"u{uuid.uuid4().hex}"
    return NewEvent(
        kind=kind,
        external_id=external_id,
        source="salebot",
        email=email,
        occurred_at=datetime.now(UTC),
        data=data,
        telegram_id=telegram_id,
        client_id=client_id,
        project_id=project_id,
    )
