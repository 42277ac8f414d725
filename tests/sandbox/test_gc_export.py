"""The GetCourse export API simulator against getcourse.md, over loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from syncd.sandbox.clock import FakeClock
from syncd.sandbox.getcourse import BOM, NBSP, GeneratedDeals, GetCourseState, money
from syncd.sandbox.getcourse_rows import Row
from syncd.sandbox.getcourse_state import ExportQuery

pytestmark = pytest.mark.timeout(15)
SINCE = {"created_at[from]": "2024-01-01"}


def _error(code: int, message: str) -> dict[str, Any]:
    return {"success": False, "error": True, "error_code": code, "error_message": message}


async def _start(gc: httpx.AsyncClient, what: str, key: str, **filters: str) -> dict[str, Any]:
    answer = await gc.get(f"/pl/api/account/{what}", params={"key": key, **filters})
    assert answer.status_code == 200
    result: dict[str, Any] = answer.json()
    return result


async def _collect(gc: httpx.AsyncClient, export_id: int, key: str) -> dict[str, Any]:
    answer = await gc.get(f"/pl/api/account/exports/{export_id}", params={"key": key})
    assert answer.status_code == 200
    result: dict[str, Any] = answer.json()
    return result


async def _export(
    gc: httpx.AsyncClient, state: GetCourseState, what: str, **filters: str
) -> list[dict[str, str]]:
    """Start, poll until ready, and zip the rows with the titles."""
    export_id = (await _start(gc, what, state.key, **filters))["info"]["export_id"]
    while (answer := await _collect(gc, export_id, state.key)).get("error_code") == 909:
        pass
    info = answer["info"]
    return [dict(zip(info["fields"], row, strict=True)) for row in info["items"]]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("0", "0,00"),
        ("999.5", "999,50"),
        ("12000", "12 000,00"),
        ("1234567.891", "1 234 567,89"),
        ("-1500", "-1 500,00"),
    ],
)
def test_money_has_non_breaking_thousands_and_a_decimal_comma(value: str, text: str) -> None:
    assert money(Decimal(value)) == text.replace(" ", NBSP)


async def test_no_filter_is_error_908(gc: httpx.AsyncClient, gc_state: GetCourseState) -> None:
    assert await _start(gc, "deals", gc_state.key) == _error(908, "Не указан ни один фильтр")
    assert gc_state.exports == {}


async def test_an_export_is_not_ready_then_ready_with_string_cells(
    gc: httpx.AsyncClient, gc_state: GetCourseState
) -> None:
    gc_state.add_user("a@b.ru", created_at=datetime(2024, 5, 1, 9, 30))

    started = await _start(gc, "users", gc_state.key, **SINCE)
    export_id = started["info"]["export_id"]
    first = await _collect(gc, export_id, gc_state.key)
    second = await _collect(gc, export_id, gc_state.key)

    assert started == {"success": True, "info": {"export_id": export_id}}
    assert first == _error(909, "Файл еще не создан")
    assert second["success"] is True
    assert second["info"]["fields"][:4] == ["id", "Email", "Тип регистрации", "Создан"]
    [row] = second["info"]["items"]
    assert all(isinstance(cell, str) for cell in row)
    assert row[1:4] == ["a@b.ru", "Самостоятельная регистрация", "2024-05-01 09:30:00"]


async def test_readiness_can_wait_for_time_on_the_clock(
    gc: httpx.AsyncClient, gc_state: GetCourseState, clock: FakeClock
) -> None:
    gc_state.ready_after_polls, gc_state.ready_after_seconds = 0, 60
    export_id = (await _start(gc, "users", gc_state.key, **SINCE))["info"]["export_id"]

    early = await _collect(gc, export_id, gc_state.key)
    clock.advance(60)
    late = await _collect(gc, export_id, gc_state.key)

    assert early["error_code"] == 909
    assert late == {"success": True, "info": {"fields": late["info"]["fields"], "items": []}}


async def test_a_second_export_before_the_first_is_collected_is_905_and_starts_nothing(
    gc: httpx.AsyncClient, gc_state: GetCourseState
) -> None:
    first = (await _start(gc, "deals", gc_state.key, **SINCE))["info"]["export_id"]

    refused = await _start(gc, "payments", gc_state.key, **SINCE)
    assert refused == _error(905, "Уже запущен один экспорт")
    assert list(gc_state.exports) == [first]

    await _collect(gc, first, gc_state.key)  # 909: still running
    assert (await _start(gc, "payments", gc_state.key, **SINCE))["error_code"] == 905
    assert (await _collect(gc, first, gc_state.key))["success"] is True
    assert (await _start(gc, "payments", gc_state.key, **SINCE))["success"] is True


async def test_the_budget_is_100_requests_per_two_hours_polls_included(
    gc: httpx.AsyncClient, gc_state: GetCourseState, clock: FakeClock
) -> None:
    gc_state.ready_after_polls = 10**6  # never ready: every poll costs budget
    export_id = (await _start(gc, "deals", gc_state.key, **SINCE))["info"]["export_id"]
    for _ in range(99):
        clock.advance(60)
        assert (await _collect(gc, export_id, gc_state.key))["error_code"] == 909

    assert await _collect(gc, export_id, gc_state.key) == _error(903, "Слишком много запросов")
    assert (await _start(gc, "users", gc_state.key, **SINCE))["error_code"] == 903
    assert gc_state.export_requests == 100

    clock.advance(2 * 3600 - 99 * 60)  # the start has aged out of the window
    assert (await _collect(gc, export_id, gc_state.key))["error_code"] == 909
    assert (await _collect(gc, export_id, gc_state.key))["error_code"] == 903
    clock.advance(60)  # so has the first poll
    assert (await _collect(gc, export_id, gc_state.key))["error_code"] == 909
    assert gc_state.export_requests == 102


async def test_a_day_of_polling_every_ten_minutes_fits_the_budget(
    gc: httpx.AsyncClient, gc_state: GetCourseState, clock: FakeClock
) -> None:
    gc_state.add_deal(gc_state.add_user("a@b.ru"), 100)
    for _ in range(24 * 6):
        rows = await _export(gc, gc_state, "deals", **SINCE)
        assert len(rows) == 1
        clock.advance(600)
    assert gc_state.export_requests == 24 * 6 * 3


async def test_a_bad_key_is_901_and_costs_no_budget(
    gc: httpx.AsyncClient, gc_state: GetCourseState
) -> None:
    assert await _start(gc, "deals", "wrong", **SINCE) == _error(901, "Неверный ключ доступа")
    assert (await _collect(gc, 1, "wrong"))["error_code"] == 901
    assert gc_state.export_requests == 0


@pytest.mark.parametrize(("what", "code"), [("deals", 913), ("payments", 918)])
async def test_an_unknown_status_filter_is_rejected(
    gc: httpx.AsyncClient, gc_state: GetCourseState, what: str, code: int
) -> None:
    answer = await _start(gc, what, gc_state.key, status="paid")
    assert answer["error_code"] == code
    assert (await _start(gc, what, gc_state.key, status="payed" if code == 913 else "accepted"))[
        "success"
    ]


async def test_a_date_that_is_not_yyyy_mm_dd_is_refused(
    gc: httpx.AsyncClient, gc_state: GetCourseState
) -> None:
    answer = await _start(gc, "deals", gc_state.key, **{"created_at[from]": "01.02.2024"})
    assert (answer["success"], answer["error_code"]) == (False, 999)


async def test_deal_rows_have_the_documented_titles_bom_money_and_dates(
    gc: httpx.AsyncClient, gc_state: GetCourseState
) -> None:
    user = gc_state.add_user(
        "a@b.ru", first_name="Анна", last_name="Ли", phone="+7900", fields={"telegram_id": "42"}
    )
    created, paid = datetime(2024, 3, 1, 10, 0, 5), datetime(2024, 3, 2, 11, 0)
    deal = gc_state.add_deal(user, "12000", status="payed", created_at=created, payed_at=paid)

    [row] = await _export(gc, gc_state, "deals", **SINCE)

    assert list(row)[:3] == ["ID заказа", BOM + "Номер", "ID пользователя"]
    assert row["ID заказа"] == str(deal.id)
    assert row[BOM + "Номер"] == str(deal.number)
    assert row["Пользователь"] == "Анна Ли"
    assert (row["Email"], row["Телефон"], row["Статус"]) == ("a@b.ru", "+7900", "payed")
    assert row["Дата создания"] == "2024-03-01 10:00:05"
    assert row["Дата оплаты"] == "2024-03-02 11:00:00"
    assert row["Стоимость, RUB"] == row["Оплачено"] == f"12{NBSP}000,00"
    assert row["telegram_id"] == "42"
    assert row["sb_294495_id"] == ""


async def test_date_filters_keep_whole_days_and_drop_rows_without_the_date(
    gc: httpx.AsyncClient, gc_state: GetCourseState
) -> None:
    user = gc_state.add_user("a@b.ru")
    for day, status in [(1, "payed"), (2, "new"), (3, "payed"), (4, "payed")]:
        gc_state.add_deal(user, 10, status=status, created_at=datetime(2024, 1, day, 23, 59, 59))

    created = await _export(
        gc, gc_state, "deals", **{"created_at[from]": "2024-01-02", "created_at[to]": "2024-01-03"}
    )
    paid = await _export(gc, gc_state, "deals", **{"payed_at[to]": "2024-01-03"})
    new = await _export(gc, gc_state, "deals", status="new")

    assert [r["Дата создания"][:10] for r in created] == ["2024-01-02", "2024-01-03"]
    assert [r["Дата создания"][:10] for r in paid] == ["2024-01-01", "2024-01-03"]
    assert [r["Статус"] for r in new] == ["new"]


async def test_users_payments_and_group_members_exports(
    gc: httpx.AsyncClient, gc_state: GetCourseState
) -> None:
    ann = gc_state.add_user(
        "ann@b.ru", created_at=datetime(2024, 1, 1), fields={"telegram_id": "7"}
    )
    bob = gc_state.add_user("bob@b.ru", created_at=datetime(2024, 2, 1))
    group = gc_state.add_group("VIP")
    gc_state.add_member(group, ann, datetime(2024, 2, 5, 8, 0))
    gc_state.add_member(group, bob, datetime(2024, 3, 5, 8, 0))
    payment = gc_state.add_payment(
        gc_state.add_deal(bob, "1500.5"), status="accepted", created_at=datetime(2024, 2, 2)
    )

    users = await _export(gc, gc_state, "users", **{"created_at[to]": "2024-01-31"})
    members = await _export(
        gc, gc_state, f"groups/{group.id}/users", **{"added_at[from]": "2024-03-01"}
    )
    payments = await _export(gc, gc_state, "payments", status="accepted")

    assert [(u["id"], u["Email"], u["telegram_id"]) for u in users] == [
        (str(ann.id), "ann@b.ru", "7")
    ]
    assert [(m["Email"], m["Добавлен в группу"]) for m in members] == [
        ("bob@b.ru", "2024-03-05 08:00:00")
    ]
    [pay] = payments
    assert (pay["Номер"], pay["Email"], pay["Статус"]) == (str(payment.id), "bob@b.ru", "accepted")
    assert pay["Сумма"] == "1" + NBSP + "500,50"


async def test_fields_and_groups_are_listed_at_once_the_group_list_costs_budget(
    gc: httpx.AsyncClient, gc_state: GetCourseState
) -> None:
    group = gc_state.add_group("VIP")
    gc_state.add_member(group, gc_state.add_user("a@b.ru"), datetime(2024, 1, 2, 3, 4, 5))

    fields = (await gc.post("/pl/api/account/fields", data={"key": gc_state.key})).json()
    groups = (await gc.post("/pl/api/account/groups", data={"key": gc_state.key})).json()
    refused = (await gc.post("/pl/api/account/groups", data={"key": "wrong"})).json()

    assert [(f["title"], f["type"]) for f in fields["info"]] == [
        ("telegram_id", "text"),
        ("sb_294495_id", "text"),
    ]
    assert groups == {
        "success": True,
        "info": [{"id": group.id, "name": "VIP", "last_added_at": "2024-01-02 03:04:05"}],
    }
    assert refused["error_code"] == 901
    assert gc_state.export_requests == 1  # the group list, as a public client counts it
    gc_state.budget = 1
    spent = (await gc.post("/pl/api/account/groups", data={"key": gc_state.key})).json()
    assert spent == _error(903, "Слишком много запросов")
    gc_state.groups_cost_budget = False
    gc_state.budget = 100
    await gc.post("/pl/api/account/groups", data={"key": gc_state.key})
    assert gc_state.export_requests == 1


async def test_export_shapes_seen_in_other_accounts(
    gc: httpx.AsyncClient, gc_state: GetCourseState
) -> None:
    """«Состав заказа», status labels and amounts with a currency word (getcourse.md)."""
    user = gc_state.add_user("a@b.ru")
    gc_state.add_deal(user, "12000", status="payed", created_at=datetime(2024, 3, 1))
    deal = gc_state.add_deal(user, "300", status="part_payed", created_at=datetime(2024, 3, 1))
    gc_state.add_payment(deal, "300.5", status="accepted", created_at=datetime(2024, 3, 1))
    gc_state.offer_column = "Состав заказа"
    gc_state.status_cells = "labels"
    gc_state.money_style = "currency_word"

    deals = await _export(gc, gc_state, "deals", **SINCE)
    [pay] = await _export(gc, gc_state, "payments", **SINCE)

    assert "Title" not in deals[0] and deals[0]["Состав заказа"] == "Курс"
    assert [d["Статус"] for d in deals] == ["Оплачен", "Частично оплачен"]
    assert [d["Стоимость, RUB"] for d in deals] == [f"12{NBSP}000 руб.", "300 руб."]
    assert pay["Сумма"] == "300,50 руб." and pay["Статус"] == "accepted"


async def test_final_errors_and_answers_that_cannot_be_read(
    gc: httpx.AsyncClient, gc_state: GetCourseState
) -> None:
    gc_state.add_deal(gc_state.add_user("a@b.ru"), 1, created_at=datetime(2024, 3, 1))
    gc_state.collect_errors["deals"] = "Файл не создан"
    export_id = (await _start(gc, "deals", gc_state.key, **SINCE))["info"]["export_id"]
    assert (await _collect(gc, export_id, gc_state.key))["error_code"] == 909
    answer = await _collect(gc, export_id, gc_state.key)
    assert answer == {"success": False, "error": True, "error_message": "Файл не создан"}
    gc_state.collect_errors.clear()

    gc_state.extra_items["deals"] = ["7", '["2"]', "[" * 50 + "]" * 50]
    rows = (await _collect(gc, export_id, gc_state.key))["info"]["items"]
    assert rows[:2] == [7, ["2"]] and len(rows) == 4

    gc_state.raw_answers["deals"] = b'{"success": true, "info": {"fields": ["a"], "items": 7}}'
    raw = await gc.get(f"/pl/api/account/exports/{export_id}", params={"key": gc_state.key})
    assert raw.json()["info"]["items"] == 7

    gc_state.export_api = False
    assert (await _start(gc, "deals", gc_state.key, **SINCE))["error_code"] == 917


async def test_a_generated_export_is_filtered_by_index(
    gc: httpx.AsyncClient, gc_state: GetCourseState
) -> None:
    gc_state.deal_rows = GeneratedDeals(10_000, start=datetime(2024, 1, 1), step_seconds=60)

    rows = await _export(
        gc, gc_state, "deals", **{"created_at[from]": "2024-01-02", "created_at[to]": "2024-01-02"}
    )

    assert len(rows) == 24 * 60
    assert rows[0]["Дата создания"] == "2024-01-02 00:00:00"
    assert rows[-1]["Дата создания"] == "2024-01-02 23:59:00"
    assert rows[0]["Стоимость, RUB"] == f"12{NBSP}000,00"


async def test_a_200k_row_export_is_streamed_not_built_in_memory(
    gc: httpx.AsyncClient, gc_state: GetCourseState
) -> None:
    total = 200_000
    produced = 0
    generated = GeneratedDeals(total)

    def counting(query: ExportQuery) -> Iterator[Row]:
        nonlocal produced
        for row in generated(query):
            produced += 1
            yield row

    gc_state.deal_rows = counting
    gc_state.ready_after_polls = 0
    export_id = (await _start(gc, "deals", gc_state.key, **SINCE))["info"]["export_id"]
    url = f"/pl/api/account/exports/{export_id}"
    async with gc.stream("GET", url, params={"key": gc_state.key}) as answer:
        assert "content-length" not in answer.headers
        chunks = answer.aiter_bytes()
        head = await anext(chunks)
        produced_at_first_chunk = produced
        received = len(head) + sum([len(chunk) async for chunk in chunks])

    assert head.startswith(b'{"success": true, "info": {"fields": ["ID')
    assert produced_at_first_chunk < total // 10
    assert produced == total
    assert received > total * 150
