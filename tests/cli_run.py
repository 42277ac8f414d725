"""Running ``syncd ARGS`` in-process on a test database, as a user would type it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from syncd.cli import main

Run = Callable[..., tuple[int, str, str]]


def cli(
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    config: Path | None = None,
    **env: str,
) -> Run:
    """``run("identity", "show", ...)`` → (exit status, stdout, stderr)."""
    monkeypatch.setenv("SYNCD_DATABASE__URL", db_url)
    monkeypatch.delenv("SYNCD_CONFIG", raising=False)
    monkeypatch.chdir(Path(__file__).parent)  # no ./syncd.toml here
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def run(*args: str) -> tuple[int, str, str]:
        argv = ["--config", str(config), *args] if config is not None else list(args)
        code = main(argv)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
