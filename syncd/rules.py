"""``[[rules]]``: what an event makes the bot or GetCourse do (SPEC §2, §6, §10).

A rule matches an event kind and, optionally, field equality (``where``). Its templates
(``message``, ``variables``, and for GetCourse actions ``addfields``, ``groups``, the deal
fields) have ``{field}`` placeholders (``{{``/``}}`` for literal braces), filled from the
event's data by plain substitution — no ``eval``, no Jinja, no attribute access. Every
placeholder must be a canonical field or listed in the rule's ``fields``:
:func:`compile_rules` checks that at start-up and names the rule otherwise.

:meth:`Rule.call` answers with plain values (:class:`Call`, or why there is none); the
store turns them into outbox rows. Addressing: ``callback`` goes by the client id of the
configured Salebot project, else ``tg_callback`` by Telegram id and ``salebot.bot_name``;
``message`` and ``save_variables`` need the client id; the GetCourse actions need an
email. Without what it needs the event waits for a link.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from syncd.config import Rule as RuleSettings
from syncd.errors import ConfigError
from syncd.events import CANONICAL_FIELDS

RESERVED_VARIABLES = frozenset({"client_id", "message", "user_id", "group_id", "variables"})
#: Variables a ``gc_create_deal`` reply carries to the bot.
REPLY_VARIABLES = ("gc_deal_id", "gc_deal_number", "gc_payment_link")
#: Known only once the event is stored: rendered after the insert (:func:`fill_event_id`).
LATE_FIELDS = frozenset({"event_id"})
SALEBOT_ACTIONS = frozenset({"callback", "message", "save_variables"})
GETCOURSE_ACTIONS = frozenset({"gc_update_user", "gc_create_deal"})
#: Private part of an outbox payload (never sent): what to do once the call succeeded.
META = "_syncd"
_FORMATTER = string.Formatter()
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

Template = tuple[tuple[str, str | None], ...]  # (literal text, field or None)
#: Why a rule made no call: a skip reason (``syncd_rule_skips_total{reason}``).
SkipReason = Literal["missing_value", "too_old", "no_address", "no_email", "no_reply_address"]


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
    return "".join(
        literal + (_text(data.get(name, "")) if name else "") for literal, name in template
    )


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rule's templates filled for one event."""

    message: str
    variables: dict[str, str]
    addfields: dict[str, str] = field(default_factory=dict)
    groups: list[str | list[str]] = field(default_factory=list)
    deal: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Call:
    """One outgoing call a rule asks for, as plain values (the store makes the row)."""

    target: Literal["salebot", "getcourse"]
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Skip:
    """A rule that made no call, and why (said on the event, in a log line, in a metric)."""

    rule: Rule
    reason: SkipReason
    detail: str

    def note(self) -> str:
        return f"{self.rule.name}: {self.reason}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Address:
    """How one person can be reached: Salebot keys and the email GetCourse knows them by."""

    client_id: int | None = None
    telegram_id: int | None = None
    email: str | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    index: int
    event: str
    action: str
    message: Template
    variables: tuple[tuple[str, Template], ...]
    where: tuple[tuple[str, str], ...]
    needs: frozenset[str]
    addfields: tuple[tuple[str, Template], ...] = ()
    groups: tuple[tuple[Template, Template | None], ...] = ()
    deal: tuple[tuple[str, Template], ...] = ()
    reply: str = ""

    @property
    def name(self) -> str:
        return f"rules[{self.index}] ({self.event} → {self.action})"

    @property
    def target(self) -> Literal["salebot", "getcourse"]:
        return "getcourse" if self.action in GETCOURSE_ACTIONS else "salebot"

    def matches(self, kind: str, data: Mapping[str, Any]) -> bool:
        return kind == self.event and all(
            _text(data.get(field, "")) == value for field, value in self.where
        )

    def render(self, data: Mapping[str, Any]) -> Rendered | Skip:
        """The filled templates, or why not (a value the rule needs is missing).

        Fields of :data:`LATE_FIELDS` may be absent: they are filled in after the insert.
        """
        missing = sorted(
            f for f in self.needs if data.get(f) in (None, "") and f not in LATE_FIELDS
        )
        if missing:
            return Skip(self, "missing_value", f"no value for {', '.join(missing)}")
        groups: list[str | list[str]] = []
        for name, until in self.groups:
            filled = _fill(name, data).strip()
            if not filled:
                continue
            groups.append([filled, _fill(until, data)] if until is not None else filled)
        return Rendered(
            _fill(self.message, data),
            {name: _fill(t, data) for name, t in self.variables},
            {title: _fill(t, data) for title, t in self.addfields},
            groups,
            {name: value for name, t in self.deal if (value := _fill(t, data).strip())},
        )

    def call(self, rendered: Rendered, to: Address, bot_name: str) -> Call | None:
        """The call, or None when the person lacks an address (or an email) for it yet."""
        if self.action == "callback":
            if to.client_id is not None:
                return Call(
                    "salebot",
                    "callback",
                    {"client_id": to.client_id, "message": rendered.message, **rendered.variables},
                )
            if to.telegram_id is not None:
                return Call(
                    "salebot",
                    "tg_callback",
                    {
                        "user_id": to.telegram_id,
                        "group_id": bot_name,
                        "message": rendered.message,
                        **rendered.variables,
                    },
                )
            return None
        if self.action in GETCOURSE_ACTIONS:
            return self._getcourse_call(rendered, to, bot_name) if to.email else None
        if to.client_id is None:
            return None
        if self.action == "message":
            return Call(
                "salebot", "message", {"client_id": to.client_id, "message": rendered.message}
            )
        return Call(
            "salebot",
            "save_variables",
            {"client_id": to.client_id, "variables": rendered.variables},
        )

    def _getcourse_call(self, rendered: Rendered, to: Address, bot_name: str) -> Call:
        user: dict[str, Any] = {"email": to.email}
        if rendered.addfields:
            user["addfields"] = rendered.addfields
        if rendered.groups:
            user["group_name"] = rendered.groups
        if self.action == "gc_update_user":
            return Call(
                "getcourse",
                "import_user",
                {"user": user, "system": {"refresh_if_exists": 1}},
            )
        payload: dict[str, Any] = {
            "user": user,
            "deal": rendered.deal,
            "system": {"refresh_if_exists": 1, "return_payment_link": 1, "return_deal_number": 1},
        }
        if self.reply:
            reply = reply_address(self.reply, to, bot_name)
            if reply is not None:
                payload[META] = {"reply": reply}
        return Call("getcourse", "import_deal", payload)

    def reply_possible(self, to: Address) -> bool:
        return not self.reply or to.client_id is not None or to.telegram_id is not None


