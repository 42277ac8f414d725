"""The Salebot simulator against salebot.md, over loopback HTTP."""

from __future__ import annotations

import httpx
import pytest

from syncd.sandbox.salebot import SalebotState, SbBot, SbCall

pytestmark = pytest.mark.timeout(10)


async def test_a_callback_to_a_known_client_runs_with_its_extra_fields_as_deal_variables(
    sb: httpx.AsyncClient, sb_state: SalebotState
) -> None:
    client = sb_state.add_client(123456789, client_id=987654)
    body = {
        "client_id": "987654",
        "message": "gc_deal_paid",
        "gc_amount": "14900",
        "resume_bot": True,
    }

    answer = await sb.post("callback", json=body)

    assert (answer.status_code, answer.json()) == (200, {"status": "success"})
    assert client.deal_variables == {"gc_amount": "14900"}
    assert sb_state.calls == [SbCall("callback", "POST", body)]


async def test_an_unknown_client_is_client_not_found_and_not_recorded_as_delivered(
    sb: httpx.AsyncClient, sb_state: SalebotState
) -> None:
    answer = await sb.post("callback", json={"client_id": 1, "message": "x"})

    assert (answer.status_code, answer.json()) == (200, {"status": "client_not_found"})
    assert sb_state.calls == []
    assert [c.outcome for c in sb_state.rejected] == ["client_not_found"]


async def test_a_wrong_key_is_401(sb: httpx.AsyncClient, sb_state: SalebotState) -> None:
    sb_state.add_client(5, client_id=1)
    answer = await sb.post(
        sb.base_url.join("/api/wrong/callback"), json={"client_id": 1, "message": "x"}
    )

    assert answer.status_code == 401
    assert answer.json()["status"] == "fail"
    assert sb_state.calls == []


async def test_tg_callback_addresses_by_telegram_id_and_bot_username(
    sb: httpx.AsyncClient, sb_state: SalebotState
) -> None:
    client = sb_state.add_client(123456789)
    body = {
        "user_id": 123456789,
        "group_id": "myschool_bot",
        "message": "gc_deal_paid",
        "gc_deal_number": "11892043",
    }

    ok = await sb.post("tg_callback", json=body)
    unknown_user = await sb.post("tg_callback", json={**body, "user_id": 5})
    unknown_bot = await sb.post("tg_callback", json={**body, "group_id": "other_bot"})

    assert ok.json() == {"status": "success"}
    assert client.deal_variables == {"gc_deal_number": "11892043"}
    assert unknown_user.json() == {"status": "client_not_found"}
    assert unknown_bot.status_code == 200
    assert unknown_bot.json()["status"] == "fail"
    assert [c.action for c in sb_state.calls] == ["tg_callback"]


async def test_message_needs_text_or_a_block_id(
    sb: httpx.AsyncClient, sb_state: SalebotState
) -> None:
    sb_state.add_client(5, client_id=1)

    text = await sb.post("message", json={"client_id": 1, "message": "Спасибо за оплату!"})
    block = await sb.post("message", json={"client_id": 1, "message_id": 42})
    neither = await sb.post("message", json={"client_id": 1})

    assert text.json() == block.json() == {"status": "success"}
    assert neither.json()["status"] == "fail"
    assert len(sb_state.calls_of("message")) == 2


async def test_variables_go_to_the_deal_or_with_client_prefix_to_the_profile(
    sb: httpx.AsyncClient, sb_state: SalebotState
) -> None:
    one, two = sb_state.add_client(5, client_id=1), sb_state.add_client(6, client_id=2)

    single = await sb.post(
        "save_variables",
        json={"client_id": 1, "variables": {"gc_user_id": "77", "client.email": "a@b.ru"}},
    )
    many = await sb.post("save_variables", json={"clients": [1, 2], "variables": {"vip": 1}})
    read = await sb.get("get_variables", params={"client_id": 1})

    assert single.json() == many.json() == {"status": "success"}
    assert one.deal_variables == {"gc_user_id": "77", "vip": 1}
    assert one.variables == {"email": "a@b.ru"}
    assert two.deal_variables == {"vip": 1}
    assert read.json() == {"gc_user_id": "77", "vip": 1, "client.email": "a@b.ru"}
    assert [c.body["variables"] for c in sb_state.calls_of("save_variables")] == [
        {"gc_user_id": "77", "client.email": "a@b.ru"},
        {"vip": 1},
    ]


async def test_save_variables_with_an_unknown_client_writes_nothing(
    sb: httpx.AsyncClient, sb_state: SalebotState
) -> None:
    known = sb_state.add_client(5, client_id=1)

    answer = await sb.post("save_variables", json={"clients": [1, 99], "variables": {"a": 1}})

    assert answer.json() == {"status": "client_not_found"}
    assert known.deal_variables == {}


