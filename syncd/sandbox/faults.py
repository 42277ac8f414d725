"""Fault injection for the simulators, settable per test at run time.

Neither API document promises reliability: the daemon must retry transient failures
(timeouts, 5xx, 429 with ``Retry-After``, salebot.md "honours a 429 with Retry-After if
one ever comes") and never lose or silently duplicate work. A test sets, on a running
simulator::

    state.faults = Faults(error_rate=0.3, seed=7)          # ~30 % random 503
    state.faults = Faults(fail_next=2, status=500)         # exactly the next two calls fail
    state.faults = Faults(rate_limit_rate=1.0, retry_after=2)
    state.faults = Faults(timeout_rate=1.0, timeout_mode="processed", hang=30)

Per request (only paths containing one of ``paths``, or every path when empty):
1. sleep ``latency`` seconds (the request is then served normally unless a fault hits);
2. ``fail_next`` > 0: answer ``status`` and count it down;
3. else one draw ``r`` from the seeded RNG picks, in this order, a ``status`` answer with
   probability ``error_rate``, a 429 with ``rate_limit_rate``, a timeout with
   ``timeout_rate``; otherwise the request is served.

A faulted request is NOT handed to the simulator, so it is not recorded as delivered and
changes nothing, except a timeout in mode ``"processed"``: the request is fully processed
(recorded, state changed) and then the answer is held back — the at-least-once duplicate
case, where the client retries work that was done. In mode ``"lost"`` (the default) the
request is dropped before processing. A held request ends as soon as the client hangs up
(the usual case: the client's timeout is shorter than ``hang``), else after ``hang``
seconds, when it answers what it would have (``processed``) or 504 (``lost``). The hang is
a plain cancellable wait: stopping the server cancels it (see ``serve``).
A 429 carries ``Retry-After``: ``retry_after`` seconds rounded up, 1 when unset; a 503
carries it only when ``retry_after`` is set. Every fault is appended to ``state.fault_log``.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field
from typing import Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

FaultKind = Literal["error", "rate_limit", "timeout"]
TimeoutMode = Literal["lost", "processed"]


@dataclass
class Faults:
    """What to break, and how often. The default breaks nothing."""

    error_rate: float = 0.0
    status: int = 503
    fail_next: int = 0
    rate_limit_rate: float = 0.0
    retry_after: float | None = None
    timeout_rate: float = 0.0
    timeout_mode: TimeoutMode = "lost"
    hang: float = 30.0
    latency: float = 0.0
    paths: tuple[str, ...] = ()
    seed: int | None = None
    rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Test determinism, not cryptography.
        self.rng = random.Random(self.seed)  # noqa: S311

    def applies_to(self, path: str) -> bool:
        return not self.paths or any(part in path for part in self.paths)

    def decide(self) -> FaultKind | None:
        """The fault for one request (or None); consumes one RNG draw when not forced."""
        if self.fail_next > 0:
            self.fail_next -= 1
            return "error"
        draw = self.rng.random()
        rates: tuple[tuple[FaultKind, float], ...] = (
            ("error", self.error_rate),
            ("rate_limit", self.rate_limit_rate),
            ("timeout", self.timeout_rate),
        )
        for kind, rate in rates:
            if draw < rate:
                return kind
            draw -= rate
        return None


@dataclass(frozen=True)
class FaultHit:
    """One injected fault, as a test sees it in ``state.fault_log``."""

    kind: FaultKind
    method: str
    path: str


@dataclass
class SandboxState:
    """What every simulator state has: the current faults and the log of those fired."""

    faults: Faults = field(default_factory=Faults)
    fault_log: list[FaultHit] = field(default_factory=list)


class FaultMiddleware:
    """Pure ASGI middleware that applies ``state.faults`` before the simulator sees a call."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        faults = self.state.faults
        if scope["type"] != "http" or not faults.applies_to(scope["path"]):
            await self.app(scope, receive, send)
            return
        if faults.latency > 0:
            await asyncio.sleep(faults.latency)
        kind = faults.decide()
        if kind is None:
            await self.app(scope, receive, send)
            return
        self.state.fault_log.append(FaultHit(kind, scope["method"], scope["path"]))
        body = await _read_body(receive)
        if kind == "error":
            await _answer(send, faults.status, faults.retry_after if faults.status == 503 else None)
        elif kind == "rate_limit":
            await _answer(send, 429, 1.0 if faults.retry_after is None else faults.retry_after)
        else:
            await self._hang(scope, receive, send, body, faults)

    async def _hang(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, faults: Faults
    ) -> None:
        held: list[Message] = []
        if faults.timeout_mode == "processed":
            await self.app(scope, _replay(body, receive), _collect(held))
        if await _client_left_within(faults.hang, receive):
            return
        if not held:
            await _answer(send, 504, None)
        for message in held:
            await send(message)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the already-read body once, then defers to the real one."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def _collect(held: list[Message]) -> Send:
    async def collect(message: Message) -> None:
        held.append(message)

    return collect


async def _client_left_within(seconds: float, receive: Receive) -> bool:
    """Wait up to ``seconds``; True as soon as the client disconnects."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({watcher}, timeout=seconds)
        return bool(done)
    finally:
        watcher.cancel()


async def _answer(send: Send, status: int, retry_after: float | None) -> None:
    body = f"sandbox fault: HTTP {status}".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(math.ceil(retry_after)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
