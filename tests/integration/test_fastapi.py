"""FastAPI: ``dbos.lifespan`` runs the runtime; the example's idempotent checkout, over ASGI."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

import httpx
import pytest
from asgi_lifespan import LifespanManager

from dbos_async import DBOS, WorkflowStatusString


def _load_example() -> ModuleType:
    path = Path(__file__).parents[2] / "examples" / "fastapi_app.py"
    spec = importlib.util.spec_from_file_location("fastapi_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastapi_app"] = module  # pydantic resolves the models' annotations here
    spec.loader.exec_module(module)
    return module


shop = _load_example()
HOSTILE_KEY = "order 'x'; DROP TABLE workflow_status; -- 100% $1 /slash?q=1#frag" + "k" * 900


@pytest.fixture
async def shop_dbos(db_url: str) -> DBOS:  # launched by the app's lifespan, not here
    shop.CHARGES.clear()
    return DBOS(database_url=db_url, app_version="test")


@pytest.fixture
async def http(shop_dbos: DBOS) -> AsyncIterator[httpx.AsyncClient]:
    app = shop.create_app(shop_dbos)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            yield client


def _order(customer: str = "ada", amount: int = 1200) -> dict[str, object]:
    return {"customer": customer, "amount_cents": amount}


def _as(customer: str, key: str) -> dict[str, str]:
    """Headers of a request by ``customer`` (the example's stand-in for authentication)."""
    return {"X-Customer": customer, "Idempotency-Key": key}


async def test_the_lifespan_launches_and_stops_the_runtime(db_url: str) -> None:
    dbos = DBOS(database_url=db_url, app_version="test")
    app = shop.create_app(dbos)
    assert "new" in repr(dbos)
    async with LifespanManager(app):
        assert "running" in repr(dbos)
        assert await DBOS.list_workflows() == []  # the facade finds it
    assert "stopped" in repr(dbos)


async def test_a_retried_checkout_charges_once(http: httpx.AsyncClient) -> None:
    first = await http.post("/checkout", json=_order(), headers=_as("ada", "k1"))
    assert first.status_code == 200, first.text
    receipt = first.json()
    assert receipt == {
        "order_id": "k1",
        "customer": "ada",
        "amount_cents": 1200,
        "charge_id": "ch_1",
    }
    again = await http.post("/checkout", json=_order(), headers=_as("ada", "k1"))
    assert again.status_code == 200 and again.json() == receipt
    other = await http.post("/checkout", json=_order("bob"), headers=_as("bob", "k2"))
    assert other.json()["charge_id"] == "ch_2"
    assert shop.CHARGES == [("ada", 1200), ("bob", 1200)]


async def test_keys_are_scoped_to_the_caller_and_bound_to_their_order(
    http: httpx.AsyncClient,
) -> None:
    ada = await http.post("/checkout", json=_order("ada"), headers=_as("ada", "shared"))
    bob = await http.post("/checkout", json=_order("bob", 500), headers=_as("bob", "shared"))
    assert bob.status_code == 200, bob.text
    assert bob.json()["customer"] == "bob"  # bob's own checkout, not ada's receipt
    assert ada.json()["charge_id"] != bob.json()["charge_id"]
    changed = await http.post("/checkout", json=_order("ada", 999), headers=_as("ada", "shared"))
    assert changed.status_code == 409, changed.text  # same key, another order
    someone_else = await http.post("/checkout", json=_order("ada"), headers=_as("eve", "k"))
    assert someone_else.status_code == 403  # paying as another customer
    assert shop.CHARGES == [("ada", 1200), ("bob", 500)]
    assert (await http.get("/checkout/shared", headers={"X-Customer": "eve"})).status_code == 404


async def test_the_status_endpoint_shows_only_checkouts(
    http: httpx.AsyncClient, shop_dbos: DBOS
) -> None:
    other = await shop_dbos.start_workflow(shop.internal_audit)
    await other.get_result()
    for path in (f"/checkout/{quote(other.workflow_id)}", "/checkout/anything"):
        response = await http.get(path, headers={"X-Customer": "ada"})
        assert response.status_code == 404, response.text


async def test_concurrent_retries_charge_once(http: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(
        *(http.post("/checkout", json=_order(), headers=_as("ada", "race")) for _ in range(8))
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.text for r in responses}) == 1
    assert shop.CHARGES == [("ada", 1200)]


async def test_status_endpoint(http: httpx.AsyncClient) -> None:
    await http.post("/checkout", json=_order(), headers=_as("ada", HOSTILE_KEY))
    got = await http.get("/checkout/" + quote(HOSTILE_KEY, safe=""), headers={"X-Customer": "ada"})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["order_id"] == HOSTILE_KEY and body["status"] == WorkflowStatusString.SUCCESS
    assert body["receipt"]["charge_id"] == "ch_1" and body["error"] is None
    missing = await http.get("/checkout/nope", headers={"X-Customer": "ada"})
    assert missing.status_code == 404


async def test_a_declined_payment_stays_declined_without_charging(http: httpx.AsyncClient) -> None:
    big = _order(amount=shop.DECLINE_ABOVE_CENTS + 1)
    for _ in range(2):
        declined = await http.post("/checkout", json=big, headers=_as("ada", "big"))
        assert declined.status_code == 402 and "limit" in declined.json()["detail"]
    status = (await http.get("/checkout/big", headers={"X-Customer": "ada"})).json()
    assert status["status"] == "ERROR" and "limit" in status["error"]
    assert shop.CHARGES == []


@pytest.mark.parametrize(
    ("headers", "body", "code"),
    [
        ({"X-Customer": "ada"}, _order(), 422),  # no idempotency key
        ({"Idempotency-Key": "k"}, _order(), 422),  # no caller
        (_as("ada", ""), _order(), 422),
        (_as("ada", "k" * 1025), _order(), 422),
        (_as("ada", "k"), {"customer": "ada", "amount_cents": -5}, 422),
    ],
)
async def test_bad_requests_are_rejected_before_anything_runs(
    http: httpx.AsyncClient, headers: dict[str, str], body: dict[str, object], code: int
) -> None:
    response = await http.post("/checkout", json=body, headers=headers)
    assert response.status_code == code, response.text
    assert await DBOS.list_workflows() == [] and shop.CHARGES == []
