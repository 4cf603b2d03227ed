"""``inboxflow console`` in a real browser, against a running pipeline.

Every worker and sink runs as a process (``running_pipeline``), the console runs as
``inboxflow console --port 0``, and Debian's chromium, driven by Playwright, opens the page: the
graph has a node per group and topic, its numbers move while mail flows, a dead-letter topic
redriven from the page empties, and an account paused and resumed from the page changes in
Postgres. ``INBOXFLOW_WRITE_SCREENSHOT=1`` also writes ``docs/images/console.png``.

Playwright's async API: its sync API keeps an event loop running in the test's thread, where
the pipeline helpers' ``asyncio.run`` cannot work; those helpers run in threads here instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright

from devstack.embedding_emulator import EmbeddingEmulator
from devstack.gmail_emulator.mailbox import ListQuery
from devstack.gmail_emulator.server import GmailEmulator
from devstack.processes import free_port_block
from devstack.stack import Stack
from inboxflow.supervisor import SINKS
from inboxflow.wiring import AGENTS, kafka_from
from ops.dlq import list_dlqs
from tests.e2e.test_pipeline import new_user
from tests.helpers import async_wait_until
from tests.pipeline_support import Pipeline, emulated_embeddings_env, running_pipeline

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LADDERS = {agent: [1, 2] for agent in AGENTS}
SCREENSHOT = ROOT / "docs" / "images" / "console.png"
# Read at import: the autouse clean_environ fixture removes INBOXFLOW_* before each test.
WRITE_SCREENSHOT = os.environ.get("INBOXFLOW_WRITE_SCREENSHOT") == "1"

pytestmark = pytest.mark.asyncio(loop_scope="module")


def listed(emulator: GmailEmulator, user: str) -> int:
    with emulator.state.lock:
        return len(emulator.mailbox(user).list(ListQuery()))


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        pytest.fail(
            "Debian's chromium is not installed, and the console's browser test needs it: "
            "run `apt-get install chromium` (or `make system`, which runs "
            "devstack/install-system-deps.sh)"
        )
    return CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))


@pytest.fixture(scope="module")
def embedding_api() -> Iterator[EmbeddingEmulator]:
    with EmbeddingEmulator(dimension=64).run_in_thread() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def gmail() -> Iterator[GmailEmulator]:
    emulator = GmailEmulator().start_in_thread()
    try:
        yield emulator
    finally:
        emulator.stop_thread()


@pytest.fixture(scope="module")
def metrics_base() -> int:
    return free_port_block(len(AGENTS) + len(SINKS))


@pytest.fixture(scope="module")
def pipeline(
    stack: Stack, gmail: GmailEmulator, embedding_api: EmbeddingEmulator, metrics_base: int
) -> Iterator[Pipeline]:
    env = {**emulated_embeddings_env(embedding_api), "INBOXFLOW_METRICS_PORT": str(metrics_base)}
    with running_pipeline(stack, gmail, env=env, retry_ladders=LADDERS) as running:
        yield running


@dataclass
class Console:
    """The console process and the URL it printed."""

    url: str
    process: subprocess.Popen[str]
    log: Path

    def check(self) -> None:
        """Fail with the console's log if it exited."""
        if self.process.poll() is not None:
            raise AssertionError(f"the console exited: {self.log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def console(
    stack: Stack, pipeline: Pipeline, metrics_base: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Console]:
    """``inboxflow console --port 0`` on the pipeline's settings, and the URL it prints."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INBOXFLOW_")},
        **stack.client_env(),
        "DATABASE_URL": pipeline.database_url,
        "INBOXFLOW_TOPIC_NAMESPACE": pipeline.settings.topic_namespace,
        "INBOXFLOW_TOPIC_PARTITIONS": str(pipeline.settings.topic_partitions),
        "INBOXFLOW_RETRY_LADDERS": json.dumps(LADDERS),
        "INBOXFLOW_METRICS_PORT": str(metrics_base),
    }
    log = tmp_path_factory.mktemp("console") / "console.log"
    with (
        log.open("w") as errors,
        subprocess.Popen(
            [sys.executable, "-m", "inboxflow", "console", "--port", "0", "--tick", "1"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=errors,  # a file: a full pipe would stall the console
            text=True,
        ) as process,
    ):
        try:
            yield Console(_printed_url(process, log, timeout=60), process, log)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _printed_url(process: subprocess.Popen[str], log: Path, timeout: float) -> str:
    """The URL the console prints first on stdout (its log if it exits instead)."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                found = re.search(r"http://\S+/", process.stdout.readline())
                if found:
                    return found.group(0)
            if process.poll() is not None:
                raise AssertionError(f"console exited: {log.read_text()[-3000:]}")
    raise TimeoutError(f"console printed no URL within {timeout}s")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, console: Console) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = await context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("crash", lambda crashed: errors.append("the page crashed"))
    opened.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    await opened.goto(console.url)
    await opened.wait_for_selector("body[data-snapshots]", timeout=60_000)
    try:
        yield opened
    finally:
        await context.close()
    assert errors == [], "the page's script failed"


