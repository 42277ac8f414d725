"""The event log: ingest, de-duplicate, resolve the person, apply the rules (SPEC §6).

:meth:`EventStore.ingest` takes a batch of :class:`~syncd.events.NewEvent` and, in one
transaction under the identity lock (the same one links take):

1. drops repeats of ``(kind, external_id)`` — already stored or earlier in the batch;
2. resolves each event's person by ``gc_user_id``, else email; an email GetCourse knows
   but syncd does not becomes a new identity (so a later link finds it), and a
   ``gc_user_id`` learned for a known email is stored — which releases write-backs that
   waited for it (``getcourse.create_users = false``);
3. applies the rules: a delivery per matching rule (unique per event and rule), or
   ``waiting_link`` until ``delivery.wait_for_link`` when a rule needs an address the
   person does not have yet, or a note on the event saying why a rule gave nothing.

:meth:`EventStore.after_link` runs in a link's transaction and delivers what waited.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from operator import attrgetter
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncd.events import NewEvent
from syncd.identity import Person
from syncd.rules import Address, Call, Rule, Skip, fill_event_id
from syncd.store import deals
from syncd.store.dialect import bind_processors, insert_counted, insert_new
from syncd.store.errors import translated
from syncd.store.links import identity_transaction, load_people, people_where
from syncd.store.models import Delivery, Event, Identity, IdentityChange, utcnow
from syncd.store.outbox import NewDelivery, enqueue
from syncd.store.pipeline import defer, pipelined
from syncd.store.rows import driver_sql

#: Told of the rules that made no call, once per committed batch.
OnSkips = Callable[[list[Skip]], None]


class IngestResult(NamedTuple):
    """What became of one event: its id, whether it was a repeat, and its status.

    A named tuple, not a frozen dataclass: one is made per event, 1.7 M in a backfill.
    """

    event_id: int
    duplicate: bool
    status: str


@dataclass(frozen=True, slots=True)
class Addressing:
    rules: tuple[Rule, ...]
    project_id: int
    bot_name: str
    wait_for_link: timedelta
    #: Older events are history: stored with the note ``too_old``, no call (SPEC §11).
    #: Zero switches the check off.
    max_event_age: timedelta = timedelta(days=2)
    #: The event kinds some rule is about (checked for every event, so computed once).
    kinds: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", frozenset(rule.event for rule in self.rules))

    def history_only(self) -> Addressing:
        """The same, with no rules: what ``syncd backfill`` stores fires nothing."""
        return Addressing((), self.project_id, self.bot_name, self.wait_for_link)

    def too_old(self, moment: datetime, now: datetime) -> bool:
        age = self.max_event_age
        return age > timedelta(0) and now - moment > age


@dataclass(slots=True)
class _Outcome:
    status: str
    skips: list[Skip]
    calls: list[tuple[Rule, Call]]

    @property
    def notes(self) -> str:
        return "; ".join(skip.note() for skip in self.skips)


def address_of(person: Person | None, project_id: int, event: NewEvent | None = None) -> Address:
    """How the rules can reach the person of an event: the identity's keys, else the
    keys the event itself carries (a bot event of someone no link names yet)."""
    client_id = person.clients.get(project_id) if person is not None else None
    telegram_id = person.telegram_id if person is not None else None
    email = person.email if person is not None else None
    if event is not None:
        if client_id is None and event.project_id == project_id:
            client_id = event.client_id
        telegram_id = telegram_id if telegram_id is not None else event.telegram_id
        email = email or event.email
    return Address(client_id, telegram_id, email)


def apply_rules(
    event_data: dict[str, Any],
    kind: str,
    to: Address,
    a: Addressing,
    *,
    moment: datetime | None = None,
    now: datetime | None = None,
) -> _Outcome:
    """What the rules make of one event for a person reachable at ``to`` (no I/O).

    ``moment`` is when the event happened (else when it was received): an event older
    than ``max_event_age`` at ``now`` is history and makes no call.
    """
    outcome = _Outcome("done", [], [])
    if kind not in a.kinds:
        return outcome
    old = moment is not None and now is not None and a.too_old(moment, now)
    for rule in a.rules:
        if not rule.matches(kind, event_data):
            continue
        if old:
            assert moment is not None
            outcome.skips.append(
                Skip(rule, "too_old", f"happened {moment:%Y-%m-%d %H:%M} UTC, "
                     f"more than delivery.max_event_age ago")
            )  # fmt: skip
            continue
        rendered = rule.render(event_data)
        if isinstance(rendered, Skip):
            outcome.skips.append(rendered)
            continue
        call = rule.call(rendered, to, a.bot_name)
        if call is None:
            outcome.status = "waiting_link"
            continue
        if not rule.reply_possible(to):
            outcome.skips.append(
                Skip(rule, "no_reply_address", "the deal is made; the person has no bot address")
            )
        outcome.calls.append((rule, call))
    return outcome


EVENTS = cast(Table, Event.__table__)
#: The columns :meth:`EventStore.ingest` writes, in the order of its value tuples.
EVENT_COLUMNS = (
    "kind", "external_id", "occurred_at", "received_at", "email", "gc_user_id", "identity_id",
    "data", "source", "status", "wait_until", "notes", "telegram_id", "client_id", "project_id",
)  # fmt: skip


def _as_is(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class _ToDriver:
    """How the event columns that need it become driver values (SQLAlchemy's own types)."""

    time: Callable[[datetime], Any]
    data: Callable[[dict[str, Any]], Any]

    @classmethod
    def for_dialect(cls, dialect: Dialect) -> _ToDriver:
        converters = bind_processors(dialect, EVENTS, EVENT_COLUMNS)
        procs = dict(zip(EVENT_COLUMNS, converters, strict=True))
        plain = [name for name in EVENT_COLUMNS if name not in _CONVERTED and procs[name]]
        if plain:  # strings and integers go to both drivers as they are
            raise RuntimeError(f"events: unexpected bind processing of {plain}")
        time = procs["occurred_at"]
        assert time is not None  # UTCDateTime always converts
        if dialect.name == "sqlite" and _same_text(time, _sqlite_time):
            time = _sqlite_time
        return cls(time, procs["data"] or _as_is)


def _sqlite_time(value: datetime) -> str:
    """A UTC moment as SQLite's DATETIME stores it, in one formatting step.

    The same text as SQLAlchemy's processors (``UTCDateTime``, then SQLite's DATETIME)
    at less than half the cost, which counts at 1.7 M events a backfill;
    :meth:`_ToDriver.for_dialect` checks the two agree before using this one.
    """
    if value.tzinfo is not UTC:
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]


