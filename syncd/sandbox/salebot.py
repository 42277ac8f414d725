"""The Salebot simulator: ``{base}/api/{api_key}/{action}`` over real HTTP (api/salebot.md).

Actions: ``callback``, ``tg_callback``, ``message``, ``save_variables``, ``get_variables``,
``find_client_id_by_platform_id``, ``connected_channels``. POST takes a JSON object (an
empty body means ``{}``); GET takes the query string for every action (list values as
repeated or comma-separated parameters; ``variables`` cannot be an object in a query
string, so ``save_variables`` over GET fails). Query parameters are merged under a POST body.

Answers (decisions where the doc is silent are marked *):
- wrong key: HTTP 401 ``{"status": "fail", "message": "invalid api key"}``*; malformed JSON:
  HTTP 400 ``{"status": "fail", …}``*; unknown action: HTTP 404 ``{"status": "fail", …}``*;
- ``state.can_change_clients = False`` (a key without "change client info"): the pushing
  actions answer HTTP 403 ``{"status": "fail", …}``*;
- a missing or bad field, an unknown ``tg_callback`` bot: HTTP 200 ``{"status": "fail",
  "message": …}``* (so a client must read ``status`` even on 200);
- an unknown client: HTTP 200 ``{"status": "client_not_found"}``;
- success of ``callback``/``tg_callback``/``message``/``save_variables``: the doc shows no
  body; ``state.success_body`` picks ``{"status": "success"}`` (default), ``{}``, an
  empty body or plain text ``ok`` (one client treats it so);
- ``get_variables``: a flat object, deal variables by name and profile variables as
  ``client.<name>``*; ``find_client_id_by_platform_id``: a list of
  ``{id, platform_id, group, client_type, name}``, ``[]`` when nothing matches*;
- ``connected_channels``: by default as Salebot's own API page shows it, an object grouped
  by messenger: ``{"project_id": P, "telegram": [{"short_name", "group_id", …}],
  "vkontakte": [...], …}`` (Telegram: ``group_id`` is the bot username);
  ``state.channels_shape = "list"``: a plain list of ``{id, group_id, name, client_type}``
  (``client_type`` 1 = Telegram), as other clients have seen it.
Addressing: ``client_id``, else ``client_phone`` / ``client_email`` (matched against the
profile variables ``phone`` / ``email``); ``tg_callback`` by ``user_id`` (Telegram id) and
``group_id`` (a configured bot). Extra fields of a callback become deal variables;
``save_variables`` writes plain names to the deal and ``client.x`` to the profile, for one
``client_id`` or a ``clients`` list (all must exist, else nothing is written)*.
Every accepted call is appended to ``state.calls`` in order; every refused one (except a
faulted one, see ``faults``) to ``state.rejected``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from syncd.sandbox.faults import FaultMiddleware, Faults, SandboxState

__all__ = ["Faults", "SalebotState", "SbBot", "SbCall", "SbClient", "create_app"]

RESERVED = frozenset({
    "client_id", "client_phone", "client_email", "clients", "user_id", "group_id", "message",
    "message_id", "buttons", "attachment_type", "attachment_url", "resume_bot", "time_shift",
    "send_time",
})  # fmt: skip
PUSH_ACTIONS = frozenset({"callback", "tg_callback", "message", "save_variables"})
SuccessBody = Literal["status", "empty_json", "no_body", "ok_text"]
ChannelsShape = Literal["grouped", "list"]
#: Salebot's ``client_type`` → the key its channels are grouped under (grouped shape).
MESSENGERS = {1: "telegram", 0: "vkontakte", 6: "whatsapp", 2: "viber", 5: "facebook"}


@dataclass
class SbBot:
    id: int
    group_id: str  # Telegram: the bot's username
    name: str = ""
    client_type: int = 1  # 1 = Telegram


@dataclass
class SbClient:
    client_id: int
    platform_id: str  # Telegram user id
    group_id: str
    client_type: int = 1
    name: str = ""
    variables: dict[str, Any] = field(default_factory=dict)  # profile: "client.<name>"
    deal_variables: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SbCall:
    action: str
    method: str
    body: dict[str, Any]
    outcome: str = "success"  # in ``rejected``: the answer's status, "fail" or "client_not_found"


@dataclass
class SalebotState(SandboxState):
    key: str = "sb-sandbox-key"
    project_id: int = 294495
    can_change_clients: bool = True
    success_body: SuccessBody = "status"
    channels_shape: ChannelsShape = "grouped"
    bots: list[SbBot] = field(default_factory=lambda: [SbBot(1, "myschool_bot", "My school")])
    clients: dict[int, SbClient] = field(default_factory=dict)
    calls: list[SbCall] = field(default_factory=list)
    rejected: list[SbCall] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1), init=False, repr=False)

    def add_bot(self, group_id: str, name: str = "") -> SbBot:
        bot = SbBot(len(self.bots) + 1, group_id, name)
        self.bots.append(bot)
        return bot

    def add_client(
        self,
        platform_id: int | str,
        *,
        client_id: int | None = None,
        group_id: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        name: str = "",
    ) -> SbClient:
        """A client of ``group_id`` (default: the first bot) with Telegram id ``platform_id``."""
        profile = {k: v for k, v in (("email", email), ("phone", phone)) if v is not None}
        client = SbClient(
            client_id if client_id is not None else 100_000_000 + next(self._ids),
            str(platform_id), group_id or self.bots[0].group_id, name=name, variables=profile,
        )  # fmt: skip
        self.clients[client.client_id] = client
        return client

    def calls_of(self, action: str) -> list[SbCall]:
        return [call for call in self.calls if call.action == action]


class _Refusal(Exception):
    def __init__(self, body: dict[str, Any], status: int = 200) -> None:
        super().__init__(body.get("status"))
        self.body, self.http_status = body, status


def _fail(message: str, status: int = 200) -> _Refusal:
    return _Refusal({"status": "fail", "message": message}, status)


def _not_found() -> _Refusal:
    return _Refusal({"status": "client_not_found"})


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    return "" if value is None else str(value).strip()


def _client(state: SalebotState, body: dict[str, Any]) -> SbClient:
    if "client_id" in body:
        wanted = _text(body, "client_id")
        client = state.clients.get(int(wanted)) if wanted.isdigit() else None
    elif "client_phone" in body or "client_email" in body:
        profile = "phone" if "client_phone" in body else "email"
        wanted = _text(body, f"client_{profile}").lower()
        client = next((c for c in state.clients.values()
                       if str(c.variables.get(profile, "")).lower() == wanted), None)  # fmt: skip
    else:
        raise _fail("client_id is required")
    if client is None:
        raise _not_found()
    return client


def _extras(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in RESERVED}


def _callback(state: SalebotState, body: dict[str, Any]) -> None:
    client = _client(state, body)
    if not _text(body, "message"):
        raise _fail("message is required")
    client.deal_variables.update(_extras(body))


def _tg_callback(state: SalebotState, body: dict[str, Any]) -> None:
    user_id, group_id = _text(body, "user_id"), _text(body, "group_id")
    if not user_id or not group_id or not _text(body, "message"):
        raise _fail("user_id, group_id and message are required")
    if all(bot.group_id != group_id for bot in state.bots):
        raise _fail(f"bot {group_id} is not connected to the project")
    client = next((c for c in state.clients.values()
                   if c.platform_id == user_id and c.group_id == group_id), None)  # fmt: skip
    if client is None:
        raise _not_found()
    client.deal_variables.update(_extras(body))


def _message(state: SalebotState, body: dict[str, Any]) -> None:
    _client(state, body)
    if not _text(body, "message") and not _text(body, "message_id"):
        raise _fail("message or message_id is required")


def _save_variables(state: SalebotState, body: dict[str, Any]) -> None:
    variables = body.get("variables")
    if not isinstance(variables, dict):
        raise _fail("variables must be an object")
    ids = body["clients"] if "clients" in body else [body.get("client_id")]
    if not isinstance(ids, list) or not ids:
        raise _fail("clients must be a list of client ids")
    clients = [_client(state, {"client_id": client_id}) for client_id in ids]
    for client in clients:
        for name, value in variables.items():
            if name.startswith("client."):
                client.variables[name.removeprefix("client.")] = value
            else:
                client.deal_variables[name] = value


def _get_variables(state: SalebotState, body: dict[str, Any]) -> dict[str, Any]:
    client = _client(state, body)
    profile = {f"client.{k}": v for k, v in client.variables.items()}
    return {**client.deal_variables, **profile}


def _find_clients(state: SalebotState, body: dict[str, Any]) -> list[dict[str, Any]]:
    wanted = body.get("platform_ids")
    if not wanted:
        raise _fail("platform_ids is required")
    ids = {str(x).strip() for x in (wanted if isinstance(wanted, list) else [wanted])}
    group_id = _text(body, "group_id")
    return [
        {"id": c.client_id, "platform_id": c.platform_id, "group": c.group_id,
         "client_type": c.client_type, "name": c.name}
        for c in state.clients.values()
        if c.platform_id in ids and (not group_id or c.group_id == group_id)
    ]  # fmt: skip


def _channels(state: SalebotState, body: dict[str, Any]) -> Any:
    if state.channels_shape == "list":
        return [
            {"id": b.id, "group_id": b.group_id, "name": b.name, "client_type": b.client_type}
            for b in state.bots
        ]
    grouped: dict[str, Any] = {"project_id": state.project_id}
    for bot in state.bots:
        messenger = MESSENGERS.get(bot.client_type, f"type_{bot.client_type}")
        grouped.setdefault(messenger, []).append(
            {"id": bot.id, "short_name": bot.name, "group_id": bot.group_id}
        )
    return grouped


ACTIONS: dict[str, Callable[[SalebotState, dict[str, Any]], Any]] = {
    "callback": _callback,
    "tg_callback": _tg_callback,
    "message": _message,
    "save_variables": _save_variables,
    "get_variables": _get_variables,
    "find_client_id_by_platform_id": _find_clients,
    "connected_channels": _channels,
}


async def _body(request: Request) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in request.query_params:
        values = request.query_params.getlist(name)
        if name in ("platform_ids", "clients"):
            body[name] = [v for value in values for v in value.split(",") if v]
        else:
            body[name] = values[-1]
    raw = await request.body() if request.method == "POST" else b""
    if raw.strip():
        try:
            decoded = json.loads(raw)
        except ValueError:
            raise _fail("invalid JSON body", 400) from None
        if not isinstance(decoded, dict):
            raise _fail("the JSON body must be an object", 400)
        body.update(decoded)
    return body


async def _endpoint(request: Request) -> Response:
    state: SalebotState = request.app.state.sandbox
    action: str = request.path_params["action"]
    body: dict[str, Any] = {}
    try:
        if request.path_params["api_key"] != state.key:
            raise _fail("invalid api key", 401)
        body = await _body(request)
        handler = ACTIONS.get(action)
        if handler is None:
            raise _fail(f"unknown action {action}", 404)
        if action in PUSH_ACTIONS and not state.can_change_clients:
            raise _fail("the api key may not change clients", 403)
        result = handler(state, body)
    except _Refusal as refusal:
        state.rejected.append(SbCall(action, request.method, body, str(refusal.body["status"])))
        return JSONResponse(refusal.body, refusal.http_status)
    state.calls.append(SbCall(action, request.method, body))
    if result is not None:
        return JSONResponse(result)
    if state.success_body == "no_body":
        return Response(b"", 200)
    if state.success_body == "ok_text":
        return Response(b"ok", 200, media_type="text/plain")
    return JSONResponse({"status": "success"} if state.success_body == "status" else {})


def create_app(state: SalebotState | None = None) -> Starlette:
    """The ASGI app over ``state`` (a fresh project when omitted), kept at ``app.state.sandbox``."""
    state = state if state is not None else SalebotState()
    app = Starlette(
        routes=[Route("/api/{api_key}/{action}", _endpoint, methods=["GET", "POST"])],
        middleware=[Middleware(FaultMiddleware, state=state)],
    )
    app.state.sandbox = state
    return app
