"""Two releases of one application for the deploy test, as a subprocess or imported by the CLI.

    EVOLVE_RELEASE=v1|v2 python evolve_app.py DATABASE_URL

Each release runs under its own app version (``v1``, ``v2``). ``deploy.order``
changes between them: v2 inserts an ``audit`` step before ``reserve``.
``deploy.note`` does not change. v1 starts ``order-1``, ``order-2`` and
``note-1``, each parked on a ``recv`` after its first step (the test SIGKILLs
it there); v2 only launches, then prints ``note-1``'s result once the test
has moved it to v2 and sent its message. ``dbos-async workflow check --app
evolve_app:app`` imports this module as v2's code (``EVOLVE_RELEASE=v2``).

Its steps (deploy_steps.py) write the ledger; a workflow prints ``waiting
<id>`` when it reaches its ``recv``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

import deploy_steps
from deploy_steps import audit, reserve, say, ship

from dbos_async import DBOS, SetWorkflowID

RELEASE = os.environ.get("EVOLVE_RELEASE", "v1")
app = DBOS(app_name="evolve", app_version=RELEASE, lease_seconds=3)
deploy_steps.release = RELEASE
_FORMAT = "%(levelname)s %(message)s"


@DBOS.workflow(name="deploy.order")
async def order() -> list[str]:
    out = [await audit()] if RELEASE == "v2" else []
    out.append(await reserve())
    say(f"waiting {DBOS.workflow_id}")  # plain code: printed again on replay
    out.append(await DBOS.recv("go", timeout_seconds=120))
    out.append(await ship())
    return out


@DBOS.workflow(name="deploy.note")
async def note() -> list[str]:
    out = [await reserve()]
    say(f"waiting {DBOS.workflow_id}")
    out.append(await DBOS.recv("go", timeout_seconds=120))
    out.append(await ship())
    return out


async def main(url: str) -> None:
    # The runtime's warnings (the stranded count) on stdout, where the test reads.
    logging.basicConfig(
        stream=sys.stdout, level=logging.WARNING, format="%(levelname)s %(message)s"
    )
    await deploy_steps.open_ledger(url)
    try:
        async with DBOS(
            database_url=url, app_name="evolve", app_version=RELEASE, lease_seconds=3
        ) as dbos:
            say(f"launched {dbos.app_version}")
            if RELEASE == "v1":
                for workflow_id, fn in (("order-1", order), ("order-2", order), ("note-1", note)):
                    with SetWorkflowID(workflow_id):
                        await dbos.start_workflow(fn)
                await asyncio.Event().wait()  # parked until the test kills the process
            else:
                handle = await dbos.retrieve_workflow("note-1")
                say(f"result note-1 {json.dumps(await handle.get_result(timeout=60))}")
    finally:
        await deploy_steps.close_ledger()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
