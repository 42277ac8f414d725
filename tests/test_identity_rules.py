"""SPEC §4 as tables: normalisation, the pure decision, and the store applying it."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.errors import InvalidInput
from syncd.identity import Holders, LinkClaim, Person, decide, normalise_link
from syncd.store.links import LinkRequest, LinkStore
from syncd.store.models import Identity, IdentityChange, LinkConflict
from syncd.store.queries import find_identity

P = 294495


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"email": " Anna@School.RU ", "telegram_id": "123"}, ("anna@school.ru", 123, P, None)),
        ({"email": "a@b.ru", "client_id": 987}, ("a@b.ru", None, P, 987)),
        ({"email": "a@b.ru", "sb_id": "987"}, ("a@b.ru", None, P, 987)),
        ({"email": "a@b.ru", "client_id": "5", "sb_id": "6"}, ("a@b.ru", None, P, 5)),
        ({"email": "a@b.ru", "telegram_id": " 42 ", "project_id": "7"}, ("a@b.ru", 42, 7, None)),
        ({"email": "a@b.ru", "telegram_id": str(2**63 - 1)}, ("a@b.ru", 2**63 - 1, P, None)),
        ({"email": "a@b.ru", "telegram_id": "", "client_id": "9"}, ("a@b.ru", None, P, 9)),
    ],
)
def test_normalise_accepts(body: dict[str, Any], expected: tuple[Any, ...]) -> None:
    claim = normalise_link(body, P)
    assert (claim.email, claim.telegram_id, claim.project_id, claim.client_id) == expected


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"telegram_id": "1"}, "missing_email"),
        ({"email": "  ", "telegram_id": "1"}, "missing_email"),
        ({"email": "a@b.ru"}, "missing_key"),
        ({"email": "a@b.ru", "telegram_id": "", "client_id": ""}, "missing_key"),
        ({"email": "#{email}", "telegram_id": "1"}, "invalid_email"),
        ({"email": "not-an-email", "telegram_id": "1"}, "invalid_email"),
        ({"email": "a@@b.ru", "telegram_id": "1"}, "invalid_email"),
        ({"email": 12, "telegram_id": "1"}, "invalid_email"),
        ({"email": "a@b.ru", "telegram_id": "#{platform_id}"}, "invalid_telegram_id"),
        ({"email": "a@b.ru", "telegram_id": "0"}, "invalid_telegram_id"),
        ({"email": "a@b.ru", "telegram_id": "-5"}, "invalid_telegram_id"),
        ({"email": "a@b.ru", "telegram_id": "12abc"}, "invalid_telegram_id"),
        ({"email": "a@b.ru", "telegram_id": str(2**63)}, "invalid_telegram_id"),
        ({"email": "a@b.ru", "telegram_id": True}, "invalid_telegram_id"),
        ({"email": "a@b.ru", "telegram_id": 1.5}, "invalid_telegram_id"),
        ({"email": "a@b.ru", "telegram_id": [1]}, "invalid_telegram_id"),
        ({"email": "a@b.ru", "client_id": "#{client_id}"}, "invalid_client_id"),
        ({"email": "a@b.ru", "sb_id": "x"}, "invalid_client_id"),
        ({"email": "a@b.ru", "client_id": -1}, "invalid_client_id"),
        ({"email": "a@b.ru", "client_id": "1", "project_id": "#{project}"}, "invalid_project_id"),
    ],
)
def test_normalise_rejects(body: dict[str, Any], code: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        normalise_link(body, P)
    assert caught.value.code == code


A = Person(1, "a@b.ru", 100, None, {P: 10})
B = Person(2, "b@b.ru", 200, None, {P: 20})
BARE = Person(3, "c@b.ru")


def claim(email: str, tg: int | None = None, client: int | None = None) -> LinkClaim:
    return LinkClaim(email, tg, P, client)


@pytest.mark.parametrize(
    ("claimed", "holders", "status"),
    [
        (claim("new@b.ru", 1), Holders(), "created"),
        (claim("a@b.ru", 100, 10), Holders(A, A, A), "unchanged"),
        (claim("a@b.ru", 100), Holders(A, A), "unchanged"),
        (claim("c@b.ru", 300), Holders(BARE), "linked"),
        (claim("c@b.ru", None, 30), Holders(BARE), "linked"),
        (claim("a@b.ru", 101), Holders(A), "conflict"),  # a second telegram_id
        (claim("a@b.ru", None, 11), Holders(A), "conflict"),  # a second client_id
        (claim("new@b.ru", 100), Holders(None, A), "conflict"),  # tg owned by another email
        (claim("new@b.ru", None, 10), Holders(None, None, A), "conflict"),
        (claim("a@b.ru", 200), Holders(A, B), "conflict"),  # keys of two identities
        (claim("c@b.ru", 200), Holders(BARE, B), "conflict"),
    ],
)
def test_decide_reject(claimed: LinkClaim, holders: Holders, status: str) -> None:
    decision = decide(claimed, holders, "reject")
    assert decision.status == status
    if status == "conflict":
        assert decision.changes == () and decision.reason


def test_decide_replace_moves_keys_and_records_both_sides() -> None:
    decision = decide(claim("c@b.ru", 200, 20), Holders(BARE, B, B), "replace")
    assert decision.status == "linked"
    loser, target = decision.changes
    assert loser.before == B and loser.after.telegram_id is None and loser.after.clients == {}
    assert target.after.telegram_id == 200 and target.after.clients == {P: 20}
    created = decide(claim("new@b.ru", 100), Holders(None, A), "replace")
    assert created.status == "created"
    assert created.changes[0].after.telegram_id is None
    assert created.changes[0].after.clients == {P: 10}  # only the claimed key moves


async def link(
    store: LinkStore, email: str, tg: int | None = None, client: int | None = None, project: int = P
) -> tuple[str, int | None, int | None]:
    (result,) = await store.apply([LinkRequest(LinkClaim(email, tg, project, client), "test")])
    return result.status, result.identity_id, result.conflict_id


async def count(engine: AsyncEngine, model: type[Any]) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(model)) or 0)


async def test_created_linked_unchanged(engine: AsyncEngine) -> None:
    store = LinkStore(engine, "reject")
    status, first, _ = await link(store, "anna@school.ru", 123)
    assert status == "created"
    assert (await link(store, "anna@school.ru", None, 987))[:2] == ("linked", first)
    assert (await link(store, "anna@school.ru", 123, 987))[:2] == ("unchanged", first)
    assert (await link(store, "anna@school.ru", 123, 555, project=7))[0] == "linked"
    found = await find_identity(engine, telegram_id=123)
    assert found is not None
    assert found.salebot_clients == [
        {"project_id": 7, "client_id": 555},
        {"project_id": P, "client_id": 987},
    ]
    # created + 2 linked were traced; unchanged was not
    assert await count(engine, IdentityChange) == 3


@pytest.mark.parametrize(
    ("second", "why"),
    [
        (("anna@school.ru", 124, None), "a second telegram_id for one email"),
        (("anna@school.ru", None, 988), "a second client_id in the project"),
        (("other@school.ru", 123, None), "telegram_id owned by another email"),
        (("other@school.ru", None, 987), "client_id owned by another email"),
    ],
)
async def test_reject_changes_nothing(
    engine: AsyncEngine, second: tuple[Any, ...], why: str
) -> None:
    store = LinkStore(engine, "reject")
    await link(store, "anna@school.ru", 123, 987)
    changes = await count(engine, IdentityChange)
    status, identity_id, conflict_id = await link(store, *second)
    assert (status, identity_id) == ("conflict", None), why
    assert conflict_id is not None
    assert await count(engine, Identity) == 1
    assert await count(engine, IdentityChange) == changes
    found = await find_identity(engine, email="anna@school.ru")
    assert found is not None and found.telegram_id == 123
    assert found.salebot_clients == [{"project_id": P, "client_id": 987}]
    # the bot retrying the same link does not pile up conflicts
    assert (await link(store, *second))[2] == conflict_id
    async with engine.connect() as conn:
        row = (await conn.execute(select(LinkConflict))).one()
    assert row.seen_count == 2 and row.status == "open"


async def test_keys_of_two_identities_conflict(engine: AsyncEngine) -> None:
    store = LinkStore(engine, "reject")
    await link(store, "a@school.ru", 1)
    await link(store, "b@school.ru", 2)
    assert (await link(store, "a@school.ru", 2))[0] == "conflict"


async def test_replace_moves_keys_and_traces_both(engine: AsyncEngine) -> None:
    store = LinkStore(engine, "replace")
    _, old, _ = await link(store, "old@school.ru", 123, 987)
    status, new, _ = await link(store, "new@school.ru", 123, 987)
    assert status == "created" and new != old
    loser = await find_identity(engine, email="old@school.ru")
    winner = await find_identity(engine, telegram_id=123)
    assert loser is not None and loser.telegram_id is None and loser.salebot_clients == []
    assert winner is not None and winner.email == "new@school.ru"
    assert winner.salebot_clients == [{"project_id": P, "client_id": 987}]
    async with engine.connect() as conn:
        traced = (await conn.execute(select(IdentityChange).order_by(IdentityChange.id))).all()
    assert [t.identity_id for t in traced] == [old, old, new]
    assert traced[1].before["telegram_id"] == 123 and traced[1].after["telegram_id"] is None
    assert traced[2].reason  # why the keys moved
    # an email's second telegram_id replaces the first
    assert (await link(store, "new@school.ru", 124))[0] == "linked"
    moved = await find_identity(engine, email="new@school.ru")
    assert moved is not None and moved.telegram_id == 124
    assert await count(engine, LinkConflict) == 0


async def test_batch_sees_its_own_writes(engine: AsyncEngine) -> None:
    store = LinkStore(engine, "reject")
    results = await store.apply(
        [
            LinkRequest(LinkClaim("a@school.ru", 1, P, None), "test"),
            LinkRequest(LinkClaim("a@school.ru", None, P, 10), "test"),
            LinkRequest(LinkClaim("b@school.ru", 1, P, None), "test"),
            LinkRequest(LinkClaim("a@school.ru", 1, P, 10), "test"),
        ]
    )
    assert [r.status for r in results] == ["created", "linked", "conflict", "unchanged"]
    assert len({r.identity_id for r in results if r.identity_id}) == 1


async def test_replace_batch_can_swap_keys_between_identities(engine: AsyncEngine) -> None:
    store = LinkStore(engine, "replace")
    await link(store, "a@school.ru", 1, 10)
    await link(store, "b@school.ru", 2, 20)
    results = await store.apply(
        [
            LinkRequest(LinkClaim("a@school.ru", 2, P, 20), "test"),
            LinkRequest(LinkClaim("b@school.ru", 1, P, 10), "test"),
            LinkRequest(LinkClaim("c@school.ru", 3, P, None), "test"),
        ]
    )
    assert [r.status for r in results] == ["linked", "linked", "created"]
    a = await find_identity(engine, email="a@school.ru")
    b = await find_identity(engine, email="b@school.ru")
    assert a is not None and b is not None
    assert (a.telegram_id, a.salebot_clients) == (2, [{"project_id": P, "client_id": 20}])
    assert (b.telegram_id, b.salebot_clients) == (1, [{"project_id": P, "client_id": 10}])
    assert results[2].identity_id not in (a.id, b.id, None)


def test_plain_emails_are_normalised_as_email_validator_does() -> None:
    """The fast path for plain addresses gives email-validator's answer, or defers to it."""
    import random

    from email_validator import EmailNotValidError, validate_email

    from syncd.identity import _plain_email

    def reference(text: str) -> str | None:
        try:
            return validate_email(text, check_deliverability=False).normalized.lower()
        except EmailNotValidError:
            return None

    tricky = [
        "A.B@Example.RU", "a..b@x.ru", "a.@x.ru", ".a@x.ru", "a@x", "a@x.r", "a@1.23",
        "a@x.123", "a@-x.ru", "a@x-.ru", "a@x.test", "a@x.LOCALHOST", "a@xn--80ak6aa92e.com",
        "a@ab--cd.ru", "%@x.ru", "-@x.ru", "a+b@x.co", "a@x..ru", f"{'a' * 64}@x.ru",
        f"{'a' * 65}@x.ru", f"a@{'b' * 63}.ru", f"a@{'b' * 64}.ru", f"a@{'b.' * 124}ru",
        "\u212a@x.ru", "a@x.рф", "a b@x.ru", "a@x.ru.",
    ]  # fmt: skip
    rng = random.Random(11)
    alphabet = "ab0.-_%+@xA"
    generated = [
        "".join(rng.choice(alphabet) for _ in range(rng.randrange(3, 14)))
        + rng.choice(["@x.ru", ".ru", "@mail.example.org", "@y.io", ""])
        for _ in range(20_000)
    ]
    fast = 0
    for text in tricky + generated:
        plain = _plain_email(text)
        if plain is not None:
            fast += 1
            assert plain == reference(text), text
    assert fast > 2_000  # the fast path is taken for plain addresses
    assert _plain_email("Buyer17@Example.RU") == "buyer17@example.ru"