def _same_text(reference: Callable[[datetime], Any], fast: Callable[[datetime], str]) -> bool:
    samples = (
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 11, 25, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=3))),
    )
    return all(reference(moment) == fast(moment) for moment in samples)


_CONVERTED = frozenset({"occurred_at", "received_at", "wait_until", "data"})


UNIQUE = ("kind", "external_id")
_KIND_SOURCE = attrgetter("kind", "source")


@dataclass(slots=True)
class _Batch:
    """A batch of events ready to be written (see :meth:`EventStore._prepare`)."""

    keys: list[tuple[str, str]]  # every event's, in order
    fresh: dict[tuple[str, str], NewEvent]  # the first of each key
    rows: list[tuple[Any, ...]]  # per fresh event: EVENT_COLUMNS' values, for the driver
    outcomes: dict[tuple[str, str], tuple[Person | None, dict[str, Any], _Outcome]]


#: This transaction's commit returns before its WAL is on disk (PostgreSQL's WAL writer
#: writes it within ~0.6 s); WAL is written in order, so a later ordinary commit makes it
#: durable too. A crash may lose the last such commits, never leave them half done.
_RELAXED_COMMIT = "SET LOCAL synchronous_commit = off"


class EventStore:
    def __init__(
        self,
        engine: AsyncEngine,
        addressing: Addressing,
        on_skips: OnSkips | None = None,
        *,
        relaxed_commits: bool = False,
    ) -> None:
        self.engine = engine
        self.addressing = addressing
        self.on_skips = on_skips
        #: :meth:`ingest_new` commits without waiting for the disk (PostgreSQL): for
        #: ``syncd backfill`` only, whose rows a rerun writes again (see ``_backfill``).
        self.relaxed_commits = relaxed_commits
        self._to_db = _ToDriver.for_dialect(engine.dialect)
        #: How many deliveries committed batches enqueued (for waking a dispatcher).
        self.enqueued = 0

    async def ingest(self, events: Sequence[NewEvent]) -> list[IngestResult]:
        """Store new events, apply the rules to them; repeats are answered duplicate."""
        skips: list[Skip] = []
        async with identity_transaction(self.engine, lookups=True) as conn:  # by key only
            results, enqueued = await self._ingest(conn, events, utcnow(), skips)
        self.enqueued += enqueued
        self._report(skips)
        return results

    async def ingest_new(self, events: Sequence[NewEvent]) -> Counter[tuple[str, str, bool]]:
        """:meth:`ingest` for the poller, which needs no answer per event.

        Returns how many events there were per ``(kind, source, repeat)``. It asks the
        database for no row per event: that made ~30% of a backfill's database time.
        """
        skips: list[Skip] = []
        async with identity_transaction(self.engine) as conn:
            if self.relaxed_commits and conn.dialect.name == "postgresql":
                await conn.exec_driver_sql(_RELAXED_COMMIT)
            counts, enqueued = await self._ingest_counted(conn, events, utcnow(), skips)
        self.enqueued += enqueued
        self._report(skips)
        return counts

    def _report(self, skips: list[Skip]) -> None:
        if skips and self.on_skips is not None:
            self.on_skips(skips)

    async def _ingest(
        self, conn: AsyncConnection, events: Sequence[NewEvent], now: datetime, skips: list[Skip]
    ) -> tuple[list[IngestResult], int]:
        batch = await self._prepare(conn, events, now)
        new_ids: dict[tuple[str, str], int] = {}
        if batch.rows:  # the unique (kind, external_id) decides what is new, in this statement
            inserted = await insert_new(
                conn, EVENTS, EVENT_COLUMNS, batch.rows, UNIQUE, ("id", "kind", "external_id"),
            )  # fmt: skip
            new_ids = {(kind, external_id): event_id for event_id, kind, external_id in inserted}
            await _project_deals(conn, batch, now, new_ids)
        repeats = set(batch.fresh) - set(new_ids)
        stored = await _existing(conn, repeats) if repeats else {}
        enqueued = await self._enqueue(conn, batch, new_ids, now, skips)
        results, seen = [], set()
        for key in batch.keys:
            if key in new_ids:  # a repeat within the batch is a duplicate of the first
                status = batch.outcomes[key][2].status if key in batch.outcomes else "done"
                results.append(IngestResult(new_ids[key], key in seen, status))
                seen.add(key)
            else:
                event_id, status = stored.get(key, (0, "duplicate"))
                results.append(IngestResult(event_id, True, status))
        return results, enqueued

    async def _ingest_counted(
        self, conn: AsyncConnection, events: Sequence[NewEvent], now: datetime, skips: list[Skip]
    ) -> tuple[Counter[tuple[str, str, bool]], int]:
        batch = await self._prepare(conn, events, now)
        counts = Counter({(*key, True): n for key, n in Counter(map(_KIND_SOURCE, events)).items()})
        if not batch.rows:
            return counts, 0
        # Every insert into events happens in an identity transaction (this one holds the
        # lock), so the rows with an id above the highest one now are this batch's own.
        before = (await conn.execute(select(func.max(Event.id)))).scalar() or 0
        added = await insert_counted(conn, EVENTS, EVENT_COLUMNS, batch.rows, UNIQUE)
        await _project_deals(conn, batch, now, None)  # repeats merge to no change
        if added == len(batch.fresh):  # all new: the usual backfill
            new = Counter(map(_KIND_SOURCE, batch.fresh.values()))
        else:
            found = await conn.execute(
                select(Event.kind, Event.source, func.count())
                .where(Event.id > before)
                .group_by(Event.kind, Event.source)
            )
            new = Counter({(kind, source): n for kind, source, n in found})
        for (kind, source), n in new.items():
            counts[(kind, source, True)] -= n
            counts[(kind, source, False)] += n
        new_ids: dict[tuple[str, str], int] = {}
        wanted = {
            key for key, (_, _, outcome) in batch.outcomes.items() if outcome.calls or outcome.skips
        }
        if wanted:
            ids = await conn.execute(
                select(Event.id, Event.kind, Event.external_id).where(
                    Event.id > before, Event.kind.in_({kind for kind, _ in wanted})
                )
            )
            new_ids = {(k, x): i for i, k, x in ids if (k, x) in wanted}
        return +counts, await self._enqueue(conn, batch, new_ids, now, skips)

    async def _prepare(
        self, conn: AsyncConnection, events: Sequence[NewEvent], now: datetime
    ) -> _Batch:
        """The first of each ``(kind, external_id)``, its person and rules, as table rows."""
        keys = [(e.kind, e.external_id) for e in events]
        fresh: dict[tuple[str, str], NewEvent] = {}
        for key, event in zip(keys, events, strict=True):
            fresh.setdefault(key, event)
        people = await self._people(conn, list(fresh.values()), now)
        batch = _Batch(keys, fresh, [], {})
        rows, outcomes = batch.rows, batch.outcomes
        to_db = self._to_db
        received_at = to_db.time(now)
        wait_until = to_db.time(now + self.addressing.wait_for_link)
        kinds = self.addressing.kinds
        # the events of one export row share their data and often their moment: each is
        # converted once (the objects outlive the loop, so their ids are not reused)
        texts: dict[int, Any] = {}
        moments: dict[int, Any] = {}
        for (kind, external_id), event in fresh.items():
            person = _person_for(event, people)
            if kind in kinds:
                data = {**event.data, "kind": kind, "external_id": external_id}
                to = address_of(person, self.addressing.project_id, event)
                outcome = apply_rules(
                    data, kind, to, self.addressing, moment=event.occurred_at or now, now=now
                )
                outcomes[(kind, external_id)] = (person, data, outcome)
                status, notes = outcome.status, outcome.notes
            else:
                status, notes = "done", ""
            text = texts.get(id(event.data))
            if text is None:
                text = texts[id(event.data)] = to_db.data(event.data)
            occurred, moment = event.occurred_at, None
            if occurred is not None:
                moment = moments.get(id(occurred))
                if moment is None:
                    moment = moments[id(occurred)] = to_db.time(occurred)
            rows.append(
                (
                    kind,
                    external_id,
                    moment,
                    received_at,
                    event.email,
                    event.gc_user_id,
                    person.id if person is not None else None,
                    text,
                    event.source,
                    status,
                    wait_until if status == "waiting_link" else None,
                    notes,
                    event.telegram_id,
                    event.client_id,
                    event.project_id,
                )
            )
        return batch

    async def _enqueue(
        self,
        conn: AsyncConnection,
        batch: _Batch,
        new_ids: dict[tuple[str, str], int],
        now: datetime,
        skips: list[Skip],
    ) -> int:
        """The deliveries the rules asked for, for the events that were new."""
        deliveries = []
        for key, event_id in new_ids.items():
            if key in batch.outcomes:
                person, data, outcome = batch.outcomes[key]
                deliveries += _deliveries(event_id, person, data, outcome)
                skips += outcome.skips
        await enqueue(conn, deliveries, now)
        return len(deliveries)

    async def _people(
        self, conn: AsyncConnection, events: list[NewEvent], now: datetime
    ) -> dict[str, dict[Any, Person]]:
        """The persons of ``events`` by email and gc_user_id, creating and learning.

        A bot event (it names Salebot keys) is its identity's when one holds those keys;
        a bot event never creates an identity: only a link does.
        """
        gc_ids = {e.gc_user_id for e in events if e.gc_user_id is not None}
        found = await load_people(conn, gc_user_ids=gc_ids) if gc_ids else []
        by_tg, by_client = await self._bot_people(conn, events, found)
        known = {p.gc_user_id for p in found if p.gc_user_id is not None}
        # an event whose gc_user_id is known is that person's; only the others need emails
        emails = {e.email for e in events if e.email and e.gc_user_id not in known}
        if emails:
            ids = {p.id for p in found}
            found += [p for p in await load_people(conn, emails=emails) if p.id not in ids]
        by_email = {p.email: p for p in found}
        by_gc = {p.gc_user_id: p for p in found if p.gc_user_id is not None}
        create: dict[str, int | None] = {}
        learn: dict[int, int] = {}
        for e in events:
            if e.source == "salebot":
                continue
            person = (by_gc.get(e.gc_user_id) if e.gc_user_id is not None else None) or (
                by_email.get(e.email) if e.email else None
            )
            gc_free = e.gc_user_id is not None and e.gc_user_id not in by_gc
            if person is None and e.email:
                taken = set(create.values())
                create.setdefault(
                    e.email, e.gc_user_id if gc_free and e.gc_user_id not in taken else None
                )
            elif person is not None and person.gc_user_id is None and gc_free:
                assert person.id is not None and e.gc_user_id is not None
                if e.gc_user_id not in learn.values():
                    learn.setdefault(person.id, e.gc_user_id)
        changes: list[dict[str, Any]] = []
        if create:
            inserted = await conn.execute(
                insert(Identity).returning(Identity.id, Identity.email, Identity.gc_user_id),
                [
                    {"email": email, "gc_user_id": gc, "created_at": now, "updated_at": now}
                    for email, gc in create.items()
                ],
            )
            for identity_id, email, gc in inserted:
                person = Person(identity_id, email, None, gc, {})
                by_email[email] = person
                if gc is not None:
                    by_gc[gc] = person
                changes.append(_change(identity_id, None, person, now))
        if learn:
            await conn.execute(
                update(Identity)
                .where(Identity.id == bindparam("b_id"))
                .values(gc_user_id=bindparam("b_gc"), updated_at=now),
                [{"b_id": i, "b_gc": gc} for i, gc in learn.items()],
            )
            await conn.execute(
                update(Delivery)
                .where(
                    Delivery.identity_id.in_(list(learn)),
                    Delivery.status == "waiting",
                    Delivery.waiting_for == "gc_user_id",
                )
                .values(status="pending", waiting_for=None, next_attempt_at=now)
            )
            by_id = {p.id: p for p in by_email.values()}
            for identity_id, gc in learn.items():
                before = by_id[identity_id]
                after = Person(identity_id, before.email, before.telegram_id, gc, before.clients)
                by_email[before.email] = by_gc[gc] = after
                changes.append(_change(identity_id, before, after, now))
        if changes:
            await conn.execute(insert(IdentityChange), changes)
        return {"email": by_email, "gc": by_gc, "tg": by_tg, "client": by_client}

    async def _bot_people(
        self, conn: AsyncConnection, events: list[NewEvent], found: list[Person]
    ) -> tuple[dict[Any, Person], dict[Any, Person]]:
        """The identities holding the Salebot keys the bot events of a batch name."""
        telegrams = {e.telegram_id for e in events if e.telegram_id is not None}
        clients = {
            (e.project_id, e.client_id)
            for e in events
            if e.project_id is not None and e.client_id is not None
        }
        if not telegrams and not clients:
            return {}, {}
        people = await load_people(conn, telegram_ids=telegrams, clients=clients)
        ids = {p.id for p in found}
        found += [p for p in people if p.id not in ids]
        by_tg = {p.telegram_id: p for p in people if p.telegram_id is not None}
        by_client = {(project, client): p for p in people for project, client in p.clients.items()}
        return by_tg, by_client

    async def after_link(self, conn: AsyncConnection, people: list[Person], now: datetime) -> int:
        """In a link's transaction: give the people's bot events their identity, and
        deliver their waiting events that are still news (SPEC §10, §11)."""
        project_id = self.addressing.project_id
        if not self.addressing.rules:  # nothing reads after it: it goes with the COMMIT
            defer(conn, lambda: _attach_bot_events(conn, people, project_id))
            return 0
        async with pipelined(conn):  # its two updates: one round trip on PostgreSQL
            await _attach_bot_events(conn, people, project_id)
        by_id = {p.id: p for p in people}
        rows = (
            await conn.execute(
                select(
                    Event.id,
                    Event.kind,
                    Event.external_id,
                    Event.data,
                    Event.identity_id,
                    Event.wait_until,
                    Event.occurred_at,
                    Event.received_at,
                ).where(Event.status == "waiting_link", Event.identity_id.in_(list(by_id)))
            )
        ).all()
        expired, updates, deliveries, skips = [], [], [], []
        for event_id, kind, external_id, data, identity_id, wait_until, occurred, received in rows:
            if wait_until is not None and wait_until < now:
                expired.append(event_id)
                continue
            person = by_id[identity_id]
            full = {**data, "kind": kind, "external_id": external_id}
            to = address_of(person, self.addressing.project_id)
            outcome = apply_rules(
                full, kind, to, self.addressing, moment=occurred or received, now=now
            )
            if outcome.status == "done":
                updates.append({"b_id": event_id, "b_status": "done", "b_notes": outcome.notes})
            deliveries += _deliveries(event_id, person, full, outcome)
            skips += outcome.skips
        if expired:
            await conn.execute(update(Event).where(Event.id.in_(expired)).values(status="expired"))
        if updates:
            await conn.execute(
                update(Event)
                .where(Event.id == bindparam("b_id"))
                .values(status=bindparam("b_status"), wait_until=None, notes=bindparam("b_notes")),
                updates,
            )
        await enqueue(conn, deliveries, now)
        self._report(skips)
        return len(deliveries)


