"""Settings: one TOML file, environment overrides and systemd credentials.

Where the file is: ``--config PATH``, else ``$SYNCD_CONFIG``, else ``./syncd.toml``, else
``/etc/syncd/syncd.toml``. With none of them present the built-in defaults are used.

Precedence, lowest first: built-in defaults < the TOML file < secrets in
``$CREDENTIALS_DIRECTORY`` (``getcourse-api-key``, ``salebot-api-key``, ``webhook-token``,
``webhook-token-previous`` — one token a line —, ``database-url``; an empty file of the
last two counts as absent) < environment variables ``SYNCD_<SECTION>__<KEY>``
(``SYNCD_GETCOURSE__POLL__INTERVAL``).

Every problem becomes one :class:`~syncd.errors.ConfigError` naming the dotted key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from syncd.errors import ConfigError

DEFAULT_PATHS = (Path("syncd.toml"), Path("/etc/syncd/syncd.toml"))
ENV_PREFIX = "SYNCD_"
#: credential file name -> (section, key)
CREDENTIALS = {
    "getcourse-api-key": ("getcourse", "api_key"),
    "salebot-api-key": ("salebot", "api_key"),
    "webhook-token": ("http", "token"),
    "webhook-token-previous": ("http", "previous_tokens"),
    "database-url": ("database", "url"),
}
#: credentials whose empty file means "not set": keep the TOML (or the default) value
OPTIONAL_CREDENTIALS = frozenset({"webhook-token-previous", "database-url"})

_DURATION_PART = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> timedelta:
    """``"30s"``, ``"10m"``, ``"2h"``, ``"3d"``, ``"1h30m"`` or ``"0"`` → timedelta."""
    if isinstance(value, timedelta):
        return value
    text = str(value).strip().lower()
    if text == "0":
        return timedelta(0)
    pos, seconds = 0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        seconds += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {value!r}: write e.g. 30s, 10m, 2h, 3d (or 0 for off)")
    return timedelta(seconds=seconds)


def _split_list(value: object) -> object:
    """Environment values for lists may be written ``deals,payments``."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Positive64 = Annotated[int, Field(gt=0, lt=2**63)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatabaseSettings(_Section):
    url: str = "sqlite:///./syncd.db"
    auto_migrate: bool = True
    #: SQLite: "full" fsyncs every commit before a 2xx (survives a power loss); "normal"
    #: survives a crash of the process only, for more speed. PostgreSQL: its own settings.
    durability: Literal["full", "normal"] = "full"

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = value.split(":", 1)[0]
        if not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    token: str = ""
    #: still accepted beside ``token`` while URLs are being rotated (docs/install.md)
    previous_tokens: Annotated[list[str], BeforeValidator(_split_list)] = Field(
        default_factory=list
    )
    #: when set, ``GET /metrics`` needs it (same transports as /v1)
    metrics_token: str = ""
    #: close a connection with no complete request head by then, or a body still coming
    header_timeout: Duration = timedelta(seconds=10)
    body_timeout: Duration = timedelta(seconds=30)
    #: above it, new connections are refused at once (a 503, then closed)
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    max_body_bytes: int = Field(default=65536, ge=256, le=16 * 1024 * 1024)

    @field_validator("header_timeout", "body_timeout")
    @classmethod
    def _timeout_set(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be at least 1s")
        return value


class IdentitySettings(_Section):
    on_conflict: Literal["reject", "replace"] = "reject"


class PollSettings(_Section):
    interval: Duration = timedelta(minutes=10)
    exports: Annotated[
        list[Literal["users", "deals", "payments", "groups"]], BeforeValidator(_split_list)
    ] = Field(default_factory=lambda: ["deals", "payments"])  # type: ignore[arg-type]
    groups: Annotated[list[Positive64], BeforeValidator(_split_list)] = Field(default_factory=list)
    since: date = date(2024, 1, 1)


class GetCourseSettings(_Section):
    account: str = "myschool"
    base_url: str = ""
    api_key: str = ""
    telegram_id_field: str = Field(default="telegram_id", min_length=1)
    client_id_field: str = Field(default="sb_294495_id", min_length=1)
    create_users: bool = True
    poll: PollSettings = Field(default_factory=PollSettings)

    @property
    def url(self) -> str:
        """Base URL of the account: ``base_url`` or ``https://{account}.getcourse.ru``."""
        return (self.base_url or f"https://{self.account}.getcourse.ru").rstrip("/")


class SalebotSettings(_Section):
    base_url: str = "https://chatter.salebot.pro"
    api_key: str = ""
    project_id: Positive64 = 294495
    bot_name: str = "myschool_bot"
    rate_per_second: float = Field(default=10, ge=0)


class DeliverySettings(_Section):
    max_attempts: int = Field(default=12, ge=1, le=1000)
    max_age: Duration = timedelta(days=3)
    first_retry: Duration = timedelta(seconds=5)
    max_backoff: Duration = timedelta(hours=1)
    wait_for_link: Duration = timedelta(days=7)
    #: older events are history: stored, no call (SPEC §11); 0 switches the check off
    max_event_age: Duration = timedelta(days=2)
    concurrency: int = Field(default=16, ge=1, le=256)
    lease: Duration = timedelta(seconds=60)

    @field_validator("lease")
    @classmethod
    def _lease_long_enough(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be at least 1s (longer than one outgoing call)")
        return value


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "human", "json"] = "auto"


class Rule(_Section):
    event: str = Field(pattern=r"^[a-z0-9_.]+$")
    action: Literal["callback", "message", "save_variables", "gc_update_user", "gc_create_deal"]
    message: str = ""
    variables: dict[str, str] = Field(default_factory=dict)
    where: dict[str, str] = Field(default_factory=dict)
    fields: list[str] = Field(default_factory=list)
    # GetCourse actions (SPEC §10): templates like ``message``
    addfields: dict[str, str] = Field(default_factory=dict)
    groups: list[str | tuple[str, str]] = Field(default_factory=list)
    offer_code: str = ""
    offer_id: str = ""
    product_title: str = ""
    cost: str = ""
    status: str = ""
    comment: str = ""
    reply: str = ""


class Settings(_Section):
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    getcourse: GetCourseSettings = Field(default_factory=GetCourseSettings)
    salebot: SalebotSettings = Field(default_factory=SalebotSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    log: LogSettings = Field(default_factory=LogSettings)
    rules: list[Rule] = Field(default_factory=list)


class Loaded(BaseModel):
    """What :func:`load` found: the settings, the file used, warnings to log."""

    model_config = ConfigDict(frozen=True)
    settings: Settings
    path: Path | None
    warnings: tuple[str, ...] = ()


def find_config(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    """The lookup order of SPEC §2. An explicitly named file must exist."""
    named = explicit or env.get("SYNCD_CONFIG")
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError("", f"config file not found: {path}")
        return path
    return next((path for path in DEFAULT_PATHS if path.is_file()), None)


def load(
    explicit: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Loaded:
    """Read, merge and validate the settings; raise :class:`ConfigError` naming the key."""
    env = os.environ if env is None else env
    path = find_config(explicit, env)
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("", f"cannot read {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("", f"{path} is not valid TOML: {exc}") from exc
    warnings = [
        f"{section}.{key} is written inline in {path}; prefer $CREDENTIALS_DIRECTORY/{name}"
        for name, (section, key) in CREDENTIALS.items()
        if raw.get(section, {}).get(key)
        if isinstance(raw.get(section), dict)
        if name != "database-url"
    ]
    database = raw.get("database")
    if isinstance(database, dict) and _has_password(database.get("url")):
        warnings.append(
            f"database.url carries a password inline in {path}; "
            "prefer $CREDENTIALS_DIRECTORY/database-url or SYNCD_DATABASE__URL"
        )
    _apply_credentials(raw, env)
    _apply_env(raw, env)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc) from None
    return Loaded(settings=settings, path=path, warnings=tuple(warnings))


def _apply_credentials(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return
    for name, (section, key) in CREDENTIALS.items():
        file = Path(directory) / name
        if file.is_file():
            try:
                value = file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"{section}.{key}", f"cannot read credential {name}: {exc}"
                ) from None
            if name in OPTIONAL_CREDENTIALS and not value:
                continue
            if key == "previous_tokens":
                tokens: Any = [line.strip() for line in value.splitlines() if line.strip()]
                _section(raw, [section], f"{section}.{key}")[key] = tokens
                continue
            _section(raw, [section], f"{section}.{key}")[key] = value


def _has_password(url: object) -> bool:
    """Does a database URL carry a password (``scheme://user:PASSWORD@host``)?"""
    if not isinstance(url, str):
        return False
    _, _, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    return bool(at) and ":" in userinfo


def _shown_url(url: str) -> str:
    """A database URL for a message: the password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not (sep and at and ":" in userinfo):
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if len(parts) < 2 or not all(parts):
            raise ConfigError(name, "write environment overrides as SYNCD_<SECTION>__<KEY>")
        dotted = ".".join(parts)
        _section(raw, parts[:-1], dotted)[parts[-1]] = value


def _section(raw: dict[str, Any], path: list[str], dotted: str) -> dict[str, Any]:
    node = raw
    for part in path:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(dotted, f"{part} is not a section")
    return node


def _config_error(exc: ValidationError) -> ConfigError:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        return ConfigError(key, "unknown setting (check the spelling against config.example.toml)")
    if kind == "missing":
        return ConfigError(key, "is required")
    message = str(first["msg"]).removeprefix("Value error, ")
    value = first.get("input")
    if key == "database.url" and isinstance(value, str):
        return ConfigError(key, f"{message} (got {_shown_url(value)!r})")
    secret = key.endswith(("api_key", "token")) or key.startswith("http.previous_tokens")
    shown = "" if secret or isinstance(value, dict) else f" (got {value!r})"
    return ConfigError(key, f"{message}{shown}")
