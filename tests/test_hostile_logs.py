"""A real ``syncd run`` with stderr off a terminal: every line JSON, through malformed
requests and a SIGTERM with half-open requests (issue 14)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.daemon import TOKEN, Daemon

pytestmark = pytest.mark.slow


def test_every_line_is_json_through_garbage_and_a_sigterm_with_half_open_requests(
    db_url: str, tmp_path: Path
) -> None:
    daemon = Daemon(db_url, tmp_path, SYNCD_LOG__FORMAT="auto").start()  # a file: not a TTY
    half_open: list[socket.socket] = []
    try:
        for garbage in (b"GARBAGE\x00 / HTTP/1.1\r\n\r\n", b"GET / HTTP/9.9\r\nx\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
                sock.sendall(garbage)
                assert sock.recv(4096).startswith(b"HTTP/1.1 400")
        for _ in range(20):  # heads complete, bodies never: in flight at the SIGTERM
            sock = socket.create_connection(("127.0.0.1", daemon.port))
            sock.sendall(
                b"POST /v1/links HTTP/1.1\r\nhost: syncd\r\ncontent-type: application/json\r\n"
                b"x-syncd-token: " + TOKEN.encode() + b'\r\ncontent-length: 80\r\n\r\n{"e'
            )
            half_open.append(sock)
        for _ in range(5):  # heads never complete
            sock = socket.create_connection(("127.0.0.1", daemon.port))
            sock.sendall(b"POST /v1/links HTTP/1.1\r\nhost: sy")
            half_open.append(sock)
        assert httpx.get(f"{daemon.base_url}/healthz").status_code == 200
        started = time.monotonic()
        assert daemon.stop() == 0
        stopping = time.monotonic() - started
    finally:
        for sock in half_open:
            sock.close()
        daemon.close()
    text = daemon.logs()
    lines = [json.loads(line) for line in text.splitlines()]  # fails on any other line
    assert any(line["msg"] == "syncd stopped" for line in lines)
    assert "Exception in ASGI application" not in text and "Traceback" not in text
    assert not any(line["level"] == "error" for line in lines), text
    assert stopping < 10  # the half-open requests did not hold the graceful stop (10 s)
    print(f"stopped in {stopping:.2f} s with 25 half-open requests; {len(lines)} JSON lines")
