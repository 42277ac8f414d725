"""Idle, silent and slow clients cannot take a real ``syncd run`` offline (issue 14).

``http.max_connections``, ``http.header_timeout`` and ``http.body_timeout`` are set
small here; the behaviour is the one of the defaults (1000, 10 s, 30 s).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.daemon import TOKEN, Daemon

pytestmark = pytest.mark.slow

CAP = 20
LIMITS = {
    "SYNCD_HTTP__MAX_CONNECTIONS": str(CAP),
    "SYNCD_HTTP__HEADER_TIMEOUT": "2s",
    "SYNCD_HTTP__BODY_TIMEOUT": "2s",
}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def daemon(db_url: str, tmp_path: Path) -> Iterator[Daemon]:
    started = Daemon(db_url, tmp_path, **LIMITS).start()
    yield started
    started.close()


def closed_by_peer(sock: socket.socket, within: float = 30) -> bytes:
    """What the server sent before it closed ``sock`` (fails if it stays open)."""
    sock.settimeout(within)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {within} s") from None
    return received


def partial_body(port: int) -> socket.socket:
    """A connection whose request head is complete and whose body never is."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/links HTTP/1.1\r\nhost: syncd\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + TOKEN.encode() + b'\r\ncontent-length: 100\r\n\r\n{"em'
    )
    return sock


def test_silent_and_dripping_clients_do_not_stop_real_requests(daemon: Daemon) -> None:
    silent = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(3 * CAP)]
    try:
        with httpx.Client(base_url=daemon.base_url, timeout=10) as http:
            link = http.post(
                "/v1/links", json={"email": "a@school.ru", "telegram_id": 1}, headers=AUTH
            )
            ready = http.get("/readyz")
        assert (link.status_code, link.json()["status"]) == (200, "created")
        assert ready.status_code == 200
        # every silent one is closed: the oldest to make room, the rest at header_timeout
        assert all(closed_by_peer(sock) == b"" for sock in silent)
    finally:
        for sock in silent:
            sock.close()

    head = b"GET /healthz HTTP/1.1\r\nhost: syncd\r\nx-slow: " + b"a" * 200
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        started = time.monotonic()
        try:
            for byte in head:  # 200+ bytes, one every 0.1 s: 20 s if it were let through
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert closed_by_peer(sock) == b""
        assert time.monotonic() - started < len(head) * 0.1  # cut before the drip ended

    metrics = httpx.get(f"{daemon.base_url}/metrics").text
    assert 'syncd_http_connections_dropped_total{reason="header_timeout"}' in metrics
    assert 'syncd_http_connections_dropped_total{reason="evicted"}' in metrics


def test_busy_connections_fill_the_cap_new_ones_are_refused_then_bodies_time_out(
    daemon: Daemon,
) -> None:
    busy = [partial_body(daemon.port) for _ in range(CAP)]
    try:
        time.sleep(0.2)  # all CAP heads read: each has a request in flight
        with socket.create_connection(("127.0.0.1", daemon.port)) as extra:
            answer = closed_by_peer(extra, within=1.5)  # before any body_timeout (2 s)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503")
        assert json.loads(body) == {
            "success": False,
            "error": "unavailable",
            "detail": "too many connections",
        }
        for sock in busy:  # body_timeout frees the slots, without an answer ...
            assert closed_by_peer(sock) == b""
    finally:
        for sock in busy:
            sock.close()
    with httpx.Client(base_url=daemon.base_url, timeout=10) as http:  # ... and it serves
        assert http.get("/readyz").status_code == 200
        # none of the cut requests was written: the same link is new
        link = http.post("/v1/links", json={"email": "a@school.ru", "telegram_id": 1}, headers=AUTH)
        assert link.json()["status"] == "created"
