"""The pytest plugin (``dbos_async.testing.pytest_plugin``) seen from users' test projects.

Each test writes a small project in a temporary directory and runs pytest on
it in a separate process, so the plugin comes in through its ``pytest11``
entry point as it does for users, under the project's own settings.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# A user's module: a workflow that waits a day on the clock, then runs a step.
REMINDERS = """
    from dbos_async import DBOS

    reminded = []


    @DBOS.step()
    async def send_reminder(name: str) -> str:
        reminded.append(name)
        return f"reminded {name}"


    @DBOS.workflow()
    async def remind(name: str, days: int = 1) -> str:
        await DBOS.sleep(days * 86400)
        return await send_reminder(name)
"""

# Its test: nothing happens until the clock moves a day, then the step runs once.
TEST_REMINDERS = """
    import pytest

    from dbos_async import WorkflowStatusString
    from reminders import remind, reminded

    {marker}
    async def test_remind_after_a_day(dbos_env):
        handle = await dbos_env.dbos.start_workflow(remind, "ada")
        await dbos_env.clock.advance(86399)
        status = await handle.get_status()
        assert status.status is WorkflowStatusString.PENDING and reminded == []
        await dbos_env.clock.advance(1)
        assert await handle.get_result() == "reminded ada"
        assert reminded == ["ada"]
"""

INI = """
    [pytest]
    asyncio_mode = {mode}
    asyncio_default_fixture_loop_scope = function
    asyncio_default_test_loop_scope = function
    filterwarnings = error
"""

RUN_TIMEOUT = 90.0  # seconds for one inner pytest run


@pytest.fixture
def project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, pg_server_url: str
) -> pytest.Pytester:
    """An empty project whose pytest runs see the test server, and plugins load as users' do."""
    monkeypatch.setenv("DBOS_TEST_DATABASE_URL", pg_server_url)
    for name in (
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD",  # the entry point must load the plugin
        "PYTEST_ADDOPTS",
        "PYTEST_PLUGINS",
        "PYTEST_XDIST_WORKER",  # when this suite itself runs under xdist
        "PYTEST_XDIST_WORKER_COUNT",
        "PYTEST_XDIST_TESTRUNUID",
    ):
        monkeypatch.delenv(name, raising=False)
    return pytester


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=RUN_TIMEOUT)


def write_reminders(project: pytest.Pytester, mode: str, marker: str = "") -> None:
    project.makeini(INI.format(mode=mode))
    project.makepyfile(reminders=REMINDERS, test_reminders=TEST_REMINDERS.format(marker=marker))


@pytest.mark.parametrize(
    ("mode", "marker"), [("auto", ""), ("strict", "@pytest.mark.asyncio")], ids=["auto", "strict"]
)
def test_dbos_env_runs_a_workflow_on_a_virtual_clock(
    project: pytest.Pytester, mode: str, marker: str
) -> None:
    write_reminders(project, mode, marker)
    result = run(project)
    result.assert_outcomes(passed=1)


def test_each_xdist_worker_makes_its_own_databases(project: pytest.Pytester) -> None:
    project.makeini(INI.format(mode="auto"))
    project.makepyfile(
        reminders=REMINDERS,
        test_workers="""
        import os

        import pytest

        from reminders import remind


        @pytest.mark.parametrize("name", ["ada", "bob", "cy", "di"])
        async def test_remind(dbos_env, name):
            assert f"dbos_test_{os.getpid()}_" in dbos_env.database_url
            handle = await dbos_env.dbos.start_workflow(remind, name)
            await dbos_env.clock.advance(86400)
            assert await handle.get_result() == f"reminded {name}"
        """,
    )
    result = run(project, "-n", "2")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*created: 2/2 workers*"])


@pytest.mark.parametrize("where", ["option", "ini"])
def test_database_url_from_the_command_line_or_ini_and_the_marker(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, pg_server_url: str, where: str
) -> None:
    monkeypatch.delenv("DBOS_TEST_DATABASE_URL")
    server = pg_server_url.partition("?")[0].rsplit("/", 1)[0]
    ini = INI.format(mode="auto")
    if where == "ini":
        ini += f"    dbos_database_url = {pg_server_url}\n"
    project.makeini(ini)
    project.makepyfile(
        reminders=REMINDERS,
        test_marked=f"""
        import os

        import pytest

        from reminders import remind


        @pytest.mark.dbos_env(auto_advance=True)
        async def test_three_days_pass_by_themselves(dbos_env):
            assert "DBOS_TEST_DATABASE_URL" not in os.environ
            assert dbos_env.database_url.startswith({server + "/"!r})
            start = dbos_env.clock.time()
            handle = await dbos_env.dbos.start_workflow(remind, "ada", days=3)
            assert await handle.get_result(timeout=30) == "reminded ada"
            assert dbos_env.clock.time() - start >= 3 * 86400
        """,
    )
    args = ["--dbos-database-url", pg_server_url] if where == "option" else []
    result = run(project, "--strict-markers", *args)
    result.assert_outcomes(passed=1)


def test_tests_without_dbos_env_run_as_before_and_the_fixture_and_marker_are_declared(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No server behind the URL: tests that do not ask for dbos_env never touch it.
    monkeypatch.setenv("DBOS_TEST_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    project.makeini(INI.format(mode="strict"))
    project.makepyfile(
        test_plain="""
        import asyncio

        import pytest


        def test_plain():
            assert 1 + 1 == 2


        @pytest.mark.asyncio
        async def test_plain_async():
            await asyncio.sleep(0)


        @pytest.mark.dbos_env(auto_advance=True)
        def test_marked_without_the_fixture():
            pass
        """
    )
    result = run(project, "--strict-markers")
    result.assert_outcomes(passed=3)

    fixtures = run(project, "--fixtures")
    assert fixtures.ret == 0
    fixtures.stdout.fnmatch_lines(["dbos_env*", "*TestEnvironment*"])
