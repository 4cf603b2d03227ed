"""``inboxflow accounts``: register, list, pause, resume and remove the mailboxes served, and
hold their Gmail credentials: Google's consent flow (``--oauth``), a service account with
domain-wide delegation (``--service-account``) or a folder of token files (``import``), each
stored encrypted in Postgres under ``INBOXFLOW_TOKEN_KEY`` (``new-key``, ``rotate-key``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg
from google.auth.credentials import Credentials

from db import accounts as store
from db import credentials as vault
from db.accounts import Account, AccountNotFoundError, AccountState
from db.credentials import CredentialKind, StoredCredential
from db.token_cipher import (
    PREVIOUS_KEYS_ENV,
    KeyRing,
    TokenKeyFormatError,
    TokenKeyMissingError,
    parse_key,
)
from db.token_cipher import new_key as make_key
from inboxflow import gmail_grants
from inboxflow.gmail_grants import GrantError
from inboxflow.settings import Settings
from inboxflow.wiring import gmail_client_from, gmail_credentials_from, token_keys_from
from schemas.errors import AccountRevokedError, CredentialsError, InboxflowError
from streams.stages.gmail.credentials import google_credentials
from streams.stages.gmail.watch import stop_watch

T = TypeVar("T")

_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.group()
def accounts() -> None:
    """The mailboxes inboxflow serves: only active accounts are synced."""


@accounts.command()
@click.argument("users", nargs=-1, required=True)
@click.option(
    "--skip-label",
    "skip_labels",
    multiple=True,
    help="Do not emit messages with this label (repeatable; default: SPAM and TRASH).",
)
@click.option(
    "--oauth",
    is_flag=True,
    help="Run Google's consent flow for USER (one address): print the consent URL, take the "
    "redirect on a loopback port, store the grant encrypted. Needs INBOXFLOW_TOKEN_KEY and "
    "INBOXFLOW_GMAIL_OAUTH_CLIENT_FILE.",
)
@click.option(
    "--service-account",
    "service_account_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Service account key JSON with Workspace domain-wide delegation; each USER is its "
    "subject. Stored encrypted; needs INBOXFLOW_TOKEN_KEY.",
)
@click.option(
    "--scope",
    type=click.Choice(sorted(gmail_grants.SCOPES)),
    default="readonly",
    show_default=True,
    help="Gmail scope asked for: readonly (whole messages) or metadata (labels and headers, "
    "no bodies).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Loopback port Google redirects to (--oauth); 0 picks a free one. Fix it to forward "
    "it from a browser on another machine (ssh -L PORT:127.0.0.1:PORT).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=600,
    show_default=True,
    help="Seconds to wait for the consent (--oauth).",
)
@_JSON
@click.pass_obj
def add(
    settings: Settings,
    users: tuple[str, ...],
    skip_labels: tuple[str, ...],
    oauth: bool,
    service_account_file: str | None,
    scope: str,
    port: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Register each USER (a Gmail address) as an active account; adding twice changes nothing.

    With --oauth or --service-account, also obtain and store its Gmail credentials (checked with
    one users.getProfile first); a revoked account becomes active again.
    """
    labels = skip_labels or store.DEFAULT_LABEL_FILTER
    if oauth and service_account_file:
        raise click.UsageError("--oauth and --service-account are exclusive")
    if oauth or service_account_file:
        granted = _add_with_credentials(
            settings,
            users,
            labels,
            scope=gmail_grants.SCOPES[scope],
            service_account_file=service_account_file,
            port=port,
            timeout=timeout,
        )
        if as_json:
            click.echo(json.dumps(granted))
            return
        for entry in granted:
            click.echo(
                f"{'added' if entry['new'] else 'granted'} {entry['user_id']} "
                f"({entry['auth_kind']}, {entry['scope'].rsplit('/', 1)[-1]}, "
                f"key id {entry['key_id']})"
            )
        return

    async def add_all(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Account, bool]]:
        return [await store.add_account(conn, user, label_filter=labels) for user in users]

    try:
        added = _run(settings, add_all)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="USERS") from exc
    if as_json:
        click.echo(json.dumps([account.to_json() | {"new": new} for account, new in added]))
        return
    for account, new in added:
        click.echo(f"{'added' if new else 'already registered'} {account.user_id}")


