"""``inboxflow emulator``: run the Gmail API emulator, load mail into a running one."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from pathlib import Path
from typing import Literal

import click

from devstack.gmail_emulator.faults import FaultConfig
from devstack.gmail_emulator.mail_files import read_messages
from devstack.gmail_emulator.quota import QuotaConfig
from devstack.gmail_emulator.server import GmailEmulator


@click.group()
def emulator() -> None:
    """Local emulators of the services inboxflow reads from."""


@emulator.command("gmail")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8085, show_default=True, type=int)
@click.option("--users", default="me@inboxflow.test", show_default=True, help="Comma-separated.")
@click.option("--messages", default=200, show_default=True, help="Generated messages per user.")
@click.option("--seed", default=0, show_default=True)
@click.option("--quota", "table", type=click.Choice(["2026", "legacy"]), default="2026")
@click.option("--window-seconds", default=60.0, show_default=True)
@click.option("--user-units", type=int, default=None, help="Per-user units per window.")
@click.option("--concurrency", default=50, show_default=True, help="Per-user requests in flight.")
@click.option("--rate-429", default=0.0, show_default=True)
@click.option("--rate-500", default=0.0, show_default=True)
@click.option("--rate-503", default=0.0, show_default=True)
@click.option("--latency-ms", default=0.0, show_default=True)
@click.option(
    "--vanish-rate", default=0.0, show_default=True, help="messages.get finds it deleted."
)
@click.option(
    "--history-retention", default=100_000, show_default=True, help="History records kept."
)
def gmail(
    host: str,
    port: int,
    users: str,
    messages: int,
    seed: int,
    table: Literal["2026", "legacy"],
    window_seconds: float,
    user_units: int | None,
    concurrency: int,
    rate_429: float,
    rate_500: float,
    rate_503: float,
    latency_ms: float,
    vanish_rate: float,
    history_retention: int,
) -> None:
    """Serve the Gmail API; the first user is also ``me``. Ctrl-C stops."""
    quota = QuotaConfig(
        table=table,
        window_seconds=window_seconds,
        user_units_per_window=user_units,
        user_concurrency=concurrency,
    )
    faults = FaultConfig(
        rate_429=rate_429,
        rate_500=rate_500,
        rate_503=rate_503,
        latency_ms=latency_ms,
        vanish_rate=vanish_rate,
        seed=seed,
    )
    emu = GmailEmulator(
        quota=quota, faults=faults, host=host, port=port, history_retention=history_retention
    )
    for index, user in enumerate(u.strip() for u in users.split(",") if u.strip()):
        emu.add_user(user, messages=messages, seed=seed + index)

    async def serve() -> None:
        async with emu:
            click.echo(f"gmail emulator at {emu.url} users={users} quota={table}")
            await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        click.echo("stopped")


@emulator.command("import")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--user", required=True, help="Mailbox to import into.")
@click.option("--url", default="http://127.0.0.1:8085/", show_default=True)
@click.option("--label", "labels", multiple=True, default=["INBOX"], show_default=True)
def import_(source: Path, user: str, url: str, labels: tuple[str, ...]) -> None:
    """Load an mbox file or a folder of .eml files into a running emulator (messages.import)."""
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter("must be an http(s) URL", param_hint="--url")
    endpoint = f"{url.rstrip('/')}/gmail/v1/users/{user}/messages/import?alt=json"
    count = 0
    for raw in read_messages(source):
        body = json.dumps({"raw": base64.urlsafe_b64encode(raw).decode(), "labelIds": list(labels)})
        request = urllib.request.Request(  # noqa: S310 - scheme checked above
            endpoint, body.encode(), {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - scheme checked above
            message_id = json.loads(response.read())["id"]
        click.echo(message_id)
        count += 1
    click.echo(f"imported {count} messages into {user}", err=True)
