"""The dashboard in a real browser: a person finds a failed workflow, fixes the cause, forks it.

A runtime runs a few checkouts, one of which fails in its ``charge`` step
(the payment service is "down"); the dashboard is served by uvicorn in this
process, and Debian's Chromium (headless, driven by Playwright) logs in with
the token link, reads the overview, filters the list to ERROR, opens the
failed workflow (error and traceback shown), forks it from the failed step
once the cause is fixed, follows htmx's redirect to the fork and watches its
status turn SUCCESS over server-sent events, without a reload. No console
error and no CSP violation may occur on the way.

A screenshot of each page goes to ``tests/browser/screenshots/`` (git-ignored);
with ``DBOS_DOCS_SCREENSHOTS=1`` the README's set is refreshed in
``docs/screenshots/`` too (not on every run: they are committed files).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import pytest
import uvicorn
from playwright.async_api import Browser, ConsoleMessage, Page, Response, expect

from dbos_async import DBOS, SetWorkflowID, WorkflowHandle
from dbos_async.dashboard import Dashboard
from dbos_async.queue import Queue, forget_queue
from dbos_async.scheduler import forget_schedule, schedules

HERE = Path(__file__).parent
SHOTS = HERE / "screenshots"
DOCS = HERE.parent.parent / "docs" / "screenshots"
# The README's set: screenshot name here -> file name in docs/screenshots.
DOCS_SET = {
    "overview": "overview.png",
    "workflows": "workflows.png",
    "workflow-error": "workflow.png",
    "queues": "queues.png",
    "schedules": "schedules.png",
    "executors": "executors.png",
}
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 10_000
FAILED_ID = "eu/order-1003"  # its slash travels as %2F in every URL the pages build
HOSTILE_NOTE = "<b>gift wrap</b> & <i>card</i>"  # shown as text, never parsed
# Reports CSP violations as console errors, which the test collects (Playwright
# injects it through the DevTools protocol: the page's CSP does not apply).
CSP_REPORTER = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI}`);
});
"""

BROKEN = False  # the payment service is down while this is set
HOLD = asyncio.Event()  # a working charge waits for this: the test decides when it ends
PACKING = asyncio.Event()  # set once a fulfilment waits in its step
SHIPPED = asyncio.Event()  # queued fulfilments wait for this


@DBOS.step(name="shop.reserve")
async def reserve(order: str, items: list[str]) -> dict[str, Any]:
    return {"order": order, "items": items, "held": True}


@DBOS.step(name="shop.charge")
async def charge(order: str, amount: int) -> str:
    if BROKEN:
        raise ValueError("payment service down")
    await HOLD.wait()
    return f"ch_{order}_{amount}"


@DBOS.step(name="shop.email")
async def email(order: str, receipt: str) -> str:
    return f"receipt {receipt} sent for {order}"


@DBOS.workflow(name="shop.checkout")
async def checkout(order: str, items: list[str], amount: int, note: str = "") -> dict[str, Any]:
    await reserve(order, items)
    await DBOS.set_event("stage", "reserved")
    receipt = await charge(order, amount)
    await DBOS.set_event("stage", "paid")
    await email(order, receipt)
    return {"order": order, "receipt": receipt}


@DBOS.step(name="shop.pack")
async def pack(order: str) -> str:
    PACKING.set()
    await SHIPPED.wait()
    return f"packed {order}"


@DBOS.workflow(name="shop.fulfil")
async def fulfil(order: str) -> str:
    return await pack(order)


@DBOS.workflow(name="shop.nightly_report")
async def nightly_report(scheduled_at: Any, actual_at: Any) -> None:
    """A schedule declared by the test only: one at module level would tick in other tests."""


@pytest.fixture
def shop() -> Iterator[Queue]:
    """Fresh flags and events; a queue and a schedule declared for this test only."""
    global BROKEN, HOLD, PACKING, SHIPPED
    BROKEN = False
    HOLD, PACKING, SHIPPED = asyncio.Event(), asyncio.Event(), asyncio.Event()
    HOLD.set()
    before = {s.name for s in schedules()}
    queue = Queue("fulfilment", concurrency=1)
    DBOS.scheduled("0 0 3 * * *")(nightly_report)  # 03:00:00 UTC daily: never during a run
    try:
        yield queue
    finally:
        forget_queue(queue.name)
        for schedule in schedules():
            if schedule.name not in before:
                forget_schedule(schedule.name)


@contextlib.asynccontextmanager
async def serve(app: Dashboard) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields its base URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    await task
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        await task


