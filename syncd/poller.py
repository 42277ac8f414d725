"""The export poller (SPEC §6, way 3): GetCourse exports become events on a schedule.

Each cycle runs the configured exports one at a time. For each: start it with the
export's cursor as the lower date bound, **store the export_id** (committed), then
collect — 909 «Файл еще не создан» is waited out with growing pauses, 905 (another
export runs) and 903 (budget spent) end the cycle — read the rows by column title,
ingest them as events in chunks, and only then move the cursor. A restart finds the
stored export_id and collects it instead of starting another. Every export-API request
(starts, collects and the group list alike) first spends one unit of the account's
budget in the database (:mod:`syncd.store.exports`); with none left, the poller waits for
the next cycle.

Bad input never stops the poller: a row that cannot be read is skipped and counted; a
cell that cannot be read leaves that field empty and is reported once per export; an
answer that cannot be read at all, or a final GetCourse error (913/914/917/918, «Файл не
создан»), ends that export with its reason (the stored export_id is forgotten) and the
cycle goes on with the next export. On PostgreSQL one daemon polls
(an advisory lock); the others skip the cycle.

``syncd backfill`` drives the same :meth:`Poller.run` over date windows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any, Literal

import httpx
from loguru import logger
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.clients import getcourse_export as export_api
from syncd.errors import InvalidInput, PermanentError, StoreUnavailable, TransientError
from syncd.events import NewEvent, Unreadable, from_export_row
from syncd.logs import redact
from syncd.store import exports
from syncd.store.models import utcnow

#: Pauses before asking again for an export that is not ready (909), in seconds.
NOT_READY_WAITS = (3.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0)
FILTER_FIELD = {"users": "created_at", "deals": "created_at", "payments": "created_at",
                "groups": "added_at"}  # fmt: skip
CHUNK = 2000
#: A new export starts only while more budget than this is left to collect it.
START_RESERVE = 3

Ingest = Callable[[Sequence[NewEvent]], Awaitable[object]]
#: failed: transient, try again later; broken: permanent (a bad key, filter…), fix first
Status = Literal["done", "not_ready", "busy", "budget", "failed", "broken"]


@dataclass(frozen=True, slots=True)
class Job:
    """One export to run: ``name`` keys its state, ``export`` its row mapping."""

    name: str
    export: str
    path: str
    since: date
    until: date | None = None
    group_id: int | None = None
    source: str = "poller"

    @property
    def filters(self) -> dict[str, str]:
        field = FILTER_FIELD[self.export]
        found = {f"{field}[from]": self.since.isoformat()}
        if self.until is not None:
            found[f"{field}[to]"] = self.until.isoformat()
        return found


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    rows: int = 0
    events: int = 0
    errors: int = 0
    detail: str = ""
    unreadable: int = 0  # cells left empty because they could not be read


def jobs(names: Sequence[str], groups: Sequence[int], since: date) -> list[Job]:
    """The configured exports as jobs (a group export per group id)."""
    found = []
    for name in names:
        if name == "groups":
            found += [
                Job(f"groups:{g}", "groups", f"groups/{g}/users", since, group_id=g) for g in groups
            ]
        else:
            found.append(Job(name, name, name, since))
    return found


#: While a chunk is being written, the reader gives the event loop a turn every this
#: many export rows. The rows of a read arrive many at a time and parsing them never
#: waits, so without a turn the write got each database answer only when the reader
#: next waited for the network (every ~64 KiB) or for the write itself: the write's
#: statements and the parsing ran one after the other, not side by side. A 300,000-row
#: PostgreSQL backfill: 16,237-16,876 -> 18,171-18,764 rows/s, SQLite unchanged
#: (docs/performance.md, 2026-12-07 evening); a turn costs a few µs, a row's parsing ~10.
YIELD_EVERY = 32


class Poller:
    def __init__(
        self,
        engine: AsyncEngine,
        http: httpx.AsyncClient,
        base_url: str,
        api_key: str,
        ingest: Ingest,
        *,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        waits: Sequence[float] = NOT_READY_WAITS,
        budget: int = exports.BUDGET,
        chunk: int = CHUNK,
    ) -> None:
        self.engine = engine
        self.http = http
        self.base = base_url.rstrip("/")
        self.key = api_key
        self.ingest = ingest
        self.clock = clock
        self.sleep = sleep
        self.waits = tuple(waits)
        self.budget = budget
        self.chunk = chunk
        self._groups: dict[int, str] | None = None

    async def cycle(self, configured: Sequence[Job]) -> list[Outcome]:
        """One poll of every configured export, in turn, moving each cursor."""
        outcomes: list[Outcome] = []
        async with self.exclusive() as mine:
            if not mine:
                logger.info("poller: another syncd polls this database; skipping")
                return outcomes
            today = self.clock().date()
            states = {job.name: await exports.load(self.engine, job.name) for job in configured}
            # exports already started go first: GetCourse runs one at a time (905 otherwise)
            ordered = sorted(configured, key=lambda j: states[j.name].pending_export_id is None)
            for job in ordered:
                state = states[job.name]
                since = state.cursor or job.since
                # whole days, inclusive: re-read yesterday and today next time (repeats
                # are de-duplicated), so nothing between two polls is missed
                outcome = await self.run(
                    replace(job, since=since), cursor=today - timedelta(days=1)
                )
                outcomes.append(outcome)
                if outcome.status in ("busy", "budget"):  # the account's, not this export's
                    break
        return outcomes

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[bool]:
        """On PostgreSQL, the one poller of the database (a session advisory lock)."""
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        async with self.engine.connect() as conn:
            mine = bool(await conn.scalar(select(func.pg_try_advisory_lock(exports.POLLER_LOCK))))
            await conn.commit()
            try:
                yield mine
            finally:
                if mine:
                    await conn.scalar(select(func.pg_advisory_unlock(exports.POLLER_LOCK)))
                    await conn.commit()

    async def run(self, job: Job, cursor: date | None = None) -> Outcome:
        """Start (or resume) ``job``'s export, collect it, ingest its rows."""
        log = logger.bind(export=job.name)
        try:
            return await self._run(job, cursor, log)
        except export_api.ExportBusy:
            log.info("poller: another export of the account is running; next time")
            return Outcome("busy")
        except export_api.BudgetSpent:
            log.warning("poller: GetCourse says the export budget is spent; next time")
            return Outcome("budget")
        except TransientError as exc:
            log.warning("poller: {}; next time", redact(str(exc)))
            return Outcome("failed", detail=redact(str(exc)))
        except PermanentError as exc:
            log.error("poller: {}", redact(str(exc)))
            await exports.finish(
                self.engine, job.name, self.clock(), cursor=None, rows=0, errors=0,
                last_error=redact(str(exc)),
            )  # fmt: skip
            return Outcome("broken", detail=redact(str(exc)))

    async def _run(self, job: Job, cursor: date | None, log: Any) -> Outcome:
        state = await exports.load(self.engine, job.name)
        export_id = state.pending_export_id
        if export_id is not None:
            log.info("poller: collecting export {} started before", export_id)
        else:
            left = await exports.budget_left(self.engine, self.clock(), self.budget)
            if left <= START_RESERVE or not await self._spend(job, "start"):
                return Outcome("budget")  # never start what the budget could not collect
            export_id = await export_api.start(
                self.http, self.base, self.key, job.path, job.filters
            )
            await exports.save_pending(self.engine, job.name, export_id, job.filters, self.clock())
        for wait in (0.0, *self.waits):
            if wait:
                await self.sleep(wait)
            if not await self._spend(job, "collect"):
                return Outcome("budget")
            try:
                async with export_api.collect(self.http, self.base, self.key, export_id) as found:
                    rows, events, errors, first_error, cells = await self._ingest_rows(job, found)
            except export_api.ExportNotReady:
                continue
            note = first_error
            if cells:
                note = "; ".join(
                    filter(None, [note, f"unreadable cells left empty: {cells.summary()}"])
                )
                log.warning(
                    "poller: export {}: unreadable cells left empty: {}", job.name, cells.summary()
                )
            await exports.finish(
                self.engine, job.name, self.clock(), cursor=cursor, rows=rows, errors=errors,
                last_error=note[:500],
            )  # fmt: skip
            log.bind(rows=rows, events=events, errors=errors).info(
                "poller: export {} read: {} rows, {} events, {} bad rows",
                job.name,
                rows,
                events,
                errors,
            )
            return Outcome("done", rows, events, errors, unreadable=sum(cells.counts.values()))
        log.info("poller: export {} still not ready; next time", export_id)
        return Outcome("not_ready")

    async def _spend(self, job: Job, kind: str) -> bool:
        return await exports.spend(self.engine, job.name, kind, self.clock(), self.budget)

    async def _ingest_rows(
        self, job: Job, found: export_api.ExportRows
    ) -> tuple[int, int, int, str, Unreadable]:
        group_name = await self._group_name(job, job.group_id) if job.group_id is not None else None
        cells = Unreadable()
        batch: list[NewEvent] = []
        rows = events = errors = 0
        first_error = ""
        # one chunk is written while the next is parsed; chunks are written in order
        writing: asyncio.Task[int] | None = None
        try:
            async for row in found.rows:
                rows += 1
                try:
                    batch += from_export_row(
                        job.export, found.fields, row, group_id=job.group_id, group_name=group_name,
                        source=job.source, unreadable=cells,
                    )  # fmt: skip
                except Exception as exc:  # no row may stop the poller
                    errors += 1
                    why = exc.detail if isinstance(exc, InvalidInput) else _unreadable_row(exc)
                    first_error = first_error or f"row {rows}: {why}"
                    if errors <= 5:
                        logger.bind(export=job.name).warning(
                            "poller: row {} skipped: {}", rows, why
                        )
                    continue
                if writing is not None and rows % YIELD_EVERY == 0 and not writing.done():
                    await asyncio.sleep(0)  # the write's next statement, if its answer is in
                if len(batch) >= self.chunk:
                    if writing is not None:
                        events += await writing
                    writing = asyncio.create_task(self._ingest(batch))
                    batch = []
                    await asyncio.sleep(0)  # let it send its first statement now
        except BaseException:
            if writing is not None:  # reading failed: do not leave the write behind
                writing.cancel()
                await asyncio.gather(writing, return_exceptions=True)
            raise
        if writing is not None:
            events += await writing
        if batch:
            events += await self._ingest(batch)
        return rows, events, errors, first_error, cells

    async def _ingest(self, batch: list[NewEvent]) -> int:
        """Ingest a chunk; a chunk that fails (not an outage) is ingested one by one."""
        try:
            await self.ingest(batch)
        except StoreUnavailable:
            raise
        except Exception as exc:
            logger.warning("poller: a chunk failed ({}); one event at a time", type(exc).__name__)
            for event in batch:
                try:
                    await self.ingest([event])
                except StoreUnavailable:
                    raise
                except Exception as one:
                    logger.opt(exception=one).error("poller: event {} skipped", event.kind)
        return len(batch)

    async def _group_name(self, job: Job, group_id: int) -> str | None:
        """The group's name from the group list: one export-API request, counted, per poller."""
        if self._groups is None:
            from syncd.clients.getcourse import GetCourseClient

            if not await self._spend(job, "groups"):
                return None  # no budget to spare for a name: the events go without it
            listed: list[dict[str, Any]] = []
            with contextlib.suppress(TransientError, PermanentError):
                listed = await GetCourseClient(self.http, self.base, self.key).account_groups()
            groups: dict[int, str] = {}
            for group in listed:
                with contextlib.suppress(TypeError, ValueError):
                    groups[int(group["id"])] = str(group.get("name") or "")[:255]
            self._groups = groups
        return self._groups.get(group_id)