async def text(page: Page, selector: str) -> str:
    return await page.locator(selector).first.inner_text()


async def svg_text(page: Page, selector: str) -> str:
    return await page.locator(selector).first.text_content() or ""


async def dlq_pending(page: Page, agent: str) -> str:
    return await text(page, f'#dlqs tr[data-agent="{agent}"] td:nth-child(2)')


async def test_the_graph_has_a_node_per_group_topic_and_dead_letter_topic(
    page: Page, pipeline: Pipeline
) -> None:
    catalogue = pipeline.catalogue

    async def names(kind: str) -> list[str]:
        nodes = page.locator(f'#graph [data-kind="{kind}"]')
        found = [await nodes.nth(i).get_attribute("data-name") for i in range(await nodes.count())]
        return sorted(name or "" for name in found)

    await page.locator('#graph [data-kind="group"]').first.wait_for(timeout=30_000)
    assert await names("group") == sorted(g.group_id for g in catalogue.groups)
    assert await names("topic") == sorted(t.name for t in catalogue.event_topics)
    assert await names("dlq") == sorted(g.dlq.name for g in catalogue.groups)
    assert await text(page, "#namespace") == catalogue.namespace


async def test_numbers_change_while_the_pipeline_runs(
    page: Page, pipeline: Pipeline, console: Console, gmail: GmailEmulator
) -> None:
    fetched = pipeline.catalogue.message_fetched.name
    records = f'#graph [data-name="{fetched}"] text.metric'
    before = await svg_text(page, records)
    user = new_user(gmail, 12, seed=301)
    total = listed(gmail, user)

    await asyncio.to_thread(pipeline.sync, [user], full=True)

    async def moved() -> bool:
        alive(pipeline, console)
        return await svg_text(page, records) != before

    await async_wait_until(moved, timeout=120, message="the fetched topic's count moves")
    row = page.locator(f'#accounts tr[data-user="{user}"]')
    await row.wait_for(timeout=30_000)

    async def units_charged() -> bool:
        alive(pipeline, console)
        return not (await row.locator("td").nth(5).inner_text()).startswith(("?", "0 "))

    await async_wait_until(units_charged, timeout=60, message="Gmail units charged to the user")
    await asyncio.to_thread(pipeline.wait_settled, [user], messages=total, timeout=240)
    done = page.locator('#jobs tr[data-kind="embed"] td').nth(4)  # kind, queued, ..., done

    async def embeds_done() -> bool:
        alive(pipeline, console)
        return await done.count() == 1 and int(await done.inner_text()) >= total

    await async_wait_until(embeds_done, timeout=30, message="done embed jobs on the page")
    workers = page.locator("#workers tbody tr")

    async def every_worker_up() -> bool:
        alive(pipeline, console)
        states = [
            await workers.nth(i).locator("td").nth(1).inner_text()
            for i in range(await workers.count())
        ]
        return states == ["up"] * (len(AGENTS) + len(SINKS))

    await async_wait_until(every_worker_up, timeout=60, message="every worker's metrics up")


