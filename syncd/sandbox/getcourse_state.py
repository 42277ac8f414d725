"""The simulated GetCourse account: its objects, its switches and what was asked of it.

Objects follow getcourse.md: users (keyed by email, or by phone when they have none),
custom user fields addressed by **title**, deals (``id`` and a separate ``number``),
payments, groups and group members. Dates are naive ``datetime`` in the account's local
time. Seeding is cheap (``add_user``, ``add_deal``, …); a huge deals export can come from
a lazy ``deal_rows`` source instead (see ``getcourse_rows.GeneratedDeals``).

Switches a test flips at run time:
- ``import_mode``: ``"ok"``; ``"no_api"`` (a plan without the import API: HTTP 200, empty
  body, nothing written); ``"forbidden"`` («Действие запрещено»); ``"unavailable"``
  («Функционал недоступен»);
- ``bool_style``: import answers' booleans as ``true/false`` (``"json"``), ``1/0``
  (``"int"``) or ``"true"/"false"`` (``"str"``);
- ``create_limit``: creations allowed before «Достигнут лимит»;
- ``ready_after_polls`` / ``ready_after_seconds``: an export is ready once it has answered
  909 that many times AND that many seconds (on ``clock``) passed since its start;
- ``budget`` per ``budget_window`` seconds (100 per 2 h), on the injectable ``clock``;
  ``groups_cost_budget``: the group list counts against it (one client counts it: so
  does the simulator by default);
- export shapes (getcourse.md, "Added 2026-12-02"; defaults are the documented shape):
  ``offer_column`` «Title» or «Состав заказа»; ``status_cells`` ``"codes"`` or the
  interface's Russian ``"labels"`` (deals; payments keep codes: no labels are known);
  ``money_style`` ``"grouped"`` (``12 000,00``) or ``"currency_word"`` (``300 руб.``);
- export failures: ``export_api = False`` answers 917 to every export request;
  ``collect_errors[kind]`` answers a ready export of that kind with that error message
  («Файл не создан»); ``extra_items[kind]`` puts raw JSON texts (``7``, ``["2"]``, a
  deeply nested list) among the rows; ``raw_answers[kind]`` replaces the whole ready
  answer with raw bytes (an answer that cannot be read).
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from syncd.sandbox.clock import Clock
from syncd.sandbox.faults import SandboxState

ImportMode = Literal["ok", "no_api", "forbidden", "unavailable"]
OfferColumn = Literal["Title", "Состав заказа"]
StatusCells = Literal["codes", "labels"]
MoneyStyle = Literal["grouped", "currency_word"]
BoolStyle = Literal["json", "int", "str"]
ExportKind = Literal["users", "group_users", "deals", "payments"]
Money = Decimal | int | str

DEAL_STATUSES = frozenset({
    "new", "payed", "cancelled", "false", "in_work", "payment_waiting",
    "part_payed", "waiting_for_return", "not_confirmed", "pending",
})  # fmt: skip
#: Deal statuses as the interface labels them (getcourse.md, "Added 2026-12-02").
DEAL_STATUS_LABELS = {
    "new": "Новый", "payed": "Оплачен", "cancelled": "Отменен", "false": "Ложный",
    "in_work": "В работе", "payment_waiting": "Ожидаем оплаты",
    "part_payed": "Частично оплачен", "waiting_for_return": "Ожидаем возврата",
    "not_confirmed": "Не подтвержден", "pending": "Отложен",
}  # fmt: skip
PAYMENT_STATUSES = frozenset({
    "expected", "accepted", "returned", "tobalance", "frombalance", "returned_to_balance",
})  # fmt: skip


def local_now() -> datetime:
    return datetime.now().replace(microsecond=0)


@dataclass
class GcField:
    id: int
    title: str
    type: str = "text"


@dataclass
class GcUser:
    id: int
    email: str | None = None
    phone: str = ""
    first_name: str = ""
    last_name: str = ""
    city: str = ""
    status: str = "active"
    reg_type: str = "Самостоятельная регистрация"
    created_at: datetime = field(default_factory=local_now)
    last_activity: datetime | None = None
    utm: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)  # custom field title -> value

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()


@dataclass
class GcDeal:
    id: int
    number: int
    user_id: int
    title: str = "Курс"
    status: str = "new"
    cost: Decimal = Decimal(0)
    paid: Decimal = Decimal(0)
    currency: str = "RUB"
    created_at: datetime = field(default_factory=local_now)
    payed_at: datetime | None = None
    finished_at: datetime | None = None
    status_changed_at: datetime | None = None
    offer_ids: list[int] = field(default_factory=lambda: [1])


@dataclass
class GcPayment:
    id: int
    user_id: int
    deal_id: int
    amount: Decimal
    status: str = "accepted"
    kind: str = "Карта"
    fee: Decimal = Decimal(0)
    created_at: datetime = field(default_factory=local_now)
    status_changed_at: datetime | None = None


@dataclass
class GcGroup:
    id: int
    name: str
    last_added_at: datetime | None = None


@dataclass
class GcMember:
    group_id: int
    user_id: int
    added_at: datetime = field(default_factory=local_now)


@dataclass(frozen=True)
class ExportQuery:
    """Validated export filters: date ranges by filter name (inclusive days) and status."""

    kind: ExportKind
    ranges: dict[str, tuple[date | None, date | None]]
    status: str | None = None
    group_id: int | None = None


@dataclass
class GcExport:
    id: int
    query: ExportQuery
    started_at: float
    polls: int = 0  # 909 answers given so far
    collected: int = 0  # ready answers given so far


@dataclass
class GcCall:
    """One request that reached the simulator (faulted ones never do)."""

    method: str
    path: str
    action: str | None  # import action, else None
    params: Any  # import: decoded ``params``; export: the query string without the key
    outcome: str  # "ok", "no_api", "failed: <call-level error>", "rejected: <result error>",
    # "error:<export error code>"


DealRowSource = Callable[[ExportQuery], Iterable[Sequence[str]]]


@dataclass
class GetCourseState(SandboxState):
    key: str = "gc-sandbox-key"
    clock: Clock = time.monotonic
    import_mode: ImportMode = "ok"
    bool_style: BoolStyle = "json"
    create_limit: int | None = None
    ready_after_polls: int = 1
    ready_after_seconds: float = 0.0
    budget: int = 100
    budget_window: float = 2 * 3600.0
    bom_before_number: bool = True
    deal_rows: DealRowSource | None = None  # overrides the seeded deals in deals exports
    groups_cost_budget: bool = True
    offer_column: OfferColumn = "Title"
    status_cells: StatusCells = "codes"
    money_style: MoneyStyle = "grouped"
    export_api: bool = True
    collect_errors: dict[ExportKind, str] = field(default_factory=dict)
    extra_items: dict[ExportKind, list[str]] = field(default_factory=dict)
    raw_answers: dict[ExportKind, bytes] = field(default_factory=dict)

    users: dict[int, GcUser] = field(default_factory=dict)
    deals: dict[int, GcDeal] = field(default_factory=dict)
    payments: dict[int, GcPayment] = field(default_factory=dict)
    groups: dict[int, GcGroup] = field(default_factory=dict)
    members: list[GcMember] = field(default_factory=list)
    fields: list[GcField] = field(default_factory=list)

    calls: list[GcCall] = field(default_factory=list)
    exports: dict[int, GcExport] = field(default_factory=dict)
    export_requests: int = 0  # starts, polls (and group lists) counted against the budget
    export_times: collections.deque[float] = field(default_factory=collections.deque)
    ignored_addfields: list[tuple[str, str]] = field(default_factory=list)  # (email|phone, title)
    created_count: int = 0  # users created through the import API, for ``create_limit``

    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1), init=False, repr=False)

    def next_id(self, base: int) -> int:
        return base + next(self._ids)

    # seeding ------------------------------------------------------------------------
    def add_field(self, title: str, type: str = "text") -> GcField:
        gc_field = GcField(self.next_id(100), title, type)
        self.fields.append(gc_field)
        return gc_field

    def add_user(self, email: str | None = None, **attrs: Any) -> GcUser:
        """A user; ``attrs`` are ``GcUser`` fields (``phone``, ``fields={title: value}``…)."""
        if email is not None and self.user_by_email(email) is not None:
            raise ValueError(f"a user with email {email!r} exists: users are keyed by email")
        user = GcUser(self.next_id(1_000_000), email=normalize_email(email), **attrs)
        self.users[user.id] = user
        return user

    def add_deal(
        self, user: GcUser | int, cost: Money = 0, *, status: str = "new", **attrs: Any
    ) -> GcDeal:
        """A deal of ``user``; a ``payed`` deal is fully paid at its creation unless told."""
        user_id = user if isinstance(user, int) else user.id
        seq = self.next_id(0)
        deal = GcDeal(5_000_000 + seq, 10_000 + seq, user_id, status=status,
                      cost=Decimal(cost), **attrs)  # fmt: skip
        if status == "payed" and "paid" not in attrs:
            deal.paid = deal.cost
        if status == "payed" and deal.payed_at is None:
            deal.payed_at = deal.created_at
        self.deals[deal.id] = deal
        return deal

    def add_payment(self, deal: GcDeal, amount: Money | None = None, **attrs: Any) -> GcPayment:
        value = deal.cost if amount is None else Decimal(amount)
        payment = GcPayment(self.next_id(9_000_000), deal.user_id, deal.id, value, **attrs)
        self.payments[payment.id] = payment
        return payment

    def add_group(self, name: str) -> GcGroup:
        group = GcGroup(self.next_id(3_000), name)
        self.groups[group.id] = group
        return group

    def add_member(
        self, group: GcGroup, user: GcUser, added_at: datetime | None = None
    ) -> GcMember:
        member = GcMember(group.id, user.id, added_at or local_now())
        self.members.append(member)
        if group.last_added_at is None or member.added_at > group.last_added_at:
            group.last_added_at = member.added_at
        return member

    # lookups ------------------------------------------------------------------------
    def user_by_email(self, email: str) -> GcUser | None:
        wanted = normalize_email(email)
        return next((u for u in self.users.values() if u.email == wanted), None)

    def user_by_phone(self, phone: str) -> GcUser | None:
        return next((u for u in self.users.values() if phone and u.phone == phone), None)

    def group_by_name(self, name: str) -> GcGroup | None:
        return next((g for g in self.groups.values() if g.name == name), None)

    def imports(self) -> list[GcCall]:
        """Import calls that were answered with a result (the writes that happened)."""
        return [c for c in self.calls if c.action is not None and c.outcome == "ok"]


def normalize_email(email: str | None) -> str | None:
    cleaned = (email or "").strip().lower()
    return cleaned or None
