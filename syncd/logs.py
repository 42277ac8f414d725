"""Logging: loguru, human lines on a terminal, one JSON object a line otherwise (journald).

Nothing secret and no full email reaches a line: callers pass emails through
:func:`mask_email`, and every line — message, bound fields and exception — goes through
:func:`redact` on its way out (emails, key-bearing URLs, ``key=``/``token=`` values,
passwords in database URLs). Exceptions are written as their type and a masked,
shortened message; loguru's ``diagnose`` (local variables in tracebacks: settings, SQL
parameters, request bodies) is off in both formats.

The standard-library loggers of the libraries (uvicorn, APScheduler, psycopg, asyncio,
``warnings``) are routed into the same sink by :class:`InterceptHandler`, so off a
terminal every line of the process is JSON.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

HUMAN = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "{extra[_msg]} <dim>{extra[_fields]}</dim>\n"
)
_EMAILISH = re.compile(r"([^\s@/:?&=\"']+)@([^\s@/:?&=\"']+)")
_SALEBOT_KEY = re.compile(r"(?<!/pl)(/api/)[^/\s?]+(/)")  # not GetCourse's /pl/api/…
_SECRET_PARAM = re.compile(r"((?:key|token|api_key|password)=)[^&\s\"']+", re.IGNORECASE)
#: ``scheme://user:password@host``: the password (SQLAlchemy and psycopg messages quote URLs)
_URL_PASSWORD = re.compile(r"(://[^/\s:@]*:)[^@\s/]*@")
#: The longest exception message written (SQLAlchemy's quote whole statements).
MAX_EXCEPTION_TEXT = 300
#: Library lines an unauthenticated client can cause at will (their beginnings): kept at
#: debug so nobody can flood the journal; ``syncd_http_connections_dropped_total`` counts
#: the invalid requests.
FLOODABLE = (
    "Invalid HTTP request received.",
    "Exceeded concurrency limit.",
    "Unsupported upgrade request.",
    "No supported WebSocket library detected.",
)
#: Library loggers and the least level of theirs that is written.
LIBRARY_LEVELS = {
    "uvicorn": logging.WARNING,  # its INFO lines repeat syncd's own start/stop lines
    "apscheduler": logging.WARNING,  # "Added job", "Running job" at INFO
    "psycopg": logging.WARNING,
    "asyncio": logging.WARNING,
    "sqlalchemy": logging.WARNING,
    "httpx": logging.WARNING,  # INFO: one line per call, URL (and Salebot key) included
    "alembic": logging.WARNING,  # "setup plugin …", "Running upgrade …" (migrate says it)
}
_INTERNAL = frozenset({"_json", "_msg", "_fields"})


def mask_email(email: str | None) -> str:
    """``anna@school.ru`` → ``a***@school.ru``."""
    if not email:
        return ""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def redact(text: str) -> str:
    """Mask emails, URL passwords, Salebot keys and ``key=``/``token=`` values in ``text``."""
    if "@" in text:
        text = _URL_PASSWORD.sub(r"\1***@", text)
    text = _SALEBOT_KEY.sub(r"\1***\2", text)
    text = _SECRET_PARAM.sub(r"\1***", text)
    if "@" in text:
        text = _EMAILISH.sub(lambda m: mask_email(m.group(0)), text)
    return text


def describe(exc: BaseException | None) -> str:
    """An exception as ``Type: masked message`` (shortened): never its arguments' repr."""
    if exc is None:
        return ""
    name = type(exc).__name__
    text = str(exc).strip()
    if not text:
        return name
    text = redact(text)
    if len(text) > MAX_EXCEPTION_TEXT:
        text = text[:MAX_EXCEPTION_TEXT] + "…"
    return f"{name}: {text}"


def _masked(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(str(value))


def _fields(record: Record) -> dict[str, object]:
    return {k: _masked(v) for k, v in record["extra"].items() if k not in _INTERNAL}


def _json_line(record: Record) -> str:
    """One compact JSON object: time, level, message, then the bound fields."""
    line: dict[str, Any] = {
        "ts": record["time"].isoformat(timespec="milliseconds"),
        "level": record["level"].name.lower(),
        "msg": redact(record["message"]),
        **_fields(record),
    }
    if record["exception"] is not None:
        line["exception"] = describe(record["exception"].value)
    record["extra"]["_json"] = json.dumps(line, ensure_ascii=False, default=str)
    return "{extra[_json]}\n"


def _human_line(record: Record) -> str:
    """The terminal line; an exception as its frames (no locals) and a masked last line."""
    extra = record["extra"]
    extra["_msg"] = redact(record["message"])
    fields = _fields(record)
    extra["_fields"] = str(fields) if fields else ""
    line = HUMAN
    exception = record["exception"]
    if exception is not None and exception.value is not None:
        frames = redact("".join(traceback.format_tb(exception.traceback or None)))
        extra["_traceback"] = f"Traceback (most recent call last):\n{frames}" if frames else ""
        extra["_exception"] = describe(exception.value)
        line += "{extra[_traceback]}{extra[_exception]}\n"
    return line


class InterceptHandler(logging.Handler):
    """Standard-library records into loguru: same sink, same format, same masking."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string: still one line
            message = str(record.msg)
        level: str | int
        if message.startswith(FLOODABLE):
            level = "DEBUG"
        else:
            try:
                level = logger.level(record.levelname).name
            except ValueError:
                level = record.levelno
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and message.startswith("Exception in ASGI application"):
            message = "unexpected error in a request"
        logger.opt(exception=exc).bind(logger=record.name).log(level, message)


def _route_standard_logging(level: str) -> None:
    """Every stdlib logger (and ``warnings``) into loguru, at the libraries' levels."""
    logging.basicConfig(handlers=[InterceptHandler()], level=level.upper(), force=True)
    for name, least in LIBRARY_LEVELS.items():
        library = logging.getLogger(name)
        library.setLevel(max(least, logging.getLevelNamesMapping()[level.upper()]))
        library.handlers.clear()  # uvicorn's dictConfig may have added its own
        library.propagate = True
    logging.captureWarnings(True)


def setup(level: str = "info", fmt: str = "auto", sink: TextIO | None = None) -> None:
    """Configure the one loguru sink of the process, and route stdlib logging into it."""
    out = sink or sys.stderr
    human = fmt == "human" or (fmt == "auto" and out.isatty())
    logger.remove()
    if human:
        logger.add(
            out,
            level=level.upper(),
            format=_human_line,
            colorize=out.isatty(),
            diagnose=False,
            backtrace=False,
        )
    else:
        logger.add(out, level=level.upper(), format=_json_line, diagnose=False, backtrace=False)
    _route_standard_logging(level)