def _unreadable_row(exc: Exception) -> str:
    """Why a row no reader expected failed (its text may hold the row: not shown)."""
    return f"the row cannot be read ({type(exc).__name__})"


async def backfill(
    poller: Poller,
    configured: Sequence[Job],
    since: date,
    until: date,
    *,
    window: timedelta = timedelta(days=7),
    progress: Callable[[str], None] = lambda _: None,
    on_window: Callable[[Job, Outcome, int, int], None] | None = None,
) -> list[tuple[Job, Outcome]]:
    """Every export over ``since..until`` in date windows, waiting out budget and 905.

    ``progress`` gets a line per pause and per window read; with ``on_window`` given, a
    window read goes to ``on_window(job, outcome, windows done, windows in all)`` instead.
    """
    windows = []
    start = since
    while start <= until:
        end = min(until, start + window - timedelta(days=1))
        windows.append((start, end))
        start = end + timedelta(days=1)
    done: list[tuple[Job, Outcome]] = []
    total = len(windows) * len(configured)
    for job in configured:
        for first, last in windows:
            item = replace(
                job, name=f"backfill:{job.name}:{first}", since=first, until=last, source="backfill"
            )
            while True:
                outcome = await poller.run(item)
                if outcome.status in ("done", "broken"):
                    break
                pause = await _pause(poller, outcome)
                progress(f"{job.name} {first}..{last}: {outcome.status}, waiting {pause:.0f} s")
                await poller.sleep(pause)
            done.append((item, outcome))
            if on_window is not None:
                on_window(item, outcome, len(done), total)
                continue
            progress(
                f"[{len(done)}/{total}] {job.name} {first}..{last}: {outcome.rows} rows, "
                f"{outcome.events} events, {outcome.errors} bad rows"
            )
    return done


async def _pause(poller: Poller, outcome: Outcome) -> float:
    if outcome.status == "budget":
        now = poller.clock()
        frees = await exports.budget_frees_at(poller.engine, now)
        return max(1.0, (frees - now).total_seconds() + 1)
    return 60.0 if outcome.status == "busy" else 30.0
