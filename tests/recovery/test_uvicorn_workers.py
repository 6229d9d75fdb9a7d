"""Two uvicorn workers under the default executor ID never run each other's workflows.

Issue 19, item 1: both workers of ``uvicorn --workers 2`` are executor
"local". One is SIGKILLed mid-workflow and uvicorn starts another in its
place; the new worker must recover the dead one's workflows (at once: it sees
that process is gone) and leave alone those the surviving worker is running.
The step bodies' ledger file says which process ran what: no step may run in
two live processes, and every workflow finishes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from dbos_async import DBOSClient

HERE = Path(__file__).parent
STEPS = 4  # per job, a second each: a job is mid-way when its worker is killed


@pytest.fixture
async def server(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[Path, Path]]:
    """``uvicorn --workers 2`` on a Unix socket: (the socket, the ledger file)."""
    socket_path, ledger, log_path = tmp_path / "app.sock", tmp_path / "ledger", tmp_path / "log"
    log = await anyio.open_file(log_path, "wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "uvicorn_app:app",
        "--app-dir",
        str(HERE),
        "--workers",
        "2",
        "--uds",
        str(socket_path),
        "--log-level",
        "warning",
        env={
            **os.environ,
            "DBOS_DATABASE_URL": db_url,
            "LEDGER": str(ledger),
            "JOB_STEPS": str(STEPS),
        },
        stdout=log.wrapped,
        stderr=log.wrapped,
        start_new_session=True,  # so the whole tree can be killed at the end
    )
    try:
        yield socket_path, ledger
    finally:
        with anyio.move_on_after(20, shield=True):
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        await log.aclose()
        print((await anyio.Path(log_path).read_text())[-5000:])


async def _request(socket_path: Path, method: str, path: str) -> object:
    """One HTTP/1.0 request on a new connection; its JSON answer.

    A new connection each time: the workers share the listening socket, and
    each connection goes to whichever accepts it first.
    """
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        writer.write(f"{method} {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n".encode())
        head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    finally:
        writer.close()
    assert head.split()[1] == b"200", head + body
    return json.loads(body)


async def _workers(socket_path: Path) -> set[int]:
    """Ask until both workers have answered."""
    seen: set[int] = set()
    with anyio.fail_after(60):
        while len(seen) < 2:
            try:
                pid = await _request(socket_path, "GET", "/pid")
            except OSError:  # not listening yet
                await asyncio.sleep(0.1)
            else:
                assert isinstance(pid, int)
                seen.add(pid)
    return seen


def _ledger(path: Path) -> list[tuple[str, int, int, int]]:
    entries = []
    for line in path.read_text().splitlines():
        phase, n, k, pid = line.split()
        entries.append((phase, int(n), int(k), int(pid)))
    return entries


async def _until_steps_running_in(ledger: Path, pids: set[int]) -> None:
    """Wait until every one of ``pids`` has started a step.

    The ledger file is the event (nothing announces its lines): read it again
    and again.
    """
    with anyio.fail_after(30):
        while True:
            if pids <= {pid for *_, pid in await asyncio.to_thread(_ledger, ledger)}:
                return
            await asyncio.sleep(0.05)


async def test_a_respawned_worker_recovers_only_the_dead_workers_workflows(
    db_url: str, server: tuple[Path, Path]
) -> None:
    socket_path, ledger = server
    workers = await _workers(socket_path)
    owner: dict[int, int] = {}  # job -> the worker that started it
    n = 0
    with anyio.fail_after(60):
        while min(collections.Counter(owner.values()).get(w, 0) for w in workers) < 2:
            worker = await _request(socket_path, "POST", f"/jobs/{n}")
            assert isinstance(worker, int)
            owner[n] = worker
            n += 1
    await _until_steps_running_in(ledger, workers)
    victim, survivor = sorted(workers, key=lambda w: list(owner.values()).index(w))
    os.kill(victim, signal.SIGKILL)  # mid-workflow: each of its jobs has steps to go
    async with DBOSClient(db_url) as dbos:
        for job in owner:
            handle = await dbos.retrieve_workflow(f"job-{job}")
            assert await handle.get_result(timeout=60) == sum(range(STEPS))

    entries = await asyncio.to_thread(_ledger, ledger)
    starts: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    ends: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    for phase, job, k, pid in entries:
        (starts if phase == "start" else ends)[(job, k)].append(pid)
    respawned = {pid for *_, pid in entries} - workers
    print(f"jobs: {dict(collections.Counter(owner.values()))}; respawned worker(s): {respawned}")
    assert respawned, "the dead worker's jobs were recovered by no new worker"
    for step in sorted({(job, k) for job in owner for k in range(STEPS)}):
        # Only a step cut off by the SIGKILL may start again, in another process.
        live = [pid for pid in starts[step] if pid != victim]
        assert len(live) <= 1, f"step {step} ran in live processes {live}: {entries}"
        assert ends[step], f"step {step} never finished"
    # The survivor ran its own jobs to the end; no other process touched them.
    for job, worker in owner.items():
        if worker == survivor:
            assert {pid for k in range(STEPS) for pid in starts[(job, k)]} == {survivor}
