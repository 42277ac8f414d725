"""``[[rules]]``: what a GetCourse event makes the bot do (SPEC §2, §6).

A rule matches an event kind and, optionally, field equality (``where``). Its ``message``
and ``variables`` are templates with ``{field}`` placeholders (``{{``/``}}`` for literal
braces), filled from the event's data by plain substitution — no ``eval``, no Jinja, no
attribute access. Every placeholder must be a canonical field or listed in the rule's
``fields``: :func:`compile_rules` checks that at start-up and names the rule otherwise.

Addressing (:meth:`Rule.delivery`): ``callback`` goes by the client id of the configured
Salebot project, else ``tg_callback`` by Telegram id and ``salebot.bot_name``;
``message`` and ``save_variables`` need the client id. With no usable address the
event waits for a link.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from syncd.config import Rule as RuleSettings
from syncd.errors import ConfigError
from syncd.events import CANONICAL_FIELDS
from syncd.store.outbox import NewDelivery

RESERVED_VARIABLES = frozenset({"client_id", "message", "user_id", "group_id", "variables"})
_FORMATTER = string.Formatter()

Template = tuple[tuple[str, str | None], ...]  # (literal text, field or None)


def _parse(template: str, where: str, label: str) -> Template:
    parts = []
    try:
        for literal, name, spec, conversion in _FORMATTER.parse(template):
            if name is not None and (spec or conversion or not name.isidentifier()):
                raise ValueError(f"{{{name}}} is not a plain {{field}} placeholder")
            parts.append((literal, name))
    except ValueError as exc:
        raise ConfigError(where, f"{label}: bad template {template!r}: {exc}") from None
    return tuple(parts)


def _fields(template: Template) -> set[str]:
    return {name for _, name in template if name is not None}


def _fill(template: Template, data: Mapping[str, Any]) -> str:
    return "".join(literal + (_text(data[name]) if name else "") for literal, name in template)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


@dataclass(frozen=True, slots=True)
class Rendered:
    message: str
    variables: dict[str, str]


@dataclass(frozen=True, slots=True)
class Rule:
    index: int
    event: str
    action: str
    message: Template
    variables: tuple[tuple[str, Template], ...]
    where: tuple[tuple[str, str], ...]
    needs: frozenset[str]

    @property
    def name(self) -> str:
        return f"rules[{self.index}] ({self.event} → {self.action})"

    def matches(self, kind: str, data: Mapping[str, Any]) -> bool:
        return kind == self.event and all(
            _text(data.get(field, "")) == value for field, value in self.where
        )

    def render(self, data: Mapping[str, Any]) -> Rendered | str:
        """The filled templates, or why not (a value the rule needs is missing)."""
        missing = sorted(f for f in self.needs if data.get(f) in (None, ""))
        if missing:
            return f"{self.name}: no value for {', '.join(missing)}"
        return Rendered(
            _fill(self.message, data), {name: _fill(t, data) for name, t in self.variables}
        )

    def delivery(
        self,
        rendered: Rendered,
        *,
        client_id: int | None,
        telegram_id: int | None,
        bot_name: str,
    ) -> tuple[str, dict[str, Any]] | None:
        """(action, payload) of the Salebot call, or None when the person has no address."""
        if self.action == "callback":
            if client_id is not None:
                return "callback", {
                    "client_id": client_id, "message": rendered.message, **rendered.variables
                }  # fmt: skip
            if telegram_id is not None:
                return "tg_callback", {
                    "user_id": telegram_id,
                    "group_id": bot_name,
                    "message": rendered.message,
                    **rendered.variables,
                }
            return None
        if client_id is None:
            return None
        if self.action == "message":
            return "message", {"client_id": client_id, "message": rendered.message}
        return "save_variables", {"client_id": client_id, "variables": rendered.variables}

    def new_delivery(
        self, event_id: int, identity_id: int | None, action: str, payload: dict[str, Any]
    ) -> NewDelivery:
        return NewDelivery(
            target="salebot",
            action=action,
            payload=payload,
            identity_id=identity_id,
            dedupe_key=f"event:{event_id}:rule:{self.index}",
        )


def compile_rules(rules: Sequence[RuleSettings]) -> tuple[Rule, ...]:
    """Check and prepare ``[[rules]]``; a problem is a :class:`ConfigError` naming the rule."""
    compiled = []
    for index, settings in enumerate(rules):
        where = f"rules.{index}"
        label = f"rule ({settings.event} → {settings.action})"
        if settings.action in ("callback", "message") and not settings.message:
            raise ConfigError(f"{where}.message", f"{label} needs a message")
        if settings.action == "save_variables" and not settings.variables:
            raise ConfigError(f"{where}.variables", f"{label} needs variables")
        reserved = RESERVED_VARIABLES & set(settings.variables)
        if reserved:
            raise ConfigError(
                f"{where}.variables", f"{label}: {', '.join(sorted(reserved))} is reserved"
            )
        message = _parse(settings.message, f"{where}.message", label)
        variables = tuple(
            (name, _parse(value, f"{where}.variables.{name}", label))
            for name, value in settings.variables.items()
        )
        needs = _fields(message).union(*(_fields(t) for _, t in variables))
        known = CANONICAL_FIELDS | set(settings.fields)
        unknown = sorted((needs | set(settings.where)) - known)
        if unknown:
            raise ConfigError(
                where,
                f"{label}: unknown field {', '.join('{' + u + '}' for u in unknown)} "
                "(a canonical field, or list it in the rule's fields = [...])",
            )
        compiled.append(
            Rule(
                index=index,
                event=settings.event,
                action=settings.action,
                message=message,
                variables=variables,
                where=tuple(sorted(settings.where.items())),
                needs=frozenset(needs),
            )
        )
    return tuple(compiled)
