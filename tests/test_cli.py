"""The CLI of SPEC §7 on both databases: identity show/link, conflicts, export, exit codes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from syncd.cli import main
from syncd.store import migrate

P = 294495


@pytest.fixture
def syncd(db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run ``syncd ARGS`` in-process on the test database; returns (exit, stdout, stderr)."""
    monkeypatch.setenv("SYNCD_DATABASE__URL", db_url)
    monkeypatch.delenv("SYNCD_CONFIG", raising=False)
    monkeypatch.chdir(Path(__file__).parent)  # no ./syncd.toml here

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_identity_link_and_show(syncd) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = syncd("identity", "link", "--email", "Anna@School.ru", "--telegram-id", "123")
    assert (code, out.strip()) == (0, "created: identity 1")
    assert syncd("identity", "link", "--email", "anna@school.ru", "--client-id", "987")[0] == 0
    code, out, _ = syncd("identity", "show", "anna@school.ru", "--json")
    shown = json.loads(out)
    assert code == 0
    assert list(shown) == [
        "id",
        "email",
        "telegram_id",
        "gc_user_id",
        "salebot_clients",
        "created_at",
        "updated_at",
    ]
    assert shown["email"] == "anna@school.ru" and shown["telegram_id"] == 123
    assert shown["gc_user_id"] is None
    assert shown["salebot_clients"] == [{"project_id": P, "client_id": 987}]
    assert json.loads(syncd("identity", "show", "tg:123", "--json")[1]) == shown
    assert json.loads(syncd("identity", "show", "sb:987", "--json")[1]) == shown
    code, out, _ = syncd("identity", "show", "sb:987")
    assert code == 0 and "anna@school.ru" in out and "987 (project 294495)" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("identity", "show", "nobody@school.ru"), 1, "no identity for nobody@school.ru"),
        (("identity", "show", "tg:abc"), 1, "invalid_telegram_id"),
        (("identity", "show", "not an email"), 1, "invalid_email"),
        (("identity", "link", "--email", "a@b.ru"), 1, "missing_key"),
        (("identity", "link", "--email", "#{email}", "--telegram-id", "1"), 1, "invalid_email"),
    ],
)
def test_handled_failures_exit_1(syncd, args: tuple[str, ...], code: int, message: str) -> None:  # type: ignore[no-untyped-def]
    got, out, err = syncd(*args)
    assert got == code and message in err and out == ""
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("identity",),
        ("identity", "show"),
        ("export", "identities"),
        ("frobnicate",),
        ("export", "identities", "--format", "xml"),
    ],
)
def test_bad_usage_exits_2(syncd, args: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as caught:
        syncd(*args)
    assert caught.value.code == 2


def test_conflicts_list(syncd) -> None:  # type: ignore[no-untyped-def]
    assert syncd("conflicts", "list")[1].strip() == "no open conflicts"
    syncd("identity", "link", "--email", "a@school.ru", "--telegram-id", "1")
    code, _, err = syncd("identity", "link", "--email", "b@school.ru", "--telegram-id", "1")
    assert code == 1 and "conflict 1" in err and "nothing changed" in err
    code, out, _ = syncd("conflicts", "list", "--json")
    (conflict,) = json.loads(out)
    assert code == 0
    assert conflict["email"] == "b@school.ru" and conflict["telegram_id"] == 1
    assert conflict["identity_ids"] == [1] and conflict["source"] == "cli"
    assert "#1 " in syncd("conflicts", "list")[1]


def test_export_csv_and_jsonl(syncd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for i in range(3):
        syncd(
            "identity",
            "link",
            "--email",
            f"p{i}@school.ru",
            "--telegram-id",
            str(10 + i),
            "--client-id",
            str(20 + i),
        )
    syncd("identity", "link", "--email", "p0@school.ru", "--client-id", "99", "--project-id", "7")
    code, out, err = syncd("export", "identities", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and "exported 3 identities" in err
    assert [r["email"] for r in rows] == ["p0@school.ru", "p1@school.ru", "p2@school.ru"]
    assert rows[0]["client_id"] == "20" and rows[0]["salebot_clients"] == "7:99;294495:20"
    assert rows[1]["gc_user_id"] == ""
    target = tmp_path / "out.jsonl"
    code, out, _ = syncd("export", "identities", "--format", "jsonl", "--output", str(target))
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert code == 0 and out == ""
    assert [line["telegram_id"] for line in lines] == [10, 11, 12]
    assert lines[0]["salebot_clients"] == [
        {"project_id": 7, "client_id": 99},
        {"project_id": P, "client_id": 20},
    ]
    assert not list(tmp_path.glob(".*.part"))


def test_commands_refuse_an_unmigrated_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SYNCD_DATABASE__URL", f"sqlite:///{tmp_path / 'fresh.db'}")
    assert main(["check"]) == 1  # no token; the database does not exist yet
    shown = capsys.readouterr().out
    assert (
        "ok   migrations: syncd run will apply them" in shown and "fresh.db does not exist" in shown
    )
    assert not (tmp_path / "fresh.db").exists()  # check creates nothing
    monkeypatch.setenv("SYNCD_DATABASE__AUTO_MIGRATE", "false")
    assert main(["check"]) == 1
    assert "FAIL migrations: run `syncd migrate`" in capsys.readouterr().out
    assert main(["identity", "show", "a@b.ru"]) == 1
    assert "run `syncd migrate`" in capsys.readouterr().err
    assert not (tmp_path / "fresh.db").exists()  # only migrate and run create it (issue 15)
    monkeypatch.delenv("SYNCD_DATABASE__AUTO_MIGRATE")
    assert main(["migrate"]) == 0
    (head,) = migrate.heads()
    assert f"migrated empty -> {head}" in capsys.readouterr().out
    assert main(["migrate"]) == 0
    assert "already at head" in capsys.readouterr().out


def test_outbox_commands(syncd, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    from datetime import timedelta

    from syncd.store import outbox
    from syncd.store.engine import create_engine

    monkeypatch.setenv("SYNCD_GETCOURSE__API_KEY", "k")  # write-back on: links enqueue
    assert syncd("outbox", "list")[1].strip() == "no deliveries"
    for i in range(3):
        syncd("identity", "link", "--email", f"p{i}@school.ru", "--telegram-id", str(i + 1))
    code, out, _ = syncd("outbox", "list", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["status"] for r in rows] == ["pending"] * 3
    assert {r["target"] + "." + r["action"] for r in rows} == {"getcourse.import_user"}

    async def kill_two() -> None:  # as the dispatcher does on a permanent failure
        engine = create_engine(db_url)
        try:
            claimed = await outbox.claim(engine, "t", 2, timedelta(seconds=30))
            await outbox.record(
                engine, "t", [outbox.Outcome(c.id, "dead", "HTTP 403") for c in claimed]
            )
        finally:
            await engine.dispose()

    asyncio.run(kill_two())
    stats = json.loads(syncd("outbox", "stats", "--json")[1])
    assert stats["dead"] == 2 and stats["pending"] == 1 and stats["oldest_due_age_seconds"] >= 0
    dead = json.loads(syncd("outbox", "list", "--status", "dead", "--json")[1])
    assert [d["last_error"] for d in dead] == ["HTTP 403", "HTTP 403"]
    assert "HTTP 403" in syncd("outbox", "list", "--status", "dead")[1]
    code, out, err = syncd("outbox", "retry", str(dead[0]["id"]), str(rows[2]["id"]))
    assert code == 1 and "requeued 1" in out and f"delivery {rows[2]['id']} is pending" in err
    code, out, _ = syncd("outbox", "retry", "--dead")
    assert code == 0 and "requeued 1" in out
    assert json.loads(syncd("outbox", "stats", "--json")[1])["pending"] == 3
    assert syncd("outbox", "retry")[0] == 2  # neither ids nor --dead


def test_events_list(syncd, db_url: str) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from syncd.events import from_process
    from syncd.store.engine import create_engine
    from syncd.store.events import Addressing, EventStore

    assert syncd("events", "list")[1].strip() == "no events"

    async def ingest() -> None:
        engine = create_engine(db_url)
        try:
            store = EventStore(engine, Addressing((), P, "bot", timedelta(days=1)))
            await store.ingest(
                [
                    from_process("deal.paid", {"email": "a@school.ru", "id": "1"}),
                    from_process("user.created", {"user_id": "5", "id": "5"}),
                ]
            )
        finally:
            await engine.dispose()

    from datetime import timedelta

    asyncio.run(ingest())
    rows = json.loads(syncd("events", "list", "--json")[1])
    assert [(r["kind"], r["external_id"], r["source"]) for r in rows] == [
        ("deal.paid", "1", "webhook"),
        ("user.created", "5", "webhook"),
    ]
    only = json.loads(syncd("events", "list", "--kind", "user.created", "--json")[1])
    assert [r["gc_user_id"] for r in only] == [5]
    assert "deal.paid 1 via webhook done" in syncd("events", "list")[1]


def test_check_names_a_bad_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[rules]]\nevent = "deal.paid"\naction = "callback"\nmessage = "{oops}"\n')
    monkeypatch.setenv("SYNCD_DATABASE__URL", f"sqlite:///{tmp_path / 'x.db'}")
    assert main(["--config", str(path), "check"]) == 1
    assert (
        "FAIL rules: rules.0: rule (deal.paid → callback): unknown field {oops}"
        in capsys.readouterr().out
    )


def test_backfill_against_a_simulator_process(
    syncd,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    """30 deals of the last 9 days, stamped from the test's own clock, land in the event log."""
    import subprocess
    import sys
    from datetime import UTC, datetime, timedelta

    from tests.daemon import free_port

    today = datetime.now(UTC).date()
    since, middle = today - timedelta(days=9), today - timedelta(days=4)
    first_deal = f"{since} 00:30:00"  # account-local; one deal every 6 hours: 7.5 days
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "syncd.sandbox", "getcourse", "--port", str(port), "--key", "K",
         "--deals", "30", "--deals-from", first_deal, "--deal-step", "21600"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert sim.stdout is not None and "127.0.0.1" in sim.stdout.readline()
        monkeypatch.setenv("SYNCD_GETCOURSE__BASE_URL", f"http://127.0.0.1:{port}")
        assert syncd("backfill", "--since", str(since), "--until", str(today))[0] == 1  # no key
        monkeypatch.setenv("SYNCD_GETCOURSE__API_KEY", "K")
        monkeypatch.setenv("SYNCD_GETCOURSE__POLL__EXPORTS", "deals,users")
        code, out, err = syncd(
            "backfill", "--since", str(since), "--until", str(today), "--window-days", "5"
        )
        assert code == 0, err
        assert f"backfill {since}..{today}: 4 exports, 30 rows, 50 new events" in out
        notes = [json.loads(line).get("note") for line in err.splitlines() if line]
        # deals 0..19 fall in the first window (5 days, 4 a day), 20..29 in the second
        first = since + timedelta(days=4)
        assert f"[1/4] deals {since}..{first}: 20 rows, 34 new events" in notes
        assert f"[2/4] deals {middle}..{today}: 10 rows, 16 new events" in notes
        assert f"[4/4] users {middle}..{today}: 0 rows" in notes
        stored = json.loads(syncd("events", "list", "--limit", "1000", "--json")[1])
        kinds = sorted(e["kind"] for e in stored)
        assert kinds == ["deal.created"] * 30 + ["deal.paid"] * 10 + ["deal.status_changed"] * 10
        assert {e["source"] for e in stored} == {"backfill"}
        assert syncd("backfill", "--since", str(today), "--until", str(since))[0] == 2
        monkeypatch.setenv("SYNCD_GETCOURSE__API_KEY", "wrong")
        code, _, err = syncd("backfill", "--since", str(since), "--until", str(since))
        assert code == 1 and "failed" in err  # 901: a bad key is reported, not retried
    finally:
        sim.terminate()
        sim.wait(10)
        assert sim.stdout is not None
        sim.stdout.close()
    with pytest.raises(SystemExit) as caught:
        syncd("backfill", "--since", "yesterday")
    assert caught.value.code == 2
