"""``syncd report funnel``: bot subscribers → linked → ordered → paid (SPEC §7, §12).

One query over the view ``syncd_people``: the bot subscribers whose first contact falls in
``[since, until]`` (UTC days; the cohort), grouped by first-touch source, by first-touch
UTM campaign or by month of first contact. Each group counts its people at each step and
their revenue; conversions are step over previous step. Written as an aligned table,
CSV, JSON, or one self-contained HTML page (:mod:`syncd.report_html`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.errors import InvalidInput
from syncd.store.errors import translated
from syncd.store.models import UTCDateTime

BY = ("source", "utm_campaign", "month")
FORMATS = ("table", "csv", "json", "html")
STEPS = ("subscribers", "linked", "ordered", "paid")
CENT = Decimal("0.01")
NONE = "(none)"


def parse_day(text: str, name: str) -> date:
    """A ``YYYY-MM-DD`` option; InvalidInput naming the option otherwise."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInput("bad_date", f"{name} {text!r} is not a date (YYYY-MM-DD)") from None


@dataclass(frozen=True, slots=True)
class Row:
    """One group of the funnel (or the total)."""

    key: str
    subscribers: int
    linked: int
    ordered: int
    paid: int
    revenue: Decimal

    def conversions(self) -> tuple[float | None, float | None, float | None]:
        """linked / subscribers, ordered / linked, paid / ordered (None over zero)."""

        def ratio(part: int, whole: int) -> float | None:
            return part / whole if whole else None

        return (
            ratio(self.linked, self.subscribers),
            ratio(self.ordered, self.linked),
            ratio(self.paid, self.ordered),
        )

    def as_json(self) -> dict[str, Any]:
        linked, ordered, paid = self.conversions()
        return {
            "subscribers": self.subscribers,
            "linked": self.linked,
            "ordered": self.ordered,
            "paid": self.paid,
            "revenue": str(self.revenue),
            "linked_rate": _rate(linked),
            "ordered_rate": _rate(ordered),
            "paid_rate": _rate(paid),
        }


def _rate(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass(frozen=True, slots=True)
class Funnel:
    by: str
    since: date | None
    until: date | None
    rows: tuple[Row, ...]

    @property
    def total(self) -> Row:
        return Row(
            "total",
            sum(r.subscribers for r in self.rows),
            sum(r.linked for r in self.rows),
            sum(r.ordered for r in self.rows),
            sum(r.paid for r in self.rows),
            sum((r.revenue for r in self.rows), Decimal("0.00")),
        )

    def period(self) -> str:
        since = self.since.isoformat() if self.since else "the start"
        until = self.until.isoformat() if self.until else "today"
        return f"{since} … {until}"


def _group(by: str, dialect: str) -> str:
    if by == "source":
        return "source"
    if by == "utm_campaign":
        return f"coalesce(utm_campaign, '{NONE}')"
    if dialect == "postgresql":
        return "to_char(first_bot_at AT TIME ZONE 'UTC', 'YYYY-MM')"
    return "substr(first_bot_at, 1, 7)"


def _money(value: object) -> Decimal:
    """A sum from either database (SQLite: int or float) as a Decimal in cents."""
    if value is None:
        return Decimal("0.00")
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


async def funnel(
    engine: AsyncEngine, by: str = "source", since: date | None = None, until: date | None = None
) -> Funnel:
    """The funnel of the cohorts whose first bot contact is in ``[since, until]``."""
    if by not in BY:
        raise InvalidInput("bad_group", f"--by must be one of {', '.join(BY)}")
    if since is not None and until is not None and since > until:
        raise InvalidInput("bad_date", f"--since {since} is after --until {until}")
    group = _group(by, engine.dialect.name)
    where = ["first_bot_at IS NOT NULL"]
    params: dict[str, datetime] = {}
    if since is not None:
        where.append("first_bot_at >= :since")
        params["since"] = datetime.combine(since, time(), UTC)
    if until is not None:
        where.append("first_bot_at < :until")
        params["until"] = datetime.combine(until + timedelta(days=1), time(), UTC)
    # the group and the conditions are syncd's own text (never input); values are bound
    statement = (
        f"SELECT {group} AS key, count(*) AS subscribers, count(linked_at) AS linked,"  # noqa: S608
        " count(first_order_at) AS ordered, count(first_paid_at) AS paid,"
        f" sum(revenue) AS revenue FROM syncd_people WHERE {' AND '.join(where)}"
        f" GROUP BY {group}"
    )
    query = text(statement).bindparams(*(bindparam(name, type_=UTCDateTime()) for name in params))
    async with translated(), engine.connect() as conn:
        found = (await conn.execute(query, params)).all()
    rows = [
        Row(str(key if key is not None else NONE), int(s), int(li), int(o), int(p), _money(r))
        for key, s, li, o, p, r in found
    ]
    if by == "month":
        rows.sort(key=lambda r: r.key)
    else:
        rows.sort(key=lambda r: (-r.subscribers, r.key))
    return Funnel(by, since, until, tuple(rows))


# --------------------------------------------------------------------------- formats


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _count(value: int) -> str:
    return f"{value:,}".replace(",", " ")


def _amount(value: Decimal) -> str:
    whole, _, cents = f"{value:.2f}".partition(".")
    return f"{int(whole):,}".replace(",", " ") + "." + cents


def as_table(f: Funnel) -> str:
    """Aligned columns for a terminal: each step with its conversion from the previous."""
    header = [f.by, "subscribers", "linked", "%", "ordered", "%", "paid", "%", "revenue"]
    lines = []
    for row in (*f.rows, f.total):
        linked, ordered, paid = row.conversions()
        lines.append([
            row.key, _count(row.subscribers), _count(row.linked), _pct(linked),
            _count(row.ordered), _pct(ordered), _count(row.paid), _pct(paid),
            _amount(row.revenue),
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def fmt(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    title = f"Funnel by {f.by}, first bot contact {f.period()} (UTC)"
    rule = "-" * len(fmt(header))
    body = [fmt(line) for line in lines]
    if not f.rows:
        body = ["no bot subscribers in this period"]
        return "\n".join([title, rule, *body])
    return "\n".join([title, fmt(header), rule, *body[:-1], rule, body[-1]])


CSV_COLUMNS = ("subscribers", "linked", "ordered", "paid", "revenue", "linked_rate",
               "ordered_rate", "paid_rate")  # fmt: skip


def as_csv(f: Funnel) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([f.by, *CSV_COLUMNS])
    for row in (*f.rows, f.total):
        data = row.as_json()
        writer.writerow([row.key, *("" if data[c] is None else data[c] for c in CSV_COLUMNS)])
    return out.getvalue()


def as_json(f: Funnel) -> str:
    document = {
        "by": f.by,
        "since": f.since.isoformat() if f.since else None,
        "until": f.until.isoformat() if f.until else None,
        "rows": [{f.by: row.key, **row.as_json()} for row in f.rows],
        "total": f.total.as_json(),
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def render(f: Funnel, form: str) -> str:
    if form == "table":
        return as_table(f) + "\n"
    if form == "csv":
        return as_csv(f)
    if form == "json":
        return as_json(f)
    if form == "html":
        from syncd.report_html import page

        return page(f)
    raise InvalidInput("bad_format", f"--format must be one of {', '.join(FORMATS)}")