@accounts.command(name="list")
@_JSON
@click.pass_obj
def list_command(settings: Settings, as_json: bool) -> None:
    """Every account with its state and where its sync stands."""
    found = _run(settings, store.list_accounts)
    if as_json:
        click.echo(json.dumps([account.to_json() for account in found]))
        return
    if not found:
        click.echo("No accounts. Add one with `inboxflow accounts add USER`.")
        return
    click.echo(f"{'ACCOUNT':<36} {'STATE':<8} {'LAST SYNC':<26} {'OUTCOME':<8} HISTORY")
    for account in found:
        synced = (
            account.last_synced_at.isoformat(timespec="seconds") if account.last_synced_at else "-"
        )
        click.echo(
            f"{account.user_id:<36} {account.state.value:<8} {synced:<26} "
            f"{(account.last_sync_outcome or '-'):<8} {account.history_id or '-'}"
        )


def _state_command(name: str, state: AccountState, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text)
    @click.argument("users", nargs=-1, required=True)
    @_JSON
    @click.pass_obj
    def command(settings: Settings, users: tuple[str, ...], as_json: bool) -> None:
        async def move(conn: psycopg.AsyncConnection[Any]) -> list[Account]:
            return [await store.set_state(conn, user, state) for user in users]

        moved = _run(settings, move)
        if state is not AccountState.ACTIVE:
            _stop_watches(settings, [account.user_id for account in moved])
        if as_json:
            click.echo(json.dumps([account.to_json() for account in moved]))
            return
        for account in moved:
            click.echo(f"{account.user_id} is {account.state.value}")

    return command


accounts.add_command(
    _state_command("pause", AccountState.PAUSED, "Stop syncing each USER until it is resumed.")
)
accounts.add_command(
    _state_command("resume", AccountState.ACTIVE, "Sync each USER again (from where it stopped).")
)


@accounts.command()
@click.argument("users", nargs=-1, required=True)
@click.option("--purge", is_flag=True, help="Also delete the account's rows in every table.")
@_JSON
@click.pass_obj
def remove(settings: Settings, users: tuple[str, ...], purge: bool, as_json: bool) -> None:
    """Stop serving each USER and delete its stored credentials; with --purge, delete all its
    data in Postgres too. A grant made with `add --oauth` is also revoked at Google (best effort:
    a warning says when it could not be; then revoke it from the Google Account's security page).
    """
    stored = _read_stored(settings, users)

    async def remove_all(conn: psycopg.AsyncConnection[Any]) -> dict[str, dict[str, int]]:
        return {user: await store.remove_account(conn, user, purge=purge) for user in users}

    removed = _run(settings, remove_all)
    _stop_watches(settings, list(removed), stored)
    for user, credential in stored.items():
        if credential.auth_kind != "oauth":
            continue  # a service account, or a token file's grant: not inboxflow's to revoke
        try:
            gmail_grants.revoke_grant(credential.info)
        except GrantError as exc:
            click.echo(
                f"warning: the Google grant of {user} was not revoked ({exc}); revoke it from the "
                "Google Account's security page (Third-party apps)",
                err=True,
            )
        else:
            click.echo(f"revoked the Google grant of {user}", err=True)
    if as_json:
        click.echo(json.dumps(removed))
        return
    for user, deleted in removed.items():
        rows = ", ".join(f"{table} {count}" for table, count in deleted.items() if count)
        click.echo(f"removed {user}" + (f" (rows deleted: {rows})" if purge else ""))


@accounts.command(name="import")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_JSON
@click.pass_obj
def import_command(settings: Settings, folder: Path, as_json: bool) -> None:
    """Encrypt each FOLDER/<user>.json authorized-user token file into Postgres and register
    the account (auth kind token_file). Files are only read: delete them (and unset
    INBOXFLOW_GMAIL_CREDENTIALS_DIR) once imported, since stored tokens take precedence.
    """
    ring = _writable_ring(settings)
    imported: list[dict[str, Any]] = []
    skipped: list[str] = []
    with _sync_connection(settings) as conn:
        for path in sorted(folder.glob("*.json")):
            try:
                user = store.normalize_address(path.stem)
                info, scope = gmail_grants.read_token_file(path)
            except (ValueError, GrantError) as exc:
                skipped.append(f"{path.name}: {exc}")
                continue
            new = vault.save_credential(
                conn,
                ring,
                user,
                CredentialKind.AUTHORIZED_USER,
                scope,
                info,
                auth_kind="token_file",
                label_filter=store.DEFAULT_LABEL_FILTER,
            )
            imported.append({"user_id": user, "new": new, "scope": scope})
    key_id = ring.current_key().key_id
    if as_json:
        click.echo(json.dumps({"key_id": key_id, "imported": imported, "skipped": skipped}))
    else:
        for entry in imported:
            scope_name = entry["scope"].rsplit("/", 1)[-1]
            click.echo(f"imported {entry['user_id']} ({scope_name}, key id {key_id})")
    for reason in skipped:
        click.echo(f"skipped {reason}", err=True)
    if not imported and not skipped:
        click.echo(f"no <user>.json files in {folder}", err=True)
    if skipped:
        raise click.ClickException(f"{len(skipped)} file(s) not imported")


