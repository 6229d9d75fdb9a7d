"""A child process the recovery tests read line by line, then kill."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import anyio


class Child:
    """A running test app whose stdout lines the test reads one by one."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, script: Path, *argv: str, env: dict[str, str]) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env},
        )
        return cls(proc)

    async def wait_for(self, prefix: str, within: float = 30) -> str:
        """Read lines until one starts with ``prefix``: the child's own output is the event."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        with anyio.fail_after(within):
            while line := (await self.proc.stdout.readline()).decode():
                if line.startswith(prefix):
                    return line.strip()
            err = (await self.proc.stderr.read()).decode()
        raise AssertionError(f"child exited before {prefix!r}: {err[-3000:]}")

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def finish(self, within: float = 30) -> int:
        with anyio.fail_after(within):
            return await self.proc.wait()
