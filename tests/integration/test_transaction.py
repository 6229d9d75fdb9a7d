"""Transactions: body and checkpoint commit together, exactly once."""

from __future__ import annotations

import math

import asyncpg
import pytest

from dbos_async import DBOS, NotInWorkflowError, SerializationError, SetWorkflowID


@pytest.fixture
async def tickets(conn: asyncpg.Connection) -> asyncpg.Connection:
    await conn.execute("CREATE TABLE public.tickets (id int PRIMARY KEY, holder text)")
    await conn.execute("INSERT INTO public.tickets SELECT g, NULL FROM generate_series(1, 3) g")
    return conn


@DBOS.transaction()
async def reserve(ticket: int, holder: str) -> bool:
    status = await DBOS.connection.execute(
        "UPDATE tickets SET holder = $2 WHERE id = $1 AND holder IS NULL", ticket, holder
    )
    return status == "UPDATE 1"


@DBOS.transaction(isolation="serializable")
async def reserve_then_fail(ticket: int) -> None:
    await DBOS.connection.execute("UPDATE tickets SET holder = 'ghost' WHERE id = $1", ticket)
    raise LookupError("payment system down")


@DBOS.workflow()
async def book(ticket: int, holder: str) -> bool:
    return await reserve(ticket, holder)


@DBOS.workflow()
async def book_and_fail(ticket: int) -> None:
    await reserve_then_fail(ticket)


async def test_body_and_checkpoint_commit_together(dbos: DBOS, tickets: asyncpg.Connection) -> None:
    with SetWorkflowID("book-1"):
        assert await book(1, "ada") is True
    assert await tickets.fetchval("SELECT holder FROM public.tickets WHERE id = 1") == "ada"
    row = await tickets.fetchrow("SELECT output FROM operation_outputs WHERE workflow_id='book-1'")
    assert row["output"] == "true"


async def test_replayed_transaction_does_not_run_again(
    dbos: DBOS, tickets: asyncpg.Connection
) -> None:
    with SetWorkflowID("book-2"):
        assert await book(2, "bob") is True
    # Make the workflow PENDING again and give the ticket away: a replay that re-ran
    # the body would now fail to reserve and return False.
    await tickets.execute("UPDATE workflow_status SET status='PENDING' WHERE workflow_id='book-2'")
    await tickets.execute("UPDATE public.tickets SET holder = NULL WHERE id = 2")
    async with DBOS(database_url=dbos.database_url, app_version="test") as again:
        assert await (await again.retrieve_workflow("book-2")).get_result() is True
    assert await tickets.fetchval("SELECT holder FROM public.tickets WHERE id = 2") is None


async def test_failed_body_rolls_back_and_records_the_error(
    dbos: DBOS, tickets: asyncpg.Connection
) -> None:
    with SetWorkflowID("book-3"), pytest.raises(LookupError, match="payment"):
        await book_and_fail(3)
    assert await tickets.fetchval("SELECT holder FROM public.tickets WHERE id = 3") is None
    row = await tickets.fetchrow("SELECT output, error FROM operation_outputs")
    assert row["output"] is None and "LookupError" in row["error"]


async def test_transaction_outside_a_workflow_runs_in_a_transaction(
    dbos: DBOS, tickets: asyncpg.Connection
) -> None:
    assert await reserve(1, "eve") is True
    assert await reserve(1, "mallory") is False
    assert await tickets.fetchval("SELECT count(*) FROM operation_outputs") == 0


async def test_connection_outside_a_transaction_raises() -> None:
    with pytest.raises(NotInWorkflowError):
        _ = DBOS.connection


@DBOS.transaction()
async def reserve_and_measure(ticket: int) -> float:
    await DBOS.connection.execute("UPDATE tickets SET holder = 'nan' WHERE id = $1", ticket)
    return math.nan


@DBOS.workflow()
async def book_and_measure(ticket: int) -> None:
    await reserve_and_measure(ticket)


async def test_a_result_that_cannot_be_encoded_rolls_back_and_is_recorded(
    dbos: DBOS, tickets: asyncpg.Connection
) -> None:
    with SetWorkflowID("book-nan"), pytest.raises(SerializationError, match="is nan"):
        await book_and_measure(3)
    assert await tickets.fetchval("SELECT holder FROM public.tickets WHERE id = 3") is None
    (step,) = await DBOS.list_workflow_steps("book-nan")
    assert isinstance(step.error, SerializationError) and step.output is None