def reply_address(message: str, to: Address, bot_name: str) -> dict[str, Any] | None:
    """The Salebot call a ``gc_create_deal`` reply makes, without its variables yet."""
    if to.client_id is not None:
        return {"action": "callback", "payload": {"client_id": to.client_id, "message": message}}
    if to.telegram_id is not None:
        return {
            "action": "tg_callback",
            "payload": {"user_id": to.telegram_id, "group_id": bot_name, "message": message},
        }
    return None


def reply_call(meta: Mapping[str, Any], result: object) -> Call | None:
    """The Salebot call that tells the bot its deal exists (``gc_create_deal``'s ``reply``).

    ``result`` is the deals import's ``result``: ``deal_id``, ``deal_number`` and, as
    asked, ``payment_link``. A value GetCourse did not return is sent empty.
    """
    reply = meta.get("reply")
    if not isinstance(reply, Mapping) or not isinstance(result, Mapping):
        return None
    action, payload = reply.get("action"), reply.get("payload")
    if action not in ("callback", "tg_callback") or not isinstance(payload, Mapping):
        return None
    answers = ("deal_id", "deal_number", "payment_link")
    variables = {
        name: "" if result.get(key) in (None, False) else _text(result.get(key))
        for name, key in zip(REPLY_VARIABLES, answers, strict=True)
    }
    return Call("salebot", action, {**payload, **variables})


def fill_event_id(rule: Rule, call: Call, data: Mapping[str, Any], event_id: int) -> Call:
    """``call`` rendered again now that the event's id is known (``{event_id}``)."""
    if "event_id" not in rule.needs:
        return call
    rendered = rule.render({**data, "event_id": event_id})
    assert isinstance(rendered, Rendered)
    payload = dict(call.payload)
    if call.target == "salebot":
        if "message" in payload:
            payload["message"] = rendered.message
        if "variables" in payload:
            payload["variables"] = rendered.variables
        elif rendered.variables:
            payload.update(rendered.variables)
        return Call(call.target, call.action, payload)
    user = dict(payload["user"])
    if rendered.addfields:
        user["addfields"] = rendered.addfields
    if rendered.groups:
        user["group_name"] = rendered.groups
    payload["user"] = user
    if "deal" in payload:
        payload["deal"] = rendered.deal
    return Call(call.target, call.action, payload)


_DEAL_FIELDS = {
    "offer_code": "offer_code",
    "offer_id": "offer_id",
    "product_title": "product_title",
    "cost": "deal_cost",
    "status": "deal_status",
    "comment": "deal_comment",
}


