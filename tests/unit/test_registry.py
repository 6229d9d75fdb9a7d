"""Registration: names, duplicates, redefinition, the app_version hash."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dbos_async import DBOS, registry


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(registry._registry)
    yield
    registry._registry.clear()
    registry._registry.update(saved)


def test_default_name_is_module_and_qualname(clean_registry: None) -> None:
    @DBOS.workflow()
    async def named() -> None: ...

    entry = named.__dbos_entry__  # type: ignore[attr-defined]
    assert entry.name == f"{__name__}.test_default_name_is_module_and_qualname.<locals>.named"


def test_a_taken_name_raises_at_decoration(clean_registry: None) -> None:
    @DBOS.step(name="unit.taken")
    async def first() -> None: ...

    with pytest.raises(ValueError, match="already registered"):

        @DBOS.step(name="unit.taken")
        async def second() -> None: ...


def test_redefining_at_the_same_place_replaces(clean_registry: None) -> None:
    fns = []
    for _ in range(2):

        @DBOS.workflow(name="unit.loop")
        async def again() -> None: ...

        fns.append(again)
    assert registry.lookup("unit.loop").fn is fns[1].__wrapped__  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["", "a\x00b"])
def test_invalid_names_are_rejected(bad: str, clean_registry: None) -> None:
    with pytest.raises(ValueError, match="name"):
        DBOS.workflow(name=bad)(_body)


async def _body() -> None: ...


def test_app_version_is_stable_and_follows_the_source(clean_registry: None) -> None:
    before = registry.compute_app_version()
    assert registry.compute_app_version() == before
    namespace: dict[str, object] = {}
    exec("async def extra():\n    return 1\n", namespace)  # no source file: hashed by code
    DBOS.workflow(name="unit.extra")(namespace["extra"])  # type: ignore[arg-type]
    assert registry.compute_app_version() != before


def test_workflows_must_be_async(clean_registry: None) -> None:
    def sync() -> None: ...

    with pytest.raises(TypeError, match="async def"):
        DBOS.workflow()(sync)  # type: ignore[arg-type]


def test_bad_step_options_raise(clean_registry: None) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        DBOS.step(max_attempts=0)
    with pytest.raises(ValueError, match="isolation"):
        DBOS.transaction(isolation="sometimes")  # type: ignore[arg-type]
