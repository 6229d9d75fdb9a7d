"""Testing a durable workflow in virtual time: "remind a user three days after signup".

    pip install 'dbos-async[testing]'
    DBOS_TEST_DATABASE_URL=postgresql://postgres@localhost/postgres pytest examples/test_reminder.py

Without ``DBOS_TEST_DATABASE_URL`` (or ``--dbos-database-url``), the tests
start an embedded Postgres once (the ``embedded`` extra). Each test gets the
``dbos_env`` fixture: a runtime on a database of its own, dropped afterwards,
whose clock is a ``VirtualClock`` that moves only when the test moves it. The
workflow below sleeps three days; each test takes a fraction of a second.

The tests are marked ``@pytest.mark.asyncio``, so they run whether your
project sets pytest-asyncio's ``asyncio_mode`` to ``auto`` or leaves it
``strict``.
"""

from __future__ import annotations

import pytest

from dbos_async import DBOS, SetWorkflowID
from dbos_async.testing import TestEnvironment

DAY = 86400  # seconds

# What the step bodies did: one entry each time a body runs. A replayed step
# returns its recorded outcome without running, so it adds nothing here.
signups: list[str] = []
outbox: list[str] = []  # the reminders sent (in production: your email provider)


async def send_email(to: str, subject: str) -> None:
    """The real email call (a stand-in: an HTTP request to the provider, say)."""
    outbox.append(f"{to}: {subject}")


# -- the application --------------------------------------------------------------


@DBOS.step()
async def record_signup(user: str) -> None:
    signups.append(user)


@DBOS.step(retries_allowed=True, max_attempts=3, interval_seconds=60)
async def send_reminder(user: str) -> str:
    await send_email(user, "How is it going?")
    return f"reminded {user}"


@DBOS.workflow()
async def onboarding(user: str) -> str:
    await record_signup(user)
    await DBOS.sleep(3 * DAY)  # durable: a restart wakes on the original schedule
    return await send_reminder(user)


def reminders_to(user: str) -> int:
    return sum(1 for sent in outbox if sent.startswith(f"{user}:"))


# -- the tests --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_reminder_goes_out_three_days_after_signup(dbos_env: TestEnvironment) -> None:
    handle = await dbos_env.dbos.start_workflow(onboarding, "ada")

    await dbos_env.clock.advance(2 * DAY)  # returns once the runtime has caught up
    assert signups.count("ada") == 1
    assert reminders_to("ada") == 0
    assert (await handle.get_status()).status == "PENDING"

    await dbos_env.clock.advance(1 * DAY)
    assert await handle.get_result() == "reminded ada"
    assert reminders_to("ada") == 1


@pytest.mark.asyncio
async def test_a_crash_during_the_wait_sends_one_reminder(dbos_env: TestEnvironment) -> None:
    with SetWorkflowID("onboarding-grace"):
        await dbos_env.dbos.start_workflow(onboarding, "grace")
    await dbos_env.clock.advance(1 * DAY)

    await dbos_env.crash()  # as kill -9: the workflow stays PENDING, mid-sleep
    await dbos_env.restart()  # a new runtime, same database and clock: it recovers the workflow

    # Handles made before the crash belong to the dead runtime: get a new one.
    handle = await dbos_env.dbos.retrieve_workflow("onboarding-grace")
    await dbos_env.clock.advance(2 * DAY)  # the sleep ends on its original schedule
    assert await handle.get_result() == "reminded grace"
    assert signups.count("grace") == 1  # replayed from its record, not run again
    assert reminders_to("grace") == 1


@pytest.mark.asyncio
async def test_a_provider_outage_is_retried(dbos_env: TestEnvironment) -> None:
    calls: list[str] = []

    async def flaky_provider(user: str) -> str:  # replaces send_reminder's body
        calls.append(user)
        if len(calls) == 1:
            raise ConnectionError("provider unavailable")
        return f"reminded {user} (fake)"

    dbos_env.override_step(send_reminder, flaky_provider)
    handle = await dbos_env.dbos.start_workflow(onboarding, "alan")

    await dbos_env.clock.advance(3 * DAY)  # the first attempt fails...
    assert calls == ["alan"]
    await dbos_env.clock.advance(60)  # ...and the retry, a minute later, succeeds
    assert await handle.get_result() == "reminded alan (fake)"
    assert calls == ["alan", "alan"]
    assert reminders_to("alan") == 0  # the real send never ran


@pytest.mark.asyncio
@pytest.mark.dbos_env(auto_advance=True)
async def test_auto_advance_skips_the_wait(dbos_env: TestEnvironment) -> None:
    # No advance at all: whenever the runtime is idle and a workflow waits on
    # time, the clock jumps to that time.
    handle = await dbos_env.dbos.start_workflow(onboarding, "edsger")
    assert await handle.get_result() == "reminded edsger"
    assert reminders_to("edsger") == 1
