"""What the two deploy apps (patch_app.py, evolve_app.py) and their tests share.

The apps' steps append ``(workflow_id, entry, release)`` to ``public.ledger``,
the table the tests' ``ledger`` fixture makes: it says which release ran each
step, and that none ran twice. An app sets ``release`` and opens the pool
before it launches.
"""

from __future__ import annotations

import asyncpg

from dbos_async import DBOS

release = ""
_pool: list[asyncpg.Pool] = []

LEDGER_TABLE = (
    "CREATE TABLE public.ledger (workflow_id text, entry text, release text, "
    "at timestamptz DEFAULT clock_timestamp())"
)


def say(line: str) -> None:
    """A line for the test, which reads the app's stdout."""
    print(line, flush=True)


async def open_ledger(url: str) -> None:
    """Open the pool the steps write the ledger through."""
    _pool.append(await asyncpg.create_pool(url, min_size=1, max_size=4))


async def close_ledger() -> None:
    """Close it."""
    await _pool.pop().close()


async def ledger(entry: str) -> str:
    await _pool[0].execute(
        "INSERT INTO public.ledger (workflow_id, entry, release) VALUES ($1, $2, $3)",
        DBOS.workflow_id,
        entry,
        release,
    )
    return entry


@DBOS.step(name="deploy.audit")
async def audit() -> str:
    return await ledger("audit")


@DBOS.step(name="deploy.reserve")
async def reserve() -> str:
    return await ledger("reserve")


@DBOS.step(name="deploy.ship")
async def ship() -> str:
    return await ledger("ship")