@accounts.command(name="rotate-key")
@_JSON
@click.pass_obj
def rotate_key(settings: Settings, as_json: bool) -> None:
    """Re-encrypt every stored token with INBOXFLOW_TOKEN_KEY (all or nothing). Earlier keys
    must be in INBOXFLOW_TOKEN_PREVIOUS_KEYS until this has run; then they can be dropped.
    """
    ring = _writable_ring(settings)
    with _sync_connection(settings) as conn:
        try:
            report = vault.rotate_credentials(conn, ring)
        except CredentialsError as exc:
            raise click.ClickException(f"{exc} Nothing was re-encrypted.") from exc
    if as_json:
        click.echo(
            json.dumps(
                {
                    "key_id": report.key_id,
                    "rotated": report.rotated,
                    "already_current": report.already_current,
                }
            )
        )
        return
    click.echo(
        f"re-encrypted {len(report.rotated)} token(s) under key id {report.key_id} "
        f"({report.already_current} already were); {PREVIOUS_KEYS_ENV} is no longer needed"
    )


@accounts.command(name="new-key")
def new_key() -> None:
    """Print a fresh token key (32 random bytes, URL-safe base64) for INBOXFLOW_TOKEN_KEY.

    Only the key goes to stdout (`export INBOXFLOW_TOKEN_KEY=$(inboxflow accounts new-key)`);
    its key id goes to stderr. Keep it in a secret store: it opens every stored Gmail token.
    """
    key = make_key()
    click.echo(key)
    click.echo(f"key id {parse_key(key).key_id}", err=True)


def _add_with_credentials(
    settings: Settings,
    users: tuple[str, ...],
    labels: Sequence[str],
    *,
    scope: str,
    service_account_file: str | None,
    port: int,
    timeout: float,
) -> list[dict[str, Any]]:
    """Obtain, check and store the credentials of ``users``; return what was stored."""
    ring = _writable_ring(settings)
    try:
        addresses = [store.normalize_address(user) for user in users]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="USERS") from exc
    grants: list[tuple[str, CredentialKind, str, dict[str, Any], Credentials]] = []
    try:
        if service_account_file is None:
            if len(addresses) != 1:
                raise click.BadParameter("--oauth takes one address", param_hint="USERS")
            if not settings.gmail_oauth_client_file:
                raise click.ClickException(
                    "INBOXFLOW_GMAIL_OAUTH_CLIENT_FILE is not set: point it at the OAuth client "
                    "JSON (Desktop app) downloaded from the Google Cloud console"
                )
            config = gmail_grants.load_client_config(settings.gmail_oauth_client_file)
            user = addresses[0]
            consent = gmail_grants.run_consent_flow(
                config, scope, user=user, port=port, timeout_seconds=timeout
            )
            info = gmail_grants.authorized_user_info(consent, scope)
            grants.append((user, CredentialKind.AUTHORIZED_USER, "oauth", info, consent))
        else:
            key = gmail_grants.load_service_account_key(service_account_file)
            for user in addresses:
                creds = google_credentials(user, CredentialKind.SERVICE_ACCOUNT, scope, key)
                grants.append((user, CredentialKind.SERVICE_ACCOUNT, "service_account", key, creds))
        _check_grants(settings, [(user, creds, info) for user, _, _, info, creds in grants])
    except GrantError as exc:
        raise click.ClickException(str(exc)) from exc
    stored = []
    with _sync_connection(settings) as conn:
        for user, kind, auth_kind, info, _creds in grants:
            new = vault.save_credential(
                conn, ring, user, kind, scope, info, auth_kind=auth_kind, label_filter=labels
            )
            stored.append(
                {
                    "user_id": user,
                    "new": new,
                    "auth_kind": auth_kind,
                    "scope": scope,
                    "key_id": ring.current_key().key_id,
                }
            )
    return stored


