"""A GetCourse simulator process serving a huge deals export, for bench/backfill.py.

It serves ``syncd.sandbox``'s GetCourse app with ``deal_rows=GeneratedDeals(N, step_seconds=S)``
on 127.0.0.1 and runs in its own process, so the CPU spent building and encoding the export
is not charged to the syncd process being measured. Deal ``i`` is created at
``2024-01-01 00:00:00 + i * S`` seconds (S=30: 1,000,000 deals span 2024-01-01..2024-12-13);
every 3rd deal (``i % 3 == 0``) is ``payed``. ``GeneratedDeals`` serves the built-in deal
columns only and honours ``created_at[from]/[to]`` (whole days, inclusive); other filters
are ignored.

Exports are ready at the first collect (``--ready-after-polls 0``) so the benchmark times
syncd, not the 909 waits; the budget is GetCourse's (100 requests per 2 hours).

Prints its base URL once listening, then one line per request (``t=<CLOCK_MONOTONIC>``,
method, path without the key) and one when a response body has been sent in full, so the
benchmark can place an export's collect on its own timeline. Exits 0 on SIGTERM/SIGINT::

    .venv/bin/python bench/big_export_server.py --port 0 --key K --rows 1000000 --step-seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from syncd.sandbox.getcourse import GeneratedDeals, GetCourseState, create_app
from syncd.sandbox.serve import serve

START = datetime(2024, 1, 1)


def say(text: str) -> None:
    print(f"t={time.monotonic():.3f} {text}", flush=True)


def traced(app: ASGIApp) -> ASGIApp:
    """``app``, printing each request and when its response body ended (bytes sent)."""

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        what = f"{scope['method']} {scope['path']}"
        say(f"request {what}")
        sent = 0

        async def counting(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    say(f"response-end {what} bytes={sent}")
            await send(message)

        await app(scope, receive, counting)

    return wrapper


async def run(args: argparse.Namespace) -> None:
    state = GetCourseState(
        key=args.key,
        deal_rows=GeneratedDeals(
            args.rows, start=START, step_seconds=args.step_seconds, users=args.buyers
        ),
        ready_after_polls=args.ready_after_polls,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    last = START + timedelta(seconds=(args.rows - 1) * args.step_seconds)
    async with serve(traced(create_app(state)), host="127.0.0.1", port=args.port) as base_url:
        print(base_url, flush=True)
        print(
            f"serving {args.rows:,} deals created {START:%Y-%m-%d %H:%M:%S}.."
            f"{last:%Y-%m-%d %H:%M:%S} (one every {args.step_seconds} s), every 3rd payed, "
            f"{args.buyers:,} buyers",
            flush=True,
        )
        await stop.wait()
    say("stopped")


def runner() -> asyncio.Runner:
    """uvloop when installed (as syncd uses): the export is encoded as fast as it can be."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve the GetCourse simulator with a huge generated deals export "
        "on 127.0.0.1 (for bench/backfill.py)."
    )
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free one)")
    parser.add_argument("--key", default="gc-bench-key", help="the account's secret key")
    parser.add_argument("--rows", type=int, default=1_000_000, help="deals (default 1,000,000)")
    parser.add_argument(
        "--step-seconds", type=int, default=30, help="seconds between deals (default 30)"
    )
    parser.add_argument(
        "--buyers", type=int, default=1000, help="distinct buyers, in turn (default 1,000)"
    )
    parser.add_argument(
        "--ready-after-polls",
        type=int,
        default=0,
        help="909 answers before an export is ready (default 0: ready at once)",
    )
    args = parser.parse_args(argv)
    if min(args.rows, args.step_seconds, args.buyers) < 1 or args.ready_after_polls < 0:
        parser.error("--rows, --step-seconds and --buyers must be >= 1, --ready-after-polls >= 0")
    try:
        with runner() as loop_runner:
            loop_runner.run(run(args))
    except OSError as exc:
        print(f"cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
