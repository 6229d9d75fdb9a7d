"""Shielded scopes that a shutdown can still bound.

A write that has started must finish, so it runs in a shielded cancel scope;
but a server that stopped answering would then hold the runtime's shutdown
forever. Every such scope is opened here, so ``bound`` can give them all (and
those opened later) a deadline at once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import anyio


class Shields:
    """The shielded scopes of one runtime; see the module docstring."""

    def __init__(self) -> None:
        self._deadline = math.inf
        self._scopes: set[anyio.CancelScope] = set()

    @contextlib.contextmanager
    def scope(self) -> Iterator[anyio.CancelScope]:
        """A scope no outer cancellation reaches; only ``bound``'s deadline ends it."""
        scope = anyio.CancelScope(shield=True, deadline=self._deadline)
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)

    def bound(self, seconds: float) -> None:
        """Give every shielded scope, open or to come, at most ``seconds`` more."""
        self._deadline = min(self._deadline, anyio.current_time() + seconds)
        for scope in self._scopes:
            scope.deadline = self._deadline

    @property
    def expired(self) -> bool:
        """Whether the bound has passed: shielded work is being cut off."""
        return anyio.current_time() >= self._deadline
