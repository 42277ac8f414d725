"""The one error tree of syncd.

::

    SyncdError
    ├── ConfigError            a setting is missing or wrong (names the key)
    ├── StoreError             the database cannot be used
    │   ├── StoreUnavailable   cannot connect / connection lost: answer 503, retry later
    │   └── SchemaNotReady     migrations are not at head
    ├── InvalidInput           bad input from outside (webhook body, CLI argument)
    └── DeliveryError          an outgoing call failed
        ├── TransientError     worth retrying (timeout, 5xx, 429, …), may carry retry_after
        └── PermanentError     retrying cannot help (bad key, unknown client, rejected import)

Driver and library errors are translated into these at the boundary
(``raise StoreUnavailable(...) from exc``); callers decide from the type, never by
matching message text.
"""

from __future__ import annotations


class SyncdError(Exception):
    """Root of every error syncd raises on purpose."""


class ConfigError(SyncdError):
    """A setting is missing or invalid; ``key`` is its dotted name (``delivery.max_age``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


class StoreError(SyncdError):
    """The store cannot do what was asked."""


class StoreUnavailable(StoreError):
    """The database cannot be reached; nothing was written."""


class SchemaNotReady(StoreError):
    """The database schema is not at the migration head."""


class InvalidInput(SyncdError):
    """Input from outside is not acceptable; ``code`` is the stable machine-readable code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class DeliveryError(SyncdError):
    """An outgoing call did not succeed."""


class TransientError(DeliveryError):
    """A failure that may succeed later; ``retry_after`` seconds when the peer said so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """A failure that no retry can fix."""
