"""Forgetting one person (SPEC §11, 152-ФЗ): ``syncd identity forget KEY``.

In one transaction that holds the identity write lock (no link can interleave):

* the identity and its Salebot clients are deleted; every ``identity_changes`` row of it
  goes too (they hold its keys), and other identities' rows lose the keys it held
  (a ``replace`` moved a Telegram id away from someone: that row names it);
* its events lose every personal value — the ``email``, ``gc_user_id``, ``telegram_id``
  and ``client_id`` columns, and in ``data`` every field named like personal data
  (:data:`PERSONAL`) or whose value holds its email, phone or a key — and keep their kind,
  external id, times, amounts and UTM tags, so reports still count them;
* its deliveries lose the same from their payloads; those not finished end ``dead`` with
  the reason ``forgotten`` (a call already on the wire may still complete);
* conflicts whose claim is its email are deleted; other conflicts lose its keys and are
  closed as ``forgotten``;
* one ``identity_changes`` row remains, with no personal data: when, source ``cli``,
  and the internal id that was forgotten (it links to nothing any more).

Numbers count as one of the person's keys only with six digits or more, so an amount
that happens to equal a short GetCourse user id is not taken for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Text, and_, bindparam, cast, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncd.identity import Person
from syncd.store.links import identity_transaction, people_where
from syncd.store.models import (
    Delivery,
    Event,
    Identity,
    IdentityChange,
    LinkConflict,
    SalebotClient,
    utcnow,
)

#: Field names (lower-cased, spaces and dashes as ``_``) that hold personal data.
PERSONAL = frozenset({
    "email", "e_mail", "user_email", "client_email", "почта", "электронная_почта",
    "phone", "user_phone", "client_phone", "телефон", "мобильный_телефон",
    "first_name", "last_name", "middle_name", "user_name", "username", "name", "full_name",
    "fio", "фио", "имя", "фамилия", "отчество", "пользователь",
    "telegram_id", "telegram", "tg_id", "client_id", "sb_id", "user_id", "gc_user_id",
    "platform_id", "id_пользователя", "city", "город", "address", "адрес", "birthday",
    "дата_рождения", "ip", "ip_адрес",
})  # fmt: skip
PHONE_KEYS = frozenset({"phone", "user_phone", "client_phone", "телефон", "мобильный_телефон"})
FORGOTTEN = "forgotten"
#: A key shorter than this is matched by field name only, never by value.
MIN_KEY_DIGITS = 6
_SEPARATORS = re.compile(r"[\s\-]+")
_NOT_DIGITS = re.compile(r"\D+")


def _name(key: str) -> str:
    return _SEPARATORS.sub("_", key.strip().lower())


@dataclass(frozen=True)
class Identifiers:
    """What identifies one person in free-form JSON: emails, phones (digits), keys."""

    emails: frozenset[str]
    phones: frozenset[str] = frozenset()
    numbers: frozenset[int] = frozenset()

    def text_patterns(self) -> list[str]:
        """Substrings to look for in stored JSON text (a cheap SQL pre-filter)."""
        return sorted({*self.emails, *(str(n) for n in self.numbers), *self.phones})

    def matches(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if isinstance(value, int):
            return value in self.numbers
        if not isinstance(value, str):
            return False
        lowered = value.strip().lower()
        if any(email in lowered for email in self.emails):
            return True
        if lowered.isdigit() and int(lowered) in self.numbers:
            return True
        digits = _NOT_DIGITS.sub("", lowered)
        return len(digits) >= 7 and digits in self.phones

    def scrub(self, value: Any) -> Any:
        """``value`` without personal fields and without values that identify the person."""
        if isinstance(value, dict):
            return {
                k: self.scrub(v)
                for k, v in value.items()
                if not (isinstance(k, str) and _name(k) in PERSONAL) and not self.matches(v)
            }
        if isinstance(value, list):
            return [self.scrub(v) for v in value if not self.matches(v)]
        return value

    def blank(self, text: str | None) -> str | None:
        """Free text (a note, an error) with the person's emails and phones cut out."""
        if not text:
            return text
        for email in self.emails:
            text = re.sub(re.escape(email), "***", text, flags=re.IGNORECASE)
        return text


@dataclass
class Forgotten:
    """What ``forget`` changed, counted."""

    identity_id: int
    events: int = 0
    deliveries: int = 0
    deliveries_ended: int = 0
    conflicts_deleted: int = 0
    conflicts_closed: int = 0
    changes_deleted: int = 0
    other_changes_scrubbed: int = 0
    trace_id: int | None = None
    ended_ids: list[int] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "identity_id": self.identity_id,
            "events_scrubbed": self.events,
            "deliveries_scrubbed": self.deliveries,
            "deliveries_ended": self.deliveries_ended,
            "conflicts_deleted": self.conflicts_deleted,
            "conflicts_closed": self.conflicts_closed,
            "changes_deleted": self.changes_deleted,
            "other_changes_scrubbed": self.other_changes_scrubbed,
            "trace_change_id": self.trace_id,
        }


