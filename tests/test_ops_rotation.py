"""Rotating the webhook token without refusing a request (issue 12, item 1).

``http.previous_tokens`` (TOML, ``SYNCD_HTTP__PREVIOUS_TOKENS``, or the credential
``webhook-token-previous``, one token a line) are accepted beside ``http.token``; each
request that uses one is counted in ``syncd_auth_previous_token_total{route}``.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd import config
from syncd.cli import main
from tests.daemon import Daemon
from tests.test_ops_metrics import ops_client

OLD, NEW, OLDER = "old-token-1f2e", "new-token-9a8b", "older-token-5c6d"


def previous_count(scrape: str, route: str = "/v1/links") -> float:
    found = re.search(
        rf'^syncd_auth_previous_token_total\{{route="{re.escape(route)}"\}} (\S+)$', scrape, re.M
    )
    return float(found.group(1)) if found else 0.0


# --- configuration ------------------------------------------------------------------


def test_previous_tokens_from_the_credential_file_one_a_line(tmp_path: Path) -> None:
    (tmp_path / "webhook-token").write_text(NEW)
    (tmp_path / "webhook-token-previous").write_text(f"{OLD}\n\n  {OLDER}  \n")
    loaded = config.load(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert loaded.settings.http.token == NEW
    assert loaded.settings.http.previous_tokens == [OLD, OLDER]


def test_previous_tokens_from_the_environment_and_toml(tmp_path: Path) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text(f'[http]\nprevious_tokens = ["{OLD}"]\n')
    assert config.load(path, {}).settings.http.previous_tokens == [OLD]
    env = {"SYNCD_HTTP__PREVIOUS_TOKENS": f"{OLD}, {OLDER}"}
    assert config.load(path, env).settings.http.previous_tokens == [OLD, OLDER]


def test_an_empty_previous_file_means_no_rotation(tmp_path: Path) -> None:
    (tmp_path / "webhook-token-previous").write_text("\n")
    loaded = config.load(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert loaded.settings.http.previous_tokens == []


def test_check_says_how_many_previous_tokens_are_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SYNCD_CONFIG", raising=False)
    monkeypatch.setenv("SYNCD_DATABASE__URL", f"sqlite:///{tmp_path / 'x.db'}")
    monkeypatch.setenv("SYNCD_HTTP__TOKEN", NEW)
    main(["check"])
    assert "ok   http.previous_tokens: none" in capsys.readouterr().out
    monkeypatch.setenv("SYNCD_HTTP__PREVIOUS_TOKENS", f"{OLD},{OLDER}")
    main(["check"])
    out = capsys.readouterr().out
    assert "ok   http.previous_tokens: 2 previous tokens still accepted" in out
    assert OLD not in out and OLDER not in out


# --- in-process: accepted, counted by route template --------------------------------


async def test_previous_tokens_are_accepted_and_counted_by_route(engine: AsyncEngine) -> None:
    async for client in ops_client(engine, token=NEW, previous=(OLD, OLDER)):
        link = {"email": "anna@school.ru", "telegram_id": 1}
        assert (await client.post("/v1/links", json=link, params={"token": NEW})).status_code == 200
        assert (await client.post("/v1/links", json=link, params={"token": OLD})).status_code == 200
        answer = await client.post(
            "/v1/links", json=link, headers={"Authorization": f"Bearer {OLDER}"}
        )
        assert answer.status_code == 200
        event = await client.get(
            "/v1/getcourse/events/deal.paid",
            params={"token": OLD, "email": "anna@school.ru", "id": "77"},
        )
        assert event.status_code == 200
        for wrong in ("", "nope", OLD[:-1], NEW + "x"):
            refused = await client.post("/v1/links", json=link, params={"token": wrong})
            assert refused.status_code == 401
        scrape = (await client.get("/metrics")).text
    assert previous_count(scrape) == 2  # the current token is not counted
    assert previous_count(scrape, "/v1/getcourse/events/{event}") == 1  # template, not path
    assert "deal.paid" not in "".join(re.findall(r"^syncd_auth_previous\S*", scrape, re.M))
    assert OLD not in scrape and NEW not in scrape


async def test_an_empty_current_token_opens_nothing_even_with_previous(
    engine: AsyncEngine,
) -> None:
    async for client in ops_client(engine, token="", previous=(OLD,)):
        answer = await client.post(
            "/v1/links", json={"email": "a@school.ru", "telegram_id": 1}, params={"token": OLD}
        )
        assert answer.status_code == 401


# --- a real daemon under load: the rotation as docs/install.md describes it ---------


class Load:
    """A client posting links one after another until stopped; it records every answer.

    A connection refused (the port is closed during the restart: nothing was received)
    is tried again; so is one reset before any answer: the kernel completes a handshake
    on the listening socket and queues it, and when the old process closes that socket
    during its shutdown, the queued connection — never accepted, its request never read —
    is reset. A link is idempotent, and that is what a caller retrying would see. Any HTTP
    answer is final.
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.token = OLD
        self.statuses: list[tuple[str, int]] = []
        self.reconnects = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        # a fresh connection per request: a keep-alive one could die with the old process
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=30, limits=limits) as http:
            n = 0
            while not self.stopped.is_set():
                n += 1
                token = self.token
                while True:
                    try:
                        answer = http.post(
                            f"{self.base_url}/v1/links",
                            params={"token": token},  # as a GetCourse process URL carries it
                            data={"email": f"p{n}@school.ru", "telegram_id": str(n)},
                        )
                        break
                    except (httpx.ConnectError, httpx.ReadError):
                        self.reconnects += 1
                        time.sleep(0.01)
                self.statuses.append((token, answer.status_code))

    def wait_for(self, more: int) -> None:
        target = len(self.statuses) + more
        while len(self.statuses) < target:
            assert self.thread.is_alive()
            time.sleep(0.01)


