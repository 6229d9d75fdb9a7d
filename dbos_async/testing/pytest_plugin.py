"""The pytest plugin of dbos_async (entry point ``pytest11``): the ``dbos_env`` fixture.

It only adds fixtures and options; nothing else in a test session changes.

* ``dbos_env``: a ``TestEnvironment`` per test, entered before the test and
  left after it (its database dropped). Mark a test
  ``@pytest.mark.dbos_env(auto_advance=True, app_name=...)`` to pass options.
* ``--dbos-database-url`` (or the ini option ``dbos_database_url``): the
  Postgres server for the environments' databases; by default
  ``$DBOS_TEST_DATABASE_URL``, else an embedded Postgres per test process.

The fixture is async: it needs pytest-asyncio (the ``testing`` extra), in
auto or strict mode, with the tests' event loop scope equal to the fixtures'
(``asyncio_default_fixture_loop_scope``, ``function`` unless set; a clear
error says so otherwise). Under pytest-xdist each worker makes its own
databases.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from dbos_async.testing import TestEnvironment

_URL_OPTION = "--dbos-database-url"
_URL_INI = "dbos_database_url"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--dbos-database-url`` and the ini option ``dbos_database_url``."""
    group = parser.getgroup("dbos_async", "dbos_async test environments")
    group.addoption(
        _URL_OPTION,
        default=None,
        help="Postgres server for dbos_env's throwaway databases"
        " (default: $DBOS_TEST_DATABASE_URL, else an embedded Postgres)",
    )
    parser.addini(_URL_INI, "Postgres server for dbos_env's throwaway databases", default=None)


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``dbos_env`` marker (strict-markers projects accept it)."""
    config.addinivalue_line(
        "markers", "dbos_env(**options): options of the test's dbos_env (TestEnvironment)"
    )


def _database_url(config: pytest.Config) -> str | None:
    url = config.getoption(_URL_OPTION) or config.getini(_URL_INI)
    return str(url) if url else None


def _ini(config: pytest.Config, name: str) -> str:
    # pytest-asyncio before 0.26 has no asyncio_default_test_loop_scope: function.
    try:
        return str(config.getini(name) or "function")
    except ValueError:
        return "function"


def _check_loop_scopes(request: pytest.FixtureRequest) -> None:
    """A runtime lives on one event loop: the test's and the fixture's must be the same."""
    marker = request.node.get_closest_marker("asyncio")
    test_scope = (marker.kwargs.get("loop_scope") if marker is not None else None) or _ini(
        request.config, "asyncio_default_test_loop_scope"
    )
    fixture_scope = _ini(request.config, "asyncio_default_fixture_loop_scope")
    if test_scope != fixture_scope:
        raise pytest.UsageError(
            f"dbos_env runs on the fixtures' event loop ({fixture_scope} scope) but this test"
            f" runs on a {test_scope}-scoped loop: set asyncio_default_fixture_loop_scope ="
            f" {test_scope} in the pytest configuration"
        )


async def _environment(request: pytest.FixtureRequest) -> AsyncIterator[TestEnvironment]:
    from dbos_async.testing import TestEnvironment

    _check_loop_scopes(request)

    marker = request.node.get_closest_marker("dbos_env")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    options.setdefault("database_url", _database_url(request.config))
    async with TestEnvironment(**options) as env:
        yield env


try:
    import pytest_asyncio
except ImportError:  # the fixture says what is missing when a test asks for it

    @pytest.fixture
    def dbos_env() -> None:
        """A TestEnvironment per test (needs pytest-asyncio)."""
        raise pytest.UsageError(
            "the dbos_env fixture needs pytest-asyncio: pip install 'dbos-async[testing]'"
        )

else:
    # Redefines the other branch's stand-in; only one of the two ever exists.
    @pytest_asyncio.fixture
    async def dbos_env(  # type: ignore[misc]
        request: pytest.FixtureRequest,
    ) -> AsyncIterator[TestEnvironment]:
        """A ``TestEnvironment`` per test: its own database and virtual clock."""
        async for env in _environment(request):
            yield env
