"""The identity rules of SPEC §4, on plain values.

A link claims up to three keys for one person: an email, a Telegram id and a Salebot
client id (within one Salebot project). :func:`normalise_link` turns outside input into a
:class:`LinkClaim` or raises :class:`~syncd.errors.InvalidInput` with the stable error
code. :func:`decide` looks at the identities that already hold any of the keys and says
what happens: ``created``, ``linked``, ``unchanged`` or ``conflict`` — and, for the first
three and for ``replace`` mode, the new state of every identity it touches. The store
applies that plan; this module does no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Literal

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from syncd.errors import InvalidInput

MAX_ID = 2**63 - 1
_PLACEHOLDER = re.compile(r"#\{[^}]*\}|\{[^}]*\}")
_DIGITS = re.compile(r"[0-9]+")

Status = Literal["created", "linked", "unchanged", "conflict"]
OnConflict = Literal["reject", "replace"]


def is_placeholder(value: str) -> bool:
    """A Salebot ``#{var}`` or GetCourse ``{object.x}`` that was never substituted."""
    return bool(_PLACEHOLDER.search(value))


def normalise_email(value: object) -> str:
    """Trimmed, lower-cased and validated, or :class:`InvalidInput` ``invalid_email``."""
    if not isinstance(value, str):
        raise InvalidInput("invalid_email", "email must be a string")
    return _normalise_email(value)


#: A plain address: dot-atoms of common characters, ASCII host names, a letters-only TLD.
_PLAIN_EMAIL = re.compile(
    r"[a-z0-9_%+-]+(?:\.[a-z0-9_%+-]+)*@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
)


def _plain_email(text: str) -> str | None:
    """``text`` lower-cased when it is a plain address email-validator accepts unchanged.

    email-validator costs ~30 µs an address, which was a third of a backfill whose buyers
    are all new. Anything less plain (quotes, Unicode, ``xn--`` hosts, reserved names, odd
    lengths) returns None and goes to email-validator; a test holds the two to the same
    answers.
    """
    if not text.isascii() or len(text) > 254:
        return None
    lowered = text.lower()
    if not _PLAIN_EMAIL.fullmatch(lowered):
        return None
    local, _, domain = lowered.partition("@")
    if len(local) > 64 or "--" in domain or domain.rsplit(".", 1)[1] in SPECIAL_USE_DOMAIN_NAMES:
        return None
    return lowered


@lru_cache(maxsize=65536)  # an export repeats one person's email on every order
def _normalise_email(value: str) -> str:
    text = value.strip()
    if is_placeholder(text):
        raise InvalidInput("invalid_email", "email is an unsubstituted variable")
    plain = _plain_email(text)
    if plain is not None:
        return plain
    try:
        checked = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput("invalid_email", f"email is not valid: {exc}") from None
    return checked.normalized.lower()


