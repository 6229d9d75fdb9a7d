"""An idempotent checkout service on FastAPI, made durable with dbos_async.

    DBOS_DATABASE_URL=postgresql://postgres@localhost/shop uvicorn examples.fastapi_app:app

``POST /checkout`` takes an order and an ``Idempotency-Key`` header. The key
becomes the workflow ID, so a request retried by a client, a proxy or an
impatient user (even concurrently, even after a crash) runs the checkout once
and gets the first execution's answer: the card is charged once.
``GET /checkout/{key}`` reports where that checkout stands.

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
async def checkout(order: Order) -> Receipt:
    charge_id = await charge_card(order.customer, order.amount_cents)
    order_id = DBOS.workflow_id
    assert order_id is not None
    return Receipt(
        order_id=order_id,
        customer=order.customer,
        amount_cents=order.amount_cents,
        charge_id=charge_id,
    )


def create_app(dbos: DBOS | None = None) -> FastAPI:
    """The service, on ``dbos`` (default: a runtime configured from the environment)."""
    dbos = dbos or DBOS(app_name="shop")
    app = FastAPI(title="shop", lifespan=dbos.lifespan)

    @app.post("/checkout")
    async def post_checkout(
        order: Order,
        idempotency_key: Annotated[str, Header(min_length=1, max_length=1024)],
    ) -> Receipt:
        try:
            with SetWorkflowID(idempotency_key):
                handle = await dbos.start_workflow(checkout, order)
            receipt: Receipt = await handle.get_result()
        except WorkflowConflictError as exc:
            raise HTTPException(409, str(exc)) from exc
        except PaymentDeclinedError as exc:
            raise HTTPException(402, str(exc)) from exc
        return receipt

    @app.get("/checkout/{order_id:path}")
    async def get_checkout(order_id: str) -> dict[str, Any]:
        status = await dbos.get_workflow_status(order_id)
        if status is None:
            raise HTTPException(404, f"no checkout {order_id!r}")
        return {
            "order_id": status.workflow_id,
            "status": status.status.value,
            "receipt": status.output,
            "error": str(status.error) if status.error is not None else None,
        }

    return app


app = create_app()
