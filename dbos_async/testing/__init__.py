"""Test users' workflows fast: a virtual clock, a throwaway runtime, a pytest plugin.

Extra ``testing`` (``pip install 'dbos-async[testing]'``)::

    from dbos_async.testing import TestEnvironment, VirtualClock

    async with TestEnvironment() as env:
        handle = await env.dbos.start_workflow(remind, "ada")
        await env.clock.advance(3 * 86400)
        assert await handle.get_result() == "reminded ada"

With pytest, the ``dbos_env`` fixture gives a ``TestEnvironment`` per test
(the plugin is registered through the ``pytest11`` entry point).
"""

from dbos_async.testing.clock import VirtualClock
from dbos_async.testing.environment import TestEnvironment

__all__ = ["TestEnvironment", "VirtualClock"]
