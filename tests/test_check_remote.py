"""``syncd check --remote`` against the simulators, each in its own process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.cli import main
from tests.daemon import free_port


def simulator(*args: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "syncd.sandbox", *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and "127.0.0.1" in process.stdout.readline()
    return process, f"http://127.0.0.1:{port}"


def stop(*processes: subprocess.Popen[str]) -> None:
    for process in processes:
        process.terminate()
        process.wait(10)
        assert process.stdout is not None
        process.stdout.close()


@pytest.fixture(params=["grouped", "list"])
def apis(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """The Salebot simulator answers connected_channels grouped by messenger (Salebot's own
    API page, the default) or as a plain list (seen by other clients): both must pass."""
    gc, gc_url = simulator("getcourse", "--key", "GK", "--field", "telegram_id")
    sb, sb_url = simulator(
        "salebot", "--key", "SK", "--bot", "school_bot", "--bot", "other_bot",
        "--channels", request.param,
    )  # fmt: skip
    yield gc_url, sb_url
    stop(gc, sb)


def check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], **env: str
) -> tuple[int, str]:
    for key, value in env.items():
        monkeypatch.setenv(f"SYNCD_{key}", value)
    code = main(["check", "--remote"])
    return code, capsys.readouterr().out


def test_check_remote(
    apis: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gc_url, sb_url = apis
    monkeypatch.chdir(tmp_path)
    base = {
        "HTTP__TOKEN": "t",
        "GETCOURSE__BASE_URL": gc_url,
        "SALEBOT__BASE_URL": sb_url,
        "GETCOURSE__API_KEY": "GK",
        "SALEBOT__API_KEY": "SK",
        "SALEBOT__BOT_NAME": "school_bot",
        "GETCOURSE__CLIENT_ID_FIELD": "telegram_id",
    }
    code, out = check(monkeypatch, capsys, **base)
    assert code == 0, out
    assert "ok   getcourse: " in out and "accepted the key" in out
    assert "ok   getcourse.telegram_id_field: custom user field 'telegram_id' exists" in out
    assert "ok   salebot.bot_name: @school_bot is one of the project's Telegram bots" in out

    code, out = check(
        monkeypatch,
        capsys,
        GETCOURSE__CLIENT_ID_FIELD="sb_294495_id",
        SALEBOT__BOT_NAME="nobody_bot",
    )
    assert code == 1
    assert "FAIL getcourse.client_id_field: no custom user field titled 'sb_294495_id'" in out
    assert (
        "FAIL salebot.bot_name: @nobody_bot is not a Telegram bot of this project "
        "(it has: @other_bot, @school_bot)" in out
    )

    code, out = check(monkeypatch, capsys, GETCOURSE__API_KEY="wrong", SALEBOT__API_KEY="wrong")
    assert code == 1
    assert "FAIL getcourse: " in out and "check getcourse.api_key" in out
    assert "FAIL salebot: salebot connected_channels: HTTP 401 — check salebot.api_key" in out
    assert "wrong" not in out  # keys are never printed

    code, out = check(monkeypatch, capsys, GETCOURSE__BASE_URL="http://127.0.0.1:9")
    assert code == 1 and "FAIL getcourse: cannot reach http://127.0.0.1:9" in out


def test_no_readable_bot_is_a_warning_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gc, gc_url = simulator("getcourse", "--key", "GK", "--field", "telegram_id")
    sb, sb_url = simulator("salebot", "--key", "SK", "--no-bots")
    try:
        monkeypatch.chdir(tmp_path)
        code, out = check(
            monkeypatch, capsys, HTTP__TOKEN="t", GETCOURSE__BASE_URL=gc_url,
            SALEBOT__BASE_URL=sb_url, GETCOURSE__API_KEY="GK", SALEBOT__API_KEY="SK",
            SALEBOT__BOT_NAME="school_bot", GETCOURSE__CLIENT_ID_FIELD="telegram_id",
        )  # fmt: skip
    finally:
        stop(gc, sb)
    assert code == 0, out
    assert "ok   salebot: project key accepted, 0 connected channel(s)" in out
    assert "warn salebot.bot_name: no Telegram bot could be read" in out
    assert "FAIL" not in out