async def forget(engine: AsyncEngine, identity_id: int) -> Forgotten | None:
    """Erase one identity's personal data; None when there is no such identity."""
    now = utcnow()
    async with identity_transaction(engine) as conn:
        found = await people_where(conn, Identity.id == identity_id)
        if not found:
            return None
        (person,) = found
        done = Forgotten(identity_id)
        ids = await _identifiers(conn, person)
        event_ids = await _scrub_events(conn, person, ids, done)
        await _scrub_deliveries(conn, person, ids, event_ids, done, now)
        await _scrub_conflicts(conn, person, done)
        await _scrub_changes(conn, person, done)
        await conn.execute(delete(SalebotClient).where(SalebotClient.identity_id == identity_id))
        await conn.execute(delete(Identity).where(Identity.id == identity_id))
        done.trace_id = await conn.scalar(
            insert(IdentityChange)
            .values(
                identity_id=None,
                source="cli",
                before=None,
                after={"forgotten_identity_id": identity_id},
                reason="forgotten on request (152-ФЗ): personal data erased",
                changed_at=now,
            )
            .returning(IdentityChange.id)
        )
    return done


def _key_numbers(person: Person) -> set[int]:
    keys = {person.telegram_id, person.gc_user_id, *person.clients.values()}
    return {k for k in keys if k is not None}


async def _identifiers(conn: AsyncConnection, person: Person) -> Identifiers:
    """The person's email and keys, and the phones their events carry."""
    phones: set[str] = set()
    for (data,) in await conn.execute(select(Event.data).where(_events_of(person))):
        if isinstance(data, dict):
            for key, value in data.items():
                if isinstance(key, str) and _name(key) in PHONE_KEYS and value:
                    digits = _NOT_DIGITS.sub("", str(value))
                    if len(digits) >= 7:
                        phones.add(digits)
    numbers = {n for n in _key_numbers(person) if len(str(n)) >= MIN_KEY_DIGITS}
    return Identifiers(frozenset({person.email.lower()}), frozenset(phones), frozenset(numbers))


def _events_of(person: Person) -> Any:
    assert person.id is not None
    conditions = [Event.identity_id == person.id, Event.email == person.email]
    if person.telegram_id is not None:
        conditions.append(Event.telegram_id == person.telegram_id)
    if person.gc_user_id is not None:
        conditions.append(Event.gc_user_id == person.gc_user_id)
    for project_id, client_id in person.clients.items():
        conditions.append(and_(Event.project_id == project_id, Event.client_id == client_id))
    return or_(*conditions)


async def _scrub_events(
    conn: AsyncConnection, person: Person, ids: Identifiers, done: Forgotten
) -> list[int]:
    rows = (
        await conn.execute(select(Event.id, Event.data, Event.notes).where(_events_of(person)))
    ).all()
    if rows:
        await conn.execute(
            update(Event)
            .where(Event.id == bindparam("b_id"))
            .values(
                email=None,
                gc_user_id=None,
                telegram_id=None,
                client_id=None,
                identity_id=None,
                data=bindparam("b_data"),
                notes=bindparam("b_notes"),
            )
            .execution_options(synchronize_session=False),
            [
                {
                    "b_id": r.id,
                    "b_data": ids.scrub(r.data if isinstance(r.data, dict) else {}),
                    "b_notes": ids.blank(r.notes) or "",
                }
                for r in rows
            ],
        )
    done.events = len(rows)
    return [r.id for r in rows]


def _mentions(column: Any, patterns: Iterable[str]) -> Any:
    text = func.lower(cast(column, Text))
    return or_(*(text.contains(p, autoescape=True) for p in patterns))


