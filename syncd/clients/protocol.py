"""How GetCourse answers, shared by its clients and by the event readers (``api/getcourse.md``).

A leaf module: it imports nothing of syncd but the error tree, so the clients (egress) and
:mod:`syncd.events` (the domain) can both use it without knowing each other.

- :func:`truthy`: GetCourse booleans come as ``true/false``, ``1/0`` or the strings
  ``"true"/"false"``;
- :func:`raise_for_error`: an answer whose ``success`` is not truthy, classified by its
  ``error_code`` and message.

Export errors (``Export``): 909 «Файл еще не создан» → :class:`ExportNotReady` (ask again);
905 → :class:`ExportBusy` (one export at a time, nothing was started); 903 «Слишком много
запросов» → :class:`BudgetSpent`: all three transient. Final (:class:`ExportFailed`, a
:class:`PermanentError` with a reason a person can act on): 901 bad key, 908 no filter,
913/914/918 bad status filter, 917 no API on the plan, «Файл не создан» (that export will
never be made: never poll it again). Anything else is permanent too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from syncd.errors import PermanentError, TransientError


def truthy(value: object) -> bool:
    """GetCourse booleans: true/false, 1/0, "true"/"false", "1"/"0"."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


class ExportNotReady(TransientError):
    """909: the file is not made yet; ask again later."""


class ExportBusy(TransientError):
    """905: another export of the account runs; nothing was started."""


class BudgetSpent(TransientError):
    """903: the account's export budget (100 requests per 2 hours) is spent."""


class ExportFailed(PermanentError):
    """A final export error: ``reason`` says what to fix (``None`` when GetCourse gave none)."""

    def __init__(self, message: str, code: int | None, reason: str | None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


#: Final export errors: code → what it means for the school (901, 908… are final too).
FINAL_REASONS = {
    913: "GetCourse refused the deal status filter",
    914: "GetCourse refused the status filter",
    917: "the account's plan has no export API",
    918: "GetCourse refused the payment status filter",
}
NOT_MADE = "файл не создан"  # «Файл не создан»: final, unlike 909 «Файл еще не создан»


def _code(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value) if isinstance(value, int | str) else None
    except ValueError:
        return None


def raise_for_error(data: Mapping[str, Any], what: str) -> None:
    """Nothing when ``success`` is truthy; else the classified error."""
    if truthy(data.get("success")):
        return
    message = str(data.get("error_message") or data.get("error") or "unknown error")
    lowered = message.lower().replace("ё", "е")
    code = _code(data.get("error_code"))
    if code == 909 or "еще не создан" in lowered:
        raise ExportNotReady(f"{what}: {message}")
    if code == 905:
        raise ExportBusy(f"{what}: {message}")
    if code == 903 or "слишком много запросов" in lowered:
        raise BudgetSpent(f"{what}: {message}")
    reason = FINAL_REASONS.get(code) if code is not None else None
    if reason is None and NOT_MADE in lowered:
        reason = "GetCourse could not make the file; this export will not be asked for again"
    prefix = f"{what}: error {code}: {message}" if code else f"{what}: {message}"
    raise ExportFailed(f"{prefix} — {reason}" if reason else prefix, code, reason)
