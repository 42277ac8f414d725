"""The database URL as a secret (issue 12, item 2): from ``$CREDENTIALS_DIRECTORY/database-url``
or ``SYNCD_DATABASE__URL``, shown by the unit and the install guide, never logged with
its password."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from syncd import config
from syncd.errors import ConfigError
from tests.daemon import TOKEN, Daemon

ROOT = Path(__file__).parent.parent
PASSWORD = "Pw-7f3kQz9"


def test_the_database_url_comes_from_its_credential(tmp_path: Path) -> None:
    toml = tmp_path / "syncd.toml"
    toml.write_text('[database]\nurl = "sqlite:///./from-toml.db"\n')
    creds = tmp_path / "creds"
    creds.mkdir()
    secret = f"postgresql://syncd:{PASSWORD}@db.internal:5432/syncd\n"
    (creds / "database-url").write_text(secret)
    loaded = config.load(toml, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert loaded.settings.database.url == secret.strip()
    assert not loaded.warnings
    # the environment still wins over a credential, as for every key
    env = {"CREDENTIALS_DIRECTORY": str(creds), "SYNCD_DATABASE__URL": "sqlite:///./env.db"}
    assert config.load(toml, env).settings.database.url == "sqlite:///./env.db"
    # an empty credential file leaves the TOML's value (SQLite installs keep the line)
    (creds / "database-url").write_text("")
    loaded = config.load(toml, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert loaded.settings.database.url == "sqlite:///./from-toml.db"


def test_a_password_in_the_toml_works_but_warns(tmp_path: Path) -> None:
    toml = tmp_path / "syncd.toml"
    toml.write_text(f'[database]\nurl = "postgresql://syncd:{PASSWORD}@h/db"\n')
    loaded = config.load(toml, {})
    assert loaded.settings.database.url.endswith("@h/db")
    (warning,) = loaded.warnings
    assert "database-url" in warning and PASSWORD not in warning
    toml.write_text('[database]\nurl = "postgresql://syncd@h/db"\n')  # no password: no warning
    assert not config.load(toml, {}).warnings


def test_a_bad_url_is_named_without_its_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(None, {"SYNCD_DATABASE__URL": f"mysql://syncd:{PASSWORD}@h/db"})
    assert "database.url" in str(caught.value) and "syncd:***@h/db" in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_the_unit_and_the_guide_show_both_new_credentials() -> None:
    unit = (ROOT / "systemd" / "syncd.service").read_text()
    guide = (ROOT / "docs" / "install.md").read_text()
    for name in ("database-url", "webhook-token-previous"):
        assert re.search(rf"^LoadCredential={name}:/etc/syncd/credentials/{name}$", unit, re.M)
        assert f"/etc/syncd/credentials/{name}" in guide


def _password_url(url: str) -> str:
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


@pytest.mark.postgres
def test_the_password_never_reaches_a_log_line(pg_url: str, tmp_path: Path) -> None:
    """A daemon at debug level, `syncd check`, `migrate`, `backup`, a database that
    refuses: no output carries the password (the test server trusts any password)."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "database-url").write_text(_password_url(pg_url))
    daemon = Daemon("", tmp_path, CREDENTIALS_DIRECTORY=str(creds), SYNCD_LOG__LEVEL="debug")
    daemon.env.pop("SYNCD_DATABASE__URL")
    daemon.start()
    outputs = []
    try:
        answer = httpx.post(
            f"{daemon.base_url}/v1/links",
            json={"email": "anna@school.ru", "telegram_id": 1},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert answer.status_code == 200
        for args in (("check",), ("migrate",), ("backup", "--output", str(tmp_path / "b.dump"))):
            done = daemon.cli(*args)
            assert done.returncode == 0, done.stderr
            outputs += [done.stdout, done.stderr]
        assert "syncd:***@" not in outputs[0] and "***@" in outputs[0]  # check names it masked
    finally:
        assert daemon.stop() == 0
    # a server that refuses: the error names the database, not the password
    (creds / "database-url").write_text(f"postgresql://syncd:{PASSWORD}@127.0.0.1:9/nowhere")
    refused = daemon.cli("check")
    assert refused.returncode == 1
    outputs += [refused.stdout, refused.stderr]
    started = daemon.cli("run")
    assert started.returncode == 1
    outputs += [started.stdout, started.stderr]
    logs = daemon.logs()
    assert "syncd ready" in logs and "link created" in logs  # the log is really there
    for text in (logs, *outputs):
        assert PASSWORD not in text
