"""Progress of long commands (``syncd backfill``, ``syncd export identities``).

On a terminal: a live tqdm bar on stderr (count, rate, ETA, and the command's own
figures after it). Off a terminal (a pipe, journald, CI): one JSON object a line on
stderr, at most every ``every`` seconds and once at the end, so a log keeps a readable
trace: ``{"progress": "backfill", "done": 3, "total": 8, "unit": "windows",
"rate_per_second": 0.5, "eta_seconds": 10, "elapsed_seconds": 6, "rows": 1200, …}``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

from tqdm import tqdm


class Progress:
    """Count ``done`` of ``total`` (None when unknown), with extra figures in ``fields``."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        *,
        unit: str = "rows",
        stream: TextIO | None = None,
        every: float = 5.0,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.every = every
        self.clock = clock
        self.started = self.last = clock()
        self.done = 0
        self.fields: dict[str, Any] = {}
        self.live = self.stream.isatty() if live is None else live
        self.bar: tqdm[Any] | None = None
        if self.live:
            self.bar = tqdm(
                total=total, desc=what, unit=f" {unit}", unit_scale=True, file=self.stream,
                dynamic_ncols=True, smoothing=0.1, mininterval=0.2,
            )  # fmt: skip

    def advance(self, n: int = 1, **fields: Any) -> None:
        """``n`` more done; ``fields`` update the figures shown beside the count."""
        self.done += n
        self.fields.update(fields)
        if self.bar is not None:
            if fields:
                self.bar.set_postfix(self.fields, refresh=False)
            self.bar.update(n)
        elif self.clock() - self.last >= self.every:
            self._line()

    def set_total(self, total: int) -> None:
        """The total, once it is known (the pages of a backup)."""
        self.total = total
        if self.bar is not None:
            self.bar.total = total

    def note(self, text: str) -> None:
        """A message that is not a count (a pause, a window read): above the bar, or a line."""
        if self.bar is not None:
            self.bar.write(f"syncd: {self.what} {text}", file=self.stream)
        else:
            self._line(note=text)

    def close(self, **fields: Any) -> None:
        self.fields.update(fields)
        if self.bar is not None:
            self.bar.set_postfix(self.fields, refresh=True)
            self.bar.close()
            self.bar = None
        elif self.live is False:
            self._line(final=True)
            self.live = None  # closed: once only

    def figures(self) -> dict[str, Any]:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        found: dict[str, Any] = {
            "progress": self.what,
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
            "rate_per_second": round(rate, 1),
            "elapsed_seconds": round(elapsed, 1),
            "eta_seconds": None,
        }
        if self.total is not None and rate > 0:
            found["eta_seconds"] = round(max(self.total - self.done, 0) / rate, 1)
        return found | self.fields

    def _line(self, **extra: Any) -> None:
        self.last = self.clock()
        line = self.figures() | extra
        self.stream.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if value is None:
            self.close()
        elif self.bar is not None:  # the command's error line says what happened
            self.bar.close()
            self.bar = None
        self.live = None