@dataclass(frozen=True, slots=True)
class Redone:
    """What ``syncd events redo`` made (or would make) of one rule for one event."""

    event_id: int
    kind: str
    rule: str
    outcome: str  # "queued" | "would queue" | "already made" | "waits for a link" | a skip
    target: str | None = None
    action: str | None = None
    payload: dict[str, Any] | None = None
    delivery_id: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id, "kind": self.kind, "rule": self.rule,
            "outcome": self.outcome, "target": self.target, "action": self.action,
            "payload": self.payload, "delivery_id": self.delivery_id,
        }  # fmt: skip


async def redo(
    store: EventStore, ids: Sequence[int], dry_run: bool
) -> tuple[list[Redone], list[int]]:
    """Run the rules again for chosen events, on purpose: however old they are.

    A rule that already made a call for an event makes none (its delivery's unique
    ``dedupe_key``). Returns what each rule did and the ids that are not events.
    """
    a = store.addressing
    now = utcnow()
    done: list[Redone] = []
    async with identity_transaction(store.engine) as conn:
        rows = (await conn.execute(select(*EVENTS.c).where(Event.id.in_(list(ids))))).all()
        missing = sorted(set(ids) - {r.id for r in rows})
        owners = {r.identity_id for r in rows if r.identity_id is not None}
        people = (
            {p.id: p for p in await people_where(conn, Identity.id.in_(owners))} if owners else {}
        )
        calls: list[tuple[int, NewDelivery]] = []  # (its line in ``done``, the call)
        waiting: list[int] = []
        for row in sorted(rows, key=lambda r: r.id):
            first_line = len(done)
            person = people.get(row.identity_id)
            keys = NewEvent(row.kind, row.external_id, row.source, row.email, row.gc_user_id,
                            telegram_id=row.telegram_id, client_id=row.client_id,
                            project_id=row.project_id)  # fmt: skip
            full = {**row.data, "kind": row.kind, "external_id": row.external_id}
            outcome = apply_rules(full, row.kind, address_of(person, a.project_id, keys), a)
            made = _deliveries(row.id, person, full, outcome)
            for (rule, _), delivery in zip(outcome.calls, made, strict=True):
                calls.append((len(done), delivery))
                done.append(Redone(row.id, row.kind, rule.name, "", delivery.target,
                                   delivery.action, delivery.payload))  # fmt: skip
            for skip in outcome.skips:
                done.append(
                    Redone(row.id, row.kind, skip.rule.name, f"{skip.reason}: {skip.detail}")
                )
            if outcome.status == "waiting_link":
                waiting.append(row.id)
                done.append(Redone(row.id, row.kind, "(a rule)", "waits for a link"))
            if len(done) == first_line:
                done.append(Redone(row.id, row.kind, "(none)", "no rule matches"))
        existing = await _delivery_ids(conn, [d.dedupe_key for _, d in calls])
        fresh = [d for _, d in calls if d.dedupe_key not in existing]
        queued: dict[str | None, int] = {}
        if not dry_run:
            await enqueue(conn, fresh, now)
            if waiting:
                await conn.execute(
                    update(Event)
                    .where(Event.id.in_(waiting))
                    .values(status="waiting_link", wait_until=now + a.wait_for_link)
                )
            queued = await _delivery_ids(conn, [d.dedupe_key for d in fresh])
            store.enqueued += len(fresh)
        for line, delivery in calls:
            key = delivery.dedupe_key
            if key in existing:
                done[line] = replace(done[line], outcome="already made", delivery_id=existing[key])
            else:
                outcome_text = "would queue" if dry_run else "queued"
                done[line] = replace(done[line], outcome=outcome_text, delivery_id=queued.get(key))
    return done, missing


