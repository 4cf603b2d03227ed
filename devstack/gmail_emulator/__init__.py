"""Gmail API emulator: the HTTP server, mailbox store and generator, quota model, faults, batch.

Start it in-process with ``GmailEmulator`` (``with`` for a thread, ``async with`` for a task) or as
``inboxflow emulator gmail``. Must not import ``streams``.
"""

from devstack.gmail_emulator.accounting import AccountingSnapshot
from devstack.gmail_emulator.faults import FaultConfig
from devstack.gmail_emulator.oauth import OAuthConfig, OAuthServer, OAuthStats
from devstack.gmail_emulator.push import OidcSigner, PushConfig, PushStats
from devstack.gmail_emulator.quota import COST_TABLES, QuotaConfig
from devstack.gmail_emulator.server import GmailEmulator

__all__ = [
    "COST_TABLES",
    "AccountingSnapshot",
    "FaultConfig",
    "GmailEmulator",
    "OAuthConfig",
    "OAuthServer",
    "OAuthStats",
    "OidcSigner",
    "PushConfig",
    "PushStats",
    "QuotaConfig",
]
