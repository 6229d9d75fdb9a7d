"""One measurement: a fresh database, one (or, for W6, two) child processes, their JSON.

Every measurement runs in a new process on a new database
(``bench_<workload>_<pid>``, dropped afterwards), so no runtime, pool, cache
or table bloat carries over from one repetition or one side to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.harness import FIRST_RUN_ENV, READY

logger = logging.getLogger("benchmarks")

ROOT = Path(__file__).resolve().parent.parent
TWO_PHASE = frozenset({"W6"})  # a seed process is SIGKILLed, a fresh one recovers


@dataclass(frozen=True, slots=True)
class Side:
    """How to start one side's measurement processes, and which workloads it has."""

    name: str
    command: tuple[str, ...]
    workloads: frozenset[str]
    cwd: Path = ROOT  # another checkout for the "before" side (its own dbos_async)


class MeasurementError(Exception):
    """A child process failed, timed out or printed no JSON."""


def database_url(server_url: str, database: str) -> str:
    """``server_url`` with its database name replaced."""
    base, _, query = server_url.partition("?")
    root = base.rsplit("/", 1)[0]
    return f"{root}/{database}" + (f"?{query}" if query else "")


@contextlib.asynccontextmanager
async def fresh_database(server_url: str, workload: str) -> AsyncIterator[str]:
    """Create ``bench_<workload>_<pid>``, yield its URL, drop it (and any leftover session)."""
    name = f"bench_{workload.lower()}_{os.getpid()}"
    admin = await asyncpg.connect(server_url)
    try:
        # Names come from our own workload ids and pid: nothing user-supplied.
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield database_url(server_url, name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _spawn(
    side: Side, workload: str, url: str, quick: bool, phase: str, stderr: Any, env: dict[str, str]
) -> asyncio.subprocess.Process:
    args = [*side.command, workload, "--db-url", url, "--phase", phase]
    if quick:
        args.append("--quick")
    return await asyncio.create_subprocess_exec(
        *args,
        cwd=side.cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, **env},
    )


def _tail(stderr: Any) -> str:
    stderr.seek(0)
    return str(stderr.read().decode(errors="replace"))[-2000:]


async def _collect(proc: asyncio.subprocess.Process, stderr: Any, limit_s: float) -> dict[str, Any]:
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise MeasurementError(f"timed out after {limit_s:.0f}s\n{_tail(stderr)}") from None
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise MeasurementError(f"exit {proc.returncode}, no JSON\n{_tail(stderr)}") from None
    if proc.returncode != 0 or "error" in result:
        raise MeasurementError(f"exit {proc.returncode}\n{result.get('error') or _tail(stderr)}")
    return result


async def _first_signal(proc: asyncio.subprocess.Process) -> bytes:
    """The first READY or JSON line on stdout (skipping anything a library printed), or EOF."""
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        if line.strip() == READY.encode() or line.startswith(b"{"):
            return line
    return b""


async def _seed_and_kill(
    side: Side, workload: str, url: str, quick: bool, limit_s: float
) -> dict[str, Any] | None:
    """Run the seed phase until it says READY, then SIGKILL it; its JSON if it said otherwise."""
    with tempfile.TemporaryFile() as stderr:
        proc = await _spawn(side, workload, url, quick, "seed", stderr, {FIRST_RUN_ENV: "1"})
        try:
            line = await asyncio.wait_for(_first_signal(proc), limit_s)
        except TimeoutError:
            line = b""
        try:
            if line.strip() == READY.encode():
                return None
            if line.startswith(b"{"):
                result: dict[str, Any] = json.loads(line)  # e.g. skipped
                if "error" not in result:
                    return result
            raise MeasurementError(f"seed phase did not get ready\n{_tail(stderr)}")
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
            await proc.wait()


async def measure(
    side: Side, workload: str, server_url: str, quick: bool, limit_s: float
) -> dict[str, Any]:
    """One repetition of ``workload`` on ``side``, on its own fresh database."""
    async with fresh_database(server_url, workload) as url:
        phase = "run"
        if workload in TWO_PHASE:
            early = await _seed_and_kill(side, workload, url, quick, limit_s)
            if early is not None:
                return early
            phase = "recover"
        with tempfile.TemporaryFile() as stderr:
            proc = await _spawn(side, workload, url, quick, phase, stderr, {})
            return await _collect(proc, stderr, limit_s)


async def server_info(server_url: str) -> dict[str, Any]:
    """The Postgres server's version and the settings that shape the figures."""
    conn = await asyncpg.connect(server_url)
    try:
        info: dict[str, Any] = {
            "version": await conn.fetchval("SELECT version()"),
            "version_short": "PostgreSQL " + await conn.fetchval("SHOW server_version"),
        }
        for setting in ("synchronous_commit", "fsync", "shared_buffers", "max_connections"):
            info[setting] = await conn.fetchval(f"SHOW {setting}")
        return info
    finally:
        await conn.close()
