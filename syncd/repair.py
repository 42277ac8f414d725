"""An operator's repairs: closing a link conflict (``syncd conflicts resolve``).

``--keep`` closes the conflict and leaves the identity map as it is. ``--replace``
applies the stored claim exactly as ``identity.on_conflict = "replace"`` would have when
it arrived — through the same :class:`~syncd.store.links.LinkStore` that ``POST
/v1/links`` uses (given here in replace mode), so the keys move, both sides are written
to ``identity_changes``, the GetCourse write-back is queued and events waiting for the
link are released — then closes the conflict.

The link and the closing are two transactions: if the process dies between them, the
conflict stays open and a second ``--replace`` finds the claim already applied
(``unchanged``) and closes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.errors import InvalidInput
from syncd.store import repair
from syncd.store.links import LinkRequest, LinkResult

Apply = Callable[[Sequence[LinkRequest]], Awaitable[list[LinkResult]]]


@dataclass(frozen=True, slots=True)
class Resolution:
    conflict_id: int
    status: Literal["kept", "replaced"]
    link: LinkResult | None = None

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"conflict_id": self.conflict_id, "status": self.status}
        if self.link is not None:
            found |= {
                "link_status": self.link.status,
                "identity_id": self.link.identity_id,
                "detail": self.link.detail,
            }
        return found


async def resolve_conflict(
    engine: AsyncEngine,
    conflict_id: int,
    action: Literal["keep", "replace"],
    apply_replacing: Apply,
) -> Resolution:
    """Close one open conflict; :class:`InvalidInput` when it is unknown or closed.

    ``apply_replacing`` is the link store's ``apply`` in ``replace`` mode.
    """
    found = await repair.conflict(engine, conflict_id)
    if found is None:
        raise InvalidInput("unknown_conflict", f"there is no conflict {conflict_id}")
    if found.status != "open":
        raise InvalidInput(
            "conflict_closed", f"conflict {conflict_id} is already closed ({found.status})"
        )
    if action == "keep":
        if not await repair.close_conflict(engine, conflict_id, "kept"):
            raise InvalidInput("conflict_closed", f"conflict {conflict_id} was closed meanwhile")
        return Resolution(conflict_id, "kept")
    (result,) = await apply_replacing([LinkRequest(found.claim, "cli")])
    await repair.close_conflict(engine, conflict_id, "replaced")
    return Resolution(conflict_id, "replaced", result)