def _check_action(settings: RuleSettings, where: str, label: str) -> None:
    action = settings.action
    if action in ("callback", "message") and not settings.message:
        raise ConfigError(f"{where}.message", f"{label} needs a message")
    if action == "save_variables" and not settings.variables:
        raise ConfigError(f"{where}.variables", f"{label} needs variables")
    getcourse_keys = {
        "addfields": bool(settings.addfields),
        "groups": bool(settings.groups),
        **{key: bool(getattr(settings, key)) for key in (*_DEAL_FIELDS, "reply")},
    }
    if action in SALEBOT_ACTIONS:
        stray = sorted(key for key, present in getcourse_keys.items() if present)
        if stray:
            raise ConfigError(
                f"{where}.{stray[0]}", f"{label}: {', '.join(stray)} is for GetCourse actions"
            )
        return
    if settings.message or settings.variables:
        raise ConfigError(
            where, f"{label}: message/variables are for Salebot actions (use reply, addfields)"
        )
    if action == "gc_update_user":
        if not settings.addfields and not settings.groups:
            raise ConfigError(where, f"{label} needs addfields or groups")
        stray = sorted(k for k in (*_DEAL_FIELDS, "reply") if getattr(settings, k))
        if stray:
            raise ConfigError(f"{where}.{stray[0]}", f"{label}: {stray[0]} is for gc_create_deal")
        return
    # gc_create_deal: an offer code (+ cost), an offer id, or a product title (+ cost)
    chosen = [k for k in ("offer_code", "offer_id", "product_title") if getattr(settings, k)]
    if len(chosen) != 1:
        raise ConfigError(
            where, f"{label} needs exactly one of offer_code, offer_id or product_title"
        )
    if chosen[0] != "offer_id" and not settings.cost:
        raise ConfigError(f"{where}.cost", f"{label}: {chosen[0]} needs a cost")
    if settings.reply and not re.fullmatch(r"[^\s{}]{1,200}", settings.reply):
        raise ConfigError(f"{where}.reply", f"{label}: reply is a callback token, one word")


#: The kinds syncd's own sources produce (SPEC §6, §10); ``payment.*`` and ``bot.*`` too.
BUILT_IN_KINDS = (
    "user.created",
    "deal.created",
    "deal.paid",
    "deal.status_changed",
    "group.joined",
)


def unproduced_kinds(rules: Sequence[RuleSettings]) -> list[str]:
    """Warnings for rules about an event no built-in source produces (``deal.payed``).

    Not errors: a GetCourse process may call ``/v1/getcourse/events/{any.name}``.
    """
    warnings = []
    for index, settings in enumerate(rules):
        kind = settings.event
        if kind in BUILT_IN_KINDS or kind.startswith(("payment.", "bot.")):
            continue
        import difflib  # only for this hint: not loaded by a daemon whose rules are known

        close = difflib.get_close_matches(kind, BUILT_IN_KINDS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        warnings.append(
            f"rules.{index}: no built-in source produces {kind!r} ({hint}it fires only when a "
            f"GetCourse process calls /v1/getcourse/events/{kind})"
        )
    return warnings


def compile_rules(rules: Sequence[RuleSettings]) -> tuple[Rule, ...]:
    """Check and prepare ``[[rules]]``; a problem is a :class:`ConfigError` naming the rule."""
    compiled = []
    for index, settings in enumerate(rules):
        where = f"rules.{index}"
        label = f"rule ({settings.event} → {settings.action})"
        _check_action(settings, where, label)
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
        addfields = tuple(
            (title, _parse(value, f"{where}.addfields.{title}", label))
            for title, value in settings.addfields.items()
        )
        groups = []
        for n, group in enumerate(settings.groups):
            name, until = (group, None) if isinstance(group, str) else group
            if until is not None and "{" not in until and not _DATE.match(until):
                raise ConfigError(
                    f"{where}.groups.{n}", f"{label}: access until {until!r} is not YYYY-MM-DD"
                )
            groups.append(
                (
                    _parse(name, f"{where}.groups.{n}", label),
                    _parse(until, f"{where}.groups.{n}", label) if until is not None else None,
                )
            )
        deal = tuple(
            (api_name, _parse(getattr(settings, key), f"{where}.{key}", label))
            for key, api_name in _DEAL_FIELDS.items()
            if getattr(settings, key)
        )
        templates = [message, *(t for _, t in variables), *(t for _, t in addfields)]
        templates += [t for pair in groups for t in pair if t is not None]
        templates += [t for _, t in deal]
        needs = set().union(*(_fields(t) for t in templates))
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
                addfields=addfields,
                groups=tuple(groups),
                deal=deal,
                reply=settings.reply,
            )
        )
    return tuple(compiled)
