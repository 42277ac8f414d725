"""``syncd demo``: the whole loop on this machine, with the bundled simulators.

Starts the GetCourse and Salebot simulators and a real daemon (HTTP, dispatcher, rules)
on free loopback ports with a temporary SQLite database, then plays a story a school
would recognise, printing each step as it happens: a subscriber starts the bot from an
ad (a bot event with its source); they send their email and are linked; GetCourse gets
their Telegram id; they ask the bot for a course and GetCourse makes the order, whose
payment link comes back to the bot; they pay; GetCourse calls syncd; the bot receives
its callbacks. Ends with a summary table and the funnel report. ``--keep`` leaves
everything running and prints the URLs and a ``curl`` to try.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from syncd import daemon
from syncd.config import Settings
from syncd.sandbox import getcourse, salebot
from syncd.sandbox.getcourse_callout import fire_process_call, fire_techapi
from syncd.sandbox.serve import serve

# The demo's own throwaway secrets, printed on purpose for --keep.
TOKEN = "demo-token"  # noqa: S105
GC_KEY, SB_KEY = "demo-gc-key", "demo-sb-key"
EMAIL, TELEGRAM_ID, CLIENT_ID = "anna@school.ru", 123456789, 987654

Say = Callable[[str], None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _until(check: Callable[[], bool], what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the demo waited {seconds:.0f} s for {what}")
        await asyncio.sleep(0.05)


def settings_for(db: Path, port: int, gc_url: str, sb_url: str) -> Settings:
    return Settings.model_validate(
        {
            "database": {"url": f"sqlite:///{db}"},
            "http": {"port": port, "token": TOKEN},
            "getcourse": {"base_url": gc_url, "api_key": GC_KEY, "poll": {"interval": "0"}},
            "salebot": {"base_url": sb_url, "api_key": SB_KEY, "bot_name": "myschool_bot"},
            "delivery": {"first_retry": "1s", "max_backoff": "5s"},
            "log": {"level": "error"},
            "rules": [
                {"event": "bot.want_course", "action": "gc_create_deal",
                 "fields": ["offer", "price"], "offer_code": "{offer}", "cost": "{price}",
                 "reply": "gc_deal_ready"},
                {"event": "deal.paid", "action": "callback", "message": "gc_deal_paid",
                 "variables": {"gc_deal_number": "{number}", "gc_amount": "{cost}"}},
            ],
        }
    )  # fmt: skip


async def run(
    say: Say, keep: bool = False, wait_forever: Callable[[], Awaitable[None]] | None = None
) -> int:
    gc_state = getcourse.GetCourseState(key=GC_KEY)
    gc_state.add_field("telegram_id")
    gc_state.add_field("sb_294495_id")
    sb_state = salebot.SalebotState(key=SB_KEY)
    sb_state.add_client(TELEGRAM_ID, client_id=CLIENT_ID, email=EMAIL, name="Анна")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="syncd-demo-") as tmp:
        async with (
            serve(getcourse.create_app(gc_state)) as gc_url,
            serve(salebot.create_app(sb_state)) as sb_url,
        ):
            port = _free_port()
            settings = settings_for(Path(tmp) / "syncd.db", port, gc_url, sb_url)
            stop = asyncio.Event()
            running = asyncio.create_task(daemon.serve_until(settings, stop))
            base = f"http://127.0.0.1:{port}"
            try:
                async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                    await _wait_ready(http, running)
                    say(f"syncd is running on {base}, with a GetCourse and a Salebot simulator.")
                    await _story(say, http, base, gc_state, sb_state)
                    await _summary(say, settings, sb_state, time.monotonic() - started)
                    if keep:
                        _keep_note(say, base, gc_url, sb_url)
                        await (wait_forever or _forever)()
            finally:
                stop.set()
                await running
    return 0


async def _forever() -> None:
    await asyncio.Event().wait()


async def _wait_ready(http: httpx.AsyncClient, running: asyncio.Task[None]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if running.done():
            running.result()  # raises the daemon's error
        with contextlib.suppress(httpx.TransportError):
            if (await http.get("/readyz")).status_code == 200:
                return
        await asyncio.sleep(0.05)
    raise RuntimeError("syncd did not become ready in 20 s")


async def _story(
    say: Say,
    http: httpx.AsyncClient,
    base: str,
    gc_state: getcourse.GetCourseState,
    sb_state: salebot.SalebotState,
) -> None:
    bot = {"token": TOKEN, "telegram_id": str(TELEGRAM_ID), "client_id": str(CLIENT_ID)}
    say("")
    say("1. Анна taps an ad in VK and starts @myschool_bot (deep link ?start=vk_ads).")
    say("   The bot's first block tells syncd, before it knows who she is:")
    started = await http.post(
        "/v1/salebot/events/started",
        params=bot,
        data={"start": "vk_ads", "utm_source": "vk", "utm_campaign": "autumn"},
    )
    say(f"   POST …/v1/salebot/events/started → {started.json()}")

    say("")
    say(f"2. Анна sends her email, {EMAIL}. The bot's «API-запрос» block posts it to syncd:")
    answer = await http.post(
        "/v1/links",
        params={"token": TOKEN},
        data={"email": EMAIL, "telegram_id": str(TELEGRAM_ID), "client_id": str(CLIENT_ID)},
    )
    body = answer.json()
    say(f"   syncd answers {answer.status_code} {body}: Telegram {TELEGRAM_ID} and Salebot "
        f"client {CLIENT_ID} are now one person, identity {body['identity_id']}; her "
        "«started» event (and its source) is hers now.")  # fmt: skip
    await _until(lambda: bool(gc_state.imports()), "the GetCourse import")
    user = gc_state.user_by_email(EMAIL)
    fields = user.fields if user is not None else {}
    say(f"   syncd writes her ids into GetCourse's custom user fields: {fields}")

    say("")
    say("3. Анна taps «Хочу курс» in the bot. The bot tells syncd; a rule makes the order:")
    want = await http.post(
        "/v1/salebot/events/want_course",
        params=bot,
        data={"offer": "python-basics", "price": "14900", "id": f"want-{CLIENT_ID}-1"},
    )
    say(f"   POST …/v1/salebot/events/want_course → {want.json()}")
    await _until(lambda: bool(sb_state.calls_of("callback")), "the payment link")
    ready = sb_state.calls_of("callback")[0].body
    (deal,) = gc_state.deals.values()
    say(f"   GetCourse made order №{deal.number} ({deal.title}, {deal.cost} ₽) and syncd told")
    say(f"   the bot: callback {ready['message']!r} with {_variables(ready)}")
    say("   — its block shows Анна a «pay» button with that link.")

    assert user is not None
    obj = {"id": deal.id, "number": deal.number, "status": deal.status,
           "cost_money_value": str(deal.cost), "user": {"id": user.id, "email": EMAIL}}  # fmt: skip
    url = (
        f"{base}/v1/getcourse/events/{{kind}}?token={TOKEN}&email={{object.user.email}}"
        "&user_id={object.user.id}&id={object.id}&number={object.number}"
        "&cost={object.cost_money_value}"
    )
    say("")
    say("4. Анна pays. GetCourse calls syncd twice (a process and a Tech API webhook):")
    deal.status = "payed"
    deal.paid = deal.cost
    obj["status"] = "payed"
    paid = await fire_process_call(url.replace("{kind}", "deal.paid"), obj)
    say(f"   process  → {paid.json()}")
    for reply in await fire_techapi(
        f"{base}/v1/getcourse/techapi?token={TOKEN}", "getcourse/dealPaid", user, deal
    ):
        say(f"   Tech API → {reply.json()}")
    say("   (the Tech API's deal.paid is a duplicate — one payment, one delivery; its")
    say("   status change is a new event of its own, for which no rule is configured)")
    await _until(lambda: len(sb_state.calls_of("callback")) >= 2, "the payment callback")
    second = sb_state.calls_of("callback")[1].body
    say(f"   The bot got callback {second['message']!r} with {_variables(second)}:")
    say("   its block thanks Анна and sends the first lesson.")


def _variables(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("client_id", "message")}


async def _summary(
    say: Say, settings: Settings, sb_state: salebot.SalebotState, elapsed: float
) -> None:
    from syncd.report import as_table, funnel
    from syncd.store import outbox
    from syncd.store.engine import create_engine
    from syncd.store.events import listing
    from syncd.store.queries import find_identity

    engine = create_engine(settings.database.url)
    try:
        await _until_settled(engine)
        person = await find_identity(engine, email=EMAIL)
        events = await listing(engine, None, 100)
        figures = await outbox.stats(engine)
        report = await funnel(engine, "source", None, None)
    finally:
        await engine.dispose()
    assert person is not None
    rows = [
        ("identity", f"#{person.id} {person.email} · Telegram {person.telegram_id} · "
                     f"Salebot client {CLIENT_ID} · GetCourse user {person.gc_user_id}"),
        ("events", ", ".join(f"{e['kind']} ({e['source']})" for e in events)),
        ("deliveries", f"{figures['sent']} sent, {figures['dead']} dead, "
                       f"{figures['pending'] + figures['sending']} pending"),
        ("bot callbacks", ", ".join(c.body["message"] for c in sb_state.calls_of("callback"))),
        ("time", f"{elapsed:.1f} s"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    say("")
    say("Summary")
    for name, value in rows:
        say(f"  {name:<{width}}  {value}")
    say("")
    say("The analyst's funnel (`syncd report funnel`; --format html draws it):")
    for line in as_table(report).rstrip("\n").splitlines():
        say(f"  {line}")


async def _until_settled(engine: Any) -> None:
    from syncd.store import outbox

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        figures = await outbox.stats(engine)
        if figures["pending"] == figures["sending"] == 0:
            return
        await asyncio.sleep(0.05)


def _keep_note(say: Say, base: str, gc_url: str, sb_url: str) -> None:
    say("")
    say("Everything keeps running (Ctrl-C stops it):")
    say(f"  syncd      {base}   (token: {TOKEN})")
    say(f"  GetCourse  {gc_url}")
    say(f"  Salebot    {sb_url}")
    say("Try a link of your own:")
    say(f"  curl -s -X POST '{base}/v1/links?token={TOKEN}' "
        "-d email=boris@school.ru -d telegram_id=555 -d client_id=777")  # fmt: skip
    say(f"  curl -s {base}/metrics | grep syncd_links_total")
