"""examples/test_reminder.py passes when run as its docstring says: ``pytest`` on the file.

It runs in a pytest of its own, from the repository's root (so with this
repo's configuration: ``--strict-markers``, warnings as errors), on the
suite's Postgres server (``DBOS_TEST_DATABASE_URL``). Its tests are marked
``@pytest.mark.asyncio`` so that they run in pytest-asyncio's ``strict`` mode
as well as in this repo's ``auto``: it runs in ``strict``, the one that
needs the marks (the plugin's own tests cover both modes).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "examples/test_reminder.py"
# This run's settings, which the example's run must not inherit: the plugin has to
# load through its entry point, and the example never runs under xdist.
OUTER_PYTEST = {
    "PYTEST_DISABLE_PLUGIN_AUTOLOAD",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_XDIST_TESTRUNUID",
}


async def test_the_reminder_example_passes(pg_server_url: str) -> None:
    command = [
        *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
        *("-o", "asyncio_mode=strict", EXAMPLE),
    ]
    env = {k: v for k, v in os.environ.items() if k not in OUTER_PYTEST}
    env["DBOS_TEST_DATABASE_URL"] = pg_server_url
    with anyio.fail_after(100):
        done = await anyio.run_process(command, cwd=ROOT, env=env, check=False)
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output
    assert re.search(r"\b\d+ passed", output), output
    assert "skipped" not in output, output  # every test of the example ran
