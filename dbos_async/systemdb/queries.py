"""Named SQL blocks from ``sql/queries/*.sql``, loaded once.

A block starts with ``-- name: verb_object`` followed by comment lines that
describe it; the text up to the next ``-- name:`` is the statement.

Statements name every system table as ``{schema}.table`` (and the
notification channel as ``'{schema}'``): transactions run on connections whose
search path puts the application's schemas first, where a table of the app's
that shares a name with ours would otherwise take our rows. The placeholder is
filled once per schema, with a name validated to ``[a-z_][a-z0-9_]*``, so it
is safe both as an identifier and inside a string literal.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import LiteralString

from dbos_async.systemdb.pool import Connection, schema_of
from dbos_async.validation import check_schema_name

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def sql_root() -> Traversable:
    """The ``sql`` folder: inside the wheel, or at the top of a source checkout."""
    packaged = resources.files("dbos_async") / "sql"
    if packaged.is_dir():
        return packaged
    # An editable install: dbos_async/ sits next to the repository's sql/.
    return Path(__file__).resolve().parents[2] / "sql"


def parse(text: str) -> dict[str, str]:
    """Split a file of named blocks into {name: statement}."""
    parts = _NAME.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"query {name!r} is defined twice")
        blocks[name] = body.strip()
    return blocks


@functools.cache
def load() -> MappingProxyType[str, LiteralString]:
    """All named queries, from every file in ``sql/queries``."""
    blocks: dict[str, LiteralString] = {}
    for path in sorted((sql_root() / "queries").iterdir(), key=lambda p: p.name):
        if path.name.endswith(".sql"):
            for name, body in parse(path.read_text(encoding="utf-8")).items():
                if name in blocks:
                    raise ValueError(f"query {name!r} is defined in two files")
                blocks[name] = body  # mypy treats LiteralString as str
    return MappingProxyType(blocks)


_PLACEHOLDER = "{schema}"


@functools.cache
def statements(schema: str) -> MappingProxyType[str, LiteralString]:
    """Every named query, its system tables qualified with ``schema``.

    Raises:
        ValueError: ``schema`` is not a valid system schema name.
    """
    check_schema_name(schema)
    # A validated name is as safe as a literal. (mypy treats LiteralString as
    # str, so the result needs no cast.)
    return MappingProxyType({n: body.replace(_PLACEHOLDER, schema) for n, body in load().items()})


def q(conn: Connection, name: str) -> LiteralString:
    """The statement named ``name``, for the system schema of ``conn``."""
    return statements(schema_of(conn))[name]


# Read at import, so no coroutine ever touches the file system for SQL.
load()
