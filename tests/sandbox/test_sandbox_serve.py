"""The loopback serve helper and the ``python -m syncd.sandbox`` command."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import httpx
import pytest

from syncd.sandbox import getcourse, salebot
from syncd.sandbox.faults import Faults
from syncd.sandbox.serve import serve

pytestmark = pytest.mark.timeout(20)


async def test_each_server_gets_its_own_free_port_and_releases_it() -> None:
    async with serve(salebot.create_app()) as one, serve(getcourse.create_app()) as two:
        assert one != two
        assert one.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient() as client:
            assert (
                await client.get(f"{one}/api/sb-sandbox-key/connected_channels")
            ).status_code == 200

    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{one}/api/sb-sandbox-key/connected_channels")


async def test_stopping_cancels_a_request_held_by_a_hang() -> None:
    state = salebot.SalebotState(faults=Faults(timeout_rate=1.0, hang=60))
    async with httpx.AsyncClient(timeout=30) as client:
        async with serve(salebot.create_app(state), grace=0.5) as base:
            held = asyncio.ensure_future(client.get(f"{base}/api/{state.key}/connected_channels"))
            while not state.fault_log:  # noqa: ASYNC110 - the state has no event to wait on
                await asyncio.sleep(0.01)
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 2
        [outcome] = await asyncio.gather(held, return_exceptions=True)
        # cancelled by the stop: uvicorn answers 500, or the connection just closes
        assert isinstance(outcome, httpx.TransportError) or (
            isinstance(outcome, httpx.Response) and outcome.status_code == 500
        )


async def _run_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncd.sandbox",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_the_cli_prints_its_url_serves_and_exits_cleanly_on_a_signal(sig: int) -> None:
    process = await _run_cli("salebot", "--port", "0", "--key", "K", "--client", "7:123")
    assert process.stdout is not None
    base = (await asyncio.wait_for(process.stdout.readline(), 10)).decode().strip()

    async with httpx.AsyncClient(base_url=f"{base}/api/K/") as client:
        answer = await client.post("callback", json={"client_id": 7, "message": "x"})
    process.send_signal(sig)
    code = await asyncio.wait_for(process.wait(), 10)

    assert answer.json() == {"status": "success"}
    assert code == 0


async def test_the_cli_has_help() -> None:
    process = await _run_cli("getcourse", "--help")
    out, _ = await process.communicate()
    assert process.returncode == 0
    assert b"--port" in out and b"--key" in out
