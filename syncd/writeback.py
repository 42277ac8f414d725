"""Salebot → GetCourse: what a link writes back into GetCourse's custom user fields.

When a link gives an identity a new Telegram id or a new client id in the configured
Salebot project, one import call sets both custom fields (by their titles) with
``refresh_if_exists: 1``. A key taken away (``on_conflict = "replace"``) writes an empty
value, so GetCourse does not keep addressing the wrong person. With
``create_users = false`` the call waits until the person's ``gc_user_id`` is known,
because ``add`` would otherwise create the user.
"""

from __future__ import annotations

from dataclasses import dataclass

from syncd.identity import Person
from syncd.rules import META
from syncd.store.outbox import NewDelivery


@dataclass(frozen=True, slots=True)
class WriteBack:
    telegram_field: str
    client_field: str
    project_id: int
    create_users: bool

    def __call__(self, before: Person | None, after: Person) -> list[NewDelivery]:
        old_tg = before.telegram_id if before is not None else None
        old_client = before.clients.get(self.project_id) if before is not None else None
        new_client = after.clients.get(self.project_id)
        if (old_tg, old_client) == (after.telegram_id, new_client):
            return []
        fields = {
            self.telegram_field: "" if after.telegram_id is None else str(after.telegram_id),
            self.client_field: "" if new_client is None else str(new_client),
        }
        params = {
            "user": {"email": after.email, "addfields": fields},
            "system": {"refresh_if_exists": 1},
            # not sent: once GetCourse accepts the import, these keys are confirmed (§11)
            META: {"confirms": {"telegram_id": after.telegram_id, "client_id": new_client}},
        }
        waits = not self.create_users and after.gc_user_id is None
        return [
            NewDelivery(
                target="getcourse",
                action="import_user",
                payload=params,
                identity_id=after.id,
                waiting_for="gc_user_id" if waits else None,
            )
        ]
