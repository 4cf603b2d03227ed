"""``inboxflow dev up | down | status | check | fetch | schema-registry``: the local stack."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import click

from db.migrate import apply_migrations
from devstack.kafka import KAFKA_VERSION, ensure_classpath
from devstack.processes import StackError
from devstack.roundtrip import round_trip
from devstack.schema_registry import APICURIO_VERSION, ensure_distribution, start_schema_registry
from devstack.stack import (
    read_state,
    start_stack,
    status_from_state,
    stop_from_state,
    write_state,
)
from inboxflow.settings import Settings
from inboxflow.wiring import kafka_from
from schemas.errors import InboxflowError


def state_dir(settings: Settings) -> Path:
    """Return the stack's state folder (jar cache, state file)."""
    return Path(settings.state_dir).expanduser()


def state_file(settings: Settings) -> Path:
    """Return the file where ``dev up`` records what it started."""
    return state_dir(settings) / "devstack.json"


def _settings() -> Settings:
    settings: Settings = click.get_current_context().find_root().obj
    return settings


@click.group()
def dev() -> None:
    """Start, stop and check the local Kafka + Postgres stack."""


@dev.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
@click.option(
    "--secure",
    is_flag=True,
    help="Kafka over SASL_SSL (SCRAM) and Postgres over TLS with passwords, certificates from a "
    "throwaway CA; the client settings go to <work_dir>/client.env.",
)
def up(as_json: bool, secure: bool) -> None:
    """Start Kafka and Postgres on free loopback ports and apply migrations."""
    settings = _settings()
    path = state_file(settings)
    if read_state(path) is not None and status_from_state(path)["kafka_running"]:
        raise click.ClickException(f"a stack is already up (state in {path}); run `dev down`")
    try:
        stack = start_stack(
            kafka_bootstrap=None,
            database_url=None,
            mode=settings.stack,
            cache_dir=state_dir(settings),
            die_with_parent=False,
            secure=secure,
        )
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        applied = apply_migrations(stack.database_url)
    except Exception:
        stack.stop()
        raise
    write_state(path, stack)
    if as_json:
        click.echo(json.dumps({**stack.state(), "migrations_applied": applied}))
        return
    click.echo(f"Started {' and '.join(stack.started)}.")
    click.echo(f"  Kafka bootstrap: {stack.kafka_bootstrap} ({stack.kafka_security.describe()})")
    click.echo(f"  Database URL:    {stack.state()['database_url']}")
    if stack.kafka_security.cafile:
        click.echo(f"  CA certificate:  {stack.kafka_security.cafile}")
    click.echo(f"  Migrations applied: {len(applied)}")
    click.echo("Use them with:")
    if stack.secure and stack.client_env_path is not None:
        # Passwords stay in the owner-only file instead of the terminal's scrollback.
        click.echo(f"  set -a; . {stack.client_env_path}; set +a")
    else:
        click.echo(f"  export KAFKA_BOOTSTRAP_SERVERS={stack.kafka_bootstrap}")
        click.echo(f"  export DATABASE_URL={stack.database_url}")
    click.echo("Stop with: inboxflow dev down")


@dev.command()
def fetch() -> None:
    """Resolve the Kafka jars and the schema registry with Maven (once; later starts offline)."""
    cache = state_dir(_settings())
    try:
        libs = ensure_classpath(cache)
        click.echo(f"Kafka {KAFKA_VERSION} jars ready in {libs}")
        runner = ensure_distribution(cache)
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Apicurio Registry {APICURIO_VERSION} ready in {runner.parent}")


@dev.command("schema-registry")
def schema_registry() -> None:
    """Run a Confluent-compatible schema registry (Apicurio, in memory) until Ctrl-C."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    work_dir = Path(tempfile.mkdtemp(prefix="inboxflow-registry-"))
    try:
        registry = start_schema_registry(
            cache_dir=state_dir(_settings()), work_dir=work_dir, die_with_parent=True
        )
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        click.echo(f"Schema registry (Apicurio {APICURIO_VERSION}) at {registry.url}")
        click.echo(f"  export INBOXFLOW_SCHEMA_REGISTRY_URL={registry.url}")
        click.echo("Stop with Ctrl-C (its schemas are kept in memory only).")
        stop.wait()
    finally:
        registry.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


@dev.command()
def down() -> None:
    """Stop what `dev up` started and delete its data."""
    stopped = stop_from_state(state_file(_settings()))
    click.echo(f"Stopped {' and '.join(stopped)}." if stopped else "Nothing was running.")


@dev.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def status(as_json: bool) -> None:
    """Say whether the stack from `dev up` is running."""
    state = status_from_state(state_file(_settings()))
    if as_json:
        click.echo(json.dumps(state))
        return
    if not state.get("kafka_bootstrap"):
        click.echo("No stack is up (run `inboxflow dev up`).")
        return
    protocol = state.get("kafka_security_protocol") or "PLAINTEXT"
    click.echo(f"Kafka {state['kafka_bootstrap']} ({protocol}): {_word(state['kafka_running'])}")
    click.echo(f"Postgres {state['database_url']}: {_word(state['postgres_running'])}")
    if state.get("client_env"):
        click.echo(f"Client settings: {state['client_env']}")


def _word(running: bool) -> str:
    return "running" if running else "not running"


@dev.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def check(as_json: bool) -> None:
    """Round-trip a record through Kafka and a row through Postgres on the configured stack.

    Uses the configured security (INBOXFLOW_KAFKA_*, DATABASE_URL's sslmode): after
    `set -a; . client.env` it checks a `dev up --secure` stack.
    """
    settings = _settings()
    try:
        result = asyncio.run(
            round_trip(kafka_from(settings), settings.database_url.get_secret_value())
        )
    except InboxflowError as exc:  # unreachable, refused credentials, contradictory settings
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    print_round_trip(result.as_dict())


def print_round_trip(result: dict[str, Any]) -> None:
    """Print a round-trip result in plain words."""
    click.echo(
        f"Kafka round-trip OK in {result['kafka_ms']:.0f} ms: key={result['key']!r} "
        f"value={result['value']!r} headers={result['headers']} via {result['topic']}"
    )
    click.echo(f"Postgres round-trip OK in {result['database_ms']:.0f} ms.")
