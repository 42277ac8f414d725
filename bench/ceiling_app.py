"""The ceiling for bench/ingest.py: a raw ASGI app on syncd's server stack that does nothing.

It reads the whole request body and answers 200 ``{"success":true}``, served by uvicorn
with uvloop + httptools, no access log and no log config, exactly as ``syncd run`` serves
its app. What syncd reaches against this is the cost of syncd itself; the rest is the
server, the load generator and the machine.

Run: ``.venv/bin/python bench/ceiling_app.py PORT`` (listens on 127.0.0.1 only).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY = b'{"success":true}'
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = bool(message.get("more_body", False))
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: ceiling_app.py PORT")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
    )


if __name__ == "__main__":
    main()
