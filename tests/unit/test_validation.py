"""Identifiers are checked where they enter."""

from __future__ import annotations

import pytest

from dbos_async.validation import check_identifier, check_schema_name, check_workflow_id


@pytest.mark.parametrize(
    "good",
    [
        "a",
        "ünïcødé 🎟️",
        "'; DROP TABLE x; --",
        "line\nbreak",
        "\u202ertl",
        "x" * 1024,
        "é" * 500,  # 1,000 bytes
        "😀" * 256,  # 1,024 bytes
        "x" * 1020 + "😀",  # 1,024 bytes
    ],
)
def test_any_other_text_is_accepted_unchanged(good: str) -> None:
    assert check_workflow_id(good) == good


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "empty"),
        ("a\x00", "NUL"),
        ("x" * 1025, "limit"),
        (7, "str"),
        ("\ud800", "Unicode"),
    ],
)
def test_bad_ids_raise_value_error_naming_the_problem(bad: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_workflow_id(bad)


@pytest.mark.parametrize(
    ("bad", "size"),
    [
        ("😀" * 300, 1200),  # 300 characters, but 4 bytes each
        ("😀" * 257, 1028),
        ("é" * 513, 1026),
        ("x" * 1021 + "😀", 1025),
        ("x" * 1025, 1025),
    ],
)
def test_identifiers_are_limited_by_their_utf8_bytes(bad: str, size: int) -> None:
    # Postgres indexes the bytes: 1,024 four-byte characters overflow a btree row.
    assert len(bad.encode()) == size
    with pytest.raises(ValueError) as caught:
        check_identifier(bad, "queue name")
    assert str(caught.value) == f"queue name is {size} bytes in UTF-8; the limit is 1024"


@pytest.mark.parametrize("bad", ["\ud800", "ok\udfffok", "\udc80" * 2000])
def test_lone_surrogates_are_refused_whatever_the_length(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^event key is not valid Unicode text: surrogates"):
        check_identifier(bad, "event key")


def test_schema_names_are_plain_identifiers() -> None:
    assert check_schema_name("dbos_async") == "dbos_async"
    for bad in ["Upper", "with space", 'quo"te', "x" * 64, "1starts_with_digit"]:
        with pytest.raises(ValueError, match="schema name"):
            check_schema_name(bad)


def test_executor_ids_are_held_to_256_bytes() -> None:
    # The queue's pending index holds the queue name, the partition key and the
    # executor ID: with two 1,024-byte keys, a longer executor ID breaks claims.
    from dbos_async.runtime import resolve_config

    assert resolve_config(None, "app", None, "é" * 128, "dbos_async", 8, ".").executor_id
    with pytest.raises(ValueError, match="executor_id is 258 bytes in UTF-8; the limit is 256"):
        resolve_config(None, "app", None, "é" * 129, "dbos_async", 8, ".")