class Camera:
    """Screenshots of the pages, at the viewport's size (a full-page one on request)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.taken: list[Path] = []

    async def shoot(self, name: str, *, full_page: bool = False) -> None:
        path = SHOTS / f"{name}.png"
        await self.page.screenshot(path=path, animations="disabled")
        self.taken.append(path)
        if full_page:
            path = SHOTS / f"{name}-full.png"
            await self.page.screenshot(path=path, full_page=True, animations="disabled")
            self.taken.append(path)

    async def publish(self) -> list[Path]:
        """Copy the README's set to docs/screenshots/ (with DBOS_DOCS_SCREENSHOTS=1)."""
        if os.environ.get("DBOS_DOCS_SCREENSHOTS") != "1":
            return []
        await anyio.Path(DOCS).mkdir(parents=True, exist_ok=True)
        written = []
        for name, target in DOCS_SET.items():
            data = await anyio.Path(SHOTS / f"{name}.png").read_bytes()
            await anyio.Path(DOCS / target).write_bytes(data)
            written.append(DOCS / target)
        return written


async def run_checkouts(dbos: DBOS, queue: Queue) -> tuple[str, list[WorkflowHandle[Any]]]:
    """Two checkouts that pass, one that fails (payment down), two fulfilments in a queue."""
    global BROKEN
    for order, items, amount in [
        ("order-1001", ["tea", "cups"], 42),
        ("order-1002", ["kettle"], 89),
    ]:
        with SetWorkflowID(order):
            handle = await dbos.start_workflow(checkout, order, items, amount)
        assert (await handle.get_result())["receipt"] == f"ch_{order}_{amount}"
    BROKEN = True
    with SetWorkflowID(FAILED_ID):
        handle = await dbos.start_workflow(checkout, "order-1003", ["teapot"], 120, HOSTILE_NOTE)
    with pytest.raises(ValueError, match="payment service down"):
        await handle.get_result()
    waiting = []
    for order in ("order-1001", "order-1002"):
        with SetWorkflowID(f"ship-{order}"):
            waiting.append(await queue.enqueue(fulfil, order))
    async with asyncio.timeout(10):
        await PACKING.wait()  # the first is PENDING, the second ENQUEUED behind it
    return FAILED_ID, waiting


async def test_find_fix_and_fork_a_failed_workflow(
    db_url: str, browser: Browser, shop: Queue
) -> None:
    await anyio.Path(SHOTS).mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    async with DBOS(database_url=db_url, app_name="shop", app_version="v1") as dbos:
        failed_id, waiting = await run_checkouts(dbos, shop)
        failed_step = next(
            s for s in await dbos.list_workflow_steps(failed_id) if s.error is not None
        )
        dashboard = Dashboard(dbos, auth=token, allowed_hosts=["127.0.0.1"])
        async with serve(dashboard) as base:
            context = await browser.new_context(viewport=VIEWPORT, base_url=base)
            context.set_default_timeout(TIMEOUT_MS)
            await context.add_init_script(CSP_REPORTER)
            page = await context.new_page()
            problems: list[str] = []

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    problems.append(f"console error on {page.url}: {message.text}")

            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

            def on_response(response: Response) -> None:
                if response.status >= 400:
                    problems.append(f"HTTP {response.status} for {response.url}")

            page.on("response", on_response)
            camera = Camera(page)
            try:
                await person_path(page, camera, base, token, failed_id, failed_step.step_id)
            finally:
                await context.close()  # closes the event streams before the server stops
        assert problems == []
        SHIPPED.set()
        for handle in waiting:
            assert (await handle.get_result()).startswith("packed ")
    written = await camera.publish()
    for path in camera.taken + written:
        assert (await anyio.Path(path).stat()).st_size > 0, path


