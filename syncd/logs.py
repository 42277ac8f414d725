"""Logging: loguru, human lines on a terminal, one JSON object a line otherwise (journald).

Nothing secret and no full email reaches a line: callers pass emails through
:func:`mask_email`, and :func:`redact` strips anything that looks like a key-bearing URL
or a token from messages that quote outside text.
"""

from __future__ import annotations

import json
import re
import sys
from typing import TYPE_CHECKING, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

HUMAN = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "{message} <dim>{extra}</dim>"
)
_EMAILISH = re.compile(r"([^\s@/:?&=\"']+)@([^\s@/:?&=\"']+)")
_SALEBOT_KEY = re.compile(r"(?<!/pl)(/api/)[^/\s?]+(/)")  # not GetCourse's /pl/api/…
_SECRET_PARAM = re.compile(r"((?:key|token|api_key)=)[^&\s\"']+", re.IGNORECASE)


def mask_email(email: str | None) -> str:
    """``anna@school.ru`` → ``a***@school.ru``."""
    if not email:
        return ""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def redact(text: str) -> str:
    """Mask emails, Salebot keys in URL paths and ``key=``/``token=`` values in ``text``."""
    text = _SALEBOT_KEY.sub(r"\1***\2", text)
    text = _SECRET_PARAM.sub(r"\1***", text)
    return _EMAILISH.sub(lambda m: mask_email(m.group(0)), text)


def _json_line(record: Record) -> str:
    """One compact JSON object: time, level, message, then the bound fields."""
    line = {
        "ts": record["time"].isoformat(timespec="milliseconds"),
        "level": record["level"].name.lower(),
        "msg": record["message"],
        **{k: v for k, v in record["extra"].items() if k != "_json"},
    }
    if record["exception"] is not None:
        line["exception"] = repr(record["exception"].value)
    record["extra"]["_json"] = json.dumps(line, ensure_ascii=False, default=str)
    return "{extra[_json]}\n"


def setup(level: str = "info", fmt: str = "auto", sink: TextIO | None = None) -> None:
    """Configure the one loguru sink of the process."""
    out = sink or sys.stderr
    human = fmt == "human" or (fmt == "auto" and out.isatty())
    logger.remove()
    if human:
        logger.add(out, level=level.upper(), format=HUMAN, colorize=out.isatty())
    else:
        logger.add(out, level=level.upper(), format=_json_line)
