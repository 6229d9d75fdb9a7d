"""The local Postgres cluster behind the embedded default and the test fixture."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from dbos_async import DBOS, embedded
from dbos_async.embedded import LocalCluster, find_postgres_bin_dir

BIN_DIR = find_postgres_bin_dir(prefer_system=True)
pytestmark = pytest.mark.skipif(BIN_DIR is None, reason="no Postgres binaries")


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="dbos_emb_"))
    root.chmod(0o755)
    clusters: list[LocalCluster] = []
    yield root
    for cluster in clusters:
        cluster.stop()
    LocalCluster(root, BIN_DIR).stop()  # type: ignore[arg-type]
    shutil.rmtree(root, ignore_errors=True)


def _query(url: str, sql: str) -> object:
    async def run() -> object:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def test_data_survives_a_restart(cluster_dir: Path) -> None:
    cluster = LocalCluster(cluster_dir, BIN_DIR)  # type: ignore[arg-type]
    url = cluster.start()
    _query(url, "CREATE TABLE kept AS SELECT 42 AS answer")
    cluster.stop()
    url = cluster.start()
    assert _query(url, "SELECT answer FROM kept") == 42
    if os.geteuid() == 0:  # Postgres refuses root: the data belongs to nobody
        assert (cluster_dir / "pgdata").stat().st_uid != 0


def test_a_second_start_reuses_the_running_server(cluster_dir: Path) -> None:
    first = LocalCluster(cluster_dir, BIN_DIR)  # type: ignore[arg-type]
    url = first.start()
    second = LocalCluster(cluster_dir, BIN_DIR)  # type: ignore[arg-type]
    assert second.start() == url


def test_a_stale_pid_file_after_sigkill_is_handled(cluster_dir: Path) -> None:
    cluster = LocalCluster(cluster_dir, BIN_DIR)  # type: ignore[arg-type]
    url = cluster.start()
    _query(url, "CREATE TABLE kept AS SELECT 7 AS answer")
    pid_file = cluster_dir / "pgdata" / "postmaster.pid"
    pid = int(pid_file.read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # nothing to wait on: the server is not our child
    assert pid_file.exists()
    url = cluster.start()
    assert _query(url, "SELECT answer FROM kept") == 7


async def test_dbos_without_any_url_uses_the_embedded_postgres(
    cluster_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DBOS_DATABASE_URL", raising=False)
    monkeypatch.setattr(embedded, "wheel_bin_dir", lambda: BIN_DIR)
    async with DBOS(app_version="test", data_dir=cluster_dir) as dbos:
        assert dbos.database_url.startswith("postgresql://postgres@127.0.0.1:")
    assert await anyio.Path(cluster_dir / "pgdata" / "PG_VERSION").exists()


async def test_without_the_extra_the_message_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DBOS_DATABASE_URL", raising=False)
    monkeypatch.setattr(embedded, "wheel_bin_dir", lambda: None)
    with pytest.raises(RuntimeError) as info:
        await DBOS(app_version="test").launch()
    assert str(info.value) == embedded.MISSING_EXTRA_MESSAGE
    assert "dbos-async[embedded]" in str(info.value) and "DBOS_DATABASE_URL" in str(info.value)