async def _delivery_ids(conn: AsyncConnection, keys: list[str | None]) -> dict[str | None, int]:
    """The ids of the deliveries with these dedupe keys, by key."""
    if not keys:
        return {}
    found = await conn.execute(
        select(Delivery.dedupe_key, Delivery.id).where(Delivery.dedupe_key.in_(keys))
    )
    return {key: delivery_id for key, delivery_id in found}


async def _attach_bot_events(conn: AsyncConnection, people: list[Person], project_id: int) -> None:
    """Bot events kept with their keys before any link named them get the identity now.

    Plain statements on the driver: this runs in every link batch, and SQLAlchemy's
    per-row parameter processing cost more than the database's work of finding no row
    in the partial indexes of unlinked events. SQLite gets one parameter set per key (one
    hop to its thread). PostgreSQL gets the Telegram ids as one array (a list on the
    index's only column is a search), and one execution per Salebot client, all sent in
    one round trip (see ``_ATTACH_BY_CLIENT_PG``).
    """
    by_tg = [
        (p.id, p.telegram_id) for p in people if p.id is not None and p.telegram_id is not None
    ]
    by_client = [
        (p.id, project, client)
        for p in people
        if p.id is not None
        for project, client in p.clients.items()
    ]
    postgresql = conn.dialect.name == "postgresql"
    if by_tg and postgresql:  # one statement, the keys as arrays
        ids, tgs = map(list, zip(*by_tg, strict=True))
        await conn.exec_driver_sql(_ATTACH_BY_TG_PG, (ids, tgs, tgs))
    elif by_tg:
        await driver_sql(conn, _ATTACH_BY_TG, by_tg, many=True)
    if by_client and postgresql:  # one execution per key on both (see _ATTACH_BY_CLIENT_PG)
        await conn.exec_driver_sql(_ATTACH_BY_CLIENT_PG, by_client)
    elif by_client:
        await driver_sql(conn, _ATTACH_BY_CLIENT, by_client, many=True)


