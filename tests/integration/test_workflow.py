"""Workflows: results, errors, identity and idempotency, child workflows, handles."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import uuid
from decimal import Decimal

import asyncpg
import pydantic
import pytest

from dbos_async import (
    DBOS,
    NonDeterministicWorkflowError,
    SerializationError,
    SetWorkflowID,
    WorkflowConflictError,
    WorkflowNotFoundError,
    WorkflowStatusString,
)

runs: list[str] = []


@DBOS.step()
async def double(x: int) -> int:
    runs.append(f"double:{x}")
    return 2 * x


@DBOS.workflow()
async def doubler(x: int) -> int:
    return await double(x)


class PaymentDeclinedError(Exception):
    def __init__(self, card: str, amount: int) -> None:
        super().__init__(f"card {card} declined for {amount}")
        self.card = card
        self.amount = amount


@DBOS.workflow()
async def failing(card: str) -> None:
    raise PaymentDeclinedError(card, 42)


async def test_workflow_returns_result_and_records_success(dbos: DBOS) -> None:
    with SetWorkflowID("wf-ok"):
        assert await doubler(21) == 42
    status = await DBOS.get_workflow_status("wf-ok")
    assert status is not None
    assert status.status is WorkflowStatusString.SUCCESS
    assert status.output == 42
    assert status.input == {"args": [21], "kwargs": {}}
    assert status.executor_id == "local" and status.app_version == "test"


async def test_error_is_recorded_and_reraised_with_its_type(dbos: DBOS) -> None:
    with SetWorkflowID("wf-err"):
        handle = await DBOS.start_workflow(failing, "4242")
    with pytest.raises(PaymentDeclinedError, match="4242"):
        await handle.get_result()
    status = await handle.get_status()
    assert status.status is WorkflowStatusString.ERROR
    assert isinstance(status.error, PaymentDeclinedError)
    assert status.error.card == "4242" and status.error.amount == 42
    # A second runtime reading the row rebuilds the same type from the record.
    other = DBOS(database_url=dbos.database_url, executor_id="reader", app_version="test")
    async with other:
        with pytest.raises(PaymentDeclinedError):
            await (await other.retrieve_workflow("wf-err")).get_result()


started_bodies: list[str] = []
_gates: list[asyncio.Event] = []


@pytest.fixture
def gate() -> asyncio.Event:
    """An event the `gated` workflow waits on (made per test: events bind to a loop)."""
    _gates[:] = [asyncio.Event()]
    started_bodies.clear()
    return _gates[0]


@DBOS.workflow()
async def gated(tag: str) -> str:
    started_bodies.append(tag)
    await _gates[0].wait()
    return f"done:{tag}"


async def test_twenty_concurrent_starts_with_one_id_run_the_body_once(
    dbos: DBOS, gate: asyncio.Event
) -> None:

    async def start() -> object:
        with SetWorkflowID("same-id"):
            handle = await DBOS.start_workflow(gated, "x")
        return await handle.get_result()

    tasks = [asyncio.create_task(start()) for _ in range(20)]
    await asyncio.sleep(0.05)
    gate.set()
    assert await asyncio.gather(*tasks) == ["done:x"] * 20
    assert started_bodies == ["x"]


async def test_same_id_across_two_runtimes_runs_once(dbos: DBOS, gate: asyncio.Event) -> None:
    other = DBOS(database_url=dbos.database_url, executor_id="other", app_version="test")
    async with other:
        handles = []
        for runtime in [dbos, other] * 5:
            with SetWorkflowID("shared-id"):
                handles.append(await runtime.start_workflow(gated, "y"))
        gate.set()
        results = await asyncio.gather(*(h.get_result(timeout=10) for h in handles))
    assert results == ["done:y"] * 10
    assert started_bodies == ["y"]


async def test_existing_id_returns_first_result_without_running(dbos: DBOS) -> None:
    runs.clear()
    with SetWorkflowID("idem"):
        assert await doubler(1) == 2
    with SetWorkflowID("idem"):
        assert await doubler(500) == 2  # the first execution's result
    assert runs == ["double:1"]


async def test_same_id_different_function_conflicts(dbos: DBOS) -> None:
    with SetWorkflowID("taken"):
        await doubler(1)
    with SetWorkflowID("taken"), pytest.raises(WorkflowConflictError) as info:
        await DBOS.start_workflow(failing, "x")
    assert info.value.workflow_id == "taken"


async def test_start_workflow_returns_once_durably_recorded(
    dbos: DBOS, conn: asyncpg.Connection, gate: asyncio.Event
) -> None:
    with SetWorkflowID("durable"):
        handle = await DBOS.start_workflow(gated, "z")
    row = await conn.fetchrow(
        "SELECT status, inputs FROM workflow_status WHERE workflow_id=$1", "durable"
    )
    assert row is not None and row["status"] == "PENDING"
    gate.set()
    assert await handle.get_result() == "done:z"


async def test_retrieve_unknown_workflow_raises(dbos: DBOS) -> None:
    with pytest.raises(WorkflowNotFoundError) as info:
        await DBOS.retrieve_workflow("nope")
    assert info.value.workflow_id == "nope"
    assert await DBOS.get_workflow_status("nope") is None


async def test_get_result_timeout_leaves_workflow_running(dbos: DBOS, gate: asyncio.Event) -> None:
    handle = await DBOS.start_workflow(gated, "t")
    with pytest.raises(TimeoutError):
        await handle.get_result(timeout=0.05)
    gate.set()
    assert await handle.get_result() == "done:t"


seen_ids: list[tuple[str | None, int | None]] = []


@DBOS.step()
async def where_am_i() -> tuple[str | None, int | None]:
    return DBOS.workflow_id, DBOS.step_id


@DBOS.workflow()
async def identity() -> list[object]:
    seen_ids.append((DBOS.workflow_id, DBOS.step_id))
    return [await where_am_i(), await where_am_i()]


async def test_workflow_id_and_step_id(dbos: DBOS) -> None:
    assert DBOS.workflow_id is None and DBOS.step_id is None
    with SetWorkflowID("ids"):
        result = await identity()
    assert result == [("ids", 0), ("ids", 1)]
    assert seen_ids[-1] == ("ids", None)


@DBOS.workflow()
async def parent_wf(x: int) -> list[int]:
    a = await doubler(x)
    handle = await DBOS.start_workflow(doubler, x + 1)
    return [a, await handle.get_result()]


async def test_child_workflows_get_deterministic_ids_and_parent(dbos: DBOS) -> None:
    with SetWorkflowID("parent"):
        assert await parent_wf(1) == [2, 4]
    for child_id in ("parent-0", "parent-1"):
        status = await DBOS.get_workflow_status(child_id)
        assert status is not None and status.parent_workflow_id == "parent"
        assert status.status is WorkflowStatusString.SUCCESS


@DBOS.step()
async def echo(x: int) -> int:
    await asyncio.sleep(0.001 * (5 - x))  # finish in reverse order
    return x


@DBOS.workflow()
async def fan_out() -> list[int]:
    return list(await asyncio.gather(*(echo(i) for i in range(5))))


async def test_gather_step_ids_follow_call_order(dbos: DBOS, conn: asyncpg.Connection) -> None:
    with SetWorkflowID("fan"):
        assert await fan_out() == [0, 1, 2, 3, 4]
    rows = await conn.fetch(
        "SELECT step_id, output FROM operation_outputs WHERE workflow_id='fan' ORDER BY step_id"
    )
    assert [(r["step_id"], r["output"]) for r in rows] == [(i, str(i)) for i in range(5)]


@DBOS.workflow(name="tests.renamed_step_workflow")
async def calls_double() -> int:
    return await double(3)


async def test_replay_with_a_different_step_raises_nondeterministic(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    with SetWorkflowID("nd"):
        await calls_double()
    await conn.execute(
        "UPDATE operation_outputs SET function_name='other.step' WHERE workflow_id='nd'"
    )
    await conn.execute("UPDATE workflow_status SET status='PENDING' WHERE workflow_id='nd'")
    # Recovery on a fresh runtime replays it against the altered history.
    async with DBOS(database_url=dbos.database_url, app_version="test") as again:
        with pytest.raises(NonDeterministicWorkflowError) as info:
            await (await again.retrieve_workflow("nd")).get_result()
    assert info.value.step_id == 0 and info.value.recorded_name == "other.step"


class Order(pydantic.BaseModel):
    item: str
    qty: int


@dataclasses.dataclass
class Receipt:
    order: Order
    total: Decimal
    at: datetime.datetime
    ref: uuid.UUID
    raw: bytes
    tags: set[str]
    pair: tuple[int, str]


@DBOS.step()
async def make_receipt(order: Order) -> Receipt:
    return Receipt(
        order,
        Decimal("9.99"),
        datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        uuid.UUID(int=7),
        b"\x00\xff",
        {"a", "b"},
        (1, "x"),
    )


@DBOS.workflow()
async def typed(order: Order) -> Receipt:
    return await make_receipt(order)


async def test_typed_values_round_trip_through_the_database(dbos: DBOS) -> None:
    order = Order(item="ticket", qty=2)
    with SetWorkflowID("typed"):
        local = await typed(order)
    other = DBOS(database_url=dbos.database_url, executor_id="reader", app_version="test")
    async with other:
        remote = await (await other.retrieve_workflow("typed")).get_result()
    assert isinstance(remote, Receipt) and remote == local


@DBOS.workflow()
async def takes_anything(x: object) -> None:
    return None


async def test_unserializable_input_raises_before_anything_is_written(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    with SetWorkflowID("bad-input"), pytest.raises(SerializationError, match="takes_anything"):
        await DBOS.start_workflow(takes_anything, object())
    assert await conn.fetchval("SELECT count(*) FROM workflow_status") == 0


@DBOS.step()
async def returns_object() -> object:
    return object()


@DBOS.workflow()
async def bad_step_output() -> object:
    return await returns_object()


async def test_unserializable_step_output_is_recorded_as_the_steps_error(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    with SetWorkflowID("bad-out"), pytest.raises(SerializationError, match="returns_object"):
        await bad_step_output()
    # Not the value: the error, so replay raises it without running the body again.
    (step,) = await DBOS.list_workflow_steps("bad-out")
    assert step.output is None and isinstance(step.error, SerializationError)
    status = await DBOS.get_workflow_status("bad-out")
    assert status is not None and status.status is WorkflowStatusString.ERROR


@pytest.mark.parametrize(
    "workflow_id",
    ["ünïcødé-🎟️", "'; DROP TABLE workflow_status; --", "line\nbreak\ttab", "x" * 1024, "\u202eRTL"],
)
async def test_hostile_ids_round_trip(dbos: DBOS, workflow_id: str) -> None:
    with SetWorkflowID(workflow_id):
        assert await doubler(2) == 4
    handle = await DBOS.retrieve_workflow(workflow_id)
    assert handle.workflow_id == workflow_id
    assert (await handle.get_status()).workflow_id == workflow_id


@pytest.mark.parametrize("workflow_id", ["", "nul\x00byte", "x" * 1025, 42])
async def test_invalid_ids_are_rejected_clearly(dbos: DBOS, workflow_id: object) -> None:
    with pytest.raises(ValueError, match="workflow ID"):
        SetWorkflowID(workflow_id)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workflow ID"):
        await DBOS.retrieve_workflow(workflow_id)  # type: ignore[arg-type]


def test_duplicate_names_raise_at_decoration() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @DBOS.workflow(name=doubler.__dbos_entry__.name)  # type: ignore[attr-defined]
        async def impostor(x: int) -> int:
            return x


@DBOS.workflow()
async def naps(seconds: float) -> float:
    await DBOS.sleep(seconds)
    return seconds


@DBOS.workflow()
async def race_children() -> float:
    slow = await DBOS.start_workflow(naps, 0.5)
    fast = await DBOS.start_workflow(naps, 0.01)
    first = await DBOS.wait_first([slow, fast])
    result: float = await first.get_result()
    return result


async def test_wait_first_returns_the_first_handle_to_finish(dbos: DBOS) -> None:
    slow = await dbos.start_workflow(naps, 5)
    fast = await dbos.start_workflow(naps, 0.01)
    assert await DBOS.wait_first([slow, fast]) is fast
    with pytest.raises(ValueError, match="at least one"):
        await DBOS.wait_first([])


async def test_wait_first_in_a_workflow_replays_its_recorded_choice(
    db_url: str, conn: asyncpg.Connection
) -> None:
    async with DBOS(database_url=db_url, app_version="test"):
        with SetWorkflowID("race"):
            assert await race_children() == 0.01
        await (await DBOS.retrieve_workflow("race-0")).get_result()  # the slow one ends too
    await conn.execute("UPDATE workflow_status SET status = 'PENDING' WHERE workflow_id = 'race'")
    async with DBOS(database_url=db_url, app_version="test"):
        # Both children have finished now; replay still picks the recorded one.
        assert await (await DBOS.retrieve_workflow("race")).get_result(timeout=5) == 0.01
    chosen = await conn.fetchval(
        "SELECT output FROM operation_outputs WHERE workflow_id = 'race' "
        "AND function_name = 'DBOS.wait_first'"
    )
    assert chosen == '"race-1"'
