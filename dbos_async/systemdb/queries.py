"""Named SQL blocks from ``sql/queries/*.sql``, loaded once.

A block starts with ``-- name: verb_object`` followed by comment lines that
describe it; the text up to the next ``-- name:`` is the statement.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import LiteralString

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


def q(name: str) -> LiteralString:
    """The statement named ``name``."""
    return load()[name]


# Read at import, so no coroutine ever touches the file system for SQL.
load()