async def test_a_redrive_confirmed_on_the_page_empties_the_dead_letter_topic(
    page: Page,
    pipeline: Pipeline,
    console: Console,
    gmail: GmailEmulator,
    embedding_api: EmbeddingEmulator,
) -> None:
    user = new_user(gmail, 4, seed=302)
    total = listed(gmail, user)
    embedding_api._api_key = "rotated-key"  # our key is refused (401): embeds are dead-lettered
    try:
        await asyncio.to_thread(pipeline.sync, [user], full=True)

        async def dead_lettered() -> bool:
            alive(pipeline, console)
            return await dlq_pending(page, "embed") == str(total)

        await async_wait_until(dead_lettered, timeout=180, message=f"{total} embed dead letters")
    finally:
        embedding_api._api_key = None  # the operator fixes the key
    if WRITE_SCREENSHOT:
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT), full_page=True)
    row = page.locator('#dlqs tr[data-agent="embed"]')

    await row.locator('button[data-action="redrive"]').click()
    await row.locator('button[data-action="cancel-redrive"]').click()  # nothing is sent
    assert await dlq_pending(page, "embed") == str(total)
    await row.locator('button[data-action="redrive"]').click()
    confirm = row.locator('button[data-action="confirm-redrive"]')
    await confirm.wait_for(timeout=30_000)
    assert f"Send {total} record(s)" in await row.inner_text()
    await confirm.click()

    async def emptied() -> bool:
        alive(pipeline, console)
        return await dlq_pending(page, "embed") == "0"

    await async_wait_until(emptied, timeout=60, message="the embed DLQ empty on the page")

    async def reported() -> bool:
        return f"sent {total} record(s)" in await text(page, "#action-result")

    await async_wait_until(reported, timeout=30, message="the redrive's report on the page")
    summaries = await list_dlqs(kafka_from(pipeline.settings), pipeline.catalogue)
    assert next(s for s in summaries if s.agent == "embed").pending == 0
    await asyncio.to_thread(pipeline.wait_settled, [user], messages=total, timeout=240)
    assert (await asyncio.to_thread(pipeline.jobs, [user]))["embed"] == {"done": total}


def alive(pipeline: Pipeline, console: Console) -> None:
    """Fail at once, with logs, when a worker or the console died (rather than time out)."""
    pipeline.check_workers()
    console.check()


def account_state(pipeline: Pipeline, user: str) -> str:
    rows = pipeline.query("SELECT state FROM accounts WHERE user_id = %(u)s", u=user)
    return str(rows[0][0])


async def test_an_account_is_paused_and_resumed_from_the_page(
    page: Page, pipeline: Pipeline, console: Console, gmail: GmailEmulator
) -> None:
    user = new_user(gmail, 2, seed=303)
    await asyncio.to_thread(pipeline.sync, [user])
    row = page.locator(f'#accounts tr[data-user="{user}"]')
    await row.wait_for(timeout=30_000)

    async def state_is(wanted: str) -> bool:
        alive(pipeline, console)
        return await asyncio.to_thread(account_state, pipeline, user) == wanted

    await row.locator('button[data-action="pause"]').click()
    await async_wait_until(lambda: state_is("paused"), timeout=30, message="paused in Postgres")
    await row.locator('button[data-action="resume"]').click(timeout=30_000)
    await async_wait_until(lambda: state_is("active"), timeout=30, message="active in Postgres")

    async def shown_active() -> bool:
        return await row.get_attribute("data-state") == "active"

    await async_wait_until(shown_active, timeout=30, message="active on the page")


async def test_a_post_without_the_pages_token_is_refused(console: Console) -> None:
    request = urllib.request.Request(  # noqa: S310 - the console on loopback
        f"{console.url}api/dlq/embed/redrive", data=b'{"execute": true}', method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
    refused.value.close()
    assert refused.value.code == 403
