"""uvicorn's HTTP protocol with the connection limits syncd needs against idle and slow clients.

uvicorn closes a kept-alive connection that is idle between requests
(``timeout_keep_alive``), but not one that never sends a request, nor one that sends its
head or body a byte at a time: 1,100 silent TCP connections used up the process's file
descriptors and every request, ``/readyz`` included, was dropped. :func:`guarded` makes
the protocol class ``syncd run`` serves with:

- a connection that has not sent a complete request head within ``header_timeout`` (from
  its opening, or from the first byte of its next request) is closed;
- a request whose body is still incomplete ``body_timeout`` after its head is closed;
- at ``max_connections`` open connections, a new one takes the place of the connection
  idle the longest (no request in flight: silent, dripping its head, or kept alive
  between requests), which is closed; when every connection has a request in flight the
  new one is answered a fixed 503 and closed at once, before anything is read. So a
  flood of silent connections never stops a real client (whose head comes at once) from
  being served, and the process never holds more than ``max_connections`` of them;
- on shutdown, a request whose body is still coming is closed (it cannot be answered;
  waiting for it only held the graceful stop and ended in a cancelled-task traceback).

Timers are armed only when a phase does not end within the packet that started it, so
the usual request — head and body in one packet — arms none.

Writes made in one step of the event loop leave in one ``send``: uvicorn writes a
response's head and its body apart, two system calls and two TCP segments per answer
(:class:`OneWrite`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from syncd.metrics import Metrics

_REFUSAL_BODY = b'{"success": false, "error": "unavailable", "detail": "too many connections"}'
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n"
    b"connection: close\r\n"
    b"retry-after: 1\r\n"
    b"\r\n" + _REFUSAL_BODY
)


class OneWrite:
    """A transport whose writes within one step of the event loop go out as one.

    The first write of a step schedules the flush (``call_soon``); later writes of the
    same step join it. Closing flushes first, so nothing written is lost; aborting drops
    what is held, as the transport itself would.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def flush(self) -> None:
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # the rest of the transport, as it is
        return getattr(self._transport, name)


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    body_timeout: float
    max_connections: int


def guarded(limits: Limits, metrics: Metrics | None = None) -> type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, with ``limits`` applied."""
    attributes: dict[str, object] = {"limits": limits, "metrics": metrics, "idle": {}}
    return type("GuardedProtocol", (GuardedProtocol,), attributes)


class GuardedProtocol(HttpToolsProtocol):
    limits = Limits(10.0, 30.0, 1000)
    metrics: Metrics | None = None
    #: the server's connections without a request in flight, the longest idle first
    idle: ClassVar[dict[GuardedProtocol, None]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._in_head = False  # a request head has started and is not complete
        self._in_body = False  # a request head is complete, its body is not
        self._timer: asyncio.TimerHandle | None = None

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.dropped.labels(reason).inc()

    # connection -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections and not self._evict():
            self._refused = True
            self.transport = transport
            self._count("max_connections")
            transport.write(REFUSAL)
            transport.close()
            return
        super().connection_made(OneWrite(transport, self.loop))  # type: ignore[arg-type]
        self._in_head = True  # a new connection owes a request head
        self.idle[self] = None
        self._arm(self.limits.header_timeout, "header_timeout")

    def _evict(self) -> bool:
        """Close the connection idle the longest; False when none is idle."""
        for victim in self.idle:
            del self.idle[victim]
            victim._disarm()
            self._count("evicted")
            victim.transport.close()
            victim.connections.discard(victim)  # its place is taken now, not when it goes
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.idle.pop(self, None)
        if self._refused:
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._timer is None and not self.transport.is_closing():
            if self._in_head:
                self._arm(self.limits.header_timeout, "header_timeout")
            elif self._in_body:
                self._arm(self.limits.body_timeout, "body_timeout")

    def send_400_response(self, msg: str) -> None:
        self._count("invalid_request")
        super().send_400_response(msg)

    def shutdown(self) -> None:
        if self._in_body and self.cycle is not None and not self.cycle.response_started:
            self._disarm()
            self.transport.close()  # the app sees a disconnect, not a cancelled task
            return
        super().shutdown()

    # parser callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head, self._in_body = False, True
        self.idle.pop(self, None)  # a request is in flight: not to be evicted
        self._disarm()  # the header deadline is met; a body deadline is armed if needed
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self.idle[self] = None  # kept alive, waiting for the next request

    # timers ---------------------------------------------------------------------------
    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expire, reason)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, reason: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        still = self._in_head if reason == "header_timeout" else self._in_body
        if still:
            self._count(reason)
            self.transport.close()
