"""``dbos-async dashboard``: a real server in a subprocess, its login URL, and its refusals."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import anyio
import httpx

from dbos_async import DBOS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@DBOS.workflow()
async def shown_in_the_dashboard(x: int) -> int:
    return x


async def test_the_command_prints_a_login_url_that_works(dbos: DBOS) -> None:
    handle = await dbos.start_workflow(shown_in_the_dashboard, 7)
    await handle.get_result()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DBOS_DATABASE_URL"}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "dbos_async", "dashboard", "--port", str(port)),
        *("--database-url", dbos.database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        with anyio.fail_after(20):
            line = (await proc.stdout.readline()).decode()
        assert f"http://127.0.0.1:{port}/login?token=" in line, line
        login = line.split("open ", 1)[1].strip()
        async with httpx.AsyncClient() as client:
            # Printed once listening: no retry needed.
            response = await client.get(f"http://127.0.0.1:{port}/", timeout=20)
            assert response.status_code == 401  # no login yet
            response = await client.get(login)
            assert response.status_code == 303
            assert response.headers["location"] == f"http://127.0.0.1:{port}/"
            listed = await client.get(f"http://127.0.0.1:{port}/")  # the session cookie
            assert listed.status_code == 200
            assert handle.workflow_id in listed.text
        async with httpx.AsyncClient() as stranger:
            wrong = await stranger.get(login.replace("token=", "token=x"))
            assert wrong.status_code == 401
    finally:
        proc.terminate()
        await proc.wait()


async def test_no_login_is_refused_on_a_public_address() -> None:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "dbos_async", "dashboard", "--host", "0.0.0.0"),
        *("--insecure-no-auth", "--database-url", "postgresql://postgres@127.0.0.1:1/x"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 1 and out == b""
    assert err.decode().count("\n") == 1 and "non-loopback" in err.decode()
