"""Subprocess apps of the fault suite: started, read line by line, killed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

HERE = Path(__file__).parent


class App:
    """A running app script whose printed lines are the events the test waits for."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: list[str] = []

    async def wait_for(self, prefix: str, within: float = 30) -> str:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        with anyio.fail_after(within):
            while line := (await self.proc.stdout.readline()).decode():
                self.seen.append(line.rstrip())
                if line.startswith(prefix):
                    return line.strip()
            err = (await self.proc.stderr.read()).decode()
        raise AssertionError(f"app exited before {prefix!r}: {err[-3000:]}")

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


@asynccontextmanager
async def apps() -> AsyncIterator[list[App]]:
    """Start apps with ``launch``; each is SIGKILLed when the block ends."""
    started: list[App] = []
    try:
        yield started
    finally:
        for app in started:
            await app.kill()


async def launch(into: list[App], script: str, *argv: str, **env: str) -> App:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / script),
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    app = App(proc)
    into.append(app)
    return app