async def _scrub_deliveries(
    conn: AsyncConnection,
    person: Person,
    ids: Identifiers,
    event_ids: list[int],
    done: Forgotten,
    now: Any,
) -> None:
    assert person.id is not None
    conditions = [Delivery.identity_id == person.id]
    patterns = ids.text_patterns()
    if patterns:
        conditions.append(_mentions(Delivery.payload, patterns))
    for event_id in event_ids:
        conditions.append(Delivery.dedupe_key.startswith(f"event:{event_id}:rule:"))
    rows = (
        await conn.execute(
            select(
                Delivery.id, Delivery.payload, Delivery.status, Delivery.last_error,
                Delivery.identity_id, Delivery.dedupe_key,
            ).where(or_(*conditions))
        )
    ).all()  # fmt: skip
    caused = {f"event:{e}:" for e in event_ids}
    changed = []
    for r in rows:
        payload = r.payload if isinstance(r.payload, dict) else {}
        scrubbed = ids.scrub(payload)
        by_event = any((r.dedupe_key or "").startswith(prefix) for prefix in caused)
        if r.identity_id != person.id and not by_event and scrubbed == payload:
            continue  # the text pre-filter matched a longer number, not the person
        ending = r.status in ("pending", "waiting", "sending")
        changed.append(
            {
                "b_id": r.id,
                "b_payload": scrubbed,
                "b_status": "dead" if ending else r.status,
                "b_error": FORGOTTEN if ending else ids.blank(r.last_error),
                "b_finished": now if ending else None,
                "b_ending": ending,
            }
        )
        if ending:
            done.ended_ids.append(r.id)
    for ending in (True, False):
        batch = [c for c in changed if c["b_ending"] is ending]
        if not batch:
            continue
        values: dict[str, Any] = {
            "payload": bindparam("b_payload"),
            "identity_id": None,
            "last_error": bindparam("b_error"),
        }
        if ending:
            values |= {
                "status": "dead",
                "waiting_for": None,
                "finished_at": bindparam("b_finished"),
                "leased_until": None,
                "lease_owner": None,
            }
        await conn.execute(
            update(Delivery)
            .where(Delivery.id == bindparam("b_id"))
            .values(**values)
            .execution_options(synchronize_session=False),
            [{k: v for k, v in c.items() if k != "b_ending"} for c in batch],
        )
    done.deliveries = len(changed)
    done.deliveries_ended = len(done.ended_ids)


async def _scrub_conflicts(conn: AsyncConnection, person: Person, done: Forgotten) -> None:
    assert person.id is not None
    deleted = await conn.execute(delete(LinkConflict).where(LinkConflict.email == person.email))
    done.conflicts_deleted = int(deleted.rowcount or 0)
    conditions = []
    if person.telegram_id is not None:
        conditions.append(LinkConflict.telegram_id == person.telegram_id)
    for project_id, client_id in person.clients.items():
        conditions.append(
            and_(LinkConflict.project_id == project_id, LinkConflict.client_id == client_id)
        )
    conditions.append(_mentions(LinkConflict.holders, [str(person.id)]))
    rows = (
        await conn.execute(
            select(
                LinkConflict.id, LinkConflict.status, LinkConflict.telegram_id,
                LinkConflict.project_id, LinkConflict.client_id, LinkConflict.holders,
            ).where(or_(*conditions))
        )
    ).all()  # fmt: skip
    for r in rows:
        holders = r.holders.get("identity_ids", []) if isinstance(r.holders, dict) else []
        mine_tg = r.telegram_id is not None and r.telegram_id == person.telegram_id
        mine_client = r.client_id is not None and person.clients.get(r.project_id) == r.client_id
        if not (mine_tg or mine_client or person.id in holders):
            continue  # the text pre-filter matched a longer id
        await conn.execute(
            update(LinkConflict)
            .where(LinkConflict.id == r.id)
            .values(
                telegram_id=None if mine_tg else r.telegram_id,
                client_id=None if mine_client else r.client_id,
                holders={"identity_ids": [h for h in holders if h != person.id]},
                status=FORGOTTEN if r.status == "open" else r.status,
            )
        )
        done.conflicts_closed += 1


async def _scrub_changes(conn: AsyncConnection, person: Person, done: Forgotten) -> None:
    assert person.id is not None
    deleted = await conn.execute(
        delete(IdentityChange).where(IdentityChange.identity_id == person.id)
    )
    done.changes_deleted = int(deleted.rowcount or 0)
    keys = [str(k) for k in _key_numbers(person)]
    if not keys:
        return
    rows = (
        await conn.execute(
            select(IdentityChange.id, IdentityChange.before, IdentityChange.after).where(
                or_(_mentions(IdentityChange.before, keys), _mentions(IdentityChange.after, keys))
            )
        )
    ).all()
    for r in rows:
        before, after = _without_keys(r.before, person), _without_keys(r.after, person)
        if (before, after) == (r.before, r.after):
            continue
        await conn.execute(
            update(IdentityChange)
            .where(IdentityChange.id == r.id)
            .values(before=before, after=after)
        )
        done.other_changes_scrubbed += 1


def _without_keys(keys: Any, person: Person) -> Any:
    """Another identity's logged keys without the ones the forgotten person held."""
    if not isinstance(keys, dict):
        return keys
    cleaned = dict(keys)
    for name, value in (("telegram_id", person.telegram_id), ("gc_user_id", person.gc_user_id)):
        if value is not None and cleaned.get(name) == value:
            cleaned[name] = None
    clients = cleaned.get("salebot_clients")
    if isinstance(clients, list):
        cleaned["salebot_clients"] = [
            c
            for c in clients
            if not (
                isinstance(c, dict)
                and person.clients.get(c.get("project_id", -1)) == c.get("client_id")
            )
        ]
    return cleaned
