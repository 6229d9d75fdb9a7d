"""The demo (examples/quickstart.py) as a newcomer meets it (issue 19, item 6).

``--help`` prints usage; Ctrl-C mid-checkout exits non-zero and leaves the
checkouts PENDING; the next run says which checkouts resumed and how much of
the bank's wait is left, then finishes them.
"""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import anyio
from child import Child

DEMO = Path(__file__).parents[2] / "examples" / "quickstart.py"


async def test_help_prints_usage_and_exits_zero() -> None:
    result = await anyio.run_process([sys.executable, str(DEMO), "--help"], check=False)
    assert result.returncode == 0
    assert result.stdout.decode().startswith("usage: python examples/quickstart.py")
    wrong = await anyio.run_process([sys.executable, str(DEMO), "--nope"], check=False)
    assert wrong.returncode == 2 and b"unknown option: --nope" in wrong.stderr


async def test_ctrl_c_exits_non_zero_and_the_next_run_says_what_resumed(db_url: str) -> None:
    env = {"DBOS_DATABASE_URL": db_url}
    first = await Child.start(DEMO, env=env)
    waiting = 0
    while waiting < 2:  # both checkouts have recorded their wake-up time
        waiting += "for the bank" in await first.wait_for("[")
    first.proc.send_signal(signal.SIGINT)
    assert await first.finish() == 130
    assert first.proc.stdout is not None
    assert b"interrupted: the checkouts stay PENDING" in await first.proc.stdout.read()

    second = await Child.start(DEMO, env=env)
    resumed = await second.wait_for("[", within=30)
    while "of the bank's wait left" not in resumed:
        resumed = await second.wait_for("[", within=30)
    left = re.search(r"(\d+\.\d)s of the bank's wait left", resumed)
    assert left is not None, resumed
    assert 0.0 <= float(left.group(1)) <= 8.0
    done = ""
    while "checkout" not in done:
        done = await second.wait_for("[", within=30)
    assert await second.finish() == 0
