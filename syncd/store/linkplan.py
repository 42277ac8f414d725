"""Planning a batch of links in memory, so the store can write it in a few statements.

:class:`Plan` starts from the identities that hold any key of the batch, decides each
claim in order with :func:`syncd.identity.decide` against the state so far (a later link
sees the earlier ones), and gives identities created in the batch temporary negative
ids. The store then writes only the difference between the first and the final state,
whatever the batch size: a statement per kind of change, not per link. This matters
because every statement costs a round trip (a thread hop for aiosqlite, a network
round trip for PostgreSQL); see ``docs/performance.md``. No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from syncd.identity import Decision, Holders, LinkClaim, OnConflict, Person, decide
from syncd.store.outbox import NewDelivery

#: What else a change to an identity causes, in the same transaction (the outbox).
Effects = Callable[[Person | None, Person], list[NewDelivery]]


def no_effects(before: Person | None, after: Person) -> list[NewDelivery]:
    return []


@dataclass(frozen=True, slots=True)
class LinkRequest:
    claim: LinkClaim
    source: str


@dataclass(frozen=True, slots=True)
class TracedChange:
    """One ``identity_changes`` row; ``identity_id`` may be temporary (negative)."""

    identity_id: int
    source: str
    before: Person | None
    after: Person
    reason: str


@dataclass
class Plan:
    """The batch's decisions and the final state of every identity it touched."""

    initial: dict[int, Person]
    on_conflict: OnConflict
    effects: Effects = no_effects
    people: dict[int, Person] = field(init=False)
    email: dict[str, int] = field(init=False, default_factory=dict)
    telegram: dict[int, int] = field(init=False, default_factory=dict)
    client: dict[tuple[int, int], int] = field(init=False, default_factory=dict)
    decisions: list[Decision] = field(init=False, default_factory=list)
    #: per request: the identity it ends on (temporary while negative), None for a conflict
    targets: list[int | None] = field(init=False, default_factory=list)
    changes: list[TracedChange] = field(init=False, default_factory=list)
    deliveries: list[NewDelivery] = field(init=False, default_factory=list)
    _next_temp: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.people = {}
        for person in self.initial.values():
            self._put(None, person)

    def holders(self, claim: LinkClaim) -> Holders:
        def get(key: int | None) -> Person | None:
            return self.people.get(key) if key is not None else None

        return Holders(
            by_email=get(self.email.get(claim.email)),
            by_telegram=get(self.telegram.get(claim.telegram_id))
            if claim.telegram_id is not None
            else None,
            by_client=get(self.client.get((claim.project_id, claim.client_id)))
            if claim.client_id is not None
            else None,
        )

    def add(self, request: LinkRequest) -> Decision:
        decision = decide(request.claim, self.holders(request.claim), self.on_conflict)
        self.decisions.append(decision)
        target: int | None = None
        if decision.status == "unchanged" and decision.target is not None:
            target = decision.target.after.id
        elif decision.status in ("created", "linked"):
            for change in decision.changes:
                after = change.after
                if change.before is None:
                    self._next_temp -= 1
                    after = after.with_id(self._next_temp)
                self._put(change.before, after)
                assert after.id is not None
                self.changes.append(
                    TracedChange(after.id, request.source, change.before, after, decision.reason)
                )
                self.deliveries.extend(self.effects(change.before, after))
                target = after.id
        self.targets.append(target)
        return decision

    def _put(self, before: Person | None, after: Person) -> None:
        assert after.id is not None
        if before is not None:
            self.email.pop(before.email, None)
            if before.telegram_id is not None:
                self.telegram.pop(before.telegram_id, None)
            for pair in before.clients.items():
                self.client.pop(pair, None)
        self.people[after.id] = after
        self.email[after.email] = after.id
        if after.telegram_id is not None:
            self.telegram[after.telegram_id] = after.id
        for pair in after.clients.items():
            self.client[pair] = after.id

    # what the store writes ---------------------------------------------------------
    def created(self) -> list[Person]:
        return [p for i, p in self.people.items() if i < 0]

    def updated(self) -> list[tuple[Person, Person]]:
        """(first, final) of stored identities whose keys changed."""
        return [
            (self.initial[i], p) for i, p in self.people.items() if i > 0 and p != self.initial[i]
        ]

    def telegram_moves(self) -> bool:
        """Does a Telegram id end on another identity than the one holding it at first?

        Then the old holders must let go before anyone takes it (unique column).
        """
        first = {p.telegram_id: i for i, p in self.initial.items() if p.telegram_id is not None}
        return any(
            p.telegram_id in first and first[p.telegram_id] != i
            for i, p in self.people.items()
            if p.telegram_id is not None
        )

    def clients_removed(self) -> set[tuple[int, int]]:
        return {
            pair
            for first, final in self.updated()
            for pair in set(first.clients.items()) - set(final.clients.items())
        }

    def clients_added(self) -> list[tuple[int, int, int]]:
        """(project_id, client_id, identity id — temporary for new ones)."""
        added = []
        for i, p in self.people.items():
            before = set(self.initial[i].clients.items()) if i > 0 else set()
            for project_id, client_id in sorted(set(p.clients.items()) - before):
                added.append((project_id, client_id, i))
        return added
