"""The wheel carries the SQL files, and the package finds them from wheel and checkout alike."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    return next(out.glob("*.whl"))


def test_the_wheel_contains_the_sql_files_and_only_those(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    sql = [n for n in names if n.startswith("dbos_async/sql/")]
    expected = {f"dbos_async/{p.relative_to(ROOT)}" for p in (ROOT / "sql").rglob("*.sql")}
    assert set(sql) == expected
    assert "dbos_async/sql/migrations/0001_initial.sql" in sql
    assert "dbos_async/py.typed" in names


def test_an_installed_wheel_loads_its_queries(wheel: Path, tmp_path: Path) -> None:
    zipfile.ZipFile(wheel).extractall(tmp_path)
    code = (
        "import dbos_async.systemdb.queries as q, dbos_async.systemdb.migrate as m;"
        "print(q.sql_root(), len(q.load()), len(m.migrations()))"
    )
    found = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r}); {code}"],
        capture_output=True,
        text=True,
        check=True,
    )
    root, queries, migrations = found.stdout.split()
    assert root.startswith(str(tmp_path)) and int(queries) > 10 and int(migrations) >= 1


def test_the_checkout_finds_its_sql_folder() -> None:
    from dbos_async.systemdb.queries import sql_root

    assert Path(str(sql_root())) in (ROOT / "sql", ROOT / "dbos_async" / "sql")


def test_importing_the_package_imports_no_optional_capability() -> None:
    # The testing toolkit (and pytest) load only when asked for.
    code = (
        "import sys, dbos_async;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('pytest', '_pytest', 'pytest_asyncio', 'fastapi', 'uvicorn', 'pgserver')"
        " or m.startswith(('dbos_async.testing', 'dbos_async.dashboard'))"
        " or m.split('.')[0] in ('starlette', 'jinja2')))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


def test_the_wheel_registers_the_pytest_plugin(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[pytest11]" in text
    assert "dbos_async = dbos_async.testing.pytest_plugin" in text
    assert "dbos_async/testing/pytest_plugin.py" in names


def test_the_wheel_ships_the_dashboard_templates_and_vendored_htmx(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    dashboard = ROOT / "dbos_async" / "dashboard"
    shipped = {
        f"dbos_async/dashboard/{p.relative_to(dashboard)}"
        for p in dashboard.rglob("*")
        if p.is_file() and p.suffix in {".html", ".js", ".css", ".txt"}
    }
    assert shipped and shipped <= names
    assert "dbos_async/dashboard/static/vendor/htmx-2.0.11.min.js" in names
