"""``python -m syncd.sandbox getcourse|salebot --port P [--key K]``: a simulator as a process.

Prints the base URL once listening (GetCourse: ``{base}/pl/api/…``; Salebot:
``{base}/api/{key}/{action}``) and serves until SIGINT or SIGTERM, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta

from starlette.applications import Starlette

from syncd.sandbox import getcourse, getcourse_state, salebot
from syncd.sandbox.serve import serve

#: ``--clients N``: client i gets Telegram id TELEGRAM_BASE + i.
TELEGRAM_BASE = 1_000_000


def _count(text: str) -> int:
    """An argparse type: a whole number ≥ 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"want a whole number >= 0, got {text!r}")
    return int(text)


def _local_time(text: str) -> datetime:
    """An argparse type: ``YYYY-MM-DD HH:MM:SS``."""
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise argparse.ArgumentTypeError(f"want YYYY-MM-DD HH:MM:SS, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m syncd.sandbox",
        description="Run a bundled GetCourse or Salebot API simulator on loopback.",
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="{getcourse,salebot}")
    gc = kinds.add_parser("getcourse", help="the GetCourse import/export API")
    gc.add_argument("--key", default="gc-sandbox-key", help="the account's secret key")
    gc.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="TITLE",
        help="a custom user field title (repeatable; default: telegram_id, sb_294495_id)",
    )
    gc.add_argument(
        "--deals",
        type=_count,
        default=0,
        metavar="N",
        help="serve N generated deals (every 3rd payed), one every --deal-step seconds from "
        "--deals-from (default: none)",
    )
    gc.add_argument(
        "--deals-from",
        type=_local_time,
        default=None,
        metavar="'YYYY-MM-DD HH:MM:SS'",
        help="the first generated deal's creation, account-local (default: now minus N steps)",
    )
    gc.add_argument(
        "--deal-step", type=_count, default=3600, metavar="SECONDS", help="default: 3600"
    )
    sb = kinds.add_parser("salebot", help="the Salebot /api/{key}/{action} calls")
    sb.add_argument("--key", default="sb-sandbox-key", help="the project's API key")
    sb.add_argument(
        "--bot",
        action="append",
        default=[],
        metavar="USERNAME",
        help="a connected Telegram bot (repeatable; default: myschool_bot)",
    )
    sb.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="CLIENT_ID:TELEGRAM_ID",
        help="a known client of the first bot (repeatable)",
    )
    sb.add_argument(
        "--channels",
        choices=("grouped", "list"),
        default="grouped",
        help="connected_channels answers an object grouped by messenger (Salebot's API page; "
        "default) or a plain list",
    )
    sb.add_argument(
        "--no-bots",
        action="store_true",
        help="no connected bot at all (connected_channels lists none)",
    )
    sb.add_argument(
        "--clients",
        type=_count,
        default=0,
        metavar="N",
        help="seed clients 1..N of the first bot, client i with Telegram id 1000000+i "
        "(for load tests; default: none)",
    )
    for sub in (gc, sb):
        sub.add_argument(
            "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
        )
        sub.add_argument("--port", type=int, default=0, help="port to bind (default: any free one)")
    return parser


def _app(args: argparse.Namespace) -> Starlette:
    if args.kind == "getcourse":
        gc_state = getcourse.GetCourseState(key=args.key)
        for title in args.field or ["telegram_id", "sb_294495_id"]:
            gc_state.add_field(title)
        if args.deals:
            step = max(args.deal_step, 1)
            start = args.deals_from or getcourse_state.local_now() - timedelta(
                seconds=step * args.deals
            )
            gc_state.deal_rows = getcourse.GeneratedDeals(args.deals, start, step)
        return getcourse.create_app(gc_state)
    sb_state = salebot.SalebotState(key=args.key, channels_shape=args.channels)
    if args.bot:
        sb_state.bots = [salebot.SbBot(i, name) for i, name in enumerate(args.bot, start=1)]
    if args.no_bots:
        sb_state.bots = []
    for client_id in range(1, args.clients + 1):
        sb_state.add_client(TELEGRAM_BASE + client_id, client_id=client_id)
    for pair in args.client:
        client_id, _, telegram_id = pair.partition(":")
        if not client_id.isdigit() or not telegram_id.isdigit():
            raise SystemExit(f"--client wants CLIENT_ID:TELEGRAM_ID, got {pair!r}")
        sb_state.add_client(telegram_id, client_id=int(client_id))
    return salebot.create_app(sb_state)


async def _run(app: Starlette, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(app, host=host, port=port) as base_url:
        print(base_url, flush=True)  # noqa: T201 - the CLI's one line of output
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    app = _app(args)
    try:
        asyncio.run(_run(app, args.host, args.port))
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
