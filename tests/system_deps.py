"""Debian packages some tests need (``chromium``, ``prometheus``), installed on demand.

Used from a session-scoped fixture of the test module that needs the binary, never from
``conftest.py``: a run that does not select those tests installs nothing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

APT_TIMEOUT_S = 900
LOCK = Path("/tmp/syncd-tests-apt.lock")


def _required() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("SYNCD_REQUIRE_SYSTEM_DEPS") == "1"


def _apt(args: Sequence[str]) -> str | None:
    """Run apt-get (as root, else through ``sudo -n``); None on success, else why not."""
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo"):
        prefix = ["sudo", "-n"]
    else:
        return "not root and no sudo"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            [*prefix, "apt-get", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        return "apt-get not found"
    except subprocess.TimeoutExpired:
        return f"apt-get {' '.join(args)} took over {APT_TIMEOUT_S} s"
    if done.returncode == 0:
        return None
    lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"apt-get exited {done.returncode}"


def require_debian_binary(binary: str, package: str) -> str:
    """Path of `binary`; installs Debian `package` when it is missing.

    Tries `apt-get install -y --no-install-recommends PACKAGE` (as root, else `sudo -n`),
    and only when that fails runs `apt-get update` and tries once more. Serialised across
    pytest processes with a file lock under /tmp. When it still cannot be found:
    pytest.fail(...) if os.environ.get("CI") == "true" or SYNCD_REQUIRE_SYSTEM_DEPS=1,
    else pytest.skip(<clear reason naming the package and the apt error>).
    """
    found = shutil.which(binary)
    if found:
        return found
    install = ["install", "-y", "--no-install-recommends", package]
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            found = shutil.which(binary)  # another process may have installed it meanwhile
            error = None if found else _apt(install)
            if not found and error is not None:
                error = _apt(["update"]) or _apt(install)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    found = found or shutil.which(binary)
    if found:
        return found
    reason = (
        f"`{binary}` not found and the Debian package {package!r} could not be installed: "
        f"{error or 'installed, but the binary is not on PATH'}"
    )
    if _required():
        pytest.fail(f"{reason} (required: CI=true or SYNCD_REQUIRE_SYSTEM_DEPS=1)")
    pytest.skip(reason)
