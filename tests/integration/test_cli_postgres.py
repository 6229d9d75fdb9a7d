"""``dbos-async postgres start|stop|status|url``, on the embedded wheel's binaries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from dbos_async import cli_postgres, embedded
from dbos_async.cli import main
from dbos_async.embedded import RECORD_NAME, LocalCluster
from dbos_async.pg_install import wheel_bin_dir

WHEEL_BIN_DIR = wheel_bin_dir()
needs_wheel = pytest.mark.skipif(WHEEL_BIN_DIR is None, reason="no dbos-async[embedded] wheel")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the server runs as nobody)")


@dataclass
class Run:
    code: int
    out: str
    err: str


Invoke = Callable[..., Run]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Invoke:
    """``dbos-async ARGS`` in this process: its exit status and what it printed."""

    def invoke(*args: str) -> Run:
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        out, err = capsys.readouterr()
        code = exited.value.code
        return Run(code if isinstance(code, int) else 0, out, err)

    return invoke


def _one_line_error(result: Run, *needles: str) -> None:
    assert result.code == 1, result
    assert result.out == "", result
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dbos-async: error: "), result.err
    assert "unexpected" not in lines[0] and "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(autouse=True)
def relocation_base(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Where a root run keeps what nobody cannot reach (the wheel's binaries, in a venv
    under /root): a directory of the test's, not /var/lib/dbos_async."""
    base = Path(tempfile.mkdtemp(prefix="dbos_cli_base_"))
    base.chmod(0o755)
    monkeypatch.setattr(embedded, "RELOCATION_BASE", base)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def project() -> Iterator[Path]:
    """A project directory (0755); its server is stopped even when the test fails."""
    root = Path(tempfile.mkdtemp(prefix="dbos_cli_pg_"))
    root.chmod(0o755)
    data_dir = root / ".dbos_async"
    yield data_dir
    if WHEEL_BIN_DIR is not None:
        with contextlib.suppress(RuntimeError):
            LocalCluster(data_dir, WHEEL_BIN_DIR).stop()
    shutil.rmtree(root, ignore_errors=True)


def _select_one(url: str) -> object:
    async def query() -> object:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    return asyncio.run(query())


@needs_wheel
def test_start_status_url_stop(cli: Invoke, project: Path) -> None:
    where = ("--data-dir", str(project))
    never = cli("postgres", "status", *where)
    assert never.code == cli_postgres.NOT_CREATED and "(not created)" in never.out
    _one_line_error(cli("postgres", "url", *where), "no embedded Postgres", str(project))

    started = cli("postgres", "start", *where)
    assert started.code == 0 and "started" in started.err
    url = started.out.strip()  # only the URL on stdout, for $(...)
    assert url.startswith("postgresql://postgres:") and _select_one(url) == 1
    port = json.loads((project / RECORD_NAME).read_text())["port"]
    assert f":{port}/" in url

    status = cli("postgres", "status", *where)
    assert status.code == 0
    assert "running: yes" in status.out and f"port: {port}" in status.out
    assert f"pgdata: {project / 'pgdata'}" in status.out
    as_json = cli("--json", "postgres", "status", *where)
    assert json.loads(as_json.out) == {
        "running": True,
        "port": port,
        "data_dir": str(project),
        "pgdata": str(project / "pgdata"),
        "created": True,
    }
    assert cli("postgres", "url", *where).out.strip() == url
    again = cli("postgres", "start", *where)
    assert again.out.strip() == url and "already running" in again.err

    stopped = cli("postgres", "stop", *where)
    assert stopped.code == 0 and "stopped" in stopped.out
    down = cli("postgres", "status", *where)
    assert down.code == cli_postgres.STOPPED and "running: no" in down.out
    assert f"port: {port}" in down.out
    not_running = cli("postgres", "stop", *where)
    assert not_running.code == 0 and "not running" in not_running.out
    quiet = cli("postgres", "url", *where)  # the stable URL, and a note
    assert quiet.code == 0 and quiet.out.strip() == url and "not running" in quiet.err

    # The port is the directory's: the next start comes back on it.
    assert cli("postgres", "start", *where).out.strip() == url
    assert cli("postgres", "stop", *where).code == 0


@needs_wheel
def test_the_data_dir_defaults_to_dbos_async_in_the_current_directory(
    cli: Invoke, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project.parent)
    started = cli("postgres", "start")
    assert started.code == 0 and (project / RECORD_NAME).exists()
    status = cli("postgres", "status", "--data-dir", str(project))
    assert status.code == 0 and f"data dir: {project}" in status.out
    assert cli("postgres", "stop").code == 0


@needs_wheel
def test_a_refused_data_dir_is_one_line(cli: Invoke, project: Path) -> None:
    project.mkdir()
    (project / RECORD_NAME).write_text("not json\n")
    for command in ("start", "stop", "status", "url"):
        result = cli("postgres", command, "--data-dir", str(project))
        _one_line_error(result, "not a record")


def test_without_the_extra_the_message_says_what_to_do(
    cli: Invoke, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_postgres, "wheel_bin_dir", lambda: None)
    result = cli("postgres", "start", "--data-dir", str(project))
    _one_line_error(result, embedded.MISSING_EXTRA_MESSAGE)


@needs_wheel
@needs_root
def test_as_root_a_project_nobody_can_enter_works(
    cli: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    outer = Path(tempfile.mkdtemp(prefix="dbos_cli_locked_"))  # 0700, like /root
    base = Path(tempfile.mkdtemp(prefix="dbos_cli_base_"))
    base.chmod(0o755)
    # Where /var/lib/dbos_async would be: a test leaves nothing there.
    monkeypatch.setattr(embedded, "RELOCATION_BASE", base)
    data_dir = outer / "shop" / ".dbos_async"
    where = ("--data-dir", str(data_dir))
    try:
        url = cli("postgres", "start", *where).out.strip()
        assert _select_one(url) == 1
        pgdata = Path(json.loads((data_dir / RECORD_NAME).read_text())["pgdata"])
        assert pgdata.is_relative_to(base)
        status = cli("postgres", "status", *where)
        assert status.code == 0 and f"pgdata: {pgdata}" in status.out
        assert "stopped" in cli("postgres", "stop", *where).out
        assert cli("postgres", "start", *where).out.strip() == url
        assert _select_one(url) == 1
        assert "stopped" in cli("postgres", "stop", *where).out
    finally:
        if WHEEL_BIN_DIR is not None:
            with contextlib.suppress(RuntimeError):
                LocalCluster(data_dir, WHEEL_BIN_DIR, relocation_base=base).stop()
        shutil.rmtree(outer, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
