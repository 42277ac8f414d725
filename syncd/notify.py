"""systemd's notify protocol (``sd_notify``): READY, WATCHDOG, STOPPING, STATUS.

With ``Type=notify`` systemd passes ``$NOTIFY_SOCKET`` (a datagram socket; a leading
``@`` means the abstract namespace) and, with ``WatchdogSec=``, ``$WATCHDOG_USEC``.
Outside systemd both are unset and every call here does nothing. Written by hand: the
protocol is one ``sendto`` of ``KEY=value`` lines, and the PyPI packages for it are
either unmaintained or need libsystemd headers to build.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

from loguru import logger


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        mine = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_seconds = int(usec) / 1e6 if usec.isdigit() and mine else 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, **fields: str) -> None:
        if not self._address:
            return
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as exc:
            logger.warning("cannot notify systemd: {}", exc)

    def ready(self, status: str) -> None:
        self.send(ready="1", status=status)

    def stopping(self) -> None:
        self.send(stopping="1", status="stopping")

    async def watchdog(self) -> None:
        """Ping systemd from the event loop, twice per ``WatchdogSec``: a stuck loop
        stops pinging and systemd restarts the service."""
        if not self.watchdog_seconds:
            return
        while True:
            self.send(watchdog="1")
            await asyncio.sleep(self.watchdog_seconds / 2)
