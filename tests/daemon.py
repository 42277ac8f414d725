"""Running a real ``syncd run`` subprocess on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

SYNCD = str(Path(sys.executable).parent / "syncd")
TOKEN = "e2e-token-4f9a1c"
GC_KEY = "e2e-gc-key-77d2"
SB_KEY = "e2e-sb-key-91c3"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon:
    """``syncd run`` as a child process with its own log file."""

    def __init__(self, db_url: str, workdir: Path, **env: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"syncd-{self.port}.log"
        self.env = {
            **os.environ,
            "SYNCD_DATABASE__URL": db_url,
            "SYNCD_HTTP__PORT": str(self.port),
            "SYNCD_HTTP__TOKEN": TOKEN,
            "SYNCD_LOG__FORMAT": "json",
            # never the real services: a closed loopback port unless a test names a simulator
            "SYNCD_GETCOURSE__BASE_URL": "http://127.0.0.1:9",
            "SYNCD_GETCOURSE__API_KEY": GC_KEY,
            "SYNCD_SALEBOT__API_KEY": SB_KEY,
            "SYNCD_SALEBOT__BASE_URL": "http://127.0.0.1:9",
            **env,
        }
        self.env.pop("SYNCD_CONFIG", None)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> Daemon:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [SYNCD, "run"], cwd=self.workdir, env=self.env, stdout=log, stderr=log
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"syncd exited {self.process.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"syncd not ready in {timeout}s:\n{self.logs()}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def logs(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SYNCD, *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