_ATTACH_BY_TG = "UPDATE events SET identity_id = ? WHERE identity_id IS NULL AND telegram_id = ?"
_ATTACH_BY_CLIENT = (
    "UPDATE events SET identity_id = ? "
    "WHERE identity_id IS NULL AND project_id = ? AND client_id = ?"
)
# The keys again as ``= ANY(…)``: an index search even while PostgreSQL's statistics
# still say the table of unlinked events is small (a hash join over all of them, 12 ms
# at 46,000, before the first ANALYZE).
_ATTACH_BY_TG_PG = (
    "UPDATE events SET identity_id = k.id FROM unnest(%b::bigint[], %b::bigint[]) AS k(id, tg) "
    "WHERE events.identity_id IS NULL AND events.telegram_id = k.tg "
    "AND events.telegram_id = ANY(%b::bigint[])"
)
# Per key, not as arrays: the index of unlinked clients is (project_id, client_id), and
# a list of clients on its second column (``client_id = ANY(…)``, or a join with the
# keys) always has a second plan, a walk through the whole index filtering each entry;
# the plan PostgreSQL kept for the statement picked it whenever it was built while the
# table was small (day one, or before autovacuum's ANALYZE), and kept it as the table
# grew. Both columns equal to a value leave it one plan: a search. psycopg sends the
# executions of an ``executemany`` in one round trip.
_ATTACH_BY_CLIENT_PG = (
    "UPDATE events SET identity_id = %s WHERE identity_id IS NULL AND project_id = %s "
    "AND client_id = %s"
)


