"""The GetCourse import API simulator against getcourse.md, over loopback HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from syncd.sandbox.getcourse import GetCourseState

ImportCall = Callable[..., Awaitable[httpx.Response]]

pytestmark = pytest.mark.timeout(10)


def _user(email: str | None = "a@b.ru", refresh: bool = False, **user: Any) -> dict[str, Any]:
    if email is not None:
        user["email"] = email
    params: dict[str, Any] = {"user": user}
    if refresh:
        params["system"] = {"refresh_if_exists": 1}
    return params


async def test_add_creates_an_unknown_email_and_answers_on_two_levels(
    gc_import: ImportCall, gc_state: GetCourseState
) -> None:
    answer = await gc_import(_user("A@B.ru", addfields={"telegram_id": "123456789"}))

    user = gc_state.user_by_email("a@b.ru")
    assert user is not None
    assert answer.status_code == 200
    assert answer.json() == {
        "success": True,
        "action": "add",
        "result": {
            "success": True,
            "user_id": user.id,
            "user_status": "added",
            "error": False,
            "error_message": "",
        },
    }
    assert user.fields == {"telegram_id": "123456789"}
    assert gc_state.imports()[0].params == _user("A@B.ru", addfields={"telegram_id": "123456789"})


async def test_an_existing_user_is_left_as_is_without_refresh_if_exists(
    gc_import: ImportCall, gc_state: GetCourseState
) -> None:
    user = gc_state.add_user("a@b.ru", fields={"telegram_id": "1"})

    answer = (await gc_import(_user(addfields={"telegram_id": "2"}))).json()

    assert answer["result"]["user_status"] == "exists"
    assert answer["result"]["user_id"] == user.id
    assert user.fields == {"telegram_id": "1"}
    assert len(gc_state.users) == 1


async def test_refresh_if_exists_updates_the_existing_user(
    gc_import: ImportCall, gc_state: GetCourseState
) -> None:
    user = gc_state.add_user("a@b.ru", fields={"telegram_id": "1"})

    params = _user(refresh=True, first_name="Анна", addfields={"telegram_id": "2"})
    answer = (await gc_import(params)).json()

    assert answer["result"]["user_status"] == "updated"
    assert (user.first_name, user.fields) == ("Анна", {"telegram_id": "2"})


async def test_addfields_go_by_title_and_an_unknown_title_is_silently_ignored(
    gc_import: ImportCall, gc_state: GetCourseState
) -> None:
    params = _user(addfields={"sb_294495_id": 987654, "Telegram ID": "5"})
    answer = (await gc_import(params)).json()

    user = gc_state.user_by_email("a@b.ru")
    assert answer["result"]["error"] is False
    assert user is not None and user.fields == {"sb_294495_id": "987654"}
    assert gc_state.ignored_addfields == [("a@b.ru", "Telegram ID")]


async def test_no_email_and_no_phone_is_rejected_inside_a_successful_answer(
    gc_import: ImportCall, gc_state: GetCourseState
) -> None:
    answer = (await gc_import(_user(None, first_name="X"))).json()

    assert answer["success"] is True
    assert answer["result"]["error"] is True
    assert answer["result"]["error_message"] == "Не указан ни эл. адрес, ни телефон"
    assert gc_state.users == {}
    assert gc_state.imports() == []


async def test_session_utm_tags_are_kept_on_a_created_user(
    gc_import: ImportCall, gc_state: GetCourseState
) -> None:
    params = {**_user(), "session": {"utm_source": "tg", "utm_campaign": "spring"}}

    await gc_import(params)

    user = gc_state.user_by_email("a@b.ru")
    assert user is not None
    assert user.utm == {"utm_source": "tg", "utm_campaign": "spring"}


async def test_a_phone_alone_identifies_a_user_and_group_name_adds_groups(
    gc_import: ImportCall, gc_state: GetCourseState
) -> None:
    first = (await gc_import(_user(None, phone="+79001234567", group_name=["VIP"]))).json()
    again = (await gc_import(_user(None, phone="+79001234567"))).json()

    assert first["result"]["user_status"] == "added"
    assert again["result"] == {**first["result"], "user_status": "exists"}
    group = gc_state.group_by_name("VIP")
    assert group is not None
    assert [(m.group_id, m.user_id) for m in gc_state.members] == [
        (group.id, first["result"]["user_id"])
    ]


async def test_a_wrong_key_fails_at_call_level(
    gc_import: ImportCall, gc_state: GetCourseState
) -> None:
    answer = await gc_import(_user(), key="wrong")

    assert answer.json() == {"success": False, "error": "Неавторизованное API-обращение"}
    assert gc_state.users == {}


async def test_params_that_are_not_url_encoded_base64_say_no_params(
    gc: httpx.AsyncClient, gc_state: GetCourseState
) -> None:
    # "+" and "/" in base64 sent raw in a form: "+" turns into a space, the decoding fails.
    params = "eyJ1c2VyIjogeyJlbWFpbCI6ICJ4fn5+QGIucnUifX0="  # {"user": {"email": "x~~~@b.ru"}}
    body = f"key={gc_state.key}&action=add&params={params}"
    headers = {"content-type": "application/x-www-form-urlencoded"}

    answer = await gc.post("/pl/api/users", content=body, headers=headers)

    assert answer.json() == {"success": False, "error": "Не указаны параметры"}


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_missing_action_answers_empty_action(
    gc: httpx.AsyncClient, gc_state: GetCourseState, method: str
) -> None:
    # GET is what a redirect makes of the POST: the form is gone.
    data = {"key": gc_state.key} if method == "POST" else None
    answer = await gc.request(method, "/pl/api/users", data=data)

    assert answer.json() == {"success": False, "error": "Пустой параметр action"}


async def test_a_plan_without_the_api_answers_200_with_an_empty_body_and_writes_nothing(
    gc_import: ImportCall, gc_state: GetCourseState
) -> None:
    gc_state.import_mode = "no_api"

    answer = await gc_import(_user())

    assert (answer.status_code, answer.content) == (200, b"")
    assert gc_state.users == {}
    assert [c.outcome for c in gc_state.calls] == ["no_api"]


@pytest.mark.parametrize(
    ("mode", "message"),
    [("forbidden", "Действие запрещено"), ("unavailable", "Функционал недоступен")],
)
async def test_denied_switches(
    gc_import: ImportCall, gc_state: GetCourseState, mode: Any, message: str
) -> None:
    gc_state.import_mode = mode

    answer = await gc_import(_user())

    assert answer.json() == {"success": False, "error": message}
    assert gc_state.users == {}


@pytest.mark.parametrize(
    ("style", "yes", "no"), [("json", True, False), ("int", 1, 0), ("str", "true", "false")]
)
async def test_booleans_are_rendered_in_the_chosen_style(
    gc_import: ImportCall, gc_state: GetCourseState, style: Any, yes: Any, no: Any
) -> None:
    gc_state.bool_style = style

    ok = (await gc_import(_user())).json()
    rejected = (await gc_import(_user(None))).json()
    refused = (await gc_import(_user(), key="wrong")).json()

    assert (ok["success"], ok["result"]["success"], ok["result"]["error"]) == (yes, yes, no)
    assert (rejected["success"], rejected["result"]["error"]) == (yes, yes)
    assert refused["success"] == no


async def test_creating_past_the_limit_is_rejected_but_updates_still_work(
    gc_import: ImportCall, gc_state: GetCourseState
) -> None:
    gc_state.create_limit = 1
    await gc_import(_user("one@b.ru"))

    refused = (await gc_import(_user("two@b.ru"))).json()
    updated = (await gc_import(_user("one@b.ru", refresh=True, first_name="Ян"))).json()

    assert refused["result"]["error_message"] == "Достигнут лимит"
    assert updated["result"]["user_status"] == "updated"


async def test_deals_import_creates_a_paid_deal_for_the_user(
    gc_import: ImportCall, gc_state: GetCourseState
) -> None:
    params = {**_user(), "deal": {"product_title": "Курс", "deal_cost": 14900, "deal_is_paid": 1}}

    answer = (await gc_import(params, path="deals")).json()

    [deal] = gc_state.deals.values()
    assert answer["result"]["deal_id"] == deal.id
    assert (deal.status, deal.cost, deal.paid) == ("payed", Decimal(14900), Decimal(14900))
    assert deal.user_id == answer["result"]["user_id"]
