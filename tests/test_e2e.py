"""A real ``syncd run`` process on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from syncd.store.engine import create_engine
from syncd.store.models import Identity
from tests.daemon import GC_KEY, SB_KEY, TOKEN, Daemon

pytestmark = pytest.mark.slow


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.close()


def test_links_as_salebot_sends_them(db_url: str, tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = Daemon(db_url, tmp_path).start()
    daemons.append(daemon)
    url = f"{daemon.base_url}/v1/links"
    with httpx.Client(timeout=10) as http:
        # «POST-data»: a form, values as strings, token in the URL
        form = http.post(
            url,
            params={"token": TOKEN},
            data={"email": "Anna@School.ru", "telegram_id": "111", "sb_id": "900"},
        )
        # «POST-json» with the default "values as strings"
        strings = http.post(
            url,
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"email": "boris@school.ru", "telegram_id": "222", "client_id": "901"},
        )
        # «POST-json» with the project setting that sends numbers
        numbers = http.post(
            url,
            headers={"X-Syncd-Token": TOKEN},
            json={"email": "vera@school.ru", "telegram_id": 333, "client_id": 902},
        )
        unset = http.post(
            url, params={"token": TOKEN}, json={"email": "#{email}", "telegram_id": "444"}
        )
        clash = http.post(
            url, params={"token": TOKEN}, data={"email": "other@school.ru", "telegram_id": "111"}
        )
    assert [a.json()["status"] for a in (form, strings, numbers)] == ["created"] * 3
    assert (unset.status_code, unset.json()["error"]) == (400, "invalid_email")
    assert (clash.status_code, clash.json()["error"]) == (409, "conflict")

    shown = daemon.cli("identity", "show", "--json", "anna@school.ru")
    assert shown.returncode == 0, shown.stderr
    anna = json.loads(shown.stdout)
    assert anna["telegram_id"] == 111
    assert anna["salebot_clients"] == [{"project_id": 294495, "client_id": 900}]
    vera = json.loads(daemon.cli("identity", "show", "--json", "tg:333").stdout)
    assert vera["email"] == "vera@school.ru"
    boris = json.loads(daemon.cli("identity", "show", "--json", "sb:901").stdout)
    assert boris["email"] == "boris@school.ru"
    assert daemon.cli("identity", "show", "--json", "tg:444").returncode == 1

    assert daemon.stop(signal.SIGTERM) == 0
    logs = daemon.logs()
    assert "syncd stopped" in logs
    for secret in (TOKEN, GC_KEY, SB_KEY, "anna@school.ru", "boris@school.ru", "other@school.ru"):
        assert secret not in logs.lower(), f"{secret} leaked into the log"
    assert "o***@school.ru" in logs  # the conflict, masked


def test_sigint_also_stops_cleanly(sqlite_url: str, tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = Daemon(sqlite_url, tmp_path).start()
    daemons.append(daemon)
    assert daemon.stop(signal.SIGINT) == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SYNCD_HTTP__TOKEN": ""}, "http.token: must be set"),
        ({"SYNCD_DATABASE__AUTO_MIGRATE": "false"}, "run `syncd migrate`"),
        ({"SYNCD_HTTP__PORT": "taken"}, "http.port: cannot listen on"),
    ],
)
def test_start_up_failures_are_one_line(
    tmp_path: Path, daemons: list[Daemon], env: dict[str, str], message: str
) -> None:
    blocker = None
    if env.get("SYNCD_HTTP__PORT") == "taken":
        blocker = Daemon(f"sqlite:///{tmp_path / 'a.db'}", tmp_path).start()
        daemons.append(blocker)
        env = {"SYNCD_HTTP__PORT": str(blocker.port)}
    daemon = Daemon(f"sqlite:///{tmp_path / 'fresh.db'}", tmp_path, **env)
    daemons.append(daemon)
    daemon.start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(30) == 1
    logs = daemon.logs()
    assert message in logs and "Traceback" not in logs
    assert len(logs.strip().splitlines()) == 1, logs


async def _post_until_killed(base_url: str, worker: int, acked: list[str]) -> None:
    # a generous timeout: on a loaded machine a slow answer must not end a worker early;
    # the kill ends every worker at once (the connection drops)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        for n in range(100_000):
            email = f"w{worker}n{n}@crash-school.ru"
            try:
                answer = await http.post(
                    "/v1/links",
                    params={"token": TOKEN},
                    json={"email": email, "telegram_id": str(worker * 1_000_000 + n + 1)},
                )
            except httpx.TransportError:
                return
            if answer.status_code == 200:
                acked.append(email)


def test_kill_9_loses_nothing_acknowledged(
    db_url: str, tmp_path: Path, daemons: list[Daemon]
) -> None:
    daemon = Daemon(db_url, tmp_path).start()
    daemons.append(daemon)
    acked: list[str] = []

    async def burst() -> None:
        workers = [
            asyncio.create_task(_post_until_killed(daemon.base_url, w, acked)) for w in range(16)
        ]
        # kill mid-burst once it is under way, at this machine's pace: by progress (100
        # links acknowledged, the posters still posting), not by a count in a fixed time
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while len(acked) < 100:
            going = [w for w in workers if not w.done()]
            assert going and loop.time() < deadline, f"the burst stalled at {len(acked)} links"
            await asyncio.sleep(0.02)
        daemon.kill()  # SIGKILL: no shutdown code runs
        await asyncio.gather(*workers)

    asyncio.run(burst())
    assert len(acked) >= 100

    restarted = Daemon(db_url, tmp_path).start()  # recovers and serves again
    daemons.append(restarted)

    async def stored() -> set[str]:
        engine = create_engine(db_url)
        try:
            async with engine.connect() as conn:
                return set((await conn.scalars(select(Identity.email))).all())
        finally:
            await engine.dispose()

    present = asyncio.run(stored())
    missing = set(acked) - present
    assert not missing, f"{len(missing)} acknowledged links lost, e.g. {sorted(missing)[:3]}"
    assert restarted.stop() == 0