def _change(
    identity_id: int, before: Person | None, after: Person, now: datetime
) -> dict[str, Any]:
    return {
        "identity_id": identity_id,
        "source": "getcourse",
        "before": before.keys() if before is not None else None,
        "after": after.keys(),
        "reason": "",
        "changed_at": now,
    }


def _person_for(event: NewEvent, people: dict[str, dict[Any, Person]]) -> Person | None:
    if event.gc_user_id is not None and event.gc_user_id in people["gc"]:
        return people["gc"][event.gc_user_id]
    if event.client_id is not None:
        person = people["client"].get((event.project_id, event.client_id))
        if person is not None:
            return person
    if event.telegram_id is not None and event.telegram_id in people["tg"]:
        return people["tg"][event.telegram_id]
    return people["email"].get(event.email) if event.email else None


def _deliveries(
    event_id: int, person: Person | None, data: dict[str, Any], outcome: _Outcome
) -> list[NewDelivery]:
    """The outbox rows of the calls the rules asked for (one per event and rule)."""
    identity_id = person.id if person is not None else None
    out = []
    for rule, call in outcome.calls:
        call = fill_event_id(rule, call, data, event_id)  # the id is known only now
        out.append(
            NewDelivery(
                target=call.target,
                action=call.action,
                payload=call.payload,
                identity_id=identity_id,
                dedupe_key=f"event:{event_id}:rule:{rule.index}",
            )
        )
    return out


