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
        assert dbos.database_url.startswith("postgresql://postgres:")
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


def _connect_without_password(url: str) -> None:
    port = url.rsplit(":", 1)[1].split("/")[0]
    _query(f"postgresql://postgres@127.0.0.1:{port}/postgres", "SELECT 1")


def test_a_cluster_lets_in_only_who_has_its_password(cluster_dir: Path) -> None:
    cluster = LocalCluster(cluster_dir, BIN_DIR)  # type: ignore[arg-type]
    url = cluster.start()
    assert _query(url, "SELECT 1") == 1
    with pytest.raises(asyncpg.InvalidPasswordError):
        _connect_without_password(url)  # any local user could, with trust
    password_file = cluster_dir / "password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    assert password_file.read_text().strip() in url


def test_a_trust_cluster_of_an_earlier_release_gets_a_password(cluster_dir: Path) -> None:
    cluster = LocalCluster(cluster_dir, BIN_DIR)  # type: ignore[arg-type]
    cluster.start()
    cluster.stop()
    # What releases before 0.2 left: trust for every host line, and no password file.
    hba = cluster_dir / "pgdata" / "pg_hba.conf"
    hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
    (cluster_dir / "password").unlink()
    _connect_first = LocalCluster(cluster_dir, BIN_DIR)  # type: ignore[arg-type]
    url = _connect_first.start()
    assert _query(url, "SELECT 1") == 1
    with pytest.raises(asyncpg.InvalidPasswordError):
        _connect_without_password(url)


@pytest.mark.parametrize("bad", ['quote"d', "dollar$(touch pwned)", "back`tick`", "back\\slash"])
def test_a_data_dir_the_shell_would_interpret_is_refused(cluster_dir: Path, bad: str) -> None:
    target = cluster_dir / bad
    with pytest.raises(RuntimeError, match="character"):
        LocalCluster(target, BIN_DIR).start()  # type: ignore[arg-type]
    assert not target.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_pid_file_owned_by_someone_else_is_not_trusted(cluster_dir: Path) -> None:
    cluster = LocalCluster(cluster_dir, BIN_DIR)  # type: ignore[arg-type]
    cluster.start()
    cluster.stop()
    pid_file = cluster_dir / "pgdata" / "postmaster.pid"
    pid_file.write_text(f"{os.getpid()}\n{cluster_dir}\n0\n6543\n")  # "a server on 6543"
    os.chown(pid_file, 12345, 12345)
    with pytest.raises(RuntimeError, match="owned by"):
        LocalCluster(cluster_dir, BIN_DIR).start()  # type: ignore[arg-type]