async def test_clients_can_be_addressed_by_email_or_phone(
    sb: httpx.AsyncClient, sb_state: SalebotState
) -> None:
    by_mail = sb_state.add_client(5, email="a@b.ru")
    by_phone = sb_state.add_client(6, phone="+79001234567")

    await sb.post("callback", json={"client_email": "A@b.ru", "message": "x", "k": "mail"})
    await sb.post("callback", json={"client_phone": "+79001234567", "message": "x", "k": "tel"})

    assert (by_mail.deal_variables, by_phone.deal_variables) == ({"k": "mail"}, {"k": "tel"})


async def test_find_client_id_by_platform_id_over_post_and_get(
    sb: httpx.AsyncClient, sb_state: SalebotState
) -> None:
    a = sb_state.add_client(111, client_id=1)
    sb_state.add_bot("second_bot")
    b = sb_state.add_client(222, client_id=2, group_id="second_bot")

    posted = await sb.post(
        "find_client_id_by_platform_id",
        json={"platform_ids": [111, "222", 333], "group_id": "myschool_bot"},
    )
    got = await sb.get("find_client_id_by_platform_id", params={"platform_ids": "111,222"})

    assert posted.json() == [
        {
            "id": a.client_id,
            "platform_id": "111",
            "group": "myschool_bot",
            "client_type": 1,
            "name": "",
        }
    ]
    assert [c["id"] for c in got.json()] == [a.client_id, b.client_id]


async def test_connected_channels_lists_the_bots_by_username(
    sb: httpx.AsyncClient, sb_state: SalebotState
) -> None:
    sb_state.add_bot("second_bot", "Second")

    sb_state.bots.append(SbBot(3, "club123", "VK group", client_type=0))

    grouped = (await sb.get("connected_channels")).json()
    sb_state.channels_shape = "list"
    listed = (await sb.get("connected_channels")).json()

    assert grouped == {  # the default: as Salebot's own API page shows it
        "project_id": sb_state.project_id,
        "telegram": [
            {"id": 1, "short_name": "My school", "group_id": "myschool_bot"},
            {"id": 2, "short_name": "Second", "group_id": "second_bot"},
        ],
        "vkontakte": [{"id": 3, "short_name": "VK group", "group_id": "club123"}],
    }
    assert listed == [
        {"id": 1, "group_id": "myschool_bot", "name": "My school", "client_type": 1},
        {"id": 2, "group_id": "second_bot", "name": "Second", "client_type": 1},
        {"id": 3, "group_id": "club123", "name": "VK group", "client_type": 0},
    ]


async def test_a_get_query_string_works_like_a_body(
    sb: httpx.AsyncClient, sb_state: SalebotState
) -> None:
    client = sb_state.add_client(5, client_id=1)

    answer = await sb.get("callback", params={"client_id": "1", "message": "x", "gc_amount": "10"})

    assert answer.json() == {"status": "success"}
    assert client.deal_variables == {"gc_amount": "10"}
    assert sb_state.calls[0].method == "GET"


async def test_refusals(sb: httpx.AsyncClient, sb_state: SalebotState) -> None:
    sb_state.add_client(5, client_id=1)

    unknown_action = await sb.post("no_such_action", json={})
    bad_json = await sb.post(
        "callback", content=b"{nope", headers={"content-type": "application/json"}
    )
    sb_state.can_change_clients = False
    no_rights = await sb.post("callback", json={"client_id": 1, "message": "x"})
    still_reads = await sb.get("connected_channels")

    assert (unknown_action.status_code, unknown_action.json()["status"]) == (404, "fail")
    assert (bad_json.status_code, bad_json.json()["status"]) == (400, "fail")
    assert (no_rights.status_code, no_rights.json()["status"]) == (403, "fail")
    assert still_reads.status_code == 200
    assert [c.action for c in sb_state.calls] == ["connected_channels"]


@pytest.mark.parametrize(
    ("style", "content"), [("empty_json", b"{}"), ("no_body", b""), ("ok_text", b"ok")]
)
async def test_the_success_body_can_be_empty(
    sb: httpx.AsyncClient, sb_state: SalebotState, style: str, content: bytes
) -> None:
    sb_state.add_client(5, client_id=1)
    sb_state.success_body = style  # type: ignore[assignment]

    answer = await sb.post("callback", json={"client_id": 1, "message": "x"})

    assert (answer.status_code, answer.content) == (200, content)
    assert len(sb_state.calls) == 1
