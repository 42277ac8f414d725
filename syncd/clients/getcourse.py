"""The GetCourse legacy import/export API (``api/getcourse.md``).

Import: ``POST /pl/api/users`` with form fields ``key``, ``action`` and ``params`` (base64
of UTF-8 JSON). Success needs **both** levels: ``success`` at the top and, inside
``result``, no ``error`` (booleans come as true/false, 1/0 or "true"/"false"). An empty
body means the plan has no API: permanent. «Слишком много запросов» is transient.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx

from syncd.clients.http import send
from syncd.clients.protocol import raise_for_error, truthy
from syncd.errors import PermanentError, TransientError


def encode_params(params: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(params, ensure_ascii=False).encode("utf-8")).decode()


def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    if not response.content.strip():
        raise PermanentError(f"{what}: empty answer (the plan has no API access)")
    try:
        data = response.json()
    except ValueError:
        raise TransientError(f"{what}: the answer is not JSON") from None
    if not isinstance(data, dict):
        raise PermanentError(f"{what}: unexpected answer shape")
    return data


class GetCourseClient:
    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._key = api_key

    async def import_user(self, params: dict[str, Any]) -> dict[str, Any]:
        """``action=add`` on users; returns ``result`` (``user_id``, ``user_status``)."""
        return await self._import("users", "getcourse import user", params)

    async def import_deal(self, params: dict[str, Any]) -> dict[str, Any]:
        """``action=add`` on deals; returns ``result`` (``deal_id``, ``deal_number``,
        ``payment_link`` when asked with ``return_payment_link``)."""
        return await self._import("deals", "getcourse import deal", params)

    async def _import(self, path: str, what: str, params: dict[str, Any]) -> dict[str, Any]:
        response = await send(
            self._http,
            what,
            "POST",
            f"{self._base}/pl/api/{path}",
            data={"key": self._key, "action": "add", "params": encode_params(params)},
        )
        data = _json(response, what)
        raise_for_error(data, what)
        result = data.get("result")
        if not isinstance(result, dict):
            raise PermanentError(f"{what}: the answer has no result")
        if truthy(result.get("error")) or not truthy(result.get("success", True)):
            raise PermanentError(f"{what}: {result.get('error_message') or 'rejected'}")
        return result

    async def _account(self, what: str, path: str) -> list[dict[str, Any]]:
        response = await send(
            self._http, what, "POST", f"{self._base}/pl/api/account/{path}", data={"key": self._key}
        )
        data = _json(response, what)
        raise_for_error(data, what)
        info = data.get("info")
        if not isinstance(info, list):
            raise PermanentError(f"{what}: the answer has no info list")
        return [item for item in info if isinstance(item, dict)]

    async def account_fields(self) -> list[dict[str, Any]]:
        """Custom user fields: ``[{id, type, title, …}]``."""
        return await self._account("getcourse account fields", "fields")

    async def account_groups(self) -> list[dict[str, Any]]:
        """Groups: ``[{id, name, last_added_at}]``."""
        return await self._account("getcourse account groups", "groups")
