"""The service as systemd sees it: the unit verifies, its exposure score is low, and a
real ``syncd run`` speaks the notify protocol (READY after bind, WATCHDOG, STOPPING)."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.daemon import SYNCD, Daemon

UNIT = Path(__file__).parent.parent / "systemd" / "syncd.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


@needs_analyze
def test_the_unit_verifies(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's syncd
    unit = tmp_path / "syncd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/syncd", SYNCD))
    done = subprocess.run(
        [ANALYZE or "", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@needs_analyze
def test_the_unit_is_sandboxed_to_exposure_2_or_less() -> None:
    done = subprocess.run(
        [ANALYZE or "", "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for syncd\.service: ([0-9.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0, done.stdout


def test_the_unit_says_what_spec_8_asks() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "StateDirectory=syncd",
        "DynamicUser=yes",
        "LoadCredential=getcourse-api-key:",
        "LoadCredential=salebot-api-key:",
        "LoadCredential=webhook-token:",
    ):
        assert line in text
    assert re.search(r"^WatchdogSec=\d+", text, re.M)


def test_ready_then_watchdog_then_stopping(sqlite_url: str, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        daemon = Daemon(sqlite_url, tmp_path, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="400000")
        daemon.start(wait=False)
        try:
            first = sock.recv(4096).decode()
            assert "READY=1" in first.splitlines()
            # READY came only once the port answers
            assert httpx.get(f"{daemon.base_url}/readyz", timeout=5).status_code == 200
            # pings keep coming (every WatchdogSec/2, 0.2 s here); the socket's 30 s
            # timeout bounds a hang, not the pace of a loaded machine
            assert sock.recv(4096).decode() == "WATCHDOG=1"
            assert sock.recv(4096).decode() == "WATCHDOG=1"
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGTERM)
            seen = ""
            while "STOPPING=1" not in seen:
                seen = sock.recv(4096).decode()
            assert daemon.process.wait(30) == 0
        finally:
            daemon.close()
