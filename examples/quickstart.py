"""The ticket checkout from the DBOS docs, made durable with dbos_async.

    make demo            # or: python examples/quickstart.py [--reset] [--help]

Two customers check out: reserve a ticket (a transaction), wait for the bank
(a durable sleep), pay (a step), and undo the reservation if the payment is
declined (another transaction). Kill the process while it waits (Ctrl-C, or
`kill -9`) and run it again: each checkout resumes where it stopped; no ticket
is reserved twice. Run it once more and it just prints the recorded results.
`--reset` starts over with fresh tickets.

With no DBOS_DATABASE_URL set, the data lives in an embedded Postgres under
./.dbos_async/ (the `embedded` extra), so it survives restarts.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import asyncpg

from dbos_async import DBOS, SetWorkflowID

BANK_DELAY_SECONDS = 8.0
_t0 = time.monotonic()


def say(workflow_id: str | None, message: str) -> None:
    print(f"[{time.monotonic() - _t0:5.1f}s] {workflow_id}: {message}", flush=True)


@DBOS.transaction()
async def reserve_ticket(show: str, customer: str) -> bool:
    status = await DBOS.connection.execute(
        "UPDATE demo_tickets SET holder = $2 "
        "WHERE id = (SELECT id FROM demo_tickets WHERE show = $1 AND holder IS NULL "
        "            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)",
        show,
        customer,
    )
    reserved = status == "UPDATE 1"
    say(DBOS.workflow_id, f"reserve ticket for {customer}: {'ok' if reserved else 'sold out'}")
    return reserved


@DBOS.step()
async def process_payment(card: str, amount: int) -> bool:
    approved = not card.endswith("0000")  # the demo bank declines cards ending in 0000
    say(
        DBOS.workflow_id,
        f"charge {amount} to card ...{card[-4:]}: {'approved' if approved else 'DECLINED'}",
    )
    return approved


@DBOS.transaction()
async def undo_reserve_ticket(show: str, customer: str) -> None:
    await DBOS.connection.execute(
        "UPDATE demo_tickets SET holder = NULL WHERE show = $1 AND holder = $2", show, customer
    )
    say(DBOS.workflow_id, f"released the ticket of {customer}")


@DBOS.workflow()
async def checkout(show: str, customer: str, card: str) -> bool:
    if not await reserve_ticket(show, customer):
        return False
    say(
        DBOS.workflow_id,
        f"waiting {BANK_DELAY_SECONDS:.0f}s for the bank "
        "(durable sleep: kill me now, then run me again)",
    )
    await DBOS.sleep(BANK_DELAY_SECONDS)
    if await process_payment(card, 120):
        return True
    await undo_reserve_ticket(show, customer)
    return False


ORDERS = [("order-ada", "ada", "4111111111111111"), ("order-bob", "bob", "4000000000000000")]


async def report_resumed(dbos: DBOS) -> None:
    """Say which checkouts an earlier run left unfinished, and how long their wait has left."""
    for workflow_id, _, _ in ORDERS:
        status = await dbos.get_workflow_status(workflow_id)
        if status is None or status.status.is_terminal:
            continue
        steps = await dbos.list_workflow_steps(workflow_id)
        wakes = [s.output for s in steps if s.name == "DBOS.sleep" and s.output is not None]
        if wakes:
            left = max(0.0, float(wakes[0]) - time.time())
            wait = f"{left:.1f}s of the bank's wait left"
            say(workflow_id, f"unfinished by an earlier run, resuming: {wait}")
        else:
            say(workflow_id, "unfinished by an earlier run, resuming before the bank's wait")


async def main(reset: bool) -> None:
    async with DBOS(app_name="quickstart", app_version="quickstart-1") as dbos:
        print(f"dbos_async quickstart on {dbos.database_url}", flush=True)
        pool = await asyncpg.connect(dbos.database_url)
        try:
            await pool.execute(
                "CREATE TABLE IF NOT EXISTS demo_tickets "
                "(id serial PRIMARY KEY, show text NOT NULL, holder text)"
            )
            if reset:
                await pool.execute("DROP SCHEMA dbos_async CASCADE; TRUNCATE demo_tickets")
                print("reset: cleared the recorded workflows and tickets; run again", flush=True)
                return
            if await pool.fetchval("SELECT count(*) FROM demo_tickets") == 0:
                await pool.execute(
                    "INSERT INTO demo_tickets (show) SELECT 'hamlet' FROM generate_series(1, 2)"
                )
        finally:
            await pool.close()
        await report_resumed(dbos)
        handles = []
        for workflow_id, customer, card in ORDERS:
            with SetWorkflowID(workflow_id):
                handles.append(await DBOS.start_workflow(checkout, "hamlet", customer, card))
        finished = [(await h.get_status()).status.is_terminal for h in handles]
        for handle, done in zip(handles, finished, strict=True):
            if done:
                say(handle.workflow_id, "already finished in an earlier run")
            paid = await handle.get_result()
            say(handle.workflow_id, f"checkout {'succeeded' if paid else 'failed'}")
    if not os.environ.get("DBOS_DATABASE_URL"):
        print(
            "the embedded Postgres keeps running for the next run; "
            "`dbos-async postgres stop` stops it",
            flush=True,
        )


USAGE = "usage: python examples/quickstart.py [--reset] [--help]"

if __name__ == "__main__":
    options = set(sys.argv[1:])
    if options & {"-h", "--help"}:
        print(USAGE + "\n" + (__doc__ or ""))
        sys.exit(0)
    unknown = sorted(options - {"--reset"})
    if unknown:
        print(f"{USAGE}\nunknown option: {' '.join(unknown)}", file=sys.stderr)
        sys.exit(2)
    try:
        asyncio.run(main(reset="--reset" in options))
    except KeyboardInterrupt:
        print("\ninterrupted: the checkouts stay PENDING; run again to resume them", flush=True)
        sys.exit(130)  # 128 + SIGINT, as a shell reports an interrupted command
