"""The shared token of every /v1 endpoint, compared in constant time.

While URLs are being rotated, the tokens in ``http.previous_tokens`` are accepted too;
each request that uses one is reported (``on_previous``) so the operator sees when the
last old URL is gone (``syncd_auth_previous_token_total{route}``).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence

from starlette.requests import Request

from syncd.http.params import header, query


class Unauthorized(Exception):
    """No token, or not the right one."""


def presented_token(request: Request) -> str | None:
    """``Authorization: Bearer``, else ``X-Syncd-Token``, else ``?token=``."""
    authorization = header(request, b"authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return header(request, b"x-syncd-token") or query(request).get("token")


class Tokens:
    """The current token and the previous ones still accepted.

    Every configured token is compared (in constant time) whatever matched first, so the
    time taken does not tell which one, or how much of one, was right. An empty current
    token refuses everyone: /v1 is never open by accident.
    """

    def __init__(
        self,
        current: str,
        previous: Sequence[str] = (),
        on_previous: Callable[[Request], None] | None = None,
    ) -> None:
        self.current = current.encode()
        self.previous = tuple(token.encode() for token in previous if token)
        self.on_previous = on_previous

    def check(self, request: Request) -> None:
        """Raise :class:`Unauthorized` unless the request carries an accepted token."""
        token = presented_token(request)
        if not self.current or token is None:
            raise Unauthorized
        given = token.encode()
        current = hmac.compare_digest(given, self.current)
        old = False
        for candidate in self.previous:
            old |= hmac.compare_digest(given, candidate)
        if current:
            return
        if not old:
            raise Unauthorized
        if self.on_previous is not None:
            self.on_previous(request)


def require_token(request: Request, expected: bytes | Tokens) -> None:
    """Raise :class:`Unauthorized` unless the request carries ``expected`` (or one of them)."""
    tokens = expected if isinstance(expected, Tokens) else Tokens(expected.decode())
    tokens.check(request)
