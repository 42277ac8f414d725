"""Export tables as GetCourse renders them (getcourse.md, "Rows").

- every cell is a string; an absent value is ``""``;
- columns have Russian titles; each custom user field is one more column named by its
  title (users, group members and deals exports, after the built-in columns);
- the deals export's «Номер» title is preceded by a BOM (``bom_before_number``);
- dates are ``YYYY-MM-DD HH:MM:SS`` in the account's local time;
- money looks like ``12 000,00``: a non-breaking space between thousands, a comma
  before the kopecks (``money_style = "currency_word"``: ``12 000 руб.``, ``300,50 руб.``);
- the deals export's offer column is «Title» or «Состав заказа» (``offer_column``); deal
  status cells are codes or the interface's labels (``status_cells``).

The doc names the users and deals columns; the payments and group-member columns below
are plausible titles chosen here (payments: «Номер» is the payment id, «Заказ» the deal
number; group members: the users columns plus «Добавлен в группу»).

Filters (``ExportQuery.ranges``) are inclusive whole days: ``created_at[from]=2024-01-02``
keeps ``>= 2024-01-02 00:00:00``, ``[to]`` keeps ``<= … 23:59:59``; a row without the
filtered date (an unpaid deal under ``payed_at``) is left out. ``status`` is an exact match.

``GeneratedDeals`` is a lazy source for huge deals exports (1,000,000 rows and more): it
serves the built-in deal columns only, honours ``created_at`` ranges by index arithmetic
and ignores every other filter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from syncd.sandbox.getcourse_state import (
    DEAL_STATUS_LABELS,
    ExportQuery,
    GcUser,
    GetCourseState,
    MoneyStyle,
)

NBSP = "\u00a0"
BOM = "\ufeff"
UTM_COLUMNS = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")
USER_COLUMNS = (
    "id", "Email", "Тип регистрации", "Создан", "Последняя активность", "Имя", "Фамилия",
    "Телефон", "Город", *UTM_COLUMNS,
)  # fmt: skip
GROUP_USER_COLUMNS = (*USER_COLUMNS, "Добавлен в группу")
DEAL_COLUMNS = (
    "ID заказа", "Номер", "ID пользователя", "Пользователь", "Email", "Телефон",
    "Дата создания", "Дата оплаты", "Title", "Статус", "Стоимость, RUB", "Оплачено",
    "Дата изменения статуса", "Дата завершения",
)  # fmt: skip
PAYMENT_COLUMNS = (
    "Номер", "ID пользователя", "Пользователь", "Email", "ID заказа", "Заказ",
    "Дата создания", "Дата изменения статуса", "Тип", "Статус", "Сумма", "Комиссии",
    "Получено",
)  # fmt: skip

Row = Sequence[str]
Dates = dict[str, datetime | None]


def money(value: Decimal, style: MoneyStyle = "grouped") -> str:
    """``Decimal("12000")`` → ``"12 000,00"`` (the space is U+00A0), or ``"12 000 руб."``."""
    sign = "-" if value < 0 else ""
    whole, kopecks = f"{abs(value):.2f}".split(".")
    grouped = f"{sign}{int(whole):,}".replace(",", NBSP)
    if style == "currency_word":
        return f"{grouped} руб." if kopecks == "00" else f"{grouped},{kopecks} руб."
    return f"{grouped},{kopecks}"


def stamp(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def export_table(state: GetCourseState, query: ExportQuery) -> tuple[list[str], Iterable[Row]]:
    """The header and a lazy row iterable of one export, filtered by ``query``."""
    custom = [f.title for f in state.fields]
    if query.kind == "deals":
        header = list(DEAL_COLUMNS)
        if state.bom_before_number:
            header[1] = BOM + header[1]
        header[DEAL_COLUMNS.index("Title")] = state.offer_column
        if state.deal_rows is not None:
            return header, state.deal_rows(query)
        return header + custom, _deal_rows(state, query, custom)
    if query.kind == "payments":
        return list(PAYMENT_COLUMNS), _payment_rows(state, query)
    if query.kind == "group_users":
        return list(GROUP_USER_COLUMNS) + custom, _member_rows(state, query, custom)
    return list(USER_COLUMNS) + custom, _user_rows(state, query, custom)


def _keep(query: ExportQuery, dates: Dates, status: str) -> bool:
    if query.status is not None and status != query.status:
        return False
    for name, (low, high) in query.ranges.items():
        value = dates.get(name)
        if value is None:
            return False
        if low is not None and value < datetime.combine(low, time.min):
            return False
        if high is not None and value > _day_end(high):
            return False
    return True


def _user_cells(user: GcUser, custom: list[str]) -> list[str]:
    utm = [user.utm.get(k, "") for k in UTM_COLUMNS]
    return [
        str(user.id), user.email or "", user.reg_type, stamp(user.created_at),
        stamp(user.last_activity), user.first_name, user.last_name, user.phone, user.city,
        *utm, *(user.fields.get(title, "") for title in custom),
    ]  # fmt: skip


def _user_rows(state: GetCourseState, query: ExportQuery, custom: list[str]) -> Iterator[Row]:
    for user in sorted(state.users.values(), key=lambda u: u.id):
        if _keep(query, {"created_at": user.created_at}, user.status):
            yield _user_cells(user, custom)


def _member_rows(state: GetCourseState, query: ExportQuery, custom: list[str]) -> Iterator[Row]:
    for member in state.members:
        user = state.users.get(member.user_id)
        if member.group_id != query.group_id or user is None:
            continue
        dates: Dates = {"created_at": user.created_at, "added_at": member.added_at}
        if _keep(query, dates, user.status):
            cells = _user_cells(user, custom)
            yield [*cells[: len(USER_COLUMNS)], stamp(member.added_at), *cells[len(USER_COLUMNS) :]]


def _deal_rows(state: GetCourseState, query: ExportQuery, custom: list[str]) -> Iterator[Row]:
    for deal in sorted(state.deals.values(), key=lambda d: d.id):
        dates: Dates = {
            "created_at": deal.created_at, "payed_at": deal.payed_at,
            "finished_at": deal.finished_at, "status_changed_at": deal.status_changed_at,
        }  # fmt: skip
        if not _keep(query, dates, deal.status):
            continue
        user = state.users.get(deal.user_id) or GcUser(deal.user_id)
        status = deal.status
        if state.status_cells == "labels":
            status = DEAL_STATUS_LABELS.get(status, status)
        style = state.money_style
        yield [
            str(deal.id), str(deal.number), str(deal.user_id), user.name, user.email or "",
            user.phone, stamp(deal.created_at), stamp(deal.payed_at), deal.title, status,
            money(deal.cost, style), money(deal.paid, style), stamp(deal.status_changed_at),
            stamp(deal.finished_at), *(user.fields.get(title, "") for title in custom),
        ]  # fmt: skip


def _payment_rows(state: GetCourseState, query: ExportQuery) -> Iterator[Row]:
    for pay in sorted(state.payments.values(), key=lambda p: p.id):
        dates: Dates = {"created_at": pay.created_at, "status_changed_at": pay.status_changed_at}
        if not _keep(query, dates, pay.status):
            continue
        user = state.users.get(pay.user_id) or GcUser(pay.user_id)
        deal = state.deals.get(pay.deal_id)
        style = state.money_style
        yield [
            str(pay.id), str(pay.user_id), user.name, user.email or "", str(pay.deal_id),
            str(deal.number) if deal else "", stamp(pay.created_at),
            stamp(pay.status_changed_at), pay.kind, pay.status, money(pay.amount, style),
            money(pay.fee, style), money(pay.amount - pay.fee, style),
        ]  # fmt: skip


@dataclass(frozen=True)
class GeneratedDeals:
    """``count`` synthetic deals, one every ``step_seconds`` from ``start``, built lazily.

    Deal ``i`` has id ``50_000_000 + i``, number ``1_000_000 + i``, belongs to one of
    ``users`` buyers (``buyer{n}@example.ru``), costs 12 000,00 and every
    ``paid_every``-th deal is ``payed``.
    """

    count: int
    start: datetime = datetime(2024, 1, 1)  # account-local, naive
    step_seconds: int = 1
    users: int = 1000
    paid_every: int = 3

    def __call__(self, query: ExportQuery) -> Iterator[Row]:
        low, high = query.ranges.get("created_at", (None, None))
        first = 0 if low is None else self._index(datetime.combine(low, time.min), math.ceil)
        stop = self.count if high is None else self._index(_day_end(high), math.floor) + 1
        cost = money(Decimal(12000))
        zero = money(Decimal(0))
        midnight = datetime.combine(self.start.date(), time.min)
        offset = int((self.start - midnight).total_seconds())
        days: dict[int, str] = {}  # strftime on every row would be half a row's cost
        for i in range(max(first, 0), min(stop, self.count)):
            user = i % self.users
            day, second = divmod(offset + i * self.step_seconds, 86400)
            if day not in days:
                days[day] = (midnight + timedelta(days=day)).strftime("%Y-%m-%d")
            created = f"{days[day]} {second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}"
            paid = i % self.paid_every == 0
            yield [
                str(50_000_000 + i), str(1_000_000 + i), str(2_000_000 + user),
                f"Покупатель {user}", f"buyer{user}@example.ru", "", created,
                created if paid else "", "Курс", "payed" if paid else "new",
                cost, cost if paid else zero, created, "",
            ]  # fmt: skip

    def _index(self, moment: datetime, rounding: Callable[[float], int]) -> int:
        return rounding((moment - self.start).total_seconds() / self.step_seconds)


def _day_end(day: date) -> datetime:
    return datetime.combine(day, time(23, 59, 59))
