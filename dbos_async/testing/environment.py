"""``TestEnvironment``: a runtime on a throwaway database and a virtual clock, for users' tests.

::

    async with TestEnvironment() as env:
        handle = await env.dbos.start_workflow(remind, "ada")
        await env.clock.advance(3 * 86400)   # three days pass in a few milliseconds
        assert await handle.get_result() == "reminded ada"

The environment owns one ``DBOS`` at a time (``env.dbos``) on its own
database and its own ``VirtualClock`` (``env.clock``), so two environments
run side by side in one process without seeing each other's time or rows.
``crash()`` stops the runtime as a SIGKILL would; ``restart()`` launches a
new one on the same database and clock, which recovers what was left
PENDING.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from dbos_async import registry
from dbos_async.checker import CheckResult, check_histories
from dbos_async.dbos import DBOS
from dbos_async.errors import DBOSError
from dbos_async.history import load_histories
from dbos_async.runtime import Runtime
from dbos_async.systemdb import executors as executors_table
from dbos_async.systemdb.pool import connect
from dbos_async.testing import databases
from dbos_async.testing.clock import VirtualClock


class TestEnvironment:
    """A runtime on a throwaway database with a virtual clock; an async context manager.

    Args:
        database_url: The Postgres server to create the environment's
            database on; None means ``$DBOS_TEST_DATABASE_URL``, else an
            embedded Postgres started once per process (the ``embedded`` extra).
        clock: The environment's clock; None is a new ``VirtualClock`` at the
            current time.
        auto_advance: Skip time forward whenever the runtime has settled and
            some workflow waits on time (a sleep, a timeout, a deadline, a
            queue delay), as Temporal's time-skipping test server does.
        keep_database: Leave the database behind on exit (to look at it).
        **dbos_options: Passed to ``DBOS`` (``app_name``, ``pool_size``,
            ``enable_patching``...); ``app_version`` defaults to ``"test"``.
    """

    __test__ = False  # pytest: not a test class, whatever its name says

    def __init__(
        self,
        database_url: str | None = None,
        *,
        clock: VirtualClock | None = None,
        auto_advance: bool = False,
        keep_database: bool = False,
        **dbos_options: Any,
    ) -> None:
        if "database_url" in dbos_options or "clock" in dbos_options:
            raise TypeError("pass database_url and clock to TestEnvironment itself")
        self.clock = clock if clock is not None else VirtualClock()
        self.auto_advance = auto_advance
        self.keep_database = keep_database
        self._options = {"app_version": "test", **dbos_options}
        self._server_url = database_url
        self._place: databases.Throwaway | None = None
        self._dbos: DBOS | None = None
        self._overrides: dict[str, registry.Registered] = {}
        self._auto: asyncio.Task[None] | None = None
        self._auto_failed: BaseException | None = None  # raised by the next settle() or exit

    # -- what tests use -----------------------------------------------------------------

    @property
    def dbos(self) -> DBOS:
        """The environment's current runtime (a new one after ``restart()``)."""
        if self._dbos is None:
            raise DBOSError(
                "the TestEnvironment is not running: use `async with TestEnvironment()`"
            )
        return self._dbos

    @property
    def database_url(self) -> str:
        """The URL of the environment's own database."""
        if self._place is None:
            raise DBOSError("the TestEnvironment has no database yet: enter it first")
        return self._place.database_url

    @property
    def schema(self) -> str:
        """The system schema in that database."""
        assert self._place is not None, "enter the TestEnvironment first"
        return self._place.schema

    async def settle(self) -> None:
        """Return once the runtime has done everything it can without time moving.

        Raises:
            TimeoutError: it stayed busy longer than the clock's ``settle_timeout``.
            Exception: what stopped ``auto_advance``, if something did.
        """
        self._raise_auto_failure()
        await self.clock.settle()

    async def crash(self) -> None:
        """Stop the runtime at once, as ``kill -9`` would: nothing more is recorded.

        Its workflows stay PENDING, step results not yet committed are lost,
        and handles it made stop working. ``restart()`` brings up a new one.
        A sync step body running in a thread cannot be stopped: it runs to its
        end, unrecorded (``restart()`` waits for it before recovering).
        """
        runtime = self._runtime()
        await runtime.crash()

    async def restart(self) -> DBOS:
        """Launch a new runtime on the same database and clock; it recovers the crashed one's work.

        After a ``crash()`` the crashed instance is deregistered first, as a
        host that saw the process die would, so recovery starts at once; it
        returns once the runtime has settled (the recovered workflows have run
        as far as they can without time moving). Get new handles from the new
        runtime: ``env.dbos.retrieve_workflow(id)``.
        """
        old = self._runtime()
        if old.crashed:
            await self._await_threads(old)
            await self._forget(old)
        else:
            await self.dbos.shutdown()
        self._dbos = None
        dbos = await self._launch()
        await self.clock.settle()  # what it recovered has run as far as it can
        return dbos

    def override_step(self, step: str | Callable[..., Any], fake: Callable[..., Any]) -> None:
        """Run ``fake`` in place of a step's body in this environment (until it exits).

        ``step`` is the step function or its registered name. The step keeps
        its checkpoint and retry policy: only the body changes. ``fake`` may
        be sync or async, whatever the step is.

        Raises:
            ValueError: no step is registered under that name.
        """
        name = step if isinstance(step, str) else _registered_name(step)
        entry = registry.lookup(name)
        if entry is None or entry.kind != "step":
            raise ValueError(f"no @DBOS.step is registered as {name!r}")
        options = {**entry.options, "is_async": inspect.iscoroutinefunction(fake)}
        self._overrides[name] = dataclasses.replace(entry, fn=fake, options=options)
        if self._dbos is not None:
            self._runtime().step_overrides = dict(self._overrides)

    async def replay(self, history_file: str | os.PathLike[str]) -> list[CheckResult]:
        """Check the histories in a file (``dbos-async workflow export``) against the current code.

        Returns one result per workflow; nothing is written and no step runs.

        Raises:
            AssertionError: some history no longer replays (a test assertion);
                the message lists each verdict.
        """
        path = Path(history_file)
        data = await anyio.Path(path).read_bytes()
        results = await check_histories(load_histories(data, name=str(path)))
        failed = [r for r in results if not r.compatible]
        if failed:
            raise AssertionError(
                f"{len(failed)} of {len(results)} recorded workflows do not replay:\n"
                + "\n".join(f"  {r.summary()}" for r in failed)
            )
        return results

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> TestEnvironment:
        self._place = await databases.create(
            self._server_url, self._options.get("schema", "dbos_async")
        )
        try:
            await self._launch()
        except BaseException:
            await self._drop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._stop_auto()
            if self._dbos is not None and not self._runtime().crashed:
                await self._dbos.shutdown()
        finally:
            self._dbos = None
            await self._drop()
        if exc is None:
            self._raise_auto_failure()

    async def _launch(self) -> DBOS:
        assert self._place is not None
        await self._stop_auto()
        options = {**self._options, "schema": self._place.schema}
        dbos = DBOS(self._place.database_url, clock=self.clock, **options)
        dbos._runtime.step_overrides = dict(self._overrides)
        await dbos.launch()
        self._dbos = dbos
        if self.auto_advance:
            self._auto = asyncio.create_task(self._skip_forever(), name="dbos_async auto_advance")
        return dbos

    async def _skip_forever(self) -> None:
        try:
            while True:
                await self.clock.work_pending()
                with contextlib.suppress(TimeoutError):  # busy for long: look again
                    if not await self.clock.skip():
                        await asyncio.sleep(0)
        except Exception as exc:  # said by the next settle() or the exit, not swallowed
            self._auto_failed = exc
            raise

    def _raise_auto_failure(self) -> None:
        failed, self._auto_failed = self._auto_failed, None
        if failed is not None:
            raise DBOSError(f"auto_advance stopped: {failed!r}") from failed

    async def _stop_auto(self) -> None:
        task, self._auto = self._auto, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _await_threads(self, crashed: Runtime) -> None:
        # A sync step body in a thread cannot be stopped the way a killed
        # process stops it: let it end (unrecorded) before anything re-runs it.
        threads = crashed.body_threads
        if not await anyio.to_thread.run_sync(threads.wait_none, self.clock.settle_timeout):
            raise TimeoutError(
                f"{crashed.body_threads.running} step bodies of the crashed runtime still run"
                f" in threads after {self.clock.settle_timeout} s"
            )

    async def _forget(self, crashed: Runtime) -> None:
        assert self._place is not None
        conn = await connect(self._place.database_url, schema=self._place.schema)
        try:
            await executors_table.forget_instance(conn, crashed.instance)
        finally:
            await conn.close()

    async def _drop(self) -> None:
        place = self._place
        if place is None or self.keep_database:
            return
        with anyio.CancelScope(shield=True):
            await place.drop()

    def _runtime(self) -> Runtime:
        return self.dbos._runtime


def _registered_name(fn: Callable[..., Any]) -> str:
    entry = getattr(fn, "__dbos_entry__", None)
    if not isinstance(entry, registry.Registered):
        raise ValueError(f"{fn!r} is not a registered @DBOS.step")
    return entry.name
