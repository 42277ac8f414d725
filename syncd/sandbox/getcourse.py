"""The GetCourse simulator: one account's legacy import/export API over real HTTP.

Follows ``api/getcourse.md``. A test builds a state, seeds it, serves the app and reads
the state back::

    state = GetCourseState(key="k")
    state.add_field("telegram_id")
    user = state.add_user("a@b.ru")
    async with serve(create_app(state)) as base:   # base + "/pl/api/users" …
        ...
    assert state.user_by_email("a@b.ru").fields["telegram_id"] == "123"

Routes (details in the modules that implement them):
- ``getcourse_import``: ``POST /pl/api/users``, ``POST /pl/api/deals`` (GET answers as a
  redirected POST would: «Пустой параметр action»);
- ``getcourse_export``: ``GET /pl/api/account/{users,groups/{id}/users,deals,payments}``,
  ``GET /pl/api/account/exports/{id}``, ``POST /pl/api/account/{fields,groups}``;
- ``getcourse_callout``: GetCourse calling out (``fire_process_call``, ``fire_techapi``).
Every route sits behind ``FaultMiddleware`` (``state.faults``). The Tech API v1
(``/pl/api/v1/…``) is not simulated: syncd only receives its webhooks.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from syncd.sandbox import getcourse_export as export
from syncd.sandbox.faults import FaultMiddleware, Faults
from syncd.sandbox.getcourse_callout import fire_process_call, fire_techapi, techapi_payload
from syncd.sandbox.getcourse_import import import_deals, import_users
from syncd.sandbox.getcourse_rows import BOM, NBSP, GeneratedDeals, money
from syncd.sandbox.getcourse_state import (
    GcCall,
    GcDeal,
    GcExport,
    GcField,
    GcGroup,
    GcMember,
    GcPayment,
    GcUser,
    GetCourseState,
)

__all__ = [
    "BOM",
    "NBSP",
    "Faults",
    "GcCall",
    "GcDeal",
    "GcExport",
    "GcField",
    "GcGroup",
    "GcMember",
    "GcPayment",
    "GcUser",
    "GeneratedDeals",
    "GetCourseState",
    "create_app",
    "fire_process_call",
    "fire_techapi",
    "money",
    "techapi_payload",
]


def create_app(state: GetCourseState | None = None) -> Starlette:
    """The ASGI app over ``state`` (a fresh account when omitted), kept at ``app.state.sandbox``."""
    state = state if state is not None else GetCourseState()
    account = "/pl/api/account"
    app = Starlette(
        routes=[
            Route("/pl/api/users", import_users, methods=["GET", "POST"]),
            Route("/pl/api/deals", import_deals, methods=["GET", "POST"]),
            Route(f"{account}/users", export.start("users")),
            Route(f"{account}/groups/{{group_id:int}}/users", export.start("group_users")),
            Route(f"{account}/deals", export.start("deals")),
            Route(f"{account}/payments", export.start("payments")),
            Route(f"{account}/exports/{{export_id:int}}", export.collect),
            Route(f"{account}/fields", export.list_fields, methods=["POST"]),
            Route(f"{account}/groups", export.list_groups, methods=["POST"]),
        ],
        middleware=[Middleware(FaultMiddleware, state=state)],
    )
    app.state.sandbox = state
    return app
