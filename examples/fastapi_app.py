"""An idempotent checkout service on FastAPI, made durable with dbos_async.

    DBOS_DATABASE_URL=postgresql://postgres@localhost/shop uvicorn examples.fastapi_app:app

``POST /checkout`` takes an order and an ``Idempotency-Key`` header. The key,
scoped to the caller, becomes the workflow ID, so a request retried by a
client, a proxy or an impatient user (even concurrently, even after a crash)
runs the checkout once and gets the first execution's answer: the card is
charged once. The same key with another order is refused (409), and another
caller's key is another checkout. ``GET /checkout/{key}`` reports where the
caller's checkout stands. The caller is the ``X-Customer`` header here, a
stand-in for your authentication: never take it from the request in real life.

``dbos.lifespan`` launches the runtime when the app starts (migrating the
schema and recovering interrupted checkouts) and stops it when the app stops.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Field

from dbos_async import DBOS, SetWorkflowID, WorkflowConflictError


class Order(BaseModel):
    customer: str = Field(min_length=1)
    amount_cents: int = Field(gt=0)


class Receipt(BaseModel):
    order_id: str
    customer: str
    amount_cents: int
    charge_id: str


class PaymentDeclinedError(Exception):
    pass


DECLINE_ABOVE_CENTS = 100_000
CHARGES: list[tuple[str, int]] = []  # the demo bank's ledger: every charge it ever made


@DBOS.step()
async def charge_card(customer: str, amount_cents: int) -> str:
    if amount_cents > DECLINE_ABOVE_CENTS:
        raise PaymentDeclinedError(f"{amount_cents} cents is over the demo card's limit")
    CHARGES.append((customer, amount_cents))
    return f"ch_{len(CHARGES)}"


@DBOS.workflow()
async def checkout(order: Order, key: str) -> Receipt:
    charge_id = await charge_card(order.customer, order.amount_cents)
    return Receipt(
        order_id=key,
        customer=order.customer,
        amount_cents=order.amount_cents,
        charge_id=charge_id,
    )


@DBOS.workflow()
async def internal_audit() -> str:
    """Another workflow of the app, which the checkout endpoints must not show."""
    return "audit notes"


def checkout_id(customer: str, key: str) -> str:
    """The workflow ID of a caller's checkout: keys of different callers never meet.

    The length prefix keeps ("a:b", "c") and ("a", "b:c") apart.
    """
    return f"checkout:{len(customer)}:{customer}:{key}"


def create_app(dbos: DBOS | None = None) -> FastAPI:
    """The service, on ``dbos`` (default: a runtime configured from the environment)."""
    dbos = dbos or DBOS(app_name="shop")
    app = FastAPI(title="shop", lifespan=dbos.lifespan)

    @app.post("/checkout")
    async def post_checkout(
        order: Order,
        idempotency_key: Annotated[str, Header(min_length=1, max_length=1024)],
        x_customer: Annotated[str, Header(min_length=1, max_length=200)],
    ) -> Receipt:
        if order.customer != x_customer:
            raise HTTPException(403, "you can only check out as yourself")
        try:
            # A key names one order: the same key with another order is a
            # mistake, not a retry, and on_conflict="raise" refuses it.
            with SetWorkflowID(checkout_id(x_customer, idempotency_key), on_conflict="raise"):
                handle = await dbos.start_workflow(checkout, order, idempotency_key)
            receipt: Receipt = await handle.get_result()
        except WorkflowConflictError as exc:
            raise HTTPException(409, "this Idempotency-Key was used for another order") from exc
        except PaymentDeclinedError as exc:
            raise HTTPException(402, str(exc)) from exc
        return receipt

    @app.get("/checkout/{key:path}")
    async def get_checkout(
        key: str, x_customer: Annotated[str, Header(min_length=1, max_length=200)]
    ) -> dict[str, Any]:
        status = await dbos.get_workflow_status(checkout_id(x_customer, key))
        # Only the caller's own checkouts: not another workflow of the app.
        if status is None or status.name != checkout.__dbos_entry__.name:  # type: ignore[attr-defined]
            raise HTTPException(404, f"no checkout {key!r}")
        return {
            "order_id": key,
            "status": status.status.value,
            "receipt": status.output,
            "error": str(status.error) if status.error is not None else None,
        }

    return app


app = create_app()