def normalise_id(value: object, name: str) -> int:
    """A positive 64-bit integer from an int or a string of digits."""
    code = f"invalid_{name}"
    if isinstance(value, bool):
        raise InvalidInput(code, f"{name} must be a positive integer, not a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if is_placeholder(text):
            raise InvalidInput(code, f"{name} is an unsubstituted variable")
        if not _DIGITS.fullmatch(text) or len(text) > 19:
            raise InvalidInput(code, f"{name} must be a positive integer")
        number = int(text)
    else:
        raise InvalidInput(code, f"{name} must be a positive integer")
    if not 0 < number <= MAX_ID:
        raise InvalidInput(code, f"{name} must be between 1 and {MAX_ID}")
    return number


@dataclass(frozen=True, slots=True)
class LinkClaim:
    """A normalised link: an email and at least one of telegram_id / client_id."""

    email: str
    telegram_id: int | None
    project_id: int
    client_id: int | None


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def normalise_link(body: Mapping[str, object], default_project_id: int) -> LinkClaim:
    """Validate a link body (strings or numbers) into a :class:`LinkClaim`."""
    email = body.get("email")
    if not _present(email):
        raise InvalidInput("missing_email", "email is required")
    client = body.get("client_id")
    if not _present(client):
        client = body.get("sb_id")
    telegram = body.get("telegram_id")
    if not _present(telegram) and not _present(client):
        raise InvalidInput("missing_key", "telegram_id or client_id (sb_id) is required")
    project = body.get("project_id")
    return LinkClaim(
        email=normalise_email(email),
        telegram_id=normalise_id(telegram, "telegram_id") if _present(telegram) else None,
        project_id=normalise_id(project, "project_id") if _present(project) else default_project_id,
        client_id=normalise_id(client, "client_id") if _present(client) else None,
    )


@dataclass(frozen=True, slots=True)
class Person:
    """The keys of one identity. ``id`` is None for one not stored yet.

    ``clients`` maps a Salebot project id to that person's client id in it.
    """

    id: int | None
    email: str
    telegram_id: int | None = None
    gc_user_id: int | None = None
    clients: Mapping[int, int] = field(default_factory=dict)

    def with_id(self, id: int | None) -> Person:
        """This person under another id (``dataclasses.replace`` costs several times
        more, and a link batch makes a few per link)."""
        return Person(id, self.email, self.telegram_id, self.gc_user_id, self.clients)

    def keys(self) -> dict[str, object]:
        """The keys as a JSON-ready dict (for the change log)."""
        return {
            "email": self.email,
            "telegram_id": self.telegram_id,
            "gc_user_id": self.gc_user_id,
            "salebot_clients": [
                {"project_id": project, "client_id": client}
                for project, client in sorted(self.clients.items())
            ],
        }


@dataclass(frozen=True, slots=True)
class Holders:
    """The identities that already hold the claim's email, Telegram id and client id."""

    by_email: Person | None = None
    by_telegram: Person | None = None
    by_client: Person | None = None

    def distinct(self) -> list[Person]:
        seen: dict[int | None, Person] = {}
        for person in (self.by_email, self.by_telegram, self.by_client):
            if person is not None:
                seen.setdefault(person.id, person)
        return list(seen.values())


@dataclass(frozen=True, slots=True)
class Change:
    """One identity's state before (None: created) and after a link."""

    before: Person | None
    after: Person


@dataclass(frozen=True, slots=True)
class Decision:
    """What a link does. ``changes`` lists identities that lose keys before the one that gains."""

    status: Status
    changes: tuple[Change, ...] = ()
    reason: str = ""
    holders: tuple[int, ...] = ()

    @property
    def target(self) -> Change | None:
        return self.changes[-1] if self.changes else None


def _conflicts(claim: LinkClaim, holder: Person) -> list[str]:
    reasons = []
    if holder.email != claim.email:
        reasons.append(f"identity {holder.id} already has another email")
    if claim.telegram_id is not None and holder.telegram_id not in (None, claim.telegram_id):
        reasons.append(f"identity {holder.id} already has another telegram_id")
    held = holder.clients.get(claim.project_id)
    if claim.client_id is not None and held not in (None, claim.client_id):
        reasons.append(
            f"identity {holder.id} already has another client_id in project {claim.project_id}"
        )
    return reasons


def _claimed(claim: LinkClaim, person: Person) -> Person:
    """``person`` with the claim's keys filled in."""
    clients = dict(person.clients)
    if claim.client_id is not None:
        clients[claim.project_id] = claim.client_id
    telegram_id = claim.telegram_id if claim.telegram_id is not None else person.telegram_id
    return Person(person.id, person.email, telegram_id, person.gc_user_id, clients)


def decide(claim: LinkClaim, holders: Holders, on_conflict: OnConflict) -> Decision:
    """Apply SPEC §4 to one claim given who holds its keys now."""
    found = holders.distinct()
    if not found:
        return Decision("created", (Change(None, _claimed(claim, Person(None, claim.email))),))
    reasons = [reason for holder in found for reason in _conflicts(claim, holder)]
    if len(found) > 1 and not reasons:
        reasons.append("the keys belong to different identities")
    if not reasons:
        (holder,) = found
        after = _claimed(claim, holder)
        if after == holder:
            return Decision("unchanged", (Change(holder, holder),))
        return Decision("linked", (Change(holder, after),))
    ids = tuple(sorted(holder.id for holder in found if holder.id is not None))
    reason = "; ".join(dict.fromkeys(reasons))
    if on_conflict == "reject":
        return Decision("conflict", reason=reason, holders=ids)
    return _replace(claim, holders, found, reason, ids)


def _replace(
    claim: LinkClaim, holders: Holders, found: list[Person], reason: str, ids: tuple[int, ...]
) -> Decision:
    """``on_conflict = "replace"``: the keys move to the identity of the claimed email."""
    target = holders.by_email
    changes: list[Change] = []
    for loser in found:
        if loser is target:
            continue
        clients = dict(loser.clients)
        if claim.client_id is not None and clients.get(claim.project_id) == claim.client_id:
            del clients[claim.project_id]
        telegram = None if loser.telegram_id == claim.telegram_id else loser.telegram_id
        after = replace(loser, telegram_id=telegram, clients=clients)
        if after != loser:
            changes.append(Change(loser, after))
    base = target if target is not None else Person(None, claim.email)
    changes.append(Change(target, _claimed(claim, base)))
    status: Status = "created" if target is None else "linked"
    return Decision(status, tuple(changes), reason=reason, holders=ids)