async def person_path(
    page: Page, camera: Camera, base: str, token: str, failed_id: str, failed_step: int
) -> None:
    global BROKEN
    expect.set_options(timeout=TIMEOUT_MS)
    quoted_id = quote(failed_id, safe="")

    # The login link sets the session cookie and lands on the list, the token gone from the URL.
    await page.goto(f"login?token={token}")
    await expect(page).to_have_url(base)
    await expect(page.get_by_role("heading", level=1)).to_have_text("Workflows")

    # Overview: one ERROR in the last hour and day, the chart, the recent failure.
    await page.get_by_role("navigation").get_by_role("link", name="Overview").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    error_row = page.locator("section.counts tbody tr").filter(
        has=page.locator(".badge", has_text=re.compile(r"^ERROR$"))
    )
    await expect(error_row.locator("td")).to_have_text(["ERROR", "1", "1"])
    success_row = page.locator("section.counts tbody tr").filter(
        has=page.locator(".badge", has_text=re.compile(r"^SUCCESS$"))
    )
    await expect(success_row.locator("td")).to_have_text(["SUCCESS", "2", "2"])
    await expect(page.locator("svg.chart rect.bar.s-error").first).to_be_attached()
    await expect(page.locator("svg.chart rect.bar.s-success").first).to_be_attached()
    await expect(page.get_by_role("link", name=failed_id)).to_be_visible()
    await camera.shoot("overview")

    # The list, then filtered to ERROR with the form.
    await page.get_by_role("navigation").get_by_role("link", name="Workflows").click()
    await expect(page.locator("#rows tbody tr")).to_have_count(5)
    await camera.shoot("workflows")
    await page.get_by_role("checkbox", name="ERROR", exact=True).check()
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"[?&]status=ERROR(&|$)"))
    await expect(page.get_by_role("checkbox", name="ERROR", exact=True)).to_be_checked()
    rows = page.locator("#rows tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.locator(".badge")).to_have_text("ERROR")
    await camera.shoot("workflows-error")

    # The failed workflow: its error, its traceback, its inputs escaped, the failed step.
    await rows.get_by_role("link", name=failed_id).click()
    await expect(page).to_have_url(f"{base}workflows/{quoted_id}")
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Workflow {failed_id}")
    await expect(page.locator("#status")).to_have_text("ERROR")
    await expect(page.locator("pre.payload.error")).to_have_text("ValueError: payment service down")
    traceback = page.locator("details", has=page.locator("summary", has_text="Traceback"))
    await expect(traceback.locator("pre")).to_contain_text("Traceback (most recent call last)")
    await expect(traceback.locator("pre")).to_contain_text("in charge")
    await expect(traceback.locator("pre")).to_contain_text("ValueError: payment service down")
    await expect(page.locator("pre.payload").first).to_contain_text(HOSTILE_NOTE)
    await expect(page.locator("main b, main i")).to_have_count(0)
    await expect(page.locator("table.steps tbody tr").filter(has_text="charge")).to_contain_text(
        "ValueError: payment service down"
    )
    await expect(page.locator("svg.timeline rect.step.error")).to_have_count(1)
    await camera.shoot("workflow-error", full_page=True)

    # The cause is fixed; fork from the failed step (preselected) on its own version.
    BROKEN = False
    HOLD.clear()  # the fork's charge waits: the test sees it PENDING, then SUCCESS live
    fork = page.locator("form.fork")
    step = fork.locator("select[name=step]")
    await expect(step).to_have_value(str(failed_step))
    await expect(step.locator("option:checked")).to_have_text(
        re.compile(rf"^{failed_step} · shop\.charge \(failed\)$")
    )
    # "Its own" names the workflow's version: a fork never lands on the dashboard's.
    await expect(fork.locator("select[name=version]")).to_have_value("v1")
    async with page.expect_response(
        lambda r: "/events?workflow=" in r.url and quoted_id not in r.url
    ) as stream:
        await fork.get_by_role("button", name="Fork", exact=True).click()
        await page.wait_for_url(lambda url: "/workflows/" in url and quoted_id not in url)
    response = await stream.value
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    fork_id = page.url.rsplit("/", 1)[1]
    await expect(page.get_by_role("heading", level=1)).to_contain_text(fork_id)
    await expect(page.locator("#status")).to_have_text(re.compile(r"^(PENDING|ENQUEUED)$"))
    await expect(page.locator("#live").get_by_role("link", name=failed_id)).to_be_visible()
    await page.evaluate("window.sameDocument = true")
    HOLD.set()  # the charge goes through now
    await expect(page.locator("#status")).to_have_text("SUCCESS")
    await expect(page.locator("svg.timeline rect.step.error")).to_have_count(0)
    # The whole page followed, not just the status: the output, every step, and
    # the actions of a finished workflow.
    await expect(page.get_by_role("heading", name="Output")).to_be_visible()
    await expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    await expect(page.get_by_role("button", name="Resume")).to_be_visible()
    assert await page.evaluate("window.sameDocument === true"), "the page was reloaded"
    await camera.shoot("workflow-forked", full_page=True)

    # Queues (one PENDING at its limit of one, one ENQUEUED), schedules, executors.
    await page.get_by_role("navigation").get_by_role("link", name="Queues").click()
    queue = page.locator("section.queue").filter(has=page.get_by_role("heading", name="fulfilment"))
    await expect(queue.locator("dl.facts")).to_contain_text("1 of 1 (concurrency)")
    await expect(queue.locator("tbody tr")).to_have_count(2)
    await expect(queue.locator("tbody .badge")).to_have_text(["PENDING", "ENQUEUED"])
    await camera.shoot("queues")
    await page.get_by_role("navigation").get_by_role("link", name="Schedules").click()
    schedule = page.locator("tbody tr").filter(has_text="shop.nightly_report")
    await expect(schedule).to_contain_text("0 0 3 * * *")
    await expect(schedule).to_contain_text(re.compile(r"\d{4}-\d\d-\d\d 03:00:00 UTC"))
    await camera.shoot("schedules")
    await page.get_by_role("navigation").get_by_role("link", name="Executors").click()
    instances = page.locator("table.list").first.locator("tbody tr")
    await expect(instances).to_have_count(1)
    await expect(instances).to_contain_text("v1")
    await camera.shoot("executors")
