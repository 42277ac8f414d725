"""The shared token of every /v1 endpoint, compared in constant time."""

from __future__ import annotations

import hmac

from starlette.requests import Request


class Unauthorized(Exception):
    """No token, or not the right one."""


def presented_token(request: Request) -> str | None:
    """``Authorization: Bearer``, else ``X-Syncd-Token``, else ``?token=``."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-syncd-token") or request.query_params.get("token")


def require_token(request: Request, expected: bytes) -> None:
    """Raise :class:`Unauthorized` unless the request carries ``expected``.

    An empty configured token refuses everyone: /v1 is never open by accident.
    """
    token = presented_token(request)
    if not expected or token is None or not hmac.compare_digest(token.encode(), expected):
        raise Unauthorized
