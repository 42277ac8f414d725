"""The hot routes, served without the framework's per-request layers.

``/v1/links`` and the GetCourse webhooks answer thousands of requests a second;
Starlette's router and middleware stack cost a measurable share of that (see
``docs/performance.md``). :class:`HotPaths` sends an exact ``(method, path)`` match — or
a ``(method, prefix)`` match, the rest of the path becoming ``path_params[name]`` —
straight to its endpoint, with the same exception handlers the Starlette app uses, and
hands every other request to the Starlette app (routing, 404/405, the rest).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Awaitable[Response]]


class HotPaths:
    def __init__(
        self,
        app: ASGIApp,
        routes: Mapping[tuple[str, str], Endpoint],
        handlers: Mapping[type[Exception], Handler],
        prefixes: Mapping[tuple[str, str], tuple[str, Endpoint]] | None = None,
    ) -> None:
        self.app = app
        self.routes = routes
        self.handlers = handlers
        self.prefixes = prefixes or {}

    def _match(self, scope: Scope) -> Endpoint | None:
        if scope["type"] != "http":
            return None
        method, path = scope["method"], scope["path"]
        endpoint = self.routes.get((method, path))
        if endpoint is not None:
            return endpoint
        for (wanted, prefix), (name, candidate) in self.prefixes.items():
            rest = path[len(prefix) :]
            if method == wanted and path.startswith(prefix) and rest and "/" not in rest:
                scope["path_params"] = {name: rest}
                return candidate
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._match(scope)
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:
            response = await self._handle(request, exc)
        await response(scope, receive, send)

    async def _handle(self, request: Request, exc: Exception) -> Response:
        for kind in type(exc).__mro__:
            handler = self.handlers.get(kind)
            if handler is not None:
                return await handler(request, exc)
        raise exc
