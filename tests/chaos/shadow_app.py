"""A runtime the shadow-table scenario SIGKILLs mid-flight and starts again.

    python shadow_app.py DATABASE_URL start:N | finish:N

``start:N`` starts N four-step workflows ``sh-<i>`` and prints ``started``;
``finish:N`` recovers them and prints ``done`` once every one has finished.
"""

from __future__ import annotations

import asyncio
import sys

from ledger import book, four_steps

from dbos_async import DBOS, SetWorkflowID

URL, MODE = sys.argv[1], sys.argv[2]
HOLD = 0.3


async def main() -> None:
    book.open(URL)
    book.executor = "shadow"
    count = int(MODE.split(":")[1])
    async with DBOS(database_url=URL, app_version="shadow", executor_id="shadow") as dbos:
        if MODE.startswith("start:"):
            for i in range(count):
                with SetWorkflowID(f"sh-{i}"):
                    await dbos.start_workflow(four_steps, i, HOLD)
            print("started", flush=True)
        else:
            for i in range(count):
                await (await dbos.retrieve_workflow(f"sh-{i}")).get_result(timeout=60)
            print("done", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
