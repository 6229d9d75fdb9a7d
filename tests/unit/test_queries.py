"""Named SQL: every block parses, names are verb_object, and every name used exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dbos_async.systemdb.queries import load, parse, statements

PACKAGE = Path(__file__).parents[2] / "dbos_async"


def test_names_are_snake_case_verb_object() -> None:
    for name in load():
        assert re.fullmatch(r"[a-z]+(_[a-z0-9]+)+", name), name


def test_every_query_used_in_the_package_exists() -> None:
    used = set()
    for path in PACKAGE.rglob("*.py"):
        used |= set(re.findall(r'\bq\(\w+, "([a-z0-9_]+)"\)', path.read_text()))
    assert used and used <= set(load()), used - set(load())


def test_a_name_defined_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="twice"):
        parse("-- name: a_b\nSELECT 1;\n-- name: a_b\nSELECT 2;\n")


def test_no_statement_is_built_with_string_formatting() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r'(execute|fetch\w*)\(\s*f"', text), path


# Every table of the committed schema snapshot (kept current by test_migrate),
# and the enqueue sequence.
SNAPSHOT = (PACKAGE.parent / "sql" / "schema.sql").read_text()
SYSTEM_TABLES = (
    *sorted(set(re.findall(r"^-- column (\w+)\.", SNAPSHOT, re.M))),
    "workflow_enqueue_seq",
)


def test_every_system_table_is_named_with_its_schema() -> None:
    assert "workflow_status" in SYSTEM_TABLES and "branch_outputs" in SYSTEM_TABLES
    # An app table of the same name, earlier on a transaction's search path,
    # would otherwise take the statement's rows.
    bare = re.compile(rf"(?<![.\w])({'|'.join(SYSTEM_TABLES)})\b")
    for name, body in load().items():
        code = "\n".join(line.split("--", 1)[0] for line in body.splitlines())
        assert not bare.search(code), (name, bare.findall(code))


def test_the_schema_is_validated_before_it_is_spliced_in() -> None:
    with pytest.raises(ValueError):
        statements('dbos"; DROP TABLE x; --')
    assert "other.workflow_status" in statements("other")["select_workflow_status"]
