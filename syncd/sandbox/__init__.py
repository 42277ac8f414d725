"""Bundled simulators of the two external APIs, for tests, the demo and benchmarks.

They follow ``api/getcourse.md`` and ``api/salebot.md`` (the API documents), never the
daemon's own code: nothing here imports from the rest of ``syncd``, so a mistake shared
by the daemon and its double cannot hide.

- ``getcourse``: the legacy import/export API, the direct account calls and helpers that
  play GetCourse calling out («Вызвать URL», Tech API webhooks);
- ``salebot``: the ``/api/{key}/{action}`` calls;
- ``faults``: per-test fault injection shared by both (5xx, 429, timeouts, latency);
- ``serve``: run any ASGI app on a free loopback port inside the current loop;
- ``python -m syncd.sandbox``: the same simulators as standalone processes.
"""
