"""Registration of workflows and steps by name, and the app_version hash (no I/O).

Decorators register at import time. A name may be registered once; defining
the same function again at the same place (a reload, a loop, a re-run test)
replaces the entry, while a different function under a taken name raises.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from dbos_async.validation import check_identifier

Kind = Literal["workflow", "step", "transaction"]


@dataclass(slots=True, eq=False)
class Registered:
    """A decorated function and its options."""

    kind: Kind
    name: str
    fn: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> tuple[str, int]:
        """Where the function was defined: the duplicate check compares this."""
        code = getattr(self.fn, "__code__", None)
        if code is None:
            return (getattr(self.fn, "__module__", ""), id(self.fn))
        return (code.co_filename, code.co_firstlineno)


_registry: dict[str, Registered] = {}


def default_name(fn: Callable[..., Any]) -> str:
    """``module.qualname``: the registered name when none is given."""
    return f"{fn.__module__}.{fn.__qualname__}"


def register(kind: Kind, fn: Callable[..., Any], name: str | None, **options: Any) -> Registered:
    """Register ``fn`` under ``name`` (default ``module.qualname``).

    Raises:
        ValueError: the name is invalid, or already taken by another function.
    """
    if not callable(fn):
        raise TypeError(f"@DBOS.{kind} decorates a function, got {type(fn).__name__}")
    name = check_identifier(name if name is not None else default_name(fn), f"{kind} name")
    entry = Registered(kind, name, fn, options)
    existing = _registry.get(name)
    if existing is not None and existing.origin != entry.origin:
        raise ValueError(
            f"The name {name!r} is already registered by {existing.kind} "
            f"{existing.fn.__qualname__} at {existing.origin[0]}:{existing.origin[1]}; "
            "pass name=... to tell them apart"
        )
    _registry[name] = entry
    return entry


def lookup(name: str) -> Registered | None:
    """The entry registered under ``name``, if any."""
    return _registry.get(name)


def workflows() -> list[Registered]:
    """All registered workflows, sorted by name."""
    return sorted((r for r in _registry.values() if r.kind == "workflow"), key=lambda r: r.name)


def compute_app_version() -> str:
    """A hash of the registered workflows' names and source code.

    Code changes that could alter replay change the version, so recovery never
    replays a workflow under code it was not recorded with.
    """
    digest = hashlib.sha256()
    for entry in workflows():
        digest.update(entry.name.encode())
        try:
            source = inspect.getsource(entry.fn)
        except (OSError, TypeError):
            code = getattr(entry.fn, "__code__", None)
            source = repr(code.co_code) if code is not None else entry.name
        digest.update(source.encode())
    return digest.hexdigest()[:32]
