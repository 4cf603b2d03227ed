"""Gmail emulator fixtures: a real HTTP server on a free loopback port, in a background thread."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from devstack.gmail_emulator import FaultConfig, GmailEmulator, QuotaConfig

EmulatorFactory = Callable[..., GmailEmulator]


@pytest.fixture
def gmail_emulator_factory() -> Iterator[EmulatorFactory]:
    """Start emulators with the given quota/faults; all are stopped after the test."""
    started: list[GmailEmulator] = []

    def start(
        quota: QuotaConfig | None = None,
        faults: FaultConfig | None = None,
        history_retention: int = 100_000,
    ) -> GmailEmulator:
        emu = GmailEmulator(quota=quota, faults=faults, history_retention=history_retention)
        started.append(emu.start_in_thread())
        return emu

    try:
        yield start
    finally:
        for emu in started:
            emu.stop_thread()


@pytest.fixture
def gmail_emulator(gmail_emulator_factory: EmulatorFactory) -> GmailEmulator:
    """An emulator with the 2026 quota and no faults."""
    return gmail_emulator_factory()
