"""GetCourse calling out: «Вызвать URL» placeholders and Tech API webhook shapes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from syncd.sandbox.getcourse import GcDeal, GcUser, fire_process_call, fire_techapi
from syncd.sandbox.getcourse_callout import substitute
from syncd.sandbox.serve import serve

pytestmark = pytest.mark.timeout(10)


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: bytes


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[Received]]]:
    """A stand-in for syncd's webhook: records every request, answers 200."""
    seen: list[Received] = []

    async def record(request: Request) -> Response:
        seen.append(
            Received(
                request.method,
                request.url.path,
                dict(request.query_params),
                request.headers.get("content-type", ""),
                await request.body(),
            )
        )
        return JSONResponse({"success": True})

    app = Starlette(routes=[Route("/{path:path}", record, methods=["GET", "POST"])])
    async with serve(app) as base:
        yield base, seen


DEAL_OBJECT: dict[str, Any] = {
    "id": 871035642,
    "number": 11892043,
    "status": "payed",
    "cost_money_value": "14 900 руб.",
    "positions": ["Курс", "Книга"],
    "user": {"id": 512478330, "email": "a+b@c.ru", "phone": None},
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{object.id}", "871035642"),
        ("{object.user.email}", "a+b@c.ru"),
        ("{object.user.phone}", ""),
        ("{object.positions}", "Курс, Книга"),
        ("{object.user.telegram_id}", "{object.user.telegram_id}"),
        ("{object.nothing.deeper}", "{object.nothing.deeper}"),
        ("{user.email}", "{user.email}"),
    ],
)
def test_substitute(template: str, expected: str) -> None:
    assert substitute(template, DEAL_OBJECT) == expected


async def test_a_process_call_is_a_get_with_substituted_and_literal_placeholders(
    receiver: tuple[str, list[Received]],
) -> None:
    base, seen = receiver
    url = (
        f"{base}/v1/getcourse/events/deal.paid?token=S&email={{object.user.email}}"
        "&id={object.id}&cost={object.cost_money_value}&tg={object.user.telegram_id}"
    )

    answer = await fire_process_call(url, DEAL_OBJECT)

    assert answer.status_code == 200
    [call] = seen
    assert (call.method, call.path) == ("GET", "/v1/getcourse/events/deal.paid")
    assert call.query == {
        "token": "S",
        "email": "a+b@c.ru",
        "id": "871035642",
        "cost": "14 900 руб.",
        "tg": "{object.user.telegram_id}",
    }


async def test_an_unquoted_template_lets_a_plus_become_a_space(
    receiver: tuple[str, list[Received]],
) -> None:
    base, seen = receiver
    await fire_process_call(f"{base}/hook?email={{object.user.email}}", DEAL_OBJECT, quote=False)
    assert seen[0].query == {"email": "a b@c.ru"}


async def test_a_process_call_can_post_a_form_or_json(receiver: tuple[str, list[Received]]) -> None:
    base, seen = receiver
    fields = {"email": "{object.user.email}", "tg": "{object.user.telegram_id}"}

    await fire_process_call(f"{base}/form", DEAL_OBJECT, method="POST", form=fields)
    await fire_process_call(f"{base}/json", DEAL_OBJECT, method="POST", json_body=fields)

    form, body = seen
    assert form.content_type == "application/x-www-form-urlencoded"
    assert form.body == b"email=a%2Bb%40c.ru&tg=%7Bobject.user.telegram_id%7D"
    assert body.content_type == "application/json"
    assert json.loads(body.body) == {"email": "a+b@c.ru", "tg": "{object.user.telegram_id}"}


def _paid_deal() -> tuple[GcUser, GcDeal]:
    user = GcUser(512478330, email="a@b.ru")
    deal = GcDeal(
        871035642,
        11892043,
        user.id,
        status="payed",
        cost=Decimal(14900),
        paid=Decimal(14900),
        created_at=datetime(2026, 1, 15, 10, 23, 42),
        payed_at=datetime(2026, 1, 15, 12, 3, 42),
    )
    return user, deal


async def test_a_paid_deal_fires_deal_paid_then_status_changed_in_the_documented_shape(
    receiver: tuple[str, list[Received]],
) -> None:
    base, seen = receiver
    user, deal = _paid_deal()

    answers = await fire_techapi(f"{base}/v1/getcourse/techapi", "dealPaid", user, deal)

    assert [a.status_code for a in answers] == [200, 200]
    paid, changed = (json.loads(r.body) for r in seen)
    assert paid == {
        "json": {
            "ts": "2026-01-15T10:23:42Z",
            "ts64": 1768467822,
            "gcAccountId": 384201,
            "eventType": "getcourse/dealPaid",
            "user": {
                "id": "384201:512478330",
                "gcId": 512478330,
                "email": "a@b.ru",
                "type": "Real",
            },
            "deal": {
                "id": "871035642",
                "number": 11892043,
                "status": "payed",
                "isPayed": True,
                "cost": 14900,
                "payedValue": 14900,
                "currency": "RUB",
                "offerIds": [1],
                "createdAt": "2026-01-15T10:23:42Z",
            },
        }
    }
    assert changed["json"]["eventType"] == "getcourse/dealStatusChanged"
    assert {**changed["json"], "eventType": paid["json"]["eventType"]} == paid["json"]
    # ts is local creation time with a Z; ts64 is the real moment of payment (UTC+3 account)
    assert datetime.fromtimestamp(paid["json"]["ts64"], UTC) == datetime(
        2026, 1, 15, 9, 3, 42, tzinfo=UTC
    )


async def test_is_payed_can_be_an_int_and_other_events_fire_once(
    receiver: tuple[str, list[Received]],
) -> None:
    base, seen = receiver
    user, deal = _paid_deal()

    answers = await fire_techapi(
        f"{base}/hook", "getcourse/dealCreated", user, deal, is_payed_as_int=True
    )

    assert len(answers) == len(seen) == 1
    body = json.loads(seen[0].body)["json"]
    assert (body["eventType"], body["deal"]["isPayed"]) == ("getcourse/dealCreated", 1)