def _check_grants(
    settings: Settings, grants: list[tuple[str, Credentials, Mapping[str, Any]]]
) -> None:
    """Call users.getProfile once per grant: it must work and be the user's own mailbox.

    A consent given as another Google account is revoked again (best effort) and refused.
    """
    by_user = {user: creds for user, creds, _ in grants}

    async def check() -> dict[str, str]:
        client = gmail_client_from(settings, credentials_for=by_user.__getitem__)
        try:
            found = {}
            for user in by_user:
                try:
                    found[user] = (await client.get_profile(user)).email_address.lower()
                except AccountRevokedError as exc:  # nothing is registered yet: Google's words
                    found[user] = f"error: {exc.detail}"
                except InboxflowError as exc:
                    found[user] = f"error: {exc}"
            return found
        finally:
            client.close()

    profiles = asyncio.run(check())
    for user, _creds, info in grants:
        seen = profiles[user]
        if seen == user:
            continue
        if seen.startswith("error: "):
            raise GrantError(
                f"the grant for {user} does not work with Gmail ({seen.removeprefix('error: ')}):"
                " nothing stored"
            )
        problem = f"the consent was given as {seen}, not {user}"
        if info.get("refresh_token"):
            try:
                gmail_grants.revoke_grant(info)
            except GrantError:
                problem += " (that grant could not be revoked: revoke it by hand)"
        raise GrantError(f"{problem}: nothing stored; sign in as {user} and retry")


def _stop_watches(
    settings: Settings,
    users: list[str],
    stored: Mapping[str, StoredCredential] | None = None,
) -> None:
    """Tell Gmail to stop pushing changes of ``users`` (when push is configured); best effort.

    ``stored``: credentials read before the accounts (and their rows) were deleted.
    A watch left behind only costs notifications the receiver drops (the account is not active).
    """
    if settings.gmail_pubsub_topic is None or not users:
        return
    known = dict(stored or {})
    fallback = gmail_credentials_from(settings)

    def credentials_for(user: str) -> Credentials:
        credential = known.get(user)
        if credential is None:
            return fallback(user)
        return google_credentials(user, credential.kind, credential.scope, credential.info)

    async def stop_all() -> None:
        client = gmail_client_from(settings, credentials_for=credentials_for)
        try:
            for user in users:
                try:
                    await stop_watch(client, user)
                except InboxflowError as exc:
                    click.echo(f"warning: Gmail watch of {user} not stopped: {exc}", err=True)
        finally:
            client.close()

    asyncio.run(stop_all())


def _writable_ring(settings: Settings) -> KeyRing:
    """The token keys, with a current one to encrypt with (or a usage error saying how)."""
    try:
        ring = token_keys_from(settings)
        ring.current_key()
    except (TokenKeyMissingError, TokenKeyFormatError) as exc:
        raise click.ClickException(str(exc)) from exc
    return ring


def _read_stored(settings: Settings, users: tuple[str, ...]) -> dict[str, StoredCredential]:
    """The users' stored credentials that can be read (a warning for those that cannot)."""
    try:
        ring = token_keys_from(settings)
    except TokenKeyFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    found: dict[str, StoredCredential] = {}
    with _sync_connection(settings) as conn:
        for user in users:
            try:
                credential = vault.load_credential(conn, ring, user.strip().lower())
            except CredentialsError as exc:
                click.echo(
                    f"warning: {exc} Its Gmail watch is not stopped and its grant not revoked.",
                    err=True,
                )
                continue
            if credential is not None:
                found[credential.user_id] = credential
    return found


@contextlib.contextmanager
def _sync_connection(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    """One blocking connection and transaction (committed when the block ends without error)."""
    try:
        with psycopg.connect(settings.database_url.get_secret_value()) as conn:
            yield conn
    except psycopg.OperationalError as exc:
        raise click.ClickException(f"cannot reach Postgres: {exc}") from exc


def _run(settings: Settings, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction; an unknown account is a usage error, not a traceback."""

    async def run() -> T:
        conninfo = settings.database_url.get_secret_value()
        async with await psycopg.AsyncConnection.connect(conninfo) as conn:
            return await work(conn)

    try:
        return asyncio.run(run())
    except AccountNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    except psycopg.OperationalError as exc:
        raise click.ClickException(f"cannot reach Postgres: {exc}") from exc
