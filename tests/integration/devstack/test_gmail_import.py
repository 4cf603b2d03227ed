"""``inboxflow emulator import``: .eml folders and mbox files round-trip byte for byte."""

from __future__ import annotations

import mailbox
from pathlib import Path

from click.testing import CliRunner

from devstack.gmail_emulator import GmailEmulator
from devstack.gmail_emulator.generator import generate_messages
from inboxflow.cli import cli
from streams.stages.gmail.client import FetchNeed, GmailClient, GmailClientConfig

USER = "import@inboxflow.test"


async def test_eml_folder_round_trips_raw_bytes(
    gmail_emulator: GmailEmulator, tmp_path: Path
) -> None:
    gmail_emulator.add_user(USER)
    originals = [m.raw for m in generate_messages(21, 12, "someone@example.org")]
    originals.append(b"Subject: =?iso-8859-1?q?caf=E9?=\nFrom: x@y\n\nbare LF body\n")
    for index, raw in enumerate(originals):
        (tmp_path / f"{index:02d}.eml").write_bytes(raw)
    result = CliRunner().invoke(
        cli, ["emulator", "import", str(tmp_path), "--user", USER, "--url", gmail_emulator.url]
    )
    assert result.exit_code == 0, result.output
    ids = result.stdout.split()
    client = GmailClient(GmailClientConfig(api_root=gmail_emulator.url))
    try:
        outcomes = await client.fetch_messages(USER, ids, need=FetchNeed.RAW)
    finally:
        client.close()
    assert [outcomes[i].raw for i in ids] == originals  # type: ignore[union-attr]


def test_mbox_import_counts_messages(gmail_emulator: GmailEmulator, tmp_path: Path) -> None:
    gmail_emulator.add_user(USER)
    box = mailbox.mbox(str(tmp_path / "in.mbox"))
    for generated in generate_messages(22, 5, "someone@example.org"):
        box.add(generated.raw)
    box.close()
    result = CliRunner().invoke(
        cli,
        [
            "emulator",
            "import",
            str(tmp_path / "in.mbox"),
            "--user",
            USER,
            "--url",
            gmail_emulator.url,
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(gmail_emulator.message_ids(USER)) == 5
    assert gmail_emulator.accounting.calls_by_method["users.messages.import"] == 5
