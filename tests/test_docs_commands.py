"""The commands in README.md and docs/install.md, run as written (issue 12, item 6).

A fenced ``sh``/``bash`` block directly after a line ``<!-- doctest -->`` is run with
``bash -euo pipefail`` in one temporary directory per document, block after block (files
one block writes are there for the next). ``<!-- doctest: background until=URL -->``
starts the block in the background (a daemon) and waits until URL answers 200; it is
stopped with SIGTERM when the document is done and must exit 0. Blocks that need root
or systemd are simply not marked (docs/decisions.md, "Docs checked by running them").

For docs/install.md, the system paths move under the temporary directory:
``/etc/syncd``, ``/var/lib/private/syncd``, ``/var/backups/syncd``;
``/path/to/a/checkout`` is this checkout, and ``syncd`` is this virtualenv's. The state
directory starts with a migrated SQLite database, as a service that has run has one.
The README's own paths (``.venv``, ``config.example.toml``) are linked into the
directory. No block reaches a real service: GetCourse and Salebot URLs point at a closed
loopback port.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).parent.parent
VENV_BIN = Path(os.sys.executable).parent  # type: ignore[attr-defined]
MARKER = re.compile(r"^<!--\s*doctest(?::\s*(?P<options>.*?))?\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")
DOCS = ["README.md", "docs/install.md"]


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    code: str
    background_until: str | None = None


def marked_blocks(doc: str) -> list[Block]:
    """Every marked block of ``doc``; a marker not followed by a sh/bash fence is an error."""
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    found = []
    for number, line in enumerate(lines):
        marker = MARKER.match(line)
        if not marker:
            continue
        fence = FENCE.match(lines[number + 1]) if number + 1 < len(lines) else None
        assert fence and fence.group("lang") in ("sh", "bash"), (
            f"{doc}:{number + 1}: a doctest marker must be followed by a ```sh or ```bash block"
        )
        end = next(i for i in range(number + 2, len(lines)) if lines[i].startswith("```"))
        options = marker.group("options") or ""
        until = re.search(r"until=(\S+)", options)
        assert options in ("", f"background until={until.group(1) if until else ''}"), (
            f"{doc}:{number + 1}: unknown doctest options {options!r}"
        )
        code = "\n".join(lines[number + 2 : end])
        found.append(Block(doc, number + 3, code, until.group(1) if until else None))
    return found


def test_every_marker_is_found_and_the_docs_keep_theirs() -> None:
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        markers = len(re.findall(r"^<!--\s*doctest", text, re.M))
        assert len(marked_blocks(doc)) == markers
    assert len(marked_blocks("README.md")) >= 4
    assert len(marked_blocks("docs/install.md")) >= 7


def test_a_drifted_command_fails(tmp_path: Path) -> None:
    """The runner really fails on a command that no longer exists."""
    failing = Block("x.md", 1, "syncd backup --outptu x.db")
    with pytest.raises(AssertionError, match=r"x\.md:1"):
        run_block(failing, tmp_path, environment(tmp_path))


def environment(workdir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SYNCD_") and k != "CREDENTIALS_DIRECTORY"
    }
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["HOME"] = str(workdir)
    # never the real services
    env["SYNCD_GETCOURSE__BASE_URL"] = "http://127.0.0.1:9"
    env["SYNCD_SALEBOT__BASE_URL"] = "http://127.0.0.1:9"
    return env


def localised(code: str, root: Path) -> str:
    for system, local in (
        ("/etc/syncd", root / "etc" / "syncd"),
        ("/var/lib/private/syncd", root / "var" / "lib" / "private" / "syncd"),
        ("/var/backups/syncd", root / "var" / "backups" / "syncd"),
        ("/path/to/a/checkout", ROOT),
    ):
        code = code.replace(system, str(local))
    return code


def run_block(block: Block, workdir: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, (
        f"{block.doc}:{block.line}: exit {done.returncode}\n{block.code}\n"
        f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    return done.stdout


def port_in_use(url: str) -> bool:
    found = re.match(r"https?://([^:/]+):(\d+)", url)
    assert found, url
    with socket.socket() as sock:
        return sock.connect_ex((found.group(1), int(found.group(2)))) == 0


def start_background(block: Block, workdir: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    assert block.background_until is not None
    if port_in_use(block.background_until):
        reason = f"{block.background_until} is already taken on this machine"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with (workdir / f"background-{block.line}.log").open("w") as log:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block.code],  # one command: bash execs it
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, (
            f"{block.doc}:{block.line}: exited {process.returncode}\n{block.code}\n"
            + (workdir / f"background-{block.line}.log").read_text()
        )
        try:
            if httpx.get(block.background_until, timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"{block.doc}:{block.line}: {block.background_until} never answered 200")


def prepare(doc: str, workdir: Path, sqlite_template: Path) -> None:
    if doc == "README.md":
        (workdir / ".venv").symlink_to(VENV_BIN.parent)
        shutil.copy(ROOT / "config.example.toml", workdir)
    else:
        state = workdir / "var" / "lib" / "private" / "syncd"
        state.mkdir(parents=True)
        shutil.copy(sqlite_template, state / "syncd.db")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("doc", DOCS)
def test_the_marked_commands_run(doc: str, tmp_path: Path, sqlite_template: Path) -> None:
    workdir = tmp_path / "doc"
    workdir.mkdir()
    prepare(doc, workdir, sqlite_template)
    env = environment(workdir)
    background: list[subprocess.Popen[str]] = []
    outputs = []
    try:
        for block in marked_blocks(doc):
            block = Block(block.doc, block.line, localised(block.code, workdir),
                          block.background_until)  # fmt: skip
            if block.background_until:
                background.append(start_background(block, workdir, env))
            else:
                outputs.append(run_block(block, workdir, env))
    finally:
        for process in background:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            code = process.wait(30)
            assert code == 0, f"{doc}: a background command exited {code} on SIGTERM"
    text = "\n".join(outputs)
    if doc == "README.md":  # what the README promises the reader sees
        assert '"status":"created"' in text and "anna@school.ru" in text
        assert "syncd_ready 1.0" in text and "integrity ok" in text
    else:
        assert "previous_tokens: 1 previous token still accepted" in text
        assert "integrity ok" in text
        assert list((workdir / "var" / "backups" / "syncd").glob("syncd-*.db"))
