"""The ``inboxflow`` command: assembles each package's thin CLI into one click group."""

from __future__ import annotations

import logging

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """inboxflow: Gmail mailboxes as clean, replayable Kafka event streams."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")


@cli.group()
def bench() -> None:
    """Benchmarks that print figures against a naive peer measured in the same run."""


def main() -> None:
    """Console-script entry point."""
    cli()
