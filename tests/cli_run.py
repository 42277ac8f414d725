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


#: A config with one deal.paid rule, as the repair tests use it.
PAID_RULE = """
[[rules]]
event = "deal.paid"
action = "callback"
message = "gc_deal_paid"
variables = { gc_deal_number = "{number}" }
"""


def cli_with_rule(
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    config_text: str = PAID_RULE,
    **env: str,
) -> tuple[Run, Path]:
    """:func:`cli` with ``config_text`` in ``tmp_path/syncd.toml`` and a GetCourse key
    (a closed loopback port for its URL); returns the runner and the config's path."""
    path = tmp_path / "syncd.toml"
    path.write_text(config_text, encoding="utf-8")
    env = {
        "SYNCD_GETCOURSE__BASE_URL": "http://127.0.0.1:9",
        "SYNCD_GETCOURSE__API_KEY": "k",
        **env,
    }
    return cli(db_url, monkeypatch, capsys, config=path, **env), path
