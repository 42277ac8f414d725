"""Metrics an operator can use (issue 12): /metrics behind its own optional token, the
process and build series, a readiness gauge, and the Grafana dashboard and Prometheus
alert rules in contrib/ checked against what a running daemon really exports."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd import __version__
from syncd.batching import Batcher
from syncd.config import Settings
from syncd.daemon import addressing, counted, write_back
from syncd.http.app import AppContext, create_app
from syncd.metrics import Metrics
from syncd.store.events import EventStore
from syncd.store.links import LinkStore
from tests.daemon import TOKEN, Daemon
from tests.system_deps import require_debian_binary

ROOT = Path(__file__).parent.parent
DASHBOARD = ROOT / "contrib" / "grafana" / "syncd.json"
ALERTS = ROOT / "contrib" / "prometheus" / "syncd-alerts.yml"
METRICS_TOKEN = "scrape-8c1e77"
P = 294495


async def ops_client(
    engine: AsyncEngine,
    token: str = "current-token",
    previous: tuple[str, ...] = (),
    metrics_token: str = "",
    metrics: Metrics | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process, wired as ``syncd run`` wires it, with the issue-12 settings."""
    settings = Settings()
    event_store = EventStore(engine, addressing(settings))
    store = LinkStore(
        engine, settings.identity.on_conflict, write_back(settings), event_store.after_link
    )
    metrics = metrics or Metrics()
    async with (
        Batcher(store.apply, name="links") as links,
        Batcher(counted(event_store.ingest, metrics), name="events") as events,
    ):
        ctx = AppContext(
            engine, links, events, token, 65536, P, metrics=metrics,
            previous_tokens=previous, metrics_token=metrics_token,
        )  # fmt: skip
        transport = httpx.ASGITransport(app=create_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url="http://syncd") as client:
            yield client


async def test_metrics_token_guards_metrics_on_every_transport(engine: AsyncEngine) -> None:
    async for client in ops_client(engine, metrics_token=METRICS_TOKEN):
        refused = await client.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        # the /v1 token is not the scrape token
        assert (await client.get("/metrics?token=current-token")).status_code == 401
        for how in (
            {"headers": {"Authorization": f"Bearer {METRICS_TOKEN}"}},
            {"headers": {"X-Syncd-Token": METRICS_TOKEN}},
            {"params": {"token": METRICS_TOKEN}},
        ):
            answer = await client.get("/metrics", **how)  # type: ignore[arg-type]
            assert answer.status_code == 200 and "syncd_links_total" in answer.text
        assert METRICS_TOKEN not in answer.text
        assert (await client.get("/healthz")).status_code == 200  # probes stay open


async def test_without_a_metrics_token_metrics_stay_open(engine: AsyncEngine) -> None:
    async for client in ops_client(engine):
        assert (await client.get("/metrics")).status_code == 200


async def test_process_build_and_readiness_series(engine: AsyncEngine) -> None:
    async for client in ops_client(engine):
        text = (await client.get("/metrics")).text
    assert f'syncd_build_info{{version="{__version__}"}} 1.0' in text
    assert re.search(r"^process_resident_memory_bytes \d", text, re.M)
    assert re.search(r"^process_cpu_seconds_total \d", text, re.M)
    assert re.search(r"^syncd_ready 1\.0$", text, re.M)


async def test_readiness_gauge_falls_when_the_store_is_not_at_head(empty_db_url: str) -> None:
    from syncd.store.engine import create_engine

    engine = create_engine(empty_db_url)  # no migrations at all
    try:
        async for client in ops_client(engine):
            assert (await client.get("/readyz")).status_code == 503
            text = (await client.get("/metrics")).text
    finally:
        await engine.dispose()
    assert re.search(r"^syncd_ready 0\.0$", text, re.M)


def test_metrics_are_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    http = (ROOT / "docs" / "http.md").read_text()
    for doc in (readme, http):
        assert "/metrics" in doc and "metrics_token" in doc
    assert "## GET /metrics" in http
    assert "syncd_auth_previous_token_total" in http


