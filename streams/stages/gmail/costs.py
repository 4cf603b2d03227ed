"""Gmail quota cost tables (units per call) and per-user ceilings, 2026 and legacy.

Cost is per method, never per format, and a batch of n calls costs n calls
(``docs/gmail-api.md``, section "Cost per method"). Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CostTableName = Literal["2026", "legacy"]

_TABLES: dict[str, dict[str, int]] = {
    "legacy": {
        "users.getProfile": 1,
        "users.messages.list": 5,
        "users.history.list": 2,
        "users.messages.get": 5,
        "users.messages.attachments.get": 5,
        "users.threads.get": 10,
        "users.labels.list": 1,
        "users.watch": 100,
        "users.stop": 50,
    },
    "2026": {
        "users.getProfile": 1,
        "users.messages.list": 5,
        "users.history.list": 2,
        "users.messages.get": 20,
        "users.messages.attachments.get": 20,
        "users.threads.get": 40,
        "users.labels.list": 1,
        "users.watch": 100,
        "users.stop": 50,
    },
}
_USER_UNITS_PER_MINUTE = {"legacy": 15_000, "2026": 6_000}


@dataclass(frozen=True)
class CostTable:
    """Units per method for one quota regime."""

    name: CostTableName = "2026"

    def cost(self, method: str) -> int:
        """Units charged for ``method`` (e.g. ``users.messages.get``); unknown methods cost 5."""
        return _TABLES[self.name].get(method, 5)

    @property
    def user_units_per_minute(self) -> int:
        """The per-user ceiling Google publishes for this regime."""
        return _USER_UNITS_PER_MINUTE[self.name]

    def thread_pays_off(self, wanted_in_thread: int) -> bool:
        """Whether one ``threads.get`` costs fewer units than ``messages.get`` for each message."""
        return self.cost("users.threads.get") < wanted_in_thread * self.cost("users.messages.get")
