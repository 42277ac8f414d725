"""``syncd check --remote``: are the keys, the custom fields and the bot right?

Each check is one line: ``ok`` with what was confirmed, ``FAIL`` with what to do, or
``warn`` (``ok`` is None) where an answer could not tell (no bot readable from Salebot's
``connected_channels``). Nothing is written to either service.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from syncd.clients.getcourse import GetCourseClient
from syncd.clients.salebot import SalebotClient
from syncd.config import Settings
from syncd.errors import DeliveryError, PermanentError

Line = Callable[[bool | None, str, str], None]  # None: a warning, not a failure
TELEGRAM = 1  # Salebot's client_type for Telegram


async def check(settings: Settings, http: httpx.AsyncClient, line: Line) -> None:
    await _getcourse(settings, http, line)
    await _salebot(settings, http, line)


async def _getcourse(settings: Settings, http: httpx.AsyncClient, line: Line) -> None:
    gc = settings.getcourse
    if not gc.api_key:
        line(False, "getcourse", "getcourse.api_key is empty: set it (docs/install.md §2)")
        return
    try:
        fields = await GetCourseClient(http, gc.url, gc.api_key).account_fields()
    except PermanentError as exc:
        line(False, "getcourse", f"{exc} — check getcourse.api_key and getcourse.account/base_url")
        return
    except DeliveryError as exc:
        line(
            False, "getcourse", f"cannot reach {gc.url}: {exc} — check the address and the network"
        )
        return
    line(True, "getcourse", f"{gc.url} accepted the key")
    titles = {str(f.get("title", "")) for f in fields}
    for key, title in (
        ("telegram_id_field", gc.telegram_id_field),
        ("client_id_field", gc.client_id_field),
    ):
        if title in titles:
            line(True, f"getcourse.{key}", f"custom user field {title!r} exists")
        else:
            line(
                False,
                f"getcourse.{key}",
                f"no custom user field titled {title!r} — create it in GetCourse "
                "(docs/getcourse-setup.md §1) or set the title GetCourse uses",
            )


async def _salebot(settings: Settings, http: httpx.AsyncClient, line: Line) -> None:
    sb = settings.salebot
    if not sb.api_key:
        line(False, "salebot", "salebot.api_key is empty: set it (docs/install.md §2)")
        return
    try:
        channels = await SalebotClient(http, sb.base_url, sb.api_key).connected_channels()
    except PermanentError as exc:
        line(False, "salebot", f"{exc} — check salebot.api_key (Настройки проекта → API)")
        return
    except DeliveryError as exc:
        line(
            False,
            "salebot",
            f"cannot reach {sb.base_url}: {exc} — check the address and the network",
        )
        return
    line(True, "salebot", f"project key accepted, {len(channels)} connected channel(s)")
    bots = telegram_bots(channels)
    if sb.bot_name in bots:
        line(True, "salebot.bot_name", f"@{sb.bot_name} is one of the project's Telegram bots")
    elif not bots:  # nothing readable: not a proof the setting is wrong
        line(None, "salebot.bot_name", f"no Telegram bot could be read from Salebot's "
             f"connected_channels answer: check by hand that @{sb.bot_name} is connected "
             "to the project (Salebot → Каналы)")  # fmt: skip
    else:
        known = ", ".join(f"@{b}" for b in bots)
        line(False, "salebot.bot_name", f"@{sb.bot_name} is not a Telegram bot of this project "
             f"(it has: {known}) — set salebot.bot_name to the bot's username")  # fmt: skip


def telegram_bots(channels: list[dict[str, Any]]) -> list[str]:
    """Bot usernames of the Telegram channels, from either answer shape.

    Grouped answers name the messenger (``telegram``); list items carry ``client_type``
    (1 = Telegram; an item without one is taken for Telegram, as before).
    """
    found = set()
    for channel in channels:
        name = channel.get("group_id")
        if not isinstance(name, str | int) or isinstance(name, bool) or not str(name).strip():
            continue
        if "messenger" in channel:
            if str(channel["messenger"]).lower() != "telegram":
                continue
        else:
            kind = channel.get("client_type", channel.get("type", TELEGRAM))
            try:
                if int(kind or 0) != TELEGRAM:
                    continue
            except (TypeError, ValueError):
                continue
        found.add(str(name).strip().lstrip("@"))
    return sorted(found)
