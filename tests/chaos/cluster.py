"""A throwaway Postgres cluster the fault tests may restart, freeze and thaw.

Built on ``dbos_async.embedded.start_throwaway_cluster``; a restart comes back
on the same port, so every URL handed out stays valid. Every method blocks
(it runs programs or reads ``/proc``): call them through ``anyio.to_thread``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from dbos_async.embedded import start_throwaway_cluster

# The throwaway defaults minus synchronous_commit=off: with it, an immediate
# stop loses commits the runtime was told were durable, which no deployment
# does. fsync stays off: the OS survives a stop, so written WAL does too.
SETTINGS = {"max_connections": "300", "fsync": "off", "full_page_writes": "off"}

started_data_dirs: list[Path] = []
"""Every cluster these tests started, to check that none of them outlives the session."""


class Cluster:
    """One throwaway cluster; ``stop()`` removes it."""

    def __init__(self) -> None:
        self.url, self._cluster = start_throwaway_cluster(SETTINGS)
        started_data_dirs.append(self._cluster.data_dir)
        assert self._cluster.port is not None
        self.port: int = self._cluster.port
        self.restarts = 0

    @property
    def pgdata(self) -> Path:
        return self._cluster.pgdata

    def database_url(self, database: str) -> str:
        return self.url.rsplit("/", 1)[0] + f"/{database}"

    def restart_immediate(self, down: float = 0.0) -> None:
        """``pg_ctl stop -m immediate`` (no checkpoint, every backend killed), then start
        again after ``down`` seconds."""
        stopped = self._pg_ctl("-m", "immediate", "-w", "stop")
        assert stopped.returncode == 0, stopped.stderr
        time.sleep(down)  # the outage itself
        self._start()
        self.restarts += 1

    def _start(self) -> None:
        options = " ".join(
            [f"-p {self.port}", "-c listen_addresses=127.0.0.1", "-c unix_socket_directories=''"]
            + [f"-c {key}={value}" for key, value in SETTINGS.items()]
        )
        log = str(self.pgdata / "server.log")
        started = self._pg_ctl("-l", log, "-o", options, "-w", "-t", "60", "start")
        assert started.returncode == 0, started.stdout + started.stderr

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._cluster._run("pg_ctl", "-D", str(self.pgdata), *args)

    def server_pids(self) -> list[int]:
        """The postmaster and every process it forked (its backends and helpers)."""
        postmaster = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        return [postmaster, *children_of(postmaster)]

    def freeze(self) -> list[int]:
        """SIGSTOP the postmaster and its children: connections stay open, nothing answers."""
        pids = self.server_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    @staticmethod
    def thaw(pids: list[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self.thaw(self.server_pids())  # a frozen server would ignore a fast stop
        self._cluster.stop()


def children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.append(int(entry.name))
    return found


def leaked_servers() -> list[str]:
    """Live processes of a cluster we started: Postgres runs them all in its data directory."""
    leaked = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(cwd.startswith(str(d)) for d in started_data_dirs):
            leaked.append(f"{entry.name}: {cmdline}")
    return leaked