_IDENTITY_ID = EVENT_COLUMNS.index("identity_id")


async def _project_deals(
    conn: AsyncConnection, batch: _Batch, now: datetime, new: Collection[tuple[str, str]] | None
) -> None:
    """The batch's deal events (those in ``new``, or all) into ``analytics_deals`` (0007)."""
    kinds = deals.KINDS
    if new is None:  # a backfill's chunk: no key to look up
        pairs = [
            (event, row[_IDENTITY_ID])
            for event, row in zip(batch.fresh.values(), batch.rows, strict=True)
            if event.kind in kinds
        ]
    else:
        pairs = [
            (event, row[_IDENTITY_ID])
            for (key, event), row in zip(batch.fresh.items(), batch.rows, strict=True)
            if event.kind in kinds and key in new
        ]
    if pairs:
        await deals.project(conn, pairs, now)


async def _existing(
    conn: AsyncConnection, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], tuple[int, str]]:
    """Stored events among ``keys``: (kind, external_id) → (id, status)."""
    by_kind: dict[str, list[str]] = {}
    for kind, external_id in keys:
        by_kind.setdefault(kind, []).append(external_id)
    found: dict[tuple[str, str], tuple[int, str]] = {}
    for kind, external_ids in by_kind.items():
        rows = await conn.execute(
            select(Event.id, Event.external_id, Event.status).where(
                Event.kind == kind, Event.external_id.in_(external_ids)
            )
        )
        for event_id, external_id, status in rows:
            found[(kind, external_id)] = (event_id, status)
    return found


async def expire_waiting(engine: AsyncEngine) -> int:
    """Events that waited past ``wait_until`` for a link: ``expired``."""
    async with translated(), engine.begin() as conn:
        result = await conn.execute(
            update(Event)
            .where(Event.status == "waiting_link", Event.wait_until < utcnow())
            .values(status="expired")
        )
    return int(result.rowcount or 0)


async def listing(engine: AsyncEngine, kind: str | None, limit: int) -> list[dict[str, Any]]:
    query = select(Event).order_by(Event.id.desc()).limit(limit)
    if kind is not None:
        query = query.where(Event.kind == kind)
    async with translated(), engine.connect() as conn:
        rows = (await conn.execute(query)).all()

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return [
        {
            "id": r.id,
            "kind": r.kind,
            "external_id": r.external_id,
            "source": r.source,
            "status": r.status,
            "identity_id": r.identity_id,
            "email": r.email,
            "gc_user_id": r.gc_user_id,
            "occurred_at": iso(r.occurred_at),
            "received_at": iso(r.received_at),
            "wait_until": iso(r.wait_until),
            "notes": r.notes,
            "data": r.data,
        }
        for r in reversed(rows)
    ]
