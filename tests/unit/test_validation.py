"""Identifiers are checked where they enter."""

from __future__ import annotations

import pytest

from dbos_async.validation import MAX_ID_LENGTH, check_schema_name, check_workflow_id


@pytest.mark.parametrize(
    "good",
    ["a", "ünïcødé 🎟️", "'; DROP TABLE x; --", "line\nbreak", "\u202ertl", "x" * MAX_ID_LENGTH],
)
def test_any_other_text_is_accepted_unchanged(good: str) -> None:
    assert check_workflow_id(good) == good


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "empty"),
        ("a\x00", "NUL"),
        ("x" * (MAX_ID_LENGTH + 1), "limit"),
        (7, "str"),
        ("\ud800", "Unicode"),
    ],
)
def test_bad_ids_raise_value_error_naming_the_problem(bad: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_workflow_id(bad)


def test_schema_names_are_plain_identifiers() -> None:
    assert check_schema_name("dbos_async") == "dbos_async"
    for bad in ["Upper", "with space", 'quo"te', "x" * 64, "1starts_with_digit"]:
        with pytest.raises(ValueError, match="schema name"):
            check_schema_name(bad)
