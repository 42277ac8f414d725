"""SPEC §2: lookup order, env overrides, credentials, durations, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from syncd.config import Settings, load, parse_duration
from syncd.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("2h", 7200),
        ("3d", 259200),
        ("1h30m", 5400),
        ("0", 0),
        (" 5S ", 5),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "-5s", "3x", "1.5h", "h", "10m 5s", "5s10"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load(env={}).path is None  # nothing anywhere: built-in defaults
    write(tmp_path / "syncd.toml", "[http]\nport = 1001\n")
    assert load(env={}).settings.http.port == 1001
    named = write(tmp_path / "env.toml", "[http]\nport = 1002\n")
    assert load(env={"SYNCD_CONFIG": str(named)}).settings.http.port == 1002
    explicit = write(tmp_path / "explicit.toml", "[http]\nport = 1003\n")
    assert load(explicit, env={"SYNCD_CONFIG": str(named)}).settings.http.port == 1003
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "missing.toml", env={})


def test_env_overrides_nested_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[getcourse.poll]\ninterval = "10m"\n')
    env = {
        "SYNCD_GETCOURSE__POLL__INTERVAL": "30s",
        "SYNCD_GETCOURSE__POLL__EXPORTS": "deals, users",
        "SYNCD_GETCOURSE__POLL__SINCE": "2025-02-03",
        "SYNCD_HTTP__PORT": "9000",
        "SYNCD_DATABASE__AUTO_MIGRATE": "false",
        "SYNCD_SALEBOT__API_KEY": "from-env",
        "SYNCD_REQUIRE_PG": "1",  # not an override: no "__"
    }
    settings = load(path, env=env).settings
    assert settings.getcourse.poll.interval == timedelta(seconds=30)
    assert settings.getcourse.poll.exports == ["deals", "users"]
    assert settings.getcourse.poll.since == date(2025, 2, 3)
    assert settings.http.port == 9000
    assert settings.database.auto_migrate is False
    assert settings.salebot.api_key == "from-env"


def test_credentials_directory_and_inline_warning(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "getcourse-api-key", "gc-secret\n")
    write(creds / "salebot-api-key", "sb-secret")
    write(creds / "webhook-token", "tok")
    path = write(tmp_path / "c.toml", '[salebot]\napi_key = "inline"\n')
    loaded = load(path, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert loaded.settings.getcourse.api_key == "gc-secret"
    assert loaded.settings.salebot.api_key == "sb-secret"
    assert loaded.settings.http.token == "tok"
    assert any("salebot.api_key" in w and "inline" in w for w in loaded.warnings)
    overridden = load(path, env={"CREDENTIALS_DIRECTORY": str(creds), "SYNCD_HTTP__TOKEN": "e"})
    assert overridden.settings.http.token == "e"  # the environment wins


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ("[http]\nprot = 1\n", {}, "http.prot"),
        ("[http]\nport = 'eighty'\n", {}, "http.port"),
        ("[http]\nport = 70000\n", {}, "http.port"),
        ("[identity]\non_conflict = 'merge'\n", {}, "identity.on_conflict"),
        ("[delivery]\nmax_age = '3 days'\n", {}, "delivery.max_age"),
        ("[database]\nurl = 'mysql://x'\n", {}, "database.url"),
        ("[getcourse.poll]\nexports = ['orders']\n", {}, "getcourse.poll.exports.0"),
        ("", {"SYNCD_DELIVERY__MAX_ATTEMPTS": "many"}, "delivery.max_attempts"),
        ("", {"SYNCD_NOPE__X": "1"}, "nope"),
        ("[[rules]]\nevent = 'Deal Paid'\naction = 'callback'\n", {}, "rules.0.event"),
    ],
)
def test_bad_settings_name_the_key(
    tmp_path: Path, text: str, env: dict[str, str], key: str
) -> None:
    path = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as caught:
        load(path, env=env)
    assert caught.value.key == key


def test_secret_values_never_echoed(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[http]\ntoken = 12345678\n")
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    assert "12345678" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("[http]\nport = 'x'\n", "syncd: config error: http.port:"),
        ("[http\n", "is not valid TOML"),
    ],
)
def test_cli_stops_with_one_line(tmp_path: Path, text: str, expect: str) -> None:
    path = write(tmp_path / "c.toml", text)
    done = subprocess.run(
        [sys.executable, "-m", "syncd.cli", "--config", str(path), "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert expect in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_the_example_config_loads_and_its_commented_rules_compile() -> None:
    import tomllib

    from syncd.rules import compile_rules

    example = Path(__file__).parent.parent / "config.example.toml"
    assert load(example, env={}).settings.http.port == 8787
    text = example.read_text(encoding="utf-8")
    block = text[text.index("# A new GetCourse user") :]
    toml = "\n".join(
        line[2:]
        if line.startswith("# ")
        and line[2:3] in ("[", "e", "a", "m", "v", "w", "f", "o", "c", "r", "g")
        else ""
        for line in block.splitlines()
    )
    rules = compile_rules(Settings.model_validate(tomllib.loads(toml)).rules)
    assert [r.event for r in rules] == [
        "user.created",
        "deal.created",
        "deal.paid",
        "group.joined",
        "deal.status_changed",
        "bot.want_course",
        "bot.tag",
    ]
