"""``inboxflow console``: serve the live console page until Ctrl-C.

Thin: binds the socket (so ``--port 0`` can print the port it got), builds the app with
``inboxflow.console.app.build_app`` and runs it under uvicorn with the project's logging.
"""

from __future__ import annotations

import socket

import click
import uvicorn

from inboxflow.cli.status import metrics_option
from inboxflow.console.app import DEFAULT_TICK_SECONDS, build_app
from inboxflow.settings import Settings
from inboxflow.status import default_metrics_urls

GRACEFUL_SHUTDOWN_SECONDS = 2  # open event streams never end on their own


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. The console has no authentication: expose it only behind a "
    "proxy that authenticates.",
)
@click.option(
    "--port",
    default=8087,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on; 0 picks a free one (printed).",
)
@metrics_option
@click.option(
    "--tick",
    default=DEFAULT_TICK_SECONDS,
    show_default=True,
    type=click.FloatRange(min=0.5),
    help="Seconds between updates pushed to the page.",
)
@click.pass_obj
def console(
    settings: Settings, host: str, port: int, metrics_urls: tuple[str, ...], tick: float
) -> None:
    """Serve a live page of the pipeline: graph, lag, rates, DLQs, breakers, accounts, jobs.

    From the page an operator can redrive a dead-letter topic (after a confirmation) and pause
    or resume an account.
    """
    urls = list(metrics_urls) or default_metrics_urls(settings)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
    listener.listen(128)
    bound = listener.getsockname()[1]
    app = build_app(settings, metrics_urls=urls, host=host, tick_seconds=tick)
    config = uvicorn.Config(
        app,
        log_config=None,  # the CLI configured logging (inboxflow.logs)
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    click.echo(f"inboxflow console on http://{shown}:{bound}/ (Ctrl-C to stop)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo("warning: the console has no authentication; put it behind one", err=True)
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        listener.close()
