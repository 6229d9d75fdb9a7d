"""Checks on identifiers where they enter: workflow IDs, names, schema names."""

from __future__ import annotations

import re

MAX_ID_LENGTH = 1024
"""Longest workflow ID or registered name accepted (characters)."""

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_identifier(value: object, what: str) -> str:
    """Return ``value`` if it is a usable workflow ID or name, else raise ValueError.

    Any non-empty Unicode string without NUL (which Postgres text cannot hold)
    and no longer than ``MAX_ID_LENGTH`` round-trips unchanged.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain a NUL character")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates cannot be stored
        raise ValueError(f"{what} is not valid Unicode text: {exc.reason}") from exc
    return value


def check_workflow_id(value: object) -> str:
    """Validate a workflow ID."""
    return check_identifier(value, "workflow ID")


def check_schema_name(value: str) -> str:
    """Validate the system schema name: it is an identifier, so it is never a parameter."""
    if not _SCHEMA_NAME.fullmatch(value):
        raise ValueError(
            f"schema name {value!r} must match [a-z_][a-z0-9_]* and be at most 63 characters"
        )
    return value
