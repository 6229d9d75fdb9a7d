"""Two releases of one application, for the patching deploy test, run as subprocesses.

    python patch_app.py RELEASE DATABASE_URL

``v1`` starts workflow ``wf-old`` and parks it on a ``recv`` after its first
step (the test SIGKILLs it there). ``v2`` is the next release: the same
workflow with a new first step behind ``DBOS.patch("audit")``. Its launch
recovers ``wf-old``; it then starts ``wf-new``, and prints each workflow's
result once the test has sent both their message. Both releases run with
``enable_patching=True`` and no app version, so they share the pinned one.

Its steps (deploy_steps.py) write the ledger; the workflow prints ``waiting
<id>`` when it reaches its ``recv``.
"""

from __future__ import annotations

import asyncio
import json
import sys

import deploy_steps
from deploy_steps import audit, reserve, say, ship

from dbos_async import DBOS, SetWorkflowID

RELEASE = sys.argv[1]
URL = sys.argv[2]
deploy_steps.release = RELEASE


@DBOS.workflow(name="deploy.order")
async def order() -> list[str]:
    out = []
    if RELEASE == "v2" and await DBOS.patch("audit"):
        out.append(await audit())
    out.append(await reserve())
    say(f"waiting {DBOS.workflow_id}")  # plain code: printed again on replay
    out.append(await DBOS.recv("go", timeout_seconds=60))
    out.append(await ship())
    return out


async def main() -> None:
    await deploy_steps.open_ledger(URL)
    try:
        async with DBOS(database_url=URL, executor_id="local", enable_patching=True) as dbos:
            say(f"launched {dbos.app_version}")
            if RELEASE == "v1":
                with SetWorkflowID("wf-old"):
                    handle = await dbos.start_workflow(order)
                await handle.get_result()  # parked until the test kills the process
            else:
                with SetWorkflowID("wf-new"):
                    await dbos.start_workflow(order)
                for workflow_id in ("wf-old", "wf-new"):
                    handle = await dbos.retrieve_workflow(workflow_id)
                    result = await handle.get_result(timeout=30)
                    say(f"result {workflow_id} {json.dumps(result)}")
    finally:
        await deploy_steps.close_ledger()


if __name__ == "__main__":
    asyncio.run(main())
