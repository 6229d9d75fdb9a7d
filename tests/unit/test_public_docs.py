"""Every public name shows its real signature and docstring in help() (issue 19, item 7)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest

import dbos_async
from dbos_async import DBOS


def _public() -> Iterator[tuple[str, Any]]:
    for name in sorted(dbos_async.__all__):
        yield name, getattr(dbos_async, name)
    for name in sorted(vars(DBOS)):
        if not name.startswith("_"):
            yield f"DBOS.{name}", getattr(DBOS, name)


@pytest.mark.parametrize(
    ("name", "obj"), list(_public()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_a_public_name_has_its_own_docstring(name: str, obj: Any) -> None:
    if not callable(obj):
        return
    doc = inspect.getdoc(obj) or ""
    assert len(doc) >= 20, (name, doc)
    assert not doc.startswith("partial("), (name, doc)
    assert "(see ``DBOS." not in doc.splitlines()[0], (name, doc)


@pytest.mark.parametrize("name", ["send", "get_event", "get_workflow_status", "list_workflows"])
def test_a_facade_method_shows_the_call_as_users_write_it(name: str) -> None:
    instance = DBOS.__new__(DBOS)
    instance._runtime = None  # type: ignore[assignment]  # no launch: only the binding is looked at
    for bound in (getattr(DBOS, name), getattr(instance, name)):
        parameters = list(inspect.signature(bound).parameters)
        assert parameters and parameters[0] != "runtime", (name, parameters)