@pytest.mark.timeout(300)  # three daemon starts on a busy 2-core machine
def test_rotation_under_load_refuses_no_request(sqlite_url: str, tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "webhook-token").write_text(OLD)
    env = {"CREDENTIALS_DIRECTORY": str(creds), "SYNCD_HTTP__TOKEN": ""}

    def daemon(port: int | None = None) -> Daemon:
        started = Daemon(sqlite_url, tmp_path, **env)
        if port is not None:
            started.port, started.base_url = port, f"http://127.0.0.1:{port}"
            started.env["SYNCD_HTTP__PORT"] = str(port)
        started.env.pop("SYNCD_HTTP__TOKEN")  # the credentials speak
        return started.start()

    first = daemon()
    load = Load(first.base_url)
    load.thread.start()
    running = [first]
    try:
        load.wait_for(20)
        # step 1: new token in webhook-token, the old one in webhook-token-previous, restart
        (creds / "webhook-token").write_text(NEW)
        (creds / "webhook-token-previous").write_text(OLD + "\n")
        assert first.stop() == 0
        second = daemon(first.port)
        running.append(second)
        load.wait_for(20)  # old URLs keep working
        scrape = httpx.get(f"{second.base_url}/metrics").text
        assert previous_count(scrape) > 0
        # step 2: the URLs in GetCourse and Salebot are changed to the new token
        load.token = NEW
        load.wait_for(5)
        settled = previous_count(httpx.get(f"{second.base_url}/metrics").text)
        load.wait_for(20)
        assert previous_count(httpx.get(f"{second.base_url}/metrics").text) == settled
        # step 3: the counter stands still, the old token is dropped, restart once more
        (creds / "webhook-token-previous").write_text("")
        assert second.stop() == 0
        third = daemon(first.port)
        running.append(third)
        load.wait_for(20)
        # now an old URL is refused, as it should be
        stale = httpx.post(
            f"{third.base_url}/v1/links", params={"token": OLD}, data={"email": "z@school.ru"}
        )
        assert stale.status_code == 401
    finally:
        load.stopped.set()
        load.thread.join(30)
        for one in running:
            one.close()
    refused = [(token, status) for token, status in load.statuses if status != 200]
    assert not refused, refused
    assert len(load.statuses) >= 80
    assert {token for token, _ in load.statuses} == {OLD, NEW}
