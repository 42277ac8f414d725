"""The Salebot constructor API (``api/salebot.md``): ``{base}/api/{key}/{action}``.

The key is in the path, so no URL of this client is ever logged. Answers: HTTP ≥ 400 is
a failure (5xx and 429 transient); otherwise an empty or non-JSON body, or a JSON body
whose ``status`` is missing or ``"success"``, is a success. ``client_not_found`` is
permanent; any other failing status is treated as transient (bounded by
``delivery.max_attempts``): the API documents no other statuses.
"""

from __future__ import annotations

from typing import Any

import httpx

from syncd.clients.http import Answer, post_json, send
from syncd.errors import PermanentError, TransientError

PERMANENT_STATUSES = frozenset({"client_not_found"})


class SalebotClient:
    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._key = api_key
        #: action → (its name in messages, its URL): built once per action
        self._actions: dict[str, tuple[str, str]] = {}

    async def call(self, action: str, body: dict[str, Any] | None = None) -> Any:
        """POST ``body`` as JSON (GET when ``body`` is None); the decoded answer or None."""
        known = self._actions.get(action)
        if known is None:
            known = f"salebot {action}", f"{self._base}/api/{self._key}/{action}"
            if len(self._actions) < 64:  # actions come from the config: a handful
                self._actions[action] = known
        what, url = known
        if body is None:
            response = await send(self._http, what, "GET", url)
            return _check(Answer(response.status_code, response.headers, response.content), what)
        return _check(await post_json(self._http, what, url, body), what)

    async def callback(
        self, client_id: int, message: str, variables: dict[str, Any] | None = None
    ) -> Any:
        return await self.call(
            "callback", {"client_id": client_id, "message": message, **(variables or {})}
        )

    async def tg_callback(
        self, user_id: int, group_id: str, message: str, variables: dict[str, Any] | None = None
    ) -> Any:
        body = {"user_id": user_id, "group_id": group_id, "message": message, **(variables or {})}
        return await self.call("tg_callback", body)

    async def message(self, client_id: int, text: str) -> Any:
        return await self.call("message", {"client_id": client_id, "message": text})

    async def save_variables(self, client_id: int, variables: dict[str, Any]) -> Any:
        return await self.call("save_variables", {"client_id": client_id, "variables": variables})

    async def connected_channels(self) -> list[dict[str, Any]]:
        """The project's channels, each a dict; ``messenger`` added when the answer groups them.

        Salebot's API page answers an object grouped by messenger (``{"project_id": …,
        "telegram": [{"group_id": "…bot", …}], …}``); other clients have seen a plain list
        of channel objects. Both are read; anything else is an unexpected shape.
        """
        return channels(await self.call("connected_channels"))


def channels(answer: object) -> list[dict[str, Any]]:
    """A ``connected_channels`` answer, either shape, as one list of channel dicts."""
    if isinstance(answer, dict):
        listed = answer.get("channels", answer.get("data"))
        if isinstance(listed, list):
            answer = listed
        else:
            return [
                {**item, "messenger": str(messenger)}
                for messenger, items in answer.items()
                if isinstance(items, list)
                for item in items
                if isinstance(item, dict)
            ]
    if not isinstance(answer, list):
        raise PermanentError("salebot connected_channels: unexpected answer shape")
    return [item for item in answer if isinstance(item, dict)]


def _check(response: Answer, what: str) -> Any:
    if not response.content.strip():
        return None
    try:
        data = response.json()
    except ValueError:
        return None
    if isinstance(data, dict):
        status = data.get("status")
        if status is not None and status != "success" and status is not True:
            detail = f"{what}: status {status}"
            if data.get("message"):
                detail += f" ({data['message']})"
            if status in PERMANENT_STATUSES:
                raise PermanentError(detail)
            raise TransientError(detail)
    return data
