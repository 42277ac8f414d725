"""Every answer of both APIs classified as SPEC §5 and api/*.md say: a table per client."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from syncd.clients.getcourse import GetCourseClient
from syncd.clients.protocol import (
    BudgetSpent,
    ExportBusy,
    ExportFailed,
    ExportNotReady,
    raise_for_error,
)
from syncd.clients.salebot import SalebotClient
from syncd.errors import PermanentError, TransientError

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def answer(status: int = 200, body: Any = None, text: str | None = None, **headers: str) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handle


def timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


OK_IMPORT = {
    "success": True,
    "action": "add",
    "result": {
        "success": True,
        "user_id": 5,
        "user_status": "updated",
        "error": False,
        "error_message": "",
    },
}


def imported(**result: Any) -> dict[str, Any]:
    return {**OK_IMPORT, "result": {**OK_IMPORT["result"], **result}}


@pytest.mark.parametrize(
    ("handler", "outcome"),
    [
        (answer(body=OK_IMPORT), "ok"),
        (answer(body=imported(error=0, success=1)), "ok"),
        (answer(body=imported(error="false", success="true")), "ok"),
        (answer(text=""), PermanentError),  # plan without the API: 200, empty body
        (answer(body=imported(error=True, error_message="Неверный email")), PermanentError),
        (answer(body=imported(error="1")), PermanentError),
        (answer(body=imported(error="true")), PermanentError),
        (
            answer(body={"success": False, "error": "Неавторизованное API-обращение"}),
            PermanentError,
        ),
        (answer(body={"success": "false", "error": "Действие запрещено"}), PermanentError),
        (answer(body={"success": False, "error": "Достигнут лимит"}), PermanentError),
        (answer(body={"success": False, "error": "Слишком много запросов"}), TransientError),
        (answer(body={"success": True, "action": "add"}), PermanentError),
        (answer(text="<html>maintenance</html>"), TransientError),
        (answer(502, text="bad gateway"), TransientError),
        (answer(429, text="", **{"Retry-After": "7"}), TransientError),
        (answer(403, text="forbidden"), PermanentError),
        (answer(301, text="", location="https://school.example.ru/pl/api/users"), PermanentError),
        (timeout, TransientError),
        (refused, TransientError),
    ],
)
async def test_getcourse_import(handler: Handler, outcome: Any) -> None:
    async with client(handler) as http:
        gc = GetCourseClient(http, "http://gc", "SECRET-KEY")
        call = gc.import_user({"user": {"email": "a@b.ru"}, "system": {"refresh_if_exists": 1}})
        if outcome == "ok":
            assert (await call)["user_id"] == 5
            return
        with pytest.raises(outcome) as caught:
            await call
        assert "SECRET-KEY" not in str(caught.value) and "http://gc" not in str(caught.value)


async def test_getcourse_import_request_shape() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=OK_IMPORT)

    async with client(handle) as http:
        params = {
            "user": {"email": "анна@школа.рф", "addfields": {"telegram_id": "1"}},
            "system": {"refresh_if_exists": 1},
        }
        await GetCourseClient(http, "http://gc/", "K").import_user(params)
    (request,) = seen
    assert request.method == "POST" and request.url.path == "/pl/api/users"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
    assert form["key"] == "K" and form["action"] == "add"
    assert json.loads(base64.b64decode(form["params"]).decode("utf-8")) == params


async def test_retry_after_is_carried() -> None:
    async with client(answer(429, text="", **{"Retry-After": "42"})) as http:
        with pytest.raises(TransientError) as caught:
            await SalebotClient(http, "http://sb", "K").callback(1, "x")
    assert caught.value.retry_after == 42


@pytest.mark.parametrize(
    ("handler", "outcome"),
    [
        (answer(text=""), "ok"),  # the docs show no body for callbacks
        (answer(body={"status": "success"}), "ok"),
        (answer(body={"id": 7}), "ok"),  # no status: success
        (answer(text="OK"), "ok"),
        (answer(body={"status": "client_not_found"}), PermanentError),
        (answer(body={"status": "fail", "message": "bot paused"}), TransientError),
        (answer(401, body={"status": "fail"}), PermanentError),
        (answer(404, text="no such key"), PermanentError),
        (answer(500, text=""), TransientError),
        (answer(429, text=""), TransientError),
        (timeout, TransientError),
        (refused, TransientError),
    ],
)
async def test_salebot_answers(handler: Handler, outcome: Any) -> None:
    async with client(handler) as http:
        call = SalebotClient(http, "http://sb", "SB-KEY").callback(5, "gc_deal_paid", {"n": "1"})
        if outcome == "ok":
            await call
            return
        with pytest.raises(outcome) as caught:
            await call
        assert "SB-KEY" not in str(caught.value)


async def test_salebot_request_shapes() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[{"group_id": "school_bot", "type": 1}])

    async with client(handle) as http:
        sb = SalebotClient(http, "http://sb/", "KEY")
        await sb.callback(5, "gc_deal_paid", {"gc_amount": "100"})
        await sb.tg_callback(77, "school_bot", "gc_deal_paid", {"gc_amount": "100"})
        await sb.save_variables(5, {"client.email": "a@b.ru"})
        channels = await sb.connected_channels()
    paths = [(r.method, r.url.path) for r in seen]
    assert paths == [
        ("POST", "/api/KEY/callback"),
        ("POST", "/api/KEY/tg_callback"),
        ("POST", "/api/KEY/save_variables"),
        ("GET", "/api/KEY/connected_channels"),
    ]
    assert json.loads(seen[0].content) == {
        "client_id": 5,
        "message": "gc_deal_paid",
        "gc_amount": "100",
    }
    assert json.loads(seen[1].content) == {
        "user_id": 77,
        "group_id": "school_bot",
        "message": "gc_deal_paid",
        "gc_amount": "100",
    }
    assert json.loads(seen[2].content) == {"client_id": 5, "variables": {"client.email": "a@b.ru"}}
    assert channels == [{"group_id": "school_bot", "type": 1}]


@pytest.mark.parametrize(
    ("answer", "kind", "reason"),
    [
        ({"success": False, "error_code": 909, "error_message": "Файл еще не создан"},
         ExportNotReady, None),
        ({"success": False, "error_message": "Файл ещё не создан"}, ExportNotReady, None),
        ({"success": False, "error_code": 905, "error_message": "Уже запущен"}, ExportBusy, None),
        ({"success": "false", "error_code": "903"}, BudgetSpent, None),
        ({"success": False, "error_code": 913}, ExportFailed, "deal status filter"),
        ({"success": False, "error_code": 914}, ExportFailed, "status filter"),
        ({"success": False, "error_code": 917}, ExportFailed, "plan has no export API"),
        ({"success": False, "error_code": 918}, ExportFailed, "payment status filter"),
        ({"success": False, "error": True, "error_message": "Файл не создан"}, ExportFailed,
         "could not make the file"),
        ({"success": False, "error_code": 901, "error_message": "x"}, ExportFailed, None),
        ({"success": 0, "error_code": True}, ExportFailed, None),
    ],
)  # fmt: skip
def test_export_errors_are_classified_with_a_reason(
    answer: dict[str, Any], kind: type[Exception], reason: str | None
) -> None:
    with pytest.raises(kind) as caught:
        raise_for_error(answer, "getcourse export 5")
    if isinstance(caught.value, ExportFailed):
        assert isinstance(caught.value, PermanentError)
        if reason is None:
            assert caught.value.reason is None
        else:
            assert reason in (caught.value.reason or "") and reason in str(caught.value)
    else:
        assert isinstance(caught.value, TransientError)


def test_the_clients_do_not_import_the_domain() -> None:
    """Egress knows the GetCourse protocol, not syncd's events (issue 11, item 8)."""
    import ast
    from pathlib import Path

    import syncd.clients

    for path in Path(syncd.clients.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in imported if m and m.startswith("syncd.events")}, path.name


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"project_id": 1, "telegram": [{"short_name": "S", "group_id": "bulls_vs_bears_bot"}],
          "vkontakte": [{"group_id": "club1"}], "whatsapp": []},
         [{"short_name": "S", "group_id": "bulls_vs_bears_bot", "messenger": "telegram"},
          {"group_id": "club1", "messenger": "vkontakte"}]),
        ([{"group_id": "a_bot", "client_type": 1}, "junk"],
         [{"group_id": "a_bot", "client_type": 1}]),
        ({"channels": [{"group_id": "a_bot"}]}, [{"group_id": "a_bot"}]),
        ({"project_id": 1}, []),
    ],
)  # fmt: skip
async def test_connected_channels_in_both_shapes(answer: Any, expected: Any) -> None:
    async with client(lambda request: httpx.Response(200, json=answer)) as http:
        assert await SalebotClient(http, "http://sb", "k").connected_channels() == expected