# --- the dashboard and the alert rules ---------------------------------------------

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "inf", "nan",
}  # fmt: skip


def series_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, not
    keywords, not label names in ``{…}``/``by (…)``, not durations in ``[…]``."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text):
        if match.group(1).lower() not in PROMQL_WORDS:
            names.add(match.group(1))
    return names


def test_series_names_parser() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, route) (rate(syncd_http_request_duration_seconds"
        '_bucket{route=~"/v1/.*", instance=~"$instance"}[$__rate_interval]))) > on(job) up'
    )
    assert series_names(expr) == {"syncd_http_request_duration_seconds_bucket", "up"}
    assert series_names("increase(x_total[30m]) > 0 and y == 1") == {"x_total", "y"}


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    found = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and isinstance(query, str):
            found.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query))
    return found


def alert_exprs() -> list[str]:
    text = ALERTS.read_text()
    return [line.split("expr:", 1)[1].strip() for line in text.splitlines() if "expr:" in line]


def test_the_dashboard_has_the_panels_the_issue_asks_for() -> None:
    board = json.loads(DASHBOARD.read_text())
    by_title = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in board["panels"]}
    wanted = {
        "Links in": "syncd_links_total",
        "Events in": "syncd_events_total",
        "Calls out, by outcome": "syncd_deliveries_total",
        "Outbox depth": "syncd_outbox_deliveries",
        "Oldest due call": "syncd_outbox_oldest_due_age_seconds",
        "Dead calls": 'status="dead"',
        "Waiting events": 'status="waiting"',
        "Export budget left": "syncd_export_budget_left_requests",
        "Webhook latency": "syncd_http_request_duration_seconds_bucket",
    }
    for prefix, series in wanted.items():
        (title,) = [t for t in by_title if t.startswith(prefix)]
        assert series in by_title[title], title


def test_the_alerts_cover_what_the_issue_asks_for() -> None:
    exprs = " | ".join(alert_exprs())
    for needle in (
        'up{job="syncd"} == 0',
        "syncd_outbox_oldest_due_age_seconds > 900",
        'syncd_deliveries_total{outcome="dead"}',
        "syncd_export_budget_left_requests < 10",
        "syncd_ready == 0",
    ):
        assert needle in exprs


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_debian_binary("promtool", "prometheus")


def test_promtool_accepts_the_alert_rules(promtool: str) -> None:
    done = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 rules found" in done.stdout


def test_promtool_refuses_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(ALERTS.read_text().replace("> 900", "> > 900"))
    done = subprocess.run(
        [promtool, "check", "rules", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0  # so the check above means something


def exported(scrape: str) -> set[str]:
    """Every series name a scrape can carry, from its ``# TYPE`` lines (a labelled
    counter nobody incremented yet is exported with no sample)."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", scrape, re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        if kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")
        if kind == "info":
            names.add(f"{name}_info")
    return names


def test_every_series_the_dashboard_and_alerts_use_is_exported(
    sqlite_url: str, tmp_path: Path
) -> None:
    daemon = Daemon(sqlite_url, tmp_path, SYNCD_HTTP__METRICS_TOKEN=METRICS_TOKEN).start()
    try:
        link = httpx.post(
            f"{daemon.base_url}/v1/links",
            json={"email": "anna@school.ru", "telegram_id": 1},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert link.status_code == 200
        scrape = httpx.get(
            f"{daemon.base_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        ).text
    finally:
        daemon.stop()
    have = exported(scrape) | {"up"}  # `up` is Prometheus's own
    used = {
        source: set().union(*(series_names(e) for e in exprs))
        for source, exprs in (("dashboard", dashboard_exprs()), ("alerts", alert_exprs()))
    }
    assert used["dashboard"] and used["alerts"]
    for source, names in used.items():
        assert names <= have, f"{source} uses series syncd does not export: {names - have}"
